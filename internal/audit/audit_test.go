package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// readAll returns the number of every decision record of the log.
func readAll(t *testing.T, path string, rotated bool) ([]uint64, ReadStats) {
	t.Helper()
	var ns []uint64
	st, err := ReadFile(path, rotated, func(r *Record) error { ns = append(ns, r.N); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return ns, st
}

// kinds returns "n:kind" (kind "d" for decisions) for every record of the
// log, with its rotated files, and the report.
func kinds(t *testing.T, path string) ([]string, VerifyReport) {
	t.Helper()
	var got []string
	rep, err := Walk(path, WalkOptions{Rotated: true}, func(r *Record, _ []byte) error {
		k := string(r.Kind)
		if k == "" {
			k = "d"
		}
		got = append(got, fmt.Sprintf("%d:%s", r.N, k))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, rep
}

func mustOpen(t *testing.T, path string, opt Options) *Log {
	t.Helper()
	l, err := Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustAppend(t *testing.T, l *Log, r *Record) {
	t.Helper()
	if err := l.Append(r); err != nil {
		t.Fatal(err)
	}
}

func TestAppendRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{VM: "cam4", Policy: "sha256:aa", PolicySeq: 1})
	for i := 1; i <= 3; i++ {
		mustAppend(t, l, rec("deny", int32(i), "r"))
	}
	if err := l.AppendPolicy("sha256:bb", 2); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(rec("deny", 9, "r")); !errors.Is(err, ErrClosed) {
		t.Errorf("append after close: %v", err)
	}
	if err := l.AppendPolicy("x", 3); !errors.Is(err, ErrClosed) {
		t.Errorf("policy after close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	// Reopen continues numbering and the chain.
	l = mustOpen(t, path, Options{VM: "cam4"})
	mustAppend(t, l, rec("alert", 4, "x"))
	headN, headHash := l.Head()
	l.Close()

	ns, st := readAll(t, path, false)
	if diff := cmp.Diff([]uint64{2, 3, 4, 8}, ns); diff != "" {
		t.Errorf("decision records (-want +got):\n%s", diff)
	}
	if st.Torn != 0 || st.Bad != 0 || st.Chain != 5 {
		t.Errorf("stats %+v", st)
	}
	got, rep := kinds(t, path)
	want := []string{"1:open", "2:d", "3:d", "4:d", "5:policy", "6:close", "7:open", "8:d", "9:close"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if !rep.Intact() || !rep.Closed || rep.Opens != 2 || len(rep.CutShort) != 0 || rep.LastN != 9 {
		t.Errorf("report %+v", rep)
	}
	if headN != 8 || rep.Head == headHash {
		t.Errorf("Head() before close = %d %s; the file's head is n=9 %s", headN, headHash, rep.Head)
	}

	// The chain records say what they anchor to.
	var open, pol Record
	lines := fileLines(t, path)
	json.Unmarshal(lines[0], &open)
	json.Unmarshal(lines[4], &pol)
	if open.Prev != Genesis || open.VM != "cam4" || open.Policy != "sha256:aa" || open.PolicySeq != 1 || open.Unclosed {
		t.Errorf("open record %s", lines[0])
	}
	if pol.Policy != "sha256:bb" || pol.PolicySeq != 2 {
		t.Errorf("policy record %s", lines[4])
	}
	if bytes.Contains(lines[0], []byte(`"verdict"`)) || bytes.Contains(lines[0], []byte(`"event"`)) {
		t.Errorf("a chain record carries decision fields: %s", lines[0])
	}
	if bytes.Contains(lines[1], []byte(`"kind"`)) {
		t.Errorf("a decision record carries a kind: %s", lines[1])
	}
}

// TestOneWriter: a second Log on the same file is refused while the first
// is open: two writers would interleave two chains.
func TestOneWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{MaxSize: 600, Sync: SyncNone})
	if l2, err := Open(path, Options{}); !errors.Is(err, ErrInUse) {
		if err == nil {
			l2.Close()
		}
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	for i := 0; i < 10; i++ { // rotates: the new file is locked too
		mustAppend(t, l, rec("deny", int32(i), "r"))
	}
	if l2, err := Open(path, Options{}); !errors.Is(err, ErrInUse) {
		if err == nil {
			l2.Close()
		}
		t.Fatalf("second Open after rotation: %v, want ErrInUse", err)
	}
	l.Close()
	mustOpen(t, path, Options{}).Close()
	if _, rep := kinds(t, path); !rep.Intact() {
		t.Errorf("%v", rep.Broken)
	}
}

func TestAppendRefusesChainKinds(t *testing.T) {
	l := mustOpen(t, filepath.Join(t.TempDir(), "audit.log"), Options{Sync: SyncNone})
	defer l.Close()
	r := rec("deny", 1, "r")
	r.Kind = KindClose
	if err := l.Append(r); err == nil {
		t.Error("Append wrote a close record")
	}
}

func fileLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	return lines[:len(lines)-1]
}

func TestFilter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	l := mustOpen(t, path, Options{Sync: SyncNone})
	mustAppend(t, l, rec("deny", 1, "a"))
	mustAppend(t, l, rec("allow", 2, "b"))
	mustAppend(t, l, rec("kill", 3, "a"))
	l.Close()
	cases := []struct {
		name string
		f    Filter
		want []string
	}{
		{"all", Filter{}, []string{"open", "1", "2", "3", "close"}},
		{"verdicts", Filter{Verdicts: []string{"deny", "kill"}}, []string{"1", "3"}},
		{"pid", Filter{PID: 2, HasPID: true}, []string{"2"}},
		{"rule", Filter{Rule: "a"}, []string{"1", "3"}},
		{"class", Filter{Class: "net"}, nil},
		{"since", Filter{Since: time.Date(2024, 5, 1, 12, 0, 2, 0, time.UTC)}, []string{"open", "2", "3", "close"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			_, err := Walk(path, WalkOptions{}, func(r *Record, _ []byte) error {
				if c.f.Match(r) {
					if r.Kind != KindDecision {
						got = append(got, string(r.Kind))
					} else {
						got = append(got, strconv.Itoa(int(r.Event.Subject.PID)))
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestTornTailRepaired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{})
	mustAppend(t, l, rec("deny", 1, "r"))
	mustAppend(t, l, rec("deny", 2, "r"))
	// Simulate a crash in the middle of writing record 4 (no close).
	l.f.WriteString(`{"n":4,"prev":"00","time":"2024-05-01T12:00:03Z","verdict":"de`)
	l.f.Close()

	ns, st := readAll(t, path, false)
	if diff := cmp.Diff([]uint64{2, 3}, ns); diff != "" || st.Torn != 1 {
		t.Fatalf("before repair: records (-want +got):\n%s torn=%d", diff, st.Torn)
	}
	rep, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Intact() || rep.Torn == nil || rep.Torn.Line != 4 || rep.LastN != 3 || rep.Closed {
		t.Errorf("torn log: %+v", rep)
	}

	l = mustOpen(t, path, Options{})
	if l.Repaired() == 0 {
		t.Errorf("Repaired() = 0")
	}
	mustAppend(t, l, rec("deny", 3, "r"))
	l.Close()
	got, rep := kinds(t, path)
	if diff := cmp.Diff([]string{"1:open", "2:d", "3:d", "4:open", "5:d", "6:close"}, got); diff != "" {
		t.Errorf("after repair (-want +got):\n%s", diff)
	}
	if !rep.Intact() || rep.Torn != nil || !rep.Closed || !cmp.Equal(rep.CutShort, []uint64{4}) {
		t.Errorf("after repair: %+v", rep)
	}
	var open Record
	json.Unmarshal(fileLines(t, path)[3], &open)
	if !open.Unclosed || open.Repaired != l.Repaired() {
		t.Errorf("reopen record does not say the session was cut short and repaired: %+v", open)
	}
}

// TestOpenRefusesGarbage: a file that is not an audit log is neither
// continued nor truncated.
func TestOpenRefusesGarbage(t *testing.T) {
	for _, c := range []struct{ name, content string }{
		{"text", "hello\nworld\n"},
		{"no newline", "#!/bin/sh\necho"},
		{"binary", "\x7fELF\x02\x01\x01"},
		{"text then what looks like a torn record", "hello\n{\"n\":5,"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			os.WriteFile(path, []byte(c.content), 0o600)
			if l, err := Open(path, Options{}); err == nil {
				l.Close()
				t.Fatal("Open accepted a file that is not an audit log")
			}
			if b, _ := os.ReadFile(path); string(b) != c.content {
				t.Errorf("Open changed the file to %q", b)
			}
		})
	}
}

func TestOpenRefusesUnsafeFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	os.WriteFile(target, nil, 0o600)
	link := filepath.Join(dir, "audit.log")
	os.Symlink(target, link)
	if l, err := Open(link, Options{}); err == nil {
		l.Close()
		t.Error("Open followed a symbolic link")
	}
	ww := filepath.Join(dir, "ww.log")
	os.WriteFile(ww, nil, 0o600)
	os.Chmod(ww, 0o666)
	if l, err := Open(ww, Options{}); err == nil {
		l.Close()
		t.Error("Open accepted a world-writable file")
	}
}

func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	const maxSize = 1200
	l := mustOpen(t, path, Options{MaxSize: maxSize, Keep: 2, Sync: SyncNone})
	for i := 1; i <= 40; i++ {
		mustAppend(t, l, rec("deny", int32(i), "r"))
	}
	l.Close()
	for _, name := range []string{path, path + ".1", path + ".2"} {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > maxSize {
			t.Errorf("%s is %d bytes, over MaxSize", name, st.Size())
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Errorf("kept more than 2 rotated files")
	}
	got, rep := kinds(t, path)
	if !rep.Intact() || !rep.Closed || rep.Pruned == 0 || rep.FirstN == 1 {
		t.Fatalf("rotated log: %+v", rep)
	}
	for i := 1; i < len(got); i++ {
		var a, b uint64
		fmt.Sscanf(got[i-1], "%d:", &a)
		fmt.Sscanf(got[i], "%d:", &b)
		if b != a+1 {
			t.Fatalf("numbering not contiguous across rotation: %v", got)
		}
	}
	if rep.LastPrune.LastN+1 != rep.FirstN || rep.LastPrune.Files != 1 || rep.LastPrune.FirstN == 0 || rep.LastPrune.Bytes == 0 {
		t.Errorf("last pruned record %+v, oldest record kept n=%d", rep.LastPrune, rep.FirstN)
	}
	// The first record of each file chains to the last of the one before.
	for _, name := range []string{path + ".1", path} {
		var r Record
		json.Unmarshal(fileLines(t, name)[0], &r)
		if r.Prev == Genesis || r.Prev == "" {
			t.Errorf("%s starts a new chain: %+v", name, r)
		}
	}
	// Reading one file checks its first record against the end of the
	// file before it.
	rep, err := Walk(path, WalkOptions{}, nil)
	if err != nil || !rep.Intact() || rep.Anchor == nil || rep.Anchor.File != path+".1" {
		t.Errorf("current file alone: %+v %v", rep, err)
	}

	// Reopening an empty current file continues from FILE.1 (as after a
	// crash right after rotation, before the pruning).
	os.Rename(path+".2", path+".3")
	os.Rename(path+".1", path+".2")
	os.Rename(path, path+".1")
	os.WriteFile(path, nil, 0o600)
	lastN := rep.LastN
	l = mustOpen(t, path, Options{MaxSize: maxSize, Keep: 2, Sync: SyncNone})
	mustAppend(t, l, rec("deny", 13, "r"))
	l.Close()
	got, rep = kinds(t, path)
	if !rep.Intact() {
		t.Errorf("after reopen on an empty file: %v", rep.Broken)
	}
	want := []string{fmt.Sprint(lastN+1, ":open"), fmt.Sprint(lastN+2, ":pruned"), fmt.Sprint(lastN+3, ":d"), fmt.Sprint(lastN+4, ":close")}
	if diff := cmp.Diff(want, got[len(got)-4:]); diff != "" {
		t.Errorf("numbering after reopen (-want +got):\n%s", diff)
	}
}

// TestRetentionNeverSilent: lowering Keep prunes the extra files at Open,
// with a pruned record, and the log still verifies.
func TestRetentionNeverSilent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{MaxSize: 1000, Keep: 5, Sync: SyncNone})
	for i := 0; i < 30; i++ {
		mustAppend(t, l, rec("deny", int32(i), "r"))
	}
	l.Close()
	if _, err := os.Stat(path + ".5"); err != nil {
		t.Fatalf("want 5 rotated files: %v", err)
	}
	before, _ := kinds(t, path)
	l = mustOpen(t, path, Options{MaxSize: 1 << 20, Keep: 2, Sync: SyncNone})
	l.Close()
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Error("Keep 2 left path.3")
	}
	got, rep := kinds(t, path)
	if !rep.Intact() || rep.LastPrune == nil || rep.LastPrune.Files != 3 {
		t.Fatalf("after lowering Keep: %+v broken=%v pruned %+v", rep, rep.Broken, rep.LastPrune)
	}
	var first uint64
	fmt.Sscanf(before[0], "%d:", &first)
	if rep.LastPrune.FirstN != first || rep.LastPrune.LastN+1 != rep.FirstN {
		t.Errorf("pruned %+v; before n=%d.., now n=%d..", rep.LastPrune, first, rep.FirstN)
	}
	if !strings.HasSuffix(got[len(got)-1], ":close") {
		t.Errorf("records end %v", got[len(got)-3:])
	}
}

func TestOnNearLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var events []NearLimit
	opt := Options{MaxSize: 2000, Keep: 3, Sync: SyncNone, OnNearLimit: func(e NearLimit) { events = append(events, e) }}
	l := mustOpen(t, path, opt)
	capacity := int64(2000 * 4)
	appendUntil := func(cond func() bool) {
		t.Helper()
		for i := 0; i < 1000 && !cond(); i++ {
			mustAppend(t, l, rec("deny", int32(i), "r"))
		}
		if !cond() {
			t.Fatalf("condition not reached; events %+v", events)
		}
	}
	prunes := func() (p []NearLimit) {
		for _, e := range events {
			if e.Pruned != nil {
				p = append(p, e)
			}
		}
		return p
	}
	appendUntil(func() bool { return len(events) > 0 })
	e := events[0]
	if e.Pruned != nil || e.Capacity != capacity || e.Retained*5 < capacity*4 || e.Retained > capacity || e.Next == nil || e.Next.FirstN != 1 {
		t.Errorf("first event %+v next %+v", e, e.Next)
	}
	if _, err := os.Stat(path + ".3"); err != nil {
		t.Errorf("crossing 80%% of 4 files' capacity with fewer than 3 rotated files: %v", err)
	}
	// Then an event per prune, each saying what went, and at most one
	// crossing between two prunes.
	appendUntil(func() bool { return len(prunes()) >= 3 })
	p := prunes()
	for i, e := range p {
		if e.Pruned.Files != 1 || e.Err != nil || e.Next == nil || e.Next.FirstN != e.Pruned.LastN+1 {
			t.Errorf("prune %d: %+v pruned %+v next %+v", i, e, e.Pruned, e.Next)
		}
		if i > 0 && e.Pruned.FirstN != p[i-1].Pruned.LastN+1 {
			t.Errorf("pruned ranges %+v then %+v", p[i-1].Pruned, e.Pruned)
		}
	}
	if p[0].Pruned.FirstN != 1 {
		t.Errorf("first prune %+v, want from n=1", p[0].Pruned)
	}
	crossings := 0
	for _, e := range events {
		if e.Pruned != nil {
			crossings = 0
			continue
		}
		if crossings++; crossings > 1 {
			t.Errorf("two crossing events without a prune between: %+v", events)
		}
	}
	l.Close()
	if _, rep := kinds(t, path); !rep.Intact() || rep.Pruned != len(p) {
		t.Errorf("report %+v, %d prune events", rep, len(p))
	}
}

// TestConcurrentAppend: appends from many goroutines, through rotation
// and pruning, leave one intact chain.
func TestConcurrentAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var mu sync.Mutex
	prunes := 0
	l := mustOpen(t, path, Options{MaxSize: 4000, Keep: 3, Sync: SyncNone, OnNearLimit: func(e NearLimit) {
		mu.Lock()
		defer mu.Unlock()
		if e.Pruned != nil {
			prunes++
		}
	}})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := l.Append(rec("deny", int32(g*100+i), "r")); err != nil {
					t.Error(err)
					return
				}
				if i%20 == 0 {
					if err := l.AppendPolicy(fmt.Sprint("sha256:", g, i), uint64(i)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	l.Close()
	_, rep := kinds(t, path)
	if !rep.Intact() || !rep.Closed || rep.Pruned == 0 {
		t.Errorf("report %+v broken %v", rep, rep.Broken)
	}
	// Open, the decisions, the policy records, a pruned record per prune
	// event (older ones pruned in turn), close.
	if want := uint64(1 + 8*50 + 8*3 + prunes + 1); rep.LastN != want {
		t.Errorf("last n=%d, want %d (%d prune events)", rep.LastN, want, prunes)
	}
}

// TestOnNearLimitUnlocked: the callback may use the log (it is called
// without the log's lock).
func TestOnNearLimitUnlocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var l *Log
	calls := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		l, err = Open(path, Options{MaxSize: 600, Keep: 1, Sync: SyncNone, OnNearLimit: func(NearLimit) {
			calls++
			l.Head()
		}})
		if err != nil {
			t.Error(err)
			return
		}
		for i := 0; i < 20; i++ {
			if err := l.Append(rec("deny", int32(i), "r")); err != nil {
				t.Error(err)
			}
		}
		l.Close()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("deadlock: OnNearLimit called with the lock held")
	}
	if calls == 0 {
		t.Error("OnNearLimit never called")
	}
}

func TestHeadMatchesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{Sync: SyncNone})
	defer l.Close()
	for i := 0; i < 5; i++ {
		mustAppend(t, l, rec("deny", int32(i), "r"))
	}
	n, hash := l.Head()
	rep, err := Walk(path, WalkOptions{Expect: &Anchor{N: n, Hash: hash}}, nil)
	if err != nil || rep.Broken != nil || !rep.Expected || rep.LastN != n || rep.Head != hash {
		t.Errorf("live head n=%d %s: %+v %v", n, hash, rep, err)
	}
}

