package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// chainLog writes a closed log of an open record, 8 decisions and a close
// record (n=1..10) and returns its lines, each with its newline.
func chainLog(t *testing.T) [][]byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{VM: "cam4", Policy: "sha256:aa", Sync: SyncNone})
	for i := 1; i <= 8; i++ {
		mustAppend(t, l, rec("deny", int32(i), "r"))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := fileLines(t, path)
	if len(lines) != 10 {
		t.Fatalf("%d lines", len(lines))
	}
	return lines
}

// forge returns line (of record n) rewritten by edit, which gets the
// record's JSON as a map.
func forge(t *testing.T, line []byte, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func hashOf(line []byte) string { return hashLine(bytes.TrimSuffix(line, []byte("\n"))) }

func join(lines ...[]byte) []byte { return bytes.Join(lines, nil) }

// TestVerifyTamper edits, deletes, inserts and reorders records of a log and
// checks that Verify names the first bad record.
func TestVerifyTamper(t *testing.T) {
	L := chainLog(t) // L[i] is record n=i+1
	all := func() [][]byte { return append([][]byte(nil), L...) }
	without := func(i ...int) []byte {
		var out [][]byte
		for k, l := range L {
			if !containsInt(i, k) {
				out = append(out, l)
			}
		}
		return join(out...)
	}
	insertAfter := func(i int, extra ...[]byte) []byte {
		out := all()
		out = append(out[:i+1], append(extra, out[i+1:]...)...)
		return join(out...)
	}
	replace := func(i int, l []byte) []byte {
		out := all()
		out[i] = l
		return join(out...)
	}
	cases := []struct {
		name   string
		log    []byte
		expect *Anchor
		want   *Break // Detail: a part of it
		closed bool
	}{
		{"intact", join(L...), nil, nil, true},
		{"edit", replace(3, bytes.Replace(L[3], []byte(`"reason":"test"`), []byte(`"reason":"TEST"`), 1)), nil,
			&Break{Position{Line: 4}, 4, ProblemEdited, "record n=4 was edited (its hash does not match record 5's prev)"}, true},
		{"edit first (open) record", replace(0, forge(t, L[0], func(m map[string]any) { m["vm"] = "other" })), nil,
			&Break{Position{Line: 1}, 1, ProblemEdited, "record n=1 was edited"}, true},
		{"edit n", replace(3, forge(t, L[3], func(m map[string]any) { m["n"] = 40 })), nil,
			&Break{Position{Line: 4}, 4, ProblemEdited, "record n=4 was edited (it says n=40)"}, true},
		{"edit prev", replace(3, forge(t, L[3], func(m map[string]any) { m["prev"] = hashOf(L[1]) })), nil,
			&Break{Position{Line: 4}, 4, ProblemEdited, "record n=4 was edited"}, true},
		{"carriage return", replace(3, append(bytes.TrimSuffix(L[3], []byte("\n")), '\r', '\n')), nil,
			&Break{Position{Line: 4}, 4, ProblemEdited, "record n=4 was edited"}, true},
		{"delete", without(3), nil,
			&Break{Position{Line: 4}, 4, ProblemMissing, "record n=4 is missing"}, true},
		{"delete two", without(3, 4), nil,
			&Break{Position{Line: 4}, 4, ProblemMissing, "records n=4 to 5 are missing"}, true},
		{"delete first", without(0), nil,
			&Break{Position{Line: 1}, 1, ProblemMissing, "record n=1 is missing"}, true},
		{"insert", insertAfter(3, forge(t, L[4], func(m map[string]any) { m["reason"] = "forged"; m["prev"] = strings.Repeat("ab", 32) })), nil,
			&Break{Position{Line: 5}, 5, ProblemInserted, "inserted record n=5"}, true},
		{"insert chained", insertAfter(3, forge(t, L[4], func(m map[string]any) { m["reason"] = "forged" })), nil,
			&Break{Position{Line: 5}, 5, ProblemInserted, "inserted record n=5"}, true},
		{"insert empty line", insertAfter(3, []byte("\n")), nil,
			&Break{Position{Line: 5}, 0, ProblemInserted, "inserted line that is not a record"}, true},
		{"insert long line", insertAfter(3, append(bytes.Repeat([]byte("x"), MaxRecord+10), '\n')), nil,
			&Break{Position{Line: 5}, 0, ProblemInserted, "inserted line that is not a record"}, true},
		{"replay", insertAfter(3, L[3]), nil,
			&Break{Position{Line: 4}, 4, ProblemInserted, "inserted record n=4"}, true},
		{"swap", join(append(append(all()[:3], L[4], L[3]), L[5:]...)...), nil,
			&Break{Position{Line: 4}, 5, ProblemOutOfOrder, "records out of order: n=5 comes before n=4"}, true},
		{"move back", join(append(append(all()[:3], L[5], L[3], L[4]), L[6:]...)...), nil,
			&Break{Position{Line: 4}, 6, ProblemOutOfOrder, "records out of order: n=6 comes before n=4"}, true},
		{"corrupt", replace(3, []byte("garbage\n")), nil,
			&Break{Position{Line: 4}, 4, ProblemNotRecord, "line 4 is not an audit record"}, true},
		{"corrupt first", replace(0, []byte("garbage\n")), nil,
			&Break{Position{Line: 1}, 0, ProblemNotRecord, "line 1 is not an audit record"}, true},
		// A torn final line is a crash, not tampering.
		{"torn", join(append(all()[:9], L[9][:30])...), nil, nil, false},
		// The limits: the last record can be edited or removed unseen...
		{"edit last", replace(9, forge(t, L[9], func(m map[string]any) { m["time"] = "2030-01-01T00:00:00Z" })), nil, nil, true},
		{"delete last", without(9), nil, nil, false},
		// ... unless the head recorded elsewhere is given.
		{"edit last, head known", replace(9, forge(t, L[9], func(m map[string]any) { m["time"] = "2030-01-01T00:00:00Z" })),
			&Anchor{N: 10, Hash: hashOf(L[9])},
			&Break{Position{Line: 10}, 10, ProblemHeadMismatch, "record n=10 does not match the head recorded elsewhere"}, true},
		{"delete last, head known", without(9), &Anchor{N: 10, Hash: hashOf(L[9])},
			&Break{Position{Line: 9}, 10, ProblemHeadMismatch, "record n=10 is missing"}, false},
		{"intact, head known", join(L...), &Anchor{N: 6, Hash: hashOf(L[5])}, nil, true},
		// The first break is named even when more follow.
		{"two edits", func() []byte {
			out := all()
			out[3] = forge(t, L[3], func(m map[string]any) { m["rule"] = "x" })
			out[6] = forge(t, L[6], func(m map[string]any) { m["rule"] = "y" })
			return join(out...)
		}(), nil, &Break{Position{Line: 4}, 4, ProblemEdited, "record n=4 was edited"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			if err := os.WriteFile(path, c.log, 0o600); err != nil {
				t.Fatal(err)
			}
			rep, err := Walk(path, WalkOptions{Rotated: true, Expect: c.expect}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.want == nil {
				if rep.Broken != nil || rep.Breaks != 0 {
					t.Errorf("broken: %v (%d breaks)", rep.Broken, rep.Breaks)
				}
			} else {
				c.want.File = path
				detail := c.want.Detail
				if rep.Broken == nil {
					t.Fatalf("not detected: %+v", rep)
				}
				if diff := cmp.Diff(c.want, rep.Broken, cmpopts.IgnoreFields(Break{}, "Detail")); diff != "" {
					t.Errorf("first break (-want +got):\n%s\n%s", diff, rep.Broken.Detail)
				}
				if !strings.Contains(rep.Broken.Detail, detail) {
					t.Errorf("detail %q, want it to say %q", rep.Broken.Detail, detail)
				}
				if !errors.Is(rep.Err(), ErrBroken) || rep.Intact() || rep.Breaks == 0 {
					t.Errorf("Err() = %v, Intact() = %v, Breaks = %d", rep.Err(), rep.Intact(), rep.Breaks)
				}
			}
			if rep.Closed != c.closed {
				t.Errorf("Closed = %v, want %v", rep.Closed, c.closed)
			}
		})
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// rotatedLog writes a log that has pruned and rotated files.
func rotatedLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{MaxSize: 1500, Keep: 2, Sync: SyncNone})
	for i := 0; i < 30; i++ {
		mustAppend(t, l, rec("deny", int32(i), "r"))
	}
	l.Close()
	rep, err := Verify(path)
	if err != nil || !rep.Intact() || rep.Pruned == 0 || len(rep.Files) != 3 {
		t.Fatalf("rotated log: %+v %v", rep, err)
	}
	return path
}

func TestVerifyTamperRotated(t *testing.T) {
	cases := []struct {
		name    string
		tamper  func(path string)
		rotated bool
		file    string // suffix of the broken file
		line    int
		problem Problem
		detail  string
	}{
		{"delete oldest file", func(p string) { os.Remove(p + ".2") }, true, ".1", 1, ProblemMissing, "missing: the oldest record"},
		{"cut oldest file's start", func(p string) { cutFirstLine(p + ".2") }, true, ".2", 1, ProblemMissing, "is missing: the oldest record"},
		{"edit last record of a rotated file", func(p string) { editLastLine(p + ".1") }, true, ".1", 0, ProblemEdited, "was edited (its hash does not match record"},
		{"edit pruned record", func(p string) {
			b, _ := os.ReadFile(p + ".1")
			os.WriteFile(p+".1", bytes.Replace(b, []byte(`"last_hash":"`), []byte(`"last_hash":"0`), 1), 0o600)
		}, true, ".1", 2, ProblemEdited, "was edited (its hash does not match record"},
		{"edit first record of the oldest file", func(p string) {
			b, _ := os.ReadFile(p + ".2")
			i := bytes.Index(b, []byte(`"prev":"`)) + 8
			b[i] ^= 1
			os.WriteFile(p+".2", b, 0o600)
		}, true, ".2", 1, ProblemEdited, "was edited"},
		{"swap rotated files", func(p string) {
			os.Rename(p+".1", p+".x")
			os.Rename(p+".2", p+".1")
			os.Rename(p+".x", p+".2")
		}, true, ".2", 1, ProblemMissing, ""},
		// Reading the current file alone checks it against FILE.1's end.
		{"current file alone: edit the end of FILE.1", func(p string) { editLastLine(p + ".1") }, false, ".1", 0, ProblemEdited, "was edited"},
		{"current file alone: delete its first record", func(p string) { cutFirstLine(p) }, false, "", 1, ProblemMissing, "is missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := rotatedLog(t)
			c.tamper(path)
			rep, err := Walk(path, WalkOptions{Rotated: c.rotated}, nil)
			if err != nil {
				t.Fatal(err)
			}
			b := rep.Broken
			if b == nil {
				t.Fatalf("not detected: %+v", rep)
			}
			if c.line == 0 {
				// Found from the file's end (the anchor) or by line.
				if b.File != path+c.file || b.Problem != c.problem {
					t.Errorf("break %+v, want %s%s %s", b, path, c.file, c.problem)
				}
			} else if b.File != path+c.file || b.Line != c.line || b.Problem != c.problem {
				t.Errorf("break %+v, want %s%s:%d %s", b, path, c.file, c.line, c.problem)
			}
			if !strings.Contains(b.Detail, c.detail) {
				t.Errorf("detail %q, want %q in it", b.Detail, c.detail)
			}
		})
	}
}

func cutFirstLine(name string) {
	b, _ := os.ReadFile(name)
	os.WriteFile(name, b[bytes.IndexByte(b, '\n')+1:], 0o600)
}

func editLastLine(name string) {
	b, _ := os.ReadFile(name)
	i := bytes.LastIndex(b, []byte(`"time":"`))
	b[i+9] ^= 1 // a digit of the year
	os.WriteFile(name, b, 0o600)
}

// TestVerifyBadInput: input that is not an audit log is an error, not a
// warning, and a FIFO or a device is refused before it is opened.
func TestVerifyBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		notLog     bool
	}{
		{"text", write("text", "hello\nworld\n"), true},
		{"one line", write("one", "#!/bin/sh\n"), true},
		{"no newline", write("nonl", "\x7fELF\x02\x01\x01\x00"), true},
		{"json but not records", write("json", "{}\n[1,2]\n{\"a\":1}\n"), true},
		{"many garbage lines", write("many", strings.Repeat("junk\n", 1000)), true},
		{"zeros", write("zeros", strings.Repeat("\x00", 3*MaxRecord)), true},
		{"fifo", fifo, false},
		{"device", "/dev/zero", false},
		{"directory", dir, false},
		{"missing", filepath.Join(dir, "nothing"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Verify(c.path)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, ErrNotAuditLog) != c.notLog {
				t.Errorf("error %v; want ErrNotAuditLog: %v", err, c.notLog)
			}
			if _, err := ReadFile(c.path, false, func(*Record) error { return nil }); err == nil && !c.notLog {
				t.Errorf("ReadFile accepted it")
			}
		})
	}
	// An empty file is not an error but not intact either.
	rep, err := Verify(write("empty", ""))
	if err != nil || rep.Broken == nil || rep.Broken.Problem != ProblemEmpty {
		t.Errorf("empty: %+v %v", rep, err)
	}
}

