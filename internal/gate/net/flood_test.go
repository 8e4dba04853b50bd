package net

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

var (
	updater = event.Subject{PID: 42, Start: 1, Comm: "updater", Exe: "/usr/bin/updater"}
	flooder = event.Subject{PID: 7, Start: 2, Comm: "flood", Exe: "/tmp/flood"}
)

// byPort attributes local port 1111 to the updater and the rest to the flooder.
func byPort(q Query) (event.Subject, error) {
	if q.Local.Port() == 1111 || q.Dir == event.DirIn {
		return updater, nil
	}
	return flooder, nil
}

func synOut(lport, rport uint16) []byte {
	return tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, lport), netip.AddrPortFrom(remoteIP, rport), tcpSYN, 1, 0)
}

// drain reads n frames from ch.
func drain(t *testing.T, ch chan []byte, n int) {
	t.Helper()
	for range n {
		get(t, ch)
	}
}

// recsUntil reads records until n have come.
func recsUntil(t *testing.T, h *harness, n int) []Record {
	t.Helper()
	var out []Record
	for len(out) < n {
		select {
		case r := <-h.recs:
			out = append(out, r)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d records of %d", len(out), n)
		}
	}
	return out
}

// TestBatchAttribution: flows that queue while the guest is being looked
// at are attributed together, with one more look.
func TestBatchAttribution(t *testing.T) {
	attr := &fakeAttr{gate: make(chan struct{}), subject: byPort}
	h := newHarnessWith(t, attr, Limits{SubjectRate: 1000, SubjectBurst: 1000})
	h.g.Egress([][]byte{synOut(1111, 80)})
	time.Sleep(20 * time.Millisecond) // the first pass is holding the attributor
	var frames [][]byte
	for i := range 50 {
		frames = append(frames, synOut(uint16(2000+i), 80))
	}
	h.g.Egress(frames)
	attr.gate <- struct{}{}
	attr.gate <- struct{}{}
	recsUntil(t, h, 51)
	if c, q := attr.calls.Load(), attr.queries.Load(); c != 2 || q != 51 {
		t.Errorf("%d looks at the guest for %d queries; want 2 for 51", c, q)
	}
	if st := h.g.Stats(); st.Passes != 2 || st.Pending != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestFloodingSubjectThrottled: beyond its budget a subject's flows are
// refused by the gate (and recorded); another process's flow in the same
// pass is decided by the policy.
func TestFloodingSubjectThrottled(t *testing.T) {
	attr := &fakeAttr{gate: make(chan struct{}, 1), subject: byPort}
	h := newHarnessWith(t, attr, Limits{SubjectRate: 0.001, SubjectBurst: 5})
	var frames [][]byte
	for i := range 50 {
		frames = append(frames, synOut(uint16(2000+i), 80))
	}
	frames = append(frames, synOut(1111, 80))
	h.g.Egress(frames)
	attr.gate <- struct{}{}
	recs := recsUntil(t, h, 51)
	var rate, policy, allowed int
	for _, r := range recs {
		switch {
		case r.Rule == RuleFlowRate && r.Subject.PID == flooder.PID && r.Action == "reset":
			rate++
		case r.Subject.PID == updater.PID && r.Action == "forward":
			allowed++
		case r.Subject.PID == flooder.PID && r.Rule == "r":
			policy++
		default:
			t.Errorf("record %+v", r)
		}
	}
	if rate != 45 || policy != 5 || allowed != 1 {
		t.Errorf("%d refused over the rate, %d decided by the policy, %d allowed; want 45, 5, 1", rate, policy, allowed)
	}
	get(t, h.toNet) // the updater's SYN
	drain(t, h.toGuest, 50)
	if st := h.g.Stats(); st.RateLimited != 45 || st.ResetReasons[ResetDenied] != 50 {
		t.Errorf("stats %+v", st)
	}
	if n := len(h.dec.refusals()); n != 45 {
		t.Errorf("%d refusals reached the security server; want 45", n)
	}
}

// TestInboundBudgetPerPeer: one peer spending a listener's budget does not
// spend it for another peer.
func TestInboundBudgetPerPeer(t *testing.T) {
	h := newHarnessWith(t, &fakeAttr{subject: byPort}, Limits{SubjectRate: 0.001, SubjectBurst: 2})
	peerA, peerB := netip.MustParseAddr("10.0.2.20"), netip.MustParseAddr("10.0.2.21")
	in := func(peer netip.Addr, port uint16) []byte {
		return tcpFrame(remoteMAC, guestMAC, netip.AddrPortFrom(peer, port), netip.AddrPortFrom(guestIP, 80), tcpSYN, 1, 0)
	}
	var frames [][]byte
	for i := range 10 {
		frames = append(frames, in(peerA, uint16(3000+i)))
	}
	h.g.Ingress(frames)
	recsUntil(t, h, 10)
	h.g.Ingress([][]byte{in(peerB, 4000)})
	if r := recsUntil(t, h, 1)[0]; r.Action != "forward" {
		t.Errorf("peer B's connection: %+v", r)
	}
	if st := h.g.Stats(); st.RateLimited != 8 {
		t.Errorf("stats %+v", st)
	}
}

// TestSubjectFlowLimit: a subject holds at most its share of the table.
func TestSubjectFlowLimit(t *testing.T) {
	h := newHarnessWith(t, &fakeAttr{subject: func(Query) (event.Subject, error) { return updater, nil }}, Limits{SubjectFlows: 3})
	for i := range 4 {
		h.g.Egress([][]byte{synOut(uint16(2000+i), 80)})
		r := recsUntil(t, h, 1)[0]
		if want := i < 3; (r.Action == "forward") != want || !want && r.Rule != RuleFlowLimit {
			t.Errorf("flow %d: %+v", i, r)
		}
	}
}

// TestDeniedEntryNotRenewed: frames to a denied flow do not keep its
// entry alive.
func TestDeniedEntryNotRenewed(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	dec := &fakeDecider{}
	g := New(Config{Decider: dec, Attributor: &fakeAttr{subject: byPort}, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {}, Now: clock})
	defer g.Close()
	udp := udpFrame(netip.AddrPortFrom(guestIP, 5000), netip.AddrPortFrom(remoteIP, 6000), true)
	g.Egress([][]byte{udp})
	waitFor(t, func() bool { return g.Stats().Denied == 1 })
	for range 10 { // up to TimeoutDenied after the decision: still the denied entry
		advance(time.Second)
		g.Egress([][]byte{udpFrame(netip.AddrPortFrom(guestIP, 5000), netip.AddrPortFrom(remoteIP, 6000), true)})
	}
	advance(2 * time.Second) // renewed by those frames, it would live 8 s more
	waitFor(t, func() bool { return g.Stats().Flows == 0 })
	if st := g.Stats(); st.NewFlows != 1 || st.DropReasons[ReasonDenied] != 10 {
		t.Errorf("stats %+v", st)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// established opens an allowed, answered TCP flow of the updater.
func established(t *testing.T, h *harness, lport uint16) {
	t.Helper()
	l, r := netip.AddrPortFrom(guestIP, lport), netip.AddrPortFrom(remoteIP, 80)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1, 0)})
	get(t, h.toNet)
	h.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, r, l, tcpSYN|tcpACK, 1, 0)})
	get(t, h.toGuest)
	recsUntil(t, h, 1)
}

