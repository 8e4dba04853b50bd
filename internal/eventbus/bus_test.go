package eventbus

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// clock is a settable clock for the bus.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

var t0 = time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)

// testBus opens a bus on a fake clock at t0 whose seconds end when the
// test calls tick.
func testBus(t *testing.T, opt Options) (*Bus, *clock) {
	t.Helper()
	c := &clock{t: t0}
	opt.Now, opt.manualFlush = c.now, true
	if opt.VM == "" {
		opt.VM = "cam"
	}
	b, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b, c
}

// netDeny is a denied flow of process pid to remote.
func netDeny(pid int32, remote string, at time.Time) monitoring.Point {
	return monitoring.FromNet("cam", gatenet.Record{Time: at, Dir: event.DirOut, Proto: "tcp", Local: "10.0.2.15:40000",
		Remote: remote, Subject: event.Subject{PID: pid, Start: 7, Comm: "flood"}, Verdict: "deny", Action: "reset", Rule: "egress"})
}

// openDeny is a denied open of path by process pid.
func openDeny(pid int32, path string, at time.Time) monitoring.Point {
	ev := &event.Event{Class: event.ClassSyscall, Op: "openat", Path: path, Time: at, Subject: event.Subject{PID: pid, Start: 9, Comm: "cat"}}
	return monitoring.FromDecision("cam", ev, "deny", 13, "shadow", "", nil)
}

func idsPoint(comm string, at time.Time) monitoring.Point {
	return monitoring.FromIDS(ids.Event{Time: at, VM: "cam", Type: ids.EventProcessStart, Process: &linux.Task{PID: 4, Comm: comm}})
}

// history returns the points Stream writes for q, without following.
func history(t *testing.T, b *Bus, q Query) []monitoring.Point {
	t.Helper()
	var buf bytes.Buffer
	if err := b.Stream(context.Background(), &buf, q, func() {}); err != nil {
		t.Fatal(err)
	}
	return decode(t, buf.Bytes())
}

func decode(t *testing.T, b []byte) []monitoring.Point {
	t.Helper()
	var out []monitoring.Point
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 2*MaxLine)
	for sc.Scan() {
		var p monitoring.Point
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			t.Fatalf("line %q: %v", sc.Bytes(), err)
		}
		out = append(out, p)
	}
	return out
}

// fileLines returns the points in the log's files, oldest first.
func filePoints(t *testing.T, path string) []monitoring.Point {
	t.Helper()
	var out []monitoring.Point
	for k := MaxKeep; k >= 0; k-- {
		name := path
		if k > 0 {
			name = fmt.Sprintf("%s.%d", path, k)
		}
		b, err := os.ReadFile(name)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, decode(t, b)...)
	}
	return out
}

func seqs(ps []monitoring.Point) []uint64 {
	out := make([]uint64, len(ps))
	for i, p := range ps {
		out[i] = p.Seq
	}
	return out
}

func kinds(ps []monitoring.Point) map[monitoring.Kind]int {
	out := map[monitoring.Kind]int{}
	for _, p := range ps {
		out[p.Kind]++
	}
	return out
}

