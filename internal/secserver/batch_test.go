package secserver

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
)

// batchSink is a memSink that also takes batches, and counts them.
type batchSink struct {
	memSink
	batches []int
}

func (b *batchSink) AppendBatch(rs []*audit.Record) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return b.fail
	}
	b.batches = append(b.batches, len(rs))
	for _, r := range rs {
		b.recs = append(b.recs, *r)
	}
	return nil
}

func (b *batchSink) records() []audit.Record {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]audit.Record(nil), b.recs...)
}

func reqs(evs ...*event.Event) []Request {
	var out []Request
	for _, ev := range evs {
		out = append(out, Request{Event: ev})
	}
	return out
}

// TestDecideBatchLikeDecide: a batch decides every event as Decide does,
// with one write for all its records.
func TestDecideBatchLikeDecide(t *testing.T) {
	evs := []*event.Event{openEv("/etc/passwd"), openEv("/etc/hosts"), openEv("/etc/motd"), openEv("/tmp/x"),
		openEv("/etc/passwd"), {Class: 99}}
	one := New(compile(t, basePolicy), Config{Audit: &memSink{}})
	var want []short
	for _, ev := range evs {
		want = append(want, shorten(one.Decide(ev)))
	}
	sink := &batchSink{}
	s := New(compile(t, basePolicy), Config{Audit: sink})
	var got []short
	for _, d := range s.DecideBatch(reqs(evs...)) {
		if d.Pending != nil {
			t.Fatal("a batch without aggregation returned a pending record")
		}
		got = append(got, shorten(d))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DecideBatch vs Decide (-want +got):\n%s", diff)
	}
	// The invalid event's fail-closed deny is written on its own; the four
	// policy records in one batch.
	if diff := cmp.Diff([]int{4}, sink.batches); diff != "" {
		t.Errorf("batches written (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"deny invalid-event", "deny passwd", "alert watch", "allow logged", "deny passwd"}, sink.rules()); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

func netEv(pid int32, port uint16) *event.Event {
	return &event.Event{Class: event.ClassNet, Op: "connect", Dir: event.DirOut, Proto: "tcp", Addr: netip.MustParseAddr("10.0.2.2"), Port: port,
		Subject: event.Subject{PID: pid, Start: 77, Exe: "/flood", Comm: "flood"}}
}

const netPolicy = `
net default: deny(ECONNREFUSED) audit
  web: portEq(80) allow
  logged: portEq(443) allow audit
`

// TestAggregation: beyond PerKey records of one key in a window, one
// aggregated record stands for the rest; its decisions wait for it.
func TestAggregation(t *testing.T) {
	sink := &batchSink{}
	s := New(compile(t, netPolicy), Config{Audit: sink, Aggregate: &Aggregation{Window: time.Hour, PerKey: 3, Total: 100}})
	var evs []*event.Event
	for i := range 10 {
		evs = append(evs, netEv(5, uint16(1000+i)))
	}
	evs = append(evs, netEv(6, 2000), netEv(5, 80), netEv(5, 443))
	ds := s.DecideBatch(reqs(evs...))
	var pending []*Pending
	for i, d := range ds {
		switch {
		case i < 3 || i >= 10:
			if d.Pending != nil {
				t.Errorf("decision %d (%s) pending; want its own record", i, d.Rule)
			}
		case d.Pending == nil || d.Verdict != Deny || d.Errno != 111:
			t.Errorf("decision %d = %+v; want a pending deny", i, d)
		default:
			pending = append(pending, d.Pending)
		}
	}
	for _, p := range pending[1:] {
		if p != pending[0] {
			t.Fatal("one key's aggregated decisions wait for different records")
		}
	}
	select {
	case <-pending[0].Done():
		t.Fatal("the aggregate was written before its window ended")
	default:
	}
	if got := len(sink.records()); got != 5 {
		t.Fatalf("%d records before the window ends; want 5 (3 of pid 5, pid 6's, the audited allow)", got)
	}
	s.Close()
	if err := pending[0].Wait(); err != nil {
		t.Fatal(err)
	}
	recs := sink.records()
	last := recs[len(recs)-1]
	if last.Repeat == nil || last.Repeat.Count != 7 || last.Event.Port != 1003 || last.Repeat.Last.Port != 1009 || last.Rule != "net default" {
		t.Fatalf("aggregated record %+v repeat %+v", last, last.Repeat)
	}
	if st := s.Stats(); st.AggregatedRecords != 1 || st.AggregatedDecisions != 7 {
		t.Errorf("stats %+v", st)
	}
	// After Close every record is written on its own.
	if d := s.DecideBatch(reqs(netEv(5, 3000)))[0]; d.Pending != nil || !d.Audited {
		t.Errorf("after Close: %+v", d)
	}
}

// TestAggregationWindows: the per-key budget starts over with each window,
// and the global budget aggregates every key once spent.
func TestAggregationWindows(t *testing.T) {
	sink := &batchSink{}
	s := New(compile(t, netPolicy), Config{Audit: sink, Aggregate: &Aggregation{Window: 20 * time.Millisecond, PerKey: 2, Total: 3}})
	defer s.Close()
	ds := s.DecideBatch(reqs(netEv(1, 1), netEv(2, 1), netEv(3, 1), netEv(4, 1), netEv(1, 2), netEv(1, 3)))
	var own int
	for _, d := range ds {
		if d.Pending == nil {
			own++
		} else if err := d.Pending.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if own != 3 {
		t.Errorf("%d records written on their own; want the global budget, 3", own)
	}
	ds = s.DecideBatch(reqs(netEv(1, 4)))
	if ds[0].Pending != nil {
		t.Error("a new window still aggregates")
	}
}

// TestAggregateFailureVoids: a lost aggregated record voids the allows it
// stood for; denies stay denies.
func TestAggregateFailureVoids(t *testing.T) {
	sink := &batchSink{}
	s := New(compile(t, netPolicy), Config{Audit: sink, Aggregate: &Aggregation{Window: time.Hour, PerKey: 1, Total: 100}})
	ds := s.DecideBatch(reqs(netEv(5, 443), netEv(5, 443), netEv(5, 1), netEv(5, 2)))
	sink.mu.Lock()
	sink.fail = errors.New("disk full")
	sink.mu.Unlock()
	s.Close()
	allow, deny := ds[1], ds[3]
	if allow.Pending == nil || deny.Pending == nil {
		t.Fatalf("not aggregated: %+v %+v", allow, deny)
	}
	err := allow.Pending.Wait()
	if err == nil {
		t.Fatal("a failed aggregate write reported success")
	}
	if f := Failed(allow, err); f.Allows() || f.Rule != RuleAuditFailure {
		t.Errorf("Failed(allow) = %+v", f)
	}
	if f := Failed(deny, deny.Pending.Wait()); f.Allows() || f.Rule != "net default" || f.Errno != 111 {
		t.Errorf("Failed(deny) = %+v", f)
	}
}

// TestRefusalAndPermissive: a gate's refusal is recorded and stays a deny
// in permissive mode; a policy deny is lifted after its record says so.
func TestRefusalAndPermissive(t *testing.T) {
	sink := &batchSink{}
	s := New(compile(t, netPolicy), Config{Audit: sink, Permissive: true})
	ds := s.DecideBatch([]Request{
		{Event: netEv(5, 1), Refuse: &Refusal{Rule: "gate-flow-rate", Reason: "over its rate", Errno: 111}},
		{Event: netEv(5, 2)},
		{Refuse: &Refusal{Rule: "gate-flow-rate", Errno: 111}},
	})
	if d := ds[0]; d.Allows() || d.Rule != "gate-flow-rate" || !d.Audited {
		t.Errorf("refusal = %+v", d)
	}
	if d := ds[1]; !d.Allows() || !d.Permissive || !d.Audited {
		t.Errorf("permissive deny = %+v", d)
	}
	if d := ds[2]; d.Allows() {
		t.Errorf("a refusal without an event = %+v", d)
	}
	recs := sink.records()
	if len(recs) != 2 || recs[0].Rule != "gate-flow-rate" || recs[0].Permissive || recs[1].Verdict != "deny" || !recs[1].Permissive {
		t.Errorf("records %+v", recs)
	}
}

// TestDecideBatchConcurrent: batches and single decisions from several
// goroutines, with aggregation, under -race.
func TestDecideBatchConcurrent(t *testing.T) {
	sink := &batchSink{}
	s := New(compile(t, netPolicy), Config{Audit: sink, Aggregate: &Aggregation{Window: 5 * time.Millisecond, PerKey: 2, Total: 10}})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				for _, d := range s.DecideBatch(reqs(netEv(int32(g), uint16(1000+i)), netEv(int32(g), 443))) {
					if d.Pending != nil {
						_ = d.Pending.Wait()
					}
				}
				s.Decide(netEv(int32(g), 80))
			}
		}()
	}
	wg.Wait()
	s.Close()
	var covered uint64
	for _, r := range sink.records() {
		covered++
		if r.Repeat != nil {
			covered += r.Repeat.Count - 1
		}
	}
	if covered != 4*200*2 {
		t.Errorf("records cover %d decisions; want %d", covered, 4*200*2)
	}
}