// TestEvictionPrefersDenied: a full table gives up denied flows, never an
// established one; with nothing to give up, the frame is dropped undecided
// and the drop recorded with its attributed subject.
func TestEvictionPrefersDenied(t *testing.T) {
	h := newHarnessWith(t, &fakeAttr{subject: func(q Query) (event.Subject, error) {
		if q.Remote.Port() == 80 {
			return updater, nil
		}
		return flooder, nil
	}}, Limits{MaxFlows: 3})
	established(t, h, 1000)
	established(t, h, 1001)
	h.g.Egress([][]byte{synOut(2000, 23)})
	get(t, h.toGuest) // reset
	recsUntil(t, h, 1)
	h.g.Egress([][]byte{synOut(2001, 23)}) // evicts 2000's denied entry
	get(t, h.toGuest)
	recsUntil(t, h, 1)
	if st := h.g.Stats(); st.Evicted != 1 || st.Flows != 3 {
		t.Fatalf("stats %+v", st)
	}
	// Both connections still pass.
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1000), netip.AddrPortFrom(remoteIP, 80), tcpACK, 2, 10),
		tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1001), netip.AddrPortFrom(remoteIP, 80), tcpACK, 2, 10)})
	drain(t, h.toNet, 2)

	// A third established flow takes the denied entry's place; then the
	// table holds only established flows.
	established(t, h, 1002)
	h.g.Egress([][]byte{synOut(2002, 23)})
	empty(t, h.toGuest)
	r := recsUntil(t, h, 1)[0]
	if !r.Undecided || r.Rule != RuleTableFull || r.Subject.PID != flooder.PID || r.Action != "drop" {
		t.Errorf("record of the undecided drop: %+v", r)
	}
	if st := h.g.Stats(); st.TableFull != 1 || st.DropReasons[ReasonTableFull] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestOverloadRecorded: a full decision queue drops a flow's first frame