// TestUnchainedOldLog: a log written before the chain reads, verifies as
// unchained, and a reopen chains on from its last record.
func TestUnchainedOldLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var old bytes.Buffer
	for i := 1; i <= 3; i++ {
		fmt.Fprintf(&old, `{"n":%d,"time":"2024-01-01T00:00:00Z","verdict":"deny","rule":"r","reason":"x","policy_seq":1,"event":{"class":"file","op":"read","path":"/etc/shadow","subject":{"pid":5,"uid":1000,"gid":0}}}`+"\n", i)
	}
	os.WriteFile(path, old.Bytes(), 0o600)
	ns, _ := readAll(t, path, false)
	if diff := cmp.Diff([]uint64{1, 2, 3}, ns); diff != "" {
		t.Errorf("old records (-want +got):\n%s", diff)
	}
	rep, err := Verify(path)
	if err != nil || rep.Broken != nil || rep.Unchained != 3 || rep.Intact() {
		t.Errorf("old log: %+v %v", rep, err)
	}
	l := mustOpen(t, path, Options{})
	mustAppend(t, l, rec("deny", 4, "r"))
	l.Close()
	got, rep := kinds(t, path)
	if diff := cmp.Diff([]string{"1:d", "2:d", "3:d", "4:open", "5:d", "6:close"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if rep.Broken != nil || rep.Unchained != 3 {
		t.Errorf("upgraded log: %+v", rep)
	}
}

const (
	childEnv     = "GATEVISOR_AUDIT_CRASH_CHILD"
	childSyncEnv = "GATEVISOR_AUDIT_CRASH_SYNC"
)

// TestCrashDurability runs a child that appends records and acknowledges
// each one on stdout only after Append returned, kills it with SIGKILL in
// the middle of writing, and checks that every acknowledged record is in
// the file, that at most the final record is torn, and that the log
// verifies up to its last complete record.
func TestCrashDurability(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		crashChild()
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process; run without -short")
	}
	torn := 0
	const rounds = 23
	for round := 0; round < rounds; round++ {
		// After three rounds as in production, the child writes without
		// fsync (a process crash loses nothing from the page cache), so
		// that encoding and writing, not syncing, take its time and a kill
		// at a random moment more likely lands inside a write(2).
		sync := "every"
		if round >= 3 {
			sync = "none"
		}
		path := filepath.Join(t.TempDir(), "audit.log")
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashDurability$")
		cmd.Env = append(os.Environ(), childEnv+"="+path, childSyncEnv+"="+sync)
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
			if target := uint64(10 + round%3*15); acked >= target || sync == "none" && acked >= target/5 {
				break
			}
		}
		if sync == "none" {
			time.Sleep(time.Duration(rand.Int64N(int64(3 * time.Millisecond))))
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
		got, rep := kinds(t, path)
		if !rep.Intact() || rep.Bad != 0 || rep.Closed {
			t.Errorf("round %d: killed log: %+v broken %v", round, rep, rep.Broken)
		}
		for i, g := range got {
			if !strings.HasPrefix(g, strconv.Itoa(i+1)+":") {
				t.Fatalf("round %d: record %d is %s: lost or reordered", round, i+1, g)
			}
		}
		if rep.LastN < acked {
			t.Errorf("round %d: %d records on disk, %d acknowledged: lost an acknowledged record", round, rep.LastN, acked)
		}
		if rep.Torn != nil {
			torn++
			if rep.Torn.File != path || rep.Torn.Line != len(got)+1 {
				t.Errorf("round %d: torn line at %v, want the line after the %d records", round, rep.Torn, len(got))
			}
		}
		// The torn tail is repaired on open, and appending works.
		l := mustOpen(t, path, Options{})
		mustAppend(t, l, rec("deny", 1, "after"))
		l.Close()
		if _, rep2 := kinds(t, path); !rep2.Intact() || rep2.Torn != nil || !rep2.Closed || len(rep2.CutShort) != 1 {
			t.Errorf("round %d after repair: %+v", round, rep2)
		}
		t.Logf("round %d (sync %s): %d acknowledged, %d on disk, torn %v", round, sync, acked, rep.LastN, rep.Torn)
	}
	t.Logf("%d of %d rounds were killed mid-write", torn, rounds)
}

