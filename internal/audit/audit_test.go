package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
)

func rec(verdict string, pid int32, rule string) *Record {
	return &Record{Time: time.Date(2024, 5, 1, 12, 0, int(pid), 0, time.UTC), Verdict: verdict, Rule: rule, Reason: "test",
		Event: event.Event{Class: event.ClassFile, Op: "read", Path: "/etc/shadow", Subject: event.Subject{PID: pid}}}
}

func readAll(t *testing.T, path string, rotated bool) ([]uint64, ReadStats) {
	t.Helper()
	var ns []uint64
	st, err := ReadFile(path, rotated, func(r *Record) error { ns = append(ns, r.N); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return ns, st
}

func TestAppendRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := l.Append(rec("deny", int32(i), "r")); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	if err := l.Append(rec("deny", 9, "r")); !errors.Is(err, ErrClosed) {
		t.Errorf("append after close: %v", err)
	}
	// Reopen continues numbering.
	l, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Append(rec("alert", 4, "x"))
	l.Close()
	ns, st := readAll(t, path, false)
	if diff := cmp.Diff([]uint64{1, 2, 3, 4}, ns); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if st.Torn != 0 || st.Bad != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestFilter(t *testing.T) {
	var buf bytes.Buffer
	path := filepath.Join(t.TempDir(), "a.log")
	l, _ := Open(path, Options{Sync: SyncNone})
	l.Append(rec("deny", 1, "a"))
	l.Append(rec("allow", 2, "b"))
	l.Append(rec("kill", 3, "a"))
	l.Close()
	b, _ := os.ReadFile(path)
	buf.Write(b)
	cases := []struct {
		name string
		f    Filter
		want []uint64
	}{
		{"all", Filter{}, []uint64{1, 2, 3}},
		{"verdicts", Filter{Verdicts: []string{"deny", "kill"}}, []uint64{1, 3}},
		{"pid", Filter{PID: 2, HasPID: true}, []uint64{2}},
		{"rule", Filter{Rule: "a"}, []uint64{1, 3}},
		{"class", Filter{Class: "net"}, nil},
		{"since", Filter{Since: time.Date(2024, 5, 1, 12, 0, 2, 0, time.UTC)}, []uint64{2, 3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []uint64
			Read(bytes.NewReader(buf.Bytes()), func(r *Record) error {
				if c.f.Match(r) {
					got = append(got, r.N)
				}
				return nil
			})
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestTornTailRepaired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, _ := Open(path, Options{})
	l.Append(rec("deny", 1, "r"))
	l.Append(rec("deny", 2, "r"))
	l.Close()
	// Simulate a crash in the middle of writing record 3.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"n":3,"time":"2024-05-01T12:00:03Z","verdict":"de`)
	f.Close()
	ns, st := readAll(t, path, false)
	if diff := cmp.Diff([]uint64{1, 2}, ns); diff != "" || st.Torn != 1 {
		t.Fatalf("before repair: records (-want +got):\n%s torn=%d", diff, st.Torn)
	}
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Repaired() == 0 {
		t.Errorf("Repaired() = 0")
	}
	l.Append(rec("deny", 3, "r"))
	l.Close()
	ns, st = readAll(t, path, false)
	if diff := cmp.Diff([]uint64{1, 2, 3}, ns); diff != "" || st.Torn != 0 || st.Bad != 0 {
		t.Errorf("after repair: (-want +got):\n%s stats=%+v", diff, st)
	}
}

func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{MaxSize: 600, Keep: 2, Sync: SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 12; i++ {
		if err := l.Append(rec("deny", int32(i), "r")); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	for _, name := range []string{path, path + ".1", path + ".2"} {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 600 {
			t.Errorf("%s is %d bytes, over MaxSize", name, st.Size())
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Errorf("kept more than 2 rotated files")
	}
	ns, _ := readAll(t, path, true)
	for i := 1; i < len(ns); i++ {
		if ns[i] != ns[i-1]+1 {
			t.Fatalf("numbering not contiguous across rotation: %v", ns)
		}
	}
	if ns[len(ns)-1] != 12 {
		t.Errorf("last record %d, want 12 (%v)", ns[len(ns)-1], ns)
	}
	// Reopening an empty current file continues from FILE.1.
	os.Rename(path, path+".tmp")
	os.Remove(path + ".2")
	os.Rename(path+".1", path+".2")
	os.Rename(path+".tmp", path+".1")
	l, _ = Open(path, Options{Sync: SyncNone})
	l.Append(rec("deny", 13, "r"))
	l.Close()
	ns, _ = readAll(t, path, false)
	if diff := cmp.Diff([]uint64{13}, ns); diff != "" {
		t.Errorf("numbering after reopen (-want +got):\n%s", diff)
	}
}

const childEnv = "GATEVISOR_AUDIT_CRASH_CHILD"

// TestCrashDurability runs a child that appends records and acknowledges
// each one on stdout only after Append returned, kills it with SIGKILL in
// the middle of writing, and checks that every acknowledged record is in
// the file and that at most the final record is torn.
func TestCrashDurability(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		crashChild()
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process; run without -short")
	}
	for round := 0; round < 3; round++ {
		path := filepath.Join(t.TempDir(), "audit.log")
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashDurability$")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var acked uint64
		for sc.Scan() {
			if n, err := strconv.ParseUint(strings.TrimPrefix(sc.Text(), "ack "), 10, 64); err == nil {
				acked = n
			}
			if acked >= uint64(40+round*25) {
				break
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		// Drain what the child acknowledged before it died.
		for sc.Scan() {
			if n, err := strconv.ParseUint(strings.TrimPrefix(sc.Text(), "ack "), 10, 64); err == nil {
				acked = n
			}
		}
		cmd.Wait()
		if acked == 0 {
			t.Fatal("child acknowledged nothing")
		}
		ns, st := readAll(t, path, false)
		if st.Bad != 0 || st.Torn > 1 {
			t.Errorf("round %d: stats %+v, want no corrupt lines and at most one torn", round, st)
		}
		for i, n := range ns {
			if n != uint64(i+1) {
				t.Fatalf("round %d: record %d has n=%d: lost or reordered", round, i+1, n)
			}
		}
		if uint64(len(ns)) < acked {
			t.Errorf("round %d: %d records on disk, %d acknowledged: lost an acknowledged record", round, len(ns), acked)
		}
		// The torn tail is repaired on open, and appending works.
		l, err := Open(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Append(rec("deny", 1, "after")); err != nil {
			t.Fatal(err)
		}
		l.Close()
		if _, st := readAll(t, path, false); st.Torn != 0 || st.Bad != 0 {
			t.Errorf("round %d after repair: %+v", round, st)
		}
		t.Logf("round %d: %d acknowledged, %d on disk, torn %d", round, acked, len(ns), st.Torn)
	}
}

func crashChild() {
	l, err := Open(os.Getenv(childEnv), Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	// Large records make it likely that the kill lands inside a write.
	big := strings.Repeat("x", 200<<10)
	for i := 1; ; i++ {
		r := rec("deny", int32(i), "r")
		r.Reason = big
		if err := l.Append(r); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Printf("ack %d\n", r.N)
	}
}

// FuzzRead checks that the reader never panics and never reports a record
// from a torn line.
func FuzzRead(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Read(bytes.NewReader(b), func(*Record) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' && st.Torn != 1 {
			t.Fatalf("unterminated input not reported torn: %+v", st)
		}
	})
}