// undecided, and the next pass records who sent it.
func TestOverloadRecorded(t *testing.T) {
	attr := &fakeAttr{gate: make(chan struct{}), subject: byPort}
	h := newHarnessWith(t, attr, Limits{MaxPending: 2})
	h.g.Egress([][]byte{synOut(2000, 80)})
	time.Sleep(20 * time.Millisecond) // the pass holds it
	h.g.Egress([][]byte{synOut(2001, 80), synOut(2002, 80), synOut(2003, 80)})
	if st := h.g.Stats(); st.Overload != 2 || st.DropReasons[ReasonOverload] != 2 || st.Pending != 2 {
		t.Fatalf("stats %+v", st)
	}
	close(attr.gate)
	var undecided int
	for _, r := range recsUntil(t, h, 4) {
		if r.Undecided {
			undecided++
			if r.Rule != RuleOverload || r.Subject.PID != flooder.PID {
				t.Errorf("undecided record %+v", r)
			}
		}
	}
	if undecided != 2 {
		t.Errorf("%d undecided records; want 2", undecided)
	}
}

// TestAggregatedDecisionWaitsForRecord: a decision whose audit record
// joined an aggregate takes effect only once that record is written.
func TestAggregatedDecisionWaitsForRecord(t *testing.T) {
	spec, err := policy.Parse("t.policy", []byte("net default: deny(ECONNREFUSED) audit\n"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	sink := &countSink{}
	sec := secserver.New(pol, secserver.Config{Audit: sink, Aggregate: &secserver.Aggregation{Window: time.Hour, PerKey: 1}})
	toGuest := make(chan []byte, 16)
	g := New(Config{Decider: sec, Attributor: &fakeAttr{subject: byPort}, ToNet: func([][]byte) {},
		ToGuest: func(b [][]byte) {
			for _, f := range b {
				toGuest <- f
			}
		}})
	defer g.Close()
	g.Egress([][]byte{synOut(2000, 80)})
	get(t, toGuest) // its own record: reset at once
	g.Egress([][]byte{synOut(2001, 80)})
	empty(t, toGuest)
	sec.Close() // writes the aggregate
	get(t, toGuest)
	if sink.n() != 2 {
		t.Errorf("%d records; want the first and one aggregate", sink.n())
	}
}

// countSink counts audit records.
type countSink struct {
	mu    sync.Mutex
	count int
}

func (s *countSink) Append(*audit.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count++
	return nil
}

func (s *countSink) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}
