package eventbus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// sizes returns the bytes of path and of each rotated file, and how many
// rotated files there are.
func sizes(t *testing.T, path string) (total int64, each []int64, rotated int) {
	t.Helper()
	for k := 0; k <= maxRotated+1; k++ {
		name := path
		if k > 0 {
			name = fmt.Sprintf("%s.%d", path, k)
		}
		fi, err := os.Lstat(name)
		if err != nil {
			continue
		}
		if k > 0 {
			rotated = max(rotated, k)
		}
		total += fi.Size()
		each = append(each, fi.Size())
	}
	return total, each, rotated
}

func TestRotationBoundsTheFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	const maxSize, keep = MinMaxSize, 3
	// No aggregation: every point is a line; each names a long path the
	// guest chose.
	b, _ := testBus(t, Options{Path: path, MaxSize: maxSize, Keep: keep, PerKey: 1 << 30, Budget: 1 << 30})
	long := "/" + strings.Repeat("\x1b[2J", 500)
	const n = 5000
	for i := range n {
		b.Publish(openDeny(int32(i%7), long, t0))
	}
	total, each, rotated := sizes(t, path)
	if total > maxSize*(keep+1) {
		t.Errorf("%d bytes in the files, more than %d × %d", total, maxSize, keep+1)
	}
	for i, s := range each {
		if s > maxSize {
			t.Errorf("file %d holds %d bytes, over %d", i, s, maxSize)
		}
	}
	if rotated != keep {
		t.Errorf("%d rotated files, want %d", rotated, keep)
	}
	st := b.Stats()
	if st.WriteErrors != 0 || st.Rotations == 0 || st.Seq != n {
		t.Errorf("stats %+v", st)
	}
	// What is kept is the newest points, numbered without a gap.
	got := seqs(filePoints(t, path))
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("seqs in the files jump from %d to %d", got[i-1], got[i])
		}
	}
	if got[len(got)-1] != n {
		t.Errorf("last seq in the files %d, want %d", got[len(got)-1], n)
	}
}

