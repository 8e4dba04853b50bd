package net

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
)

// TestFlowsReportsTable: an allowed flow with traffic both ways, a denied
// one and an unattributed one, newest first, each with its process (or
// why it has none), verdict, rule and frame counts.
func TestFlowsReportsTable(t *testing.T) {
	attr := &fakeAttr{subject: func(q Query) (event.Subject, error) {
		switch q.Local.Port() {
		case 1111:
			return event.Subject{PID: 42, Start: 9, Comm: "updater", Exe: "/usr/bin/updater", UID: 5, Labels: []string{"x"}}, nil
		case 3333:
			return event.Subject{}, ErrNotFound
		}
		return event.Subject{PID: 7, Comm: "telnet", Exe: "/bin/busybox"}, nil
	}}
	h := newHarnessWith(t, attr, Limits{})
	web := FlowKey{ProtoTCP, netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)}
	telnet := FlowKey{ProtoTCP, netip.AddrPortFrom(guestIP, 2222), netip.AddrPortFrom(remoteIP, 23)}
	ghost := FlowKey{ProtoUDP, netip.AddrPortFrom(guestIP, 3333), netip.AddrPortFrom(remoteIP, 53)}

	syn := tcpFrame(guestMAC, remoteMAC, web.Local, web.Remote, tcpSYN, 1, 0)
	h.g.Egress([][]byte{syn})
	get(t, h.toNet)
	<-h.recs
	synack := tcpFrame(remoteMAC, guestMAC, web.Remote, web.Local, tcpSYN|tcpACK, 9, 0)
	h.g.Ingress([][]byte{synack})
	get(t, h.toGuest)
	data := tcpFrame(guestMAC, remoteMAC, web.Local, web.Remote, tcpACK, 2, 100)
	h.g.Egress([][]byte{data})
	get(t, h.toNet)
	time.Sleep(2 * time.Millisecond)

	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, telnet.Local, telnet.Remote, tcpSYN, 1, 0)})
	get(t, h.toGuest) // its RST
	<-h.recs
	time.Sleep(2 * time.Millisecond)

	h.g.Egress([][]byte{udpFrame(ghost.Local, ghost.Remote, true)})
	<-h.recs // denied after the retries, unattributed

	got, total := h.g.Flows(10)
	if total != 3 || len(got) != 3 {
		t.Fatalf("Flows(10) = %d flows of %d, want 3 of 3", len(got), total)
	}
	for i, want := range []FlowKey{ghost, telnet, web} {
		if got[i].Key != want {
			t.Fatalf("flow %d is %v, want %v (newest first)", i, got[i].Key, want)
		}
	}
	g, d, w := got[0], got[1], got[2]
	if w.State != FlowAllowed || !w.Attributed || w.Subject.PID != 42 || w.Subject.Start != 9 || w.Subject.Comm != "updater" ||
		w.Subject.Exe != "/usr/bin/updater" || w.Subject.UID != 5 || w.Decision.Verdict != "allow" || w.Decision.Action != "forward" ||
		!w.Answered || w.Closed || w.Dir != event.DirOut || w.NoSubject != "" {
		t.Errorf("allowed flow %+v", w)
	}
	if diff := cmp.Diff([4]uint64{2, 1, uint64(len(syn) + len(data)), uint64(len(synack))},
		[4]uint64{w.FramesOut, w.FramesIn, w.BytesOut, w.BytesIn}); diff != "" {
		t.Errorf("allowed flow's frames out, in, bytes out, in (-want +got):\n%s", diff)
	}
	if w.Decided.Before(w.Created) || w.Last.Before(w.Decided) {
		t.Errorf("times: created %v decided %v last %v", w.Created, w.Decided, w.Last)
	}
	if d.State != FlowDenied || d.Decision.Rule != "r" || d.Decision.Action != "reset" || d.Subject.Comm != "telnet" || d.FramesOut != 1 || d.FramesIn != 0 {
		t.Errorf("denied flow %+v", d)
	}
	if g.Attributed || g.NoSubject != ErrNotFound.Error() || g.State != FlowDenied || g.Subject.PID != 0 || g.Decision.AttributeError != "" {
		t.Errorf("unattributed flow %+v", g)
	}
	// A copy: changing it changes nothing in the table.
	w.Subject.Labels[0] = "changed"
	if again, _ := h.g.Flows(10); again[2].Subject.Labels[0] != "x" {
		t.Error("Flows shares the subject's labels with the table")
	}

	// Bounded: the newest only, and the count of all.
	if got, total := h.g.Flows(2); total != 3 || len(got) != 2 || got[0].Key != ghost || got[1].Key != telnet {
		t.Errorf("Flows(2) = %v of %d", got, total)
	}
	if got, total := h.g.Flows(0); total != 3 || len(got) != 0 {
		t.Errorf("Flows(0) = %v of %d", got, total)
	}
}