// TestWalkPassesExactLines: the callback gets every record with its exact
// bytes (the CLI prints them as JSON).
func TestWalkPassesExactLines(t *testing.T) {
	L := chainLog(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(path, join(L...), 0o600)
	var got [][]byte
	if _, err := Walk(path, WalkOptions{}, func(r *Record, line []byte) error {
		got = append(got, append(append([]byte(nil), line...), '\n'))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(L, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	stop := errors.New("stop")
	if _, err := Walk(path, WalkOptions{}, func(*Record, []byte) error { return stop }); err != stop {
		t.Errorf("callback error: %v", err)
	}
}

// FuzzVerify feeds arbitrary bytes to the verifier: it must not panic, must
// keep its report consistent and must pass only lines within MaxRecord.
func FuzzVerify(f *testing.F) {
	seedLog(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &checker{}
		lines := 0
		err := c.file("log", bytes.NewReader(b), true, func(r *Record, line []byte) error {
			lines++
			if len(line) >= MaxRecord || r.N == 0 {
				t.Fatalf("passed a line of %d bytes, n=%d", len(line), r.N)
			}
			return nil
		})
		if err == nil {
			err = c.finish()
		}
		rep := c.rep
		if err != nil {
			if !errors.Is(err, ErrNotAuditLog) || rep.Records != 0 {
				t.Fatalf("error %v with %d records", err, rep.Records)
			}
			return
		}
		if lines != rep.Records {
			t.Fatalf("%d lines passed, %d records", lines, rep.Records)
		}
		if (rep.Broken == nil) != (rep.Breaks == 0) {
			t.Fatalf("broken %v, %d breaks", rep.Broken, rep.Breaks)
		}
		if n := bytes.Count(b, []byte("\n")); rep.Records+rep.Bad != n {
			t.Fatalf("%d records + %d bad lines, %d newlines", rep.Records, rep.Bad, n)
		}
	})
}

// FuzzTamper changes one byte of a valid log: unless the change is in the
// last record (a documented limit) or cuts the final newline (a torn
// record), Verify must report a broken link.
func FuzzTamper(f *testing.F) {
	f.Add(uint16(0), byte(1))
	f.Add(uint16(200), byte('\n'))
	f.Add(uint16(700), byte('{'))
	f.Add(uint16(1500), byte(' '))
	var log []byte
	f.Fuzz(func(t *testing.T, off uint16, x byte) {
		if log == nil {
			log = join(chainLog(t)...)
		}
		i := int(off) % len(log)
		if x == 0 {
			x = 1
		}
		b := append([]byte(nil), log...)
		b[i] ^= x
		lastStart := bytes.LastIndexByte(log[:len(log)-1], '\n') + 1
		c := &checker{}
		err := c.file("log", bytes.NewReader(b), true, nil)
		if err == nil {
			err = c.finish()
		}
		if i >= lastStart {
			return // the last record: not detectable from the file alone
		}
		if err == nil && c.rep.Broken == nil {
			t.Fatalf("byte %d (line %d) changed by %#x: not detected; %+v", i, bytes.Count(log[:i], []byte("\n"))+1, x, c.rep)
		}
	})
}

// seedLog adds a valid log, a torn one and a few broken ones to f's corpus.
func seedLog(f *testing.F) {
	var lines [][]byte
	prev := Genesis
	for n := uint64(1); n <= 4; n++ {
		var l string
		if n == 1 {
			l = fmt.Sprintf(`{"n":1,"kind":"open","prev":"%s","time":"2024-01-01T00:00:00Z","vm":"v"}`, prev)
		} else {
			l = fmt.Sprintf(`{"n":%d,"prev":"%s","time":"2024-01-01T00:00:00Z","verdict":"deny","rule":"r","reason":"x","policy_seq":1,"event":{"class":"file","op":"read","path":"/etc/shadow","subject":{"pid":5,"uid":1000,"gid":0}}}`, n, prev)
		}
		lines = append(lines, []byte(l+"\n"))
		prev = hashOf([]byte(l))
	}
	f.Add(join(lines...))
	f.Add(join(lines[0], lines[1], lines[2][:40]))
	f.Add(join(lines[0], lines[2], lines[1], lines[3]))
	f.Add(join(lines[0], lines[1], lines[1], lines[3]))
	f.Add([]byte("garbage\n{}\n"))
}