func TestOpenPrunesBeyondKeep(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.jsonl")
	for k := 1; k <= 6; k++ {
		line := fmt.Sprintf(`{"time":"2026-01-01T00:00:00Z","vm":"cam","type":"audit","seq":%d}`+"\n", 10-k)
		if err := os.WriteFile(fmt.Sprintf("%s.%d", path, k), []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := testBus(t, Options{Path: path, Keep: 2})
	if _, _, rotated := sizes(t, path); rotated != 2 {
		t.Errorf("%d rotated files after opening with keep 2", rotated)
	}
	// path is empty: the numbering goes on from events.jsonl.1.
	b.Publish(idsPoint("x", t0))
	if st := b.Stats(); st.Seq != 10 {
		t.Errorf("seq %d, want 10 (after 9 in events.jsonl.1)", st.Seq)
	}
}

func TestUnsafeFilesRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
		want  string
	}{
		{"symlink", func(t *testing.T, path string) {
			must(t, os.WriteFile(path+".victim", nil, 0o600))
			must(t, os.Symlink(path+".victim", path))
		}, "symbolic link"},
		{"writable by others", func(t *testing.T, path string) {
			must(t, os.WriteFile(path, nil, 0o600))
			must(t, os.Chmod(path, 0o666))
		}, "writable by group or others"},
		{"another user's", func(t *testing.T, path string) {
			if os.Geteuid() != 0 {
				t.Skip("chown needs root: run the test as root to cover files of another user")
			}
			must(t, os.WriteFile(path, nil, 0o600))
			must(t, os.Chown(path, 12345, 12345))
		}, "belongs to uid 12345"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "events.jsonl")
			tc.setup(t, path)
			_, err := Open(Options{Path: path})
			if !errors.Is(err, safefile.ErrUnsafe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want a refusal naming %q", err, tc.want)
			}
		})
		t.Run(tc.name+" rotated, paging", func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "events.jsonl")
			b, _ := testBus(t, Options{Path: path})
			b.Publish(idsPoint("x", t0))
			tc.setup(t, path+".1")
			b.mu.Lock()
			b.log.rotated = 1
			b.mu.Unlock()
			var out bytes.Buffer
			err := b.Stream(context.Background(), &out, Query{Limit: 10}, func() {})
			if !errors.Is(err, safefile.ErrUnsafe) || !strings.Contains(err.Error(), tc.want) || out.Len() != 0 {
				t.Fatalf("Stream: %v, %q; want a refusal naming %q and nothing written", err, out.String(), tc.want)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestWriteErrorsAreCountedAndTold(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	var logged []string
	b, c := testBus(t, Options{Path: path, Logf: func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) }})
	b.Publish(idsPoint("before", t0))
	// The file breaks under the bus (a full disk, an I/O error).
	b.mu.Lock()
	b.log.f.Close()
	b.mu.Unlock()
	for i := range 5 {
		b.Publish(idsPoint(fmt.Sprint("lost", i), t0))
	}
	st := b.Stats()
	if st.WriteErrors != 6 || !strings.Contains(st.LastError, "closed") {
		t.Errorf("stats %+v: want 5 points and the notice counted", st)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], "not written") {
		t.Errorf("monitor log %q: want one line", logged)
	}
	got := history(t, b, Query{})
	k := kinds(got)
	if k[monitoring.ProcessStart] != 6 || k[monitoring.EventsNotice] != 1 {
		t.Fatalf("history %v: want every point and one notice", k)
	}
	// The notice comes after the point whose write failed.
	if got[1].Seq != 2 || got[2].Kind != monitoring.EventsNotice {
		t.Errorf("history order: %+v", seqs(got))
	}
	// A minute later the failure is told again.
	c.set(t0.Add(2 * time.Minute))
	b.Publish(idsPoint("later", c.now()))
	if k := kinds(history(t, b, Query{})); k[monitoring.EventsNotice] != 2 {
		t.Errorf("after a minute: %v", k)
	}
}

func TestFailedRotationDoesNotGrowTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	b, c := testBus(t, Options{Path: path, MaxSize: MinMaxSize, Keep: 1, PerKey: 1 << 30, Budget: 1 << 30})
	// events.jsonl.1 is a directory that is not empty: retention cannot
	// delete it, so rotation cannot make room.
	must(t, os.MkdirAll(filepath.Join(path+".1", "x"), 0o700))
	for range 1000 {
		b.Publish(openDeny(1, strings.Repeat("a", 500), t0))
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Size() > MinMaxSize {
		t.Fatalf("events.jsonl: %v, %v; want at most %d bytes", fi, err, MinMaxSize)
	}
	st := b.Stats()
	if st.WriteErrors == 0 || !strings.Contains(st.LastError, "rotate") {
		t.Fatalf("stats %+v: want the failed rotations counted", st)
	}
	// Once the obstacle is gone, writing resumes (after the retry delay).
	must(t, os.RemoveAll(path+".1"))
	c.set(t0.Add(2 * time.Second))
	b.Publish(idsPoint("again", c.now()))
	if got := history(t, b, Query{Limit: 1}); len(got) != 1 || got[0].Kind != monitoring.ProcessStart {
		t.Fatalf("after recovery the file's last point is %+v", got)
	}
}