// TestFlowsPending: a flow waiting for its attribution is reported as
// pending, with why it has no process yet, and its held frames counted.
func TestFlowsPending(t *testing.T) {
	attr := &fakeAttr{gate: make(chan struct{})}
	h := newHarnessWith(t, attr, Limits{})
	k := FlowKey{ProtoTCP, netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)}
	syn := tcpFrame(guestMAC, remoteMAC, k.Local, k.Remote, tcpSYN, 1, 0)
	h.g.Egress([][]byte{syn})
	h.g.Egress([][]byte{syn}) // a retransmission, held too
	got, total := h.g.Flows(5)
	if total != 1 || len(got) != 1 {
		t.Fatalf("Flows = %v of %d", got, total)
	}
	f := got[0]
	if f.State != FlowPending || f.Attributed || f.NoSubject != "waiting for attribution" || f.FramesOut != 2 ||
		f.Decision.Verdict != "" || !f.Decided.IsZero() {
		t.Errorf("pending flow %+v", f)
	}
	close(attr.gate)
	get(t, h.toNet)
	get(t, h.toNet)
	if got, _ := h.g.Flows(5); got[0].State != FlowAllowed || got[0].Subject.PID != 42 {
		t.Errorf("once decided: %+v", got[0])
	}
}

// TestFlowsOrderOfMany: of many flows, Flows keeps exactly the newest,
// whatever the map's order.
func TestFlowsOrderOfMany(t *testing.T) {
	var now atomic.Int64
	now.Store(1700000000)
	attr := &fakeAttr{gate: make(chan struct{})}
	g := New(Config{Decider: &fakeDecider{}, Attributor: attr, Now: func() time.Time { return time.Unix(now.Load(), 0) },
		ToNet: func([][]byte) {}, ToGuest: func([][]byte) {}})
	defer g.Close()
	defer close(attr.gate)
	for i := range 100 {
		now.Add(1)
		g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, uint16(10000+i)), netip.AddrPortFrom(remoteIP, 80), tcpSYN, 1, 0)})
	}
	ports := func(fs []FlowInfo) []uint16 {
		var out []uint16
		for _, f := range fs {
			out = append(out, f.Key.Local.Port())
		}
		return out
	}
	got, total := g.Flows(7)
	if diff := cmp.Diff([]uint16{10099, 10098, 10097, 10096, 10095, 10094, 10093}, ports(got)); diff != "" || total != 100 {
		t.Fatalf("Flows(7) of %d (-want +got):\n%s", total, diff)
	}
	// Flows removed (the newest, the oldest, one between) leave the
	// table's order of creation.
	g.mu.Lock()
	for _, p := range []uint16{10099, 10000, 10097} {
		g.remove(g.flows[FlowKey{ProtoTCP, netip.AddrPortFrom(guestIP, p), netip.AddrPortFrom(remoteIP, 80)}])
	}
	g.mu.Unlock()
	got, total = g.Flows(1000)
	want := []uint16{10098}
	for p := uint16(10096); p > 10000; p-- {
		want = append(want, p)
	}
	if diff := cmp.Diff(want, ports(got)); diff != "" || total != 97 {
		t.Fatalf("after removals, Flows of %d (-want +got):\n%s", total, diff)
	}
}

// BenchmarkFlows is one Flows(500) on a table of the default 65,536
// flows: about the time the data path waits for the gate's lock.
func BenchmarkFlows(b *testing.B) {
	g := New(Config{Decider: &fakeDecider{}, Attributor: &fakeAttr{}, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {}})
	defer g.Close()
	t0 := time.Now()
	g.mu.Lock()
	for i := range DefaultMaxFlows {
		k := FlowKey{ProtoTCP, netip.AddrPortFrom(guestIP, uint16(i)), netip.AddrPortFrom(remoteIP, 80)}
		f := &flow{key: k, dir: event.DirOut, state: stateAllowed, answered: true, last: t0.Add(time.Hour), decidedAt: t0,
			created: t0.Add(time.Duration(i) * time.Microsecond), ev: event.Event{Class: event.ClassNet, Subject: event.Subject{PID: int32(i), Comm: "nc"}},
			older: g.newest}
		if g.newest != nil {
			g.newest.newer = f
		}
		g.flows[k], g.newest = f, f
	}
	g.mu.Unlock()
	b.ResetTimer()
	for range b.N {
		if fs, total := g.Flows(500); len(fs) != 500 || total != DefaultMaxFlows {
			b.Fatalf("%d of %d", len(fs), total)
		}
	}
}