func TestAggregatesRepeatsPerKeyPerSecond(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	b, c := testBus(t, Options{Path: path})
	// 50 denied flows of one process in one second, each to another port.
	for i := range 50 {
		at := t0.Add(time.Duration(i) * 10 * time.Millisecond)
		c.set(at)
		b.Publish(netDeny(42, fmt.Sprintf("10.0.2.3:%d", 1000+i), at))
	}
	if got := filePoints(t, path); len(got) != DefaultPerKey {
		t.Fatalf("before the second ends: %d points written, want the first %d", len(got), DefaultPerKey)
	}
	c.set(t0.Add(time.Second))
	b.tick()
	got := filePoints(t, path)
	if len(got) != DefaultPerKey+1 {
		t.Fatalf("%d points, want %d and one aggregate", len(got), DefaultPerKey)
	}
	for i, p := range got[:DefaultPerKey] {
		if p.Repeat != nil || p.Net.Remote != fmt.Sprintf("10.0.2.3:%d", 1000+i) {
			t.Errorf("point %d: %+v, want flow %d written one by one", i, p, i)
		}
	}
	agg := got[DefaultPerKey]
	want := &monitoring.Repeat{Count: 40, First: t0.Add(100 * time.Millisecond), Last: t0.Add(490 * time.Millisecond),
		LastLocal: "10.0.2.15:40000", LastRemote: "10.0.2.3:1049"}
	if diff := cmp.Diff(want, agg.Repeat); diff != "" {
		t.Errorf("aggregate's repeat (-want +got):\n%s", diff)
	}
	if agg.Kind != "net-deny" || agg.Net.Remote != "10.0.2.3:1010" || !agg.Time.Equal(want.First) || agg.Seq != DefaultPerKey+1 {
		t.Errorf("aggregate: %+v %+v, want the first folded flow's fields", agg, agg.Net)
	}
	st := b.Stats()
	if st.Aggregated != 40 || st.Aggregates != 1 || st.Seq != 11 {
		t.Errorf("stats %+v", st)
	}
	// The next second starts afresh: its first decisions are written.
	c.set(t0.Add(1500 * time.Millisecond))
	b.Publish(netDeny(42, "10.0.2.3:2000", c.now()))
	if got := filePoints(t, path); len(got) != 12 || got[11].Repeat != nil {
		t.Errorf("next second: %d points, last %+v", len(got), got[len(got)-1])
	}
}