// floodFiles writes n IDS points into a log that rotates every ~40 points.
func floodFiles(t *testing.T, n int) (*Bus, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "events.jsonl")
	b, _ := testBus(t, Options{Path: path, MaxSize: MinMaxSize, Keep: 5})
	comm := strings.Repeat("c", 1500)
	for i := range n {
		b.Publish(idsPoint(fmt.Sprint(i, comm), t0))
	}
	if _, _, r := sizes(t, path); r < 1 {
		t.Fatalf("only %d rotated files", r)
	}
	return b, path
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func TestPagingAcrossRotation(t *testing.T) {
	b, path := floodFiles(t, 300)
	kept := seqs(filePoints(t, path))
	oldest := kept[0]
	if oldest < 2 || oldest > 140 {
		t.Fatalf("the oldest kept is %d: want some rotated away, and 140 to 300 kept", oldest)
	}
	for _, tc := range []struct {
		name string
		q    Query
		want []uint64
	}{
		{"limit alone: the last N", Query{Limit: 5}, seqRange(296, 300)},
		{"before, across files", Query{Before: 250, Limit: 100}, seqRange(150, 249)},
		{"before, default limit", Query{Before: 251}, seqRange(151, 250)},
		{"before the oldest kept", Query{Before: oldest + 2, Limit: 10}, seqRange(oldest, oldest+1)},
		{"before nothing kept", Query{Before: oldest, Limit: 10}, nil},
		{"after, across files", Query{HasAfter: true, After: 200, Limit: 60}, seqRange(201, 260)},
		{"after and before", Query{HasAfter: true, After: 200, Before: 205}, seqRange(201, 204)},
		{"after 0: from the oldest kept", Query{HasAfter: true, Limit: 3}, seqRange(oldest, oldest+2)},
		{"after, older than kept", Query{HasAfter: true, After: oldest - 1, Limit: 2}, seqRange(oldest, oldest+1)},
		{"after the last", Query{HasAfter: true, After: 300}, nil},
		{"before past the end", Query{Before: 1 << 40, Limit: 2}, seqRange(299, 300)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := seqs(history(t, b, tc.q))
			if len(got) == 0 {
				got = nil
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("seqs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPagingWithoutFile(t *testing.T) {
	b, _ := testBus(t, Options{})
	for i := range 50 {
		b.Publish(idsPoint(fmt.Sprint(i), t0))
	}
	for _, tc := range []struct {
		q    Query
		want []uint64
	}{
		{Query{Limit: 3}, seqRange(48, 50)},
		{Query{Before: 10, Limit: 3}, seqRange(7, 9)},
		{Query{HasAfter: true, After: 10, Limit: 3}, seqRange(11, 13)},
	} {
		if diff := cmp.Diff(tc.want, seqs(history(t, b, tc.q))); diff != "" {
			t.Errorf("%+v: seqs (-want +got):\n%s", tc.q, diff)
		}
	}
}

func TestFollowAfterMissesNothing(t *testing.T) {
	b, _ := floodFiles(t, 120)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, w := ioPipe()
	done := make(chan error, 1)
	go func() { done <- b.Stream(ctx, w, Query{Follow: true, HasAfter: true, After: 100}, func() {}) }()
	// New points while the backlog is read and after.
	for i := range 30 {
		b.Publish(idsPoint(fmt.Sprint("new", i), t0))
	}
	var got []uint64
	for len(got) < 50 {
		select {
		case line := <-r:
			s, ok := parseSeq([]byte(line))
			if !ok {
				t.Fatalf("line %q", line)
			}
			got = append(got, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("got %v", got)
		}
	}
	if diff := cmp.Diff(seqRange(101, 150), got); diff != "" {
		t.Errorf("seqs (-want +got):\n%s", diff)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLimitFollowIsTail(t *testing.T) {
	b, _ := floodFiles(t, 60)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, w := ioPipe()
	go func() { _ = b.Stream(ctx, w, Query{Follow: true, Limit: 2}, func() {}) }()
	var got []uint64
	for len(got) < 3 {
		select {
		case line := <-r:
			s, _ := parseSeq([]byte(line))
			got = append(got, s)
			if len(got) == 2 {
				b.Publish(idsPoint("new", t0)) // once the backlog is out
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("got %v", got)
		}
	}
	if diff := cmp.Diff([]uint64{59, 60, 61}, got); diff != "" {
		t.Errorf("seqs (-want +got):\n%s", diff)
	}
}