func crashChild() {
	opt := Options{}
	if os.Getenv(childSyncEnv) == "none" {
		opt.Sync = SyncNone
	}
	l, err := Open(os.Getenv(childEnv), opt)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	// Large records make it likely that the kill lands inside a write.
	big := strings.Repeat("x", 200<<10)
	if opt.Sync == SyncNone {
		big = strings.Repeat("x", 512<<10)
	}
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
		last := b[bytes.LastIndexByte(b, '\n')+1:]
		if len(last) > 0 && len(last) <= MaxRecord && st.Torn != 1 {
			t.Fatalf("unterminated input not reported torn: %+v", st)
		}
		if n := bytes.Count(b, []byte("\n")); st.Records+st.Chain+st.Bad != n+boolInt(len(last) > MaxRecord) {
			t.Fatalf("%+v for %d lines", st, n)
		}
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestCloseRotatesAndStaysLast: a close record whose rotation prunes old
// files still ends the log (the pruned record goes before it).
func TestCloseRotatesAndStaysLast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	// Every record is larger than MaxSize: each one starts a new file, so
	// the close record rotates too, and Keep 1 prunes on it.
	l := mustOpen(t, path, Options{MaxSize: 200, Keep: 1, Sync: SyncNone})
	for i := 0; i < 5; i++ {
		if err := l.Append(rec("deny", int32(i), "r")); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, rep := kinds(t, path)
	if !rep.Intact() || !rep.Closed || rep.Pruned == 0 {
		t.Fatalf("report %+v broken %v: want intact, closed, pruned", rep, rep.Broken)
	}
}

// TestAppendBatch: a batch is written in order with one chain, across
// rotation and pruning, and an aggregated record keeps its repeat.
func TestAppendBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{MaxSize: 1500, Keep: 2})
	var batch []*Record
	for i := 1; i <= 30; i++ {
		batch = append(batch, rec("deny", int32(i), "r"))
	}
	agg := rec("deny", 99, "flood")
	last := agg.Event
	last.Path = "/etc/passwd"
	agg.Repeat = &Repeat{Count: 1234, Until: agg.Time.Add(time.Second), Last: last}
	batch = append(batch, agg)
	if err := l.AppendBatch(batch); err != nil {
		t.Fatal(err)
	}
	for i, r := range batch[1:] {
		if r.N <= batch[i].N { // pruned records may come between
			t.Fatalf("record %d has n=%d after n=%d", i+1, r.N, batch[i].N)
		}
	}
	if err := l.AppendBatch(nil); err != nil {
		t.Fatal(err)
	}
	if err := l.AppendBatch([]*Record{{Kind: KindClose}}); err == nil {
		t.Fatal("AppendBatch took a chain record")
	}
	l.Close()
	got, rep := kinds(t, path)
	if !rep.Intact() || !rep.Closed || rep.Pruned == 0 {
		t.Fatalf("after batches across rotation: %+v broken=%v (%v)", rep, rep.Broken, got)
	}
	var found *Record
	if _, err := ReadFile(path, true, func(r *Record) error {
		if r.Repeat != nil {
			c := *r
			found = &c
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if found == nil || found.Repeat.Count != 1234 || found.Repeat.Last.Path != "/etc/passwd" || !found.Repeat.Until.Equal(agg.Repeat.Until) {
		t.Fatalf("aggregated record read back as %+v", found)
	}
}

// TestAppendBatchRollsBack: a batch that fails part-way leaves none of its
// records in the log; the chain goes on from the last durable record.
func TestAppendBatchRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, Options{})
	mustAppend(t, l, rec("deny", 1, "r"))
	n0, h0 := l.Head()
	huge := rec("deny", 3, "r")
	huge.Reason = strings.Repeat("x", MaxRecord)
	err := l.AppendBatch([]*Record{rec("deny", 2, "r"), huge, rec("deny", 4, "r")})
	if err == nil {
		t.Fatal("a batch with an oversized record was acknowledged")
	}
	if n, h := l.Head(); n != n0 || h != h0 {
		t.Fatalf("head moved from %d:%s to %d:%s after a failed batch", n0, h0, n, h)
	}
	mustAppend(t, l, rec("deny", 5, "r"))
	l.Close()
	ns, _ := readAll(t, path, false)
	if diff := cmp.Diff([]uint64{n0, n0 + 1}, ns); diff != "" {
		t.Errorf("decision records after a failed batch (-want +got):\n%s", diff)
	}
	if _, rep := kinds(t, path); !rep.Intact() {
		t.Errorf("chain broken after a failed batch: %v", rep.Broken)
	}
}
