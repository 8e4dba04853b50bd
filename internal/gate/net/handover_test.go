package net

import (
	"encoding/json"
	"net/netip"
	"testing"
)

// TestGateSaveRestore: an allowed connection and a denied one cross to a
// new gate through JSON; the allowed one goes on without a decision, the
// denied one is still refused, and a gate without them resets the
// allowed connection's next segment.
func TestGateSaveRestore(t *testing.T) {
	old := newHarness(t)
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)
	dl, dr := netip.AddrPortFrom(guestIP, 2222), netip.AddrPortFrom(remoteIP, 23)
	old.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 100, 0)})
	get(t, old.toNet)
	<-old.recs
	old.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, r, l, tcpSYN|tcpACK, 500, 0)})
	get(t, old.toGuest)
	old.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, dl, dr, tcpSYN, 1, 0)})
	get(t, old.toGuest) // the RST
	<-old.recs
	// A flow still pending is left behind.
	old.attr.gate = make(chan struct{})
	old.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 3333), r, tcpSYN, 1, 0)})
	s := old.g.Save()
	close(old.attr.gate)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Saved
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Flows) != 2 || back.Dropped != 1 || !back.Flows[0].Allowed || back.Flows[1].Allowed || back.Flows[0].Record.Subject.PID != 42 {
		t.Fatalf("saved %+v", back)
	}

	nw := newHarness(t)
	if err := nw.g.Restore(back, nw.dec.seq.Load()); err != nil {
		t.Fatal(err)
	}
	nw.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpACK, 101, 10)})
	get(t, nw.toNet)
	nw.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, r, l, tcpACK, 501, 10)})
	get(t, nw.toGuest)
	nw.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, dl, dr, tcpSYN, 1, 0)})
	get(t, nw.toGuest) // still reset, no new decision
	empty(t, nw.toNet)
	if n := nw.attr.calls.Load(); n != 0 {
		t.Fatalf("the new gate looked at the guest %d times for restored flows", n)
	}
	flows, n := nw.g.Flows(10)
	if n != 2 || flows[1].Subject.PID != 42 || flows[1].FramesOut != 2 || flows[1].FramesIn != 2 {
		t.Fatalf("flows after restore %d: %+v", n, flows)
	}
	if err := nw.g.Restore(back, 0); err == nil {
		t.Fatal("a second restore into the same gate was accepted")
	}

	fresh := newHarness(t)
	fresh.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpACK, 101, 10)})
	get(t, fresh.toGuest) // reset: no such flow
	empty(t, fresh.toNet)

	bad := back
	bad.Flows = append([]SavedFlow(nil), back.Flows...)
	bad.Flows[0].Key.Proto = 99
	if err := newHarness(t).g.Restore(bad, 0); err == nil {
		t.Fatal("a flow of protocol 99 was restored")
	}
}