func TestAggregationKeys(t *testing.T) {
	b, c := testBus(t, Options{})
	// Per key: two processes, two paths of one process (same key), an
	// allow and a deny (different keys).
	for range 15 {
		b.Publish(openDeny(1, "/etc/shadow", t0))
		b.Publish(openDeny(1, "/etc/gshadow", t0))
		b.Publish(openDeny(2, "/etc/shadow", t0))
		p := openDeny(1, "/etc/shadow", t0)
		p.Decision.Verdict = "alert"
		b.Publish(p)
	}
	c.set(t0.Add(time.Second))
	b.tick()
	got := history(t, b, Query{})
	var individual, aggregates int
	counts := map[string]uint64{}
	for _, p := range got {
		if p.Repeat == nil {
			individual++
			continue
		}
		aggregates++
		counts[fmt.Sprintf("%d/%s", p.PID, p.Verdict)] = p.Repeat.Count
		if p.PID == 1 && p.Verdict == "deny" && p.Repeat.LastPath != "/etc/gshadow" {
			t.Errorf("last path %q, want the last decision's", p.Repeat.LastPath)
		}
	}
	// Keys: pid 1 deny (30 decisions), pid 2 deny (15), pid 1 alert (15).
	if individual != 30 || aggregates != 3 {
		t.Fatalf("%d individual, %d aggregates; want 30 and 3", individual, aggregates)
	}
	if diff := cmp.Diff(map[string]uint64{"1/deny": 20, "2/deny": 5, "1/alert": 5}, counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

func TestGlobalBudget(t *testing.T) {
	b, c := testBus(t, Options{})
	// One decision each from 1,000 processes in one second: the first 200
	// go one by one, then 100 keys get their own aggregate, then the rest
	// merge by kind, verdict and rule.
	for pid := range int32(1000) {
		b.Publish(netDeny(pid+1, "10.0.2.3:80", t0))
	}
	// IDS observations and notices are outside the budget.
	b.Publish(idsPoint("sshd", t0))
	b.Publish(monitoring.Notice("cam", monitoring.AuditNotice, "near"))
	c.set(t0.Add(time.Second))
	b.tick()
	got := history(t, b, Query{})
	var individual, own, merged int
	var folded uint64
	for _, p := range got {
		switch {
		case p.Net == nil:
		case p.Repeat == nil:
			individual++
		case p.Repeat.Merged:
			merged++
			folded += p.Repeat.Count
		default:
			own++
			folded += p.Repeat.Count
		}
	}
	if individual != DefaultBudget || own != DefaultMaxAggregates || merged != 1 || folded != 800 {
		t.Errorf("%d individual, %d own aggregates, %d merged, %d folded; want %d, %d, 1, 800",
			individual, own, merged, folded, DefaultBudget, DefaultMaxAggregates)
	}
	if k := kinds(got); k[monitoring.ProcessStart] != 1 || k[monitoring.AuditNotice] != 1 {
		t.Errorf("kinds %v: the IDS point and the notice are missing", k)
	}
}

func TestIDSAndNoticesNeverAggregated(t *testing.T) {
	b, c := testBus(t, Options{Budget: 5, PerKey: 1})
	for i := range 100 {
		b.Publish(netDeny(1, "10.0.2.3:80", t0))
		b.Publish(idsPoint(fmt.Sprint("p", i), t0))
		b.Publish(monitoring.Point{Time: t0, VM: "cam", Kind: monitoring.ScanError, Error: "x"})
		b.Publish(monitoring.Notice("cam", monitoring.AuditNotice, fmt.Sprint(i)))
	}
	c.set(t0.Add(time.Second))
	b.tick()
	got := history(t, b, Query{})
	k := kinds(got)
	if k[monitoring.ProcessStart] != 100 || k[monitoring.ScanError] != 100 || k[monitoring.AuditNotice] != 100 || k["net-deny"] != 2 {
		t.Errorf("kinds %v: want every IDS point and notice, and one decision plus one aggregate", k)
	}
	for _, p := range got {
		if p.Repeat != nil && p.Net == nil {
			t.Errorf("a %s point aggregated", p.Kind)
		}
	}
}

func TestCloseFlushesPending(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	b, _ := testBus(t, Options{Path: path})
	for range 25 {
		b.Publish(openDeny(3, "/etc/shadow", t0))
	}
	b.Close()
	b.Publish(openDeny(3, "/etc/shadow", t0)) // after Close: ignored
	got := filePoints(t, path)
	if len(got) != 11 || got[10].Repeat == nil || got[10].Repeat.Count != 15 {
		t.Fatalf("after Close: %d points, last %+v; want 10 and an aggregate of 15", len(got), got[len(got)-1])
	}
}

func TestTimerFlushes(t *testing.T) {
	// The real clock: the aggregate of a second comes out once it ends,
	// with no later point to push it.
	b, err := Open(Options{VM: "cam"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, w := ioPipe()
	go func() { _ = b.Stream(ctx, w, Query{Follow: true}, func() {}); w.Close() }()
	for range 20 {
		b.Publish(openDeny(5, "/x", time.Now()))
	}
	deadline := time.After(5 * time.Second)
	for n := 0; ; {
		select {
		case line := <-r:
			n++
			if strings.Contains(line, `"repeat"`) {
				if n > 20 {
					t.Fatalf("aggregate came as line %d", n)
				}
				return
			}
		case <-deadline:
			t.Fatal("no aggregate within 5s of its second")
		}
	}
}

// ioPipe is a writer whose lines arrive on a channel.
func ioPipe() (<-chan string, *lineWriter) {
	ch := make(chan string, 1024)
	return ch, &lineWriter{ch: ch}
}

type lineWriter struct {
	mu  sync.Mutex
	ch  chan string
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.ch <- string(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func (w *lineWriter) Close() {}

func TestHistoryKeepsCategories(t *testing.T) {
	// Every decision written one by one: a flood far past the history.
	b, c := testBus(t, Options{PerKey: 1 << 30, Budget: 1 << 30})
	b.Publish(idsPoint("early", t0))
	b.Publish(monitoring.Notice("cam", monitoring.AuditNotice, "early"))
	for i := range 5000 {
		c.set(t0.Add(time.Duration(i) * time.Millisecond))
		b.Publish(openDeny(1, "/etc/shadow", c.now()))
	}
	got := history(t, b, Query{})
	k := kinds(got)
	if k[monitoring.ProcessStart] != 1 || k[monitoring.AuditNotice] != 1 || k["syscall"] != historyBounds[monitoring.CategoryDecision].lines {
		t.Fatalf("history kinds %v", k)
	}
	if got[0].Kind != monitoring.ProcessStart || got[0].Seq != 1 || got[1].Seq != 2 {
		t.Errorf("history starts %+v %+v: want the early points first, by seq", got[0], got[1])
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Fatalf("history out of order at %d: %d after %d", i, got[i].Seq, got[i-1].Seq)
		}
	}
	if got[len(got)-1].Seq != 5002 {
		t.Errorf("last seq %d, want 5002", got[len(got)-1].Seq)
	}
}

func TestRingBytes(t *testing.T) {
	r := ring{max: 10, maxBytes: 100}
	for i := range 30 {
		r.push(entry{seq: uint64(i), line: make([]byte, 30)})
	}
	got := r.appendTo(nil)
	if len(got) != 3 || got[0].seq != 27 || r.bytes != 90 {
		t.Fatalf("ring kept %d entries from %d, %d bytes; want the last 3, 90 bytes", len(got), got[0].seq, r.bytes)
	}
	// A line larger than the ring's bytes is kept alone.
	r.push(entry{seq: 99, line: make([]byte, 500)})
	if got := r.appendTo(nil); len(got) != 1 || got[0].seq != 99 {
		t.Fatalf("ring %v", got)
	}
}

func TestSeqGoesOnAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	b, _ := testBus(t, Options{Path: path})
	for range 3 {
		b.Publish(idsPoint("a", t0))
	}
	b.Close()
	// A crash left a torn line.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"time":"2026-`)
	f.Close()
	b, _ = testBus(t, Options{Path: path})
	b.Publish(idsPoint("b", t0))
	b.Close()
	var seqsInFile []uint64
	data, _ := os.ReadFile(path)
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		if s, ok := parseSeq(l); ok {
			seqsInFile = append(seqsInFile, s)
		}
	}
	if diff := cmp.Diff([]uint64{1, 2, 3, 4}, seqsInFile); diff != "" {
		t.Errorf("seqs (-want +got):\n%s", diff)
	}
	if !bytes.Contains(data, []byte("{\"time\":\"2026-\n{")) {
		t.Errorf("the torn line was not ended before the next one:\n%s", data)
	}
}

// TestConcurrentPublishFollowClose: publishers, followers and the timer
// run at once (go test -race); every follower sees increasing seqs, and
// Close ends every stream.
func TestConcurrentPublishFollowClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	b, err := Open(Options{VM: "cam", Path: path, MaxSize: MinMaxSize, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var followers sync.WaitGroup
	for range 3 {
		r, w := ioPipe()
		followers.Add(1)
		go func() {
			defer followers.Done()
			_ = b.Stream(ctx, w, Query{Follow: true}, func() {})
			close(w.ch)
		}()
		go func() {
			var last uint64
			for line := range r {
				s, ok := parseSeq([]byte(line))
				if !ok || s <= last {
					t.Errorf("follower got seq %d after %d", s, last)
					return
				}
				last = s
			}
		}()
	}
	var pubs sync.WaitGroup
	for g := range 4 {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := range 2000 {
				switch i % 50 {
				case 0:
					b.Publish(idsPoint("p", time.Now()))
				case 1:
					var buf bytes.Buffer
					_ = b.Stream(ctx, &buf, Query{Limit: 5}, func() {})
				default:
					b.Publish(netDeny(int32(g), "10.0.2.3:80", time.Now()))
				}
			}
		}()
	}
	pubs.Wait()
	b.Close()
	followers.Wait()
	if st := b.Stats(); st.WriteErrors != 0 || st.Seq == 0 {
		t.Errorf("stats %+v", st)
	}
}
