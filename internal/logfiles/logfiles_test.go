package logfiles

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func write(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func TestShiftCountListRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.jsonl")
	write(t, path, "c\n")
	write(t, Rotated(path, 1), "b\n")
	write(t, Rotated(path, 2), "a\n")
	write(t, Rotated(path, 4), "orphan\n") // not after .3: not counted
	if n, b := Count(path, 10); n != 2 || b != 4 {
		t.Fatalf("Count = %d, %d", n, b)
	}
	if n, _ := Count(path, 1); n != 1 {
		t.Fatalf("Count with max 1 = %d", n)
	}
	want := []string{Rotated(path, 2), Rotated(path, 1), path}
	if diff := cmp.Diff(want, List(path, 10)); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if err := Shift(path, 2); err != nil {
		t.Fatal(err)
	}
	got := []string{read(t, Rotated(path, 3)), read(t, Rotated(path, 2)), read(t, Rotated(path, 1))}
	if diff := cmp.Diff([]string{"a\n", "b\n", "c\n"}, got); diff != "" {
		t.Errorf("after Shift (-want +got):\n%s", diff)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("path still exists after Shift: %v", err)
	}
	left, freed, err := Remove(path, 2, 4)
	if err != nil || left != 1 || freed != int64(4+len("orphan\n")) {
		t.Fatalf("Remove = %d, %d, %v", left, freed, err)
	}
	if n, _ := Count(path, 10); n != 1 {
		t.Errorf("Count after Remove = %d", n)
	}
	// A file that cannot be removed stops Remove, counted as left.
	if err := os.MkdirAll(filepath.Join(Rotated(path, 3), "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, Rotated(path, 2), "b\n")
	left, freed, err = Remove(path, 2, 3)
	if err == nil || left != 3 || freed != 0 {
		t.Errorf("Remove of a full directory = %d, %d, %v", left, freed, err)
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		t.Error(err)
	}
}

func TestShiftDoesNotFollowLinks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "log.jsonl")
	victim := filepath.Join(dir, "victim")
	write(t, victim, "keep\n")
	if err := os.Symlink(victim, Rotated(path, 1)); err != nil {
		t.Fatal(err)
	}
	write(t, path, "x\n")
	if err := Shift(path, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Remove(path, 2, 2); err != nil {
		t.Fatal(err)
	}
	if got := read(t, victim); got != "keep\n" {
		t.Errorf("the link's target was touched: %q", got)
	}
}

func TestLineReader(t *testing.T) {
	in := "one\n" + strings.Repeat("x", 20) + "\nthree\n\ntorn"
	lr := NewLineReader(strings.NewReader(in), 10)
	type res struct {
		Line           string
		Complete, Long bool
		N              int
	}
	var got []res
	for {
		line, complete, long, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, res{string(line), complete, long, lr.Line()})
	}
	want := []res{{"one", true, false, 1}, {"", true, true, 2}, {"three", true, false, 3}, {"", true, false, 4}, {"torn", false, false, 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

func TestTailAndHead(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		max      int
		good     int64
		last     string
		err      string
	}{
		{"empty", "", 10, 0, "", ""},
		{"one line", "abc\n", 10, 4, "abc", ""},
		{"torn end", "abc\nde", 10, 4, "abc", ""},
		{"only torn", "abc", 10, 0, "", ""},
		{"torn too long", "a\n" + strings.Repeat("x", 11), 10, 0, "", "without a newline"},
		{"last too long", "a\n" + strings.Repeat("x", 11) + "\n", 10, 0, "", "longer than"},
		{"long file", strings.Repeat("0123456789\n", 20000), 20, 220000, "0123456789", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good, last, err := Tail(strings.NewReader(tc.in), int64(len(tc.in)), tc.max)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Tail error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || good != tc.good || string(last) != tc.last {
				t.Fatalf("Tail = %d, %q, %v; want %d, %q", good, last, err, tc.good, tc.last)
			}
		})
	}
	if h, err := Head(strings.NewReader("first\nsecond\n"), 10); err != nil || string(h) != "first" {
		t.Errorf("Head = %q, %v", h, err)
	}
	if h, err := Head(strings.NewReader("torn"), 10); err != nil || h != nil {
		t.Errorf("Head of a torn line = %q, %v", h, err)
	}
}

// FuzzLineReader: the lines read back are the input's lines, none longer
// than the cap; a long line is reported, not returned.
func FuzzLineReader(f *testing.F) {
	for _, s := range []string{"a\nb\n", "\n\n", "x", strings.Repeat("y", 70) + "\nz\n", "\x00\xff\n\r\n"} {
		f.Add([]byte(s), uint8(8))
	}
	f.Fuzz(func(t *testing.T, in []byte, max uint8) {
		m := int(max) + 1
		lr := NewLineReader(bytes.NewReader(in), m)
		var want [][]byte
		for _, l := range bytes.SplitAfter(in, []byte("\n")) {
			if len(l) > 0 {
				want = append(want, l)
			}
		}
		for i := 0; ; i++ {
			line, complete, long, err := lr.Next()
			if err == io.EOF {
				if i != len(want) {
					t.Fatalf("%d lines, want %d", i, len(want))
				}
				return
			}
			if err != nil || i >= len(want) {
				t.Fatalf("line %d: %v", i, err)
			}
			w := want[i]
			wComplete := w[len(w)-1] == '\n'
			if complete != wComplete || long != (len(w) > m) {
				t.Fatalf("line %d %q: complete %v long %v", i, w, complete, long)
			}
			if !long && string(line) != strings.TrimSuffix(string(w), "\n") {
				t.Fatalf("line %d = %q, want %q", i, line, w)
			}
			if long && line != nil {
				t.Fatalf("a long line returned bytes")
			}
		}
	})
}
