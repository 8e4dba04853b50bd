package net

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

var (
	guestMAC  = [6]byte{0x52, 0x54, 0, 1, 2, 3}
	remoteMAC = [6]byte{2, 0x67, 0x76, 0, 2, 2}
	guestIP   = netip.MustParseAddr("10.0.2.15")
	remoteIP  = netip.MustParseAddr("10.0.2.2")
)

// tcpFrame builds an Ethernet/IPv4/TCP frame with valid checksums.
func tcpFrame(srcMAC, dstMAC [6]byte, src, dst netip.AddrPort, flags uint8, seq uint32, payload int) []byte {
	n := header.EthernetMinimumSize + header.IPv4MinimumSize + header.TCPMinimumSize + payload
	b := make([]byte, n)
	header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(srcMAC[:]), DstAddr: tcpip.LinkAddress(dstMAC[:]), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[14:])
	sa, da := tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(n - 14), TTL: 64, Protocol: ProtoTCP, SrcAddr: sa, DstAddr: da})
	ip.SetChecksum(^ip.CalculateChecksum())
	t := header.TCP(b[34:])
	t.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, DataOffset: 20, Flags: header.TCPFlags(flags), WindowSize: 65535})
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, sa, da, uint16(len(t)))
	t.SetChecksum(^checksum.Checksum(t, x))
	return b
}

func udpFrame(src, dst netip.AddrPort, fromGuest bool) []byte {
	b := make([]byte, 14+20+8+4)
	s, d := guestMAC, remoteMAC
	if !fromGuest {
		s, d = d, s
	}
	header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(s[:]), DstAddr: tcpip.LinkAddress(d[:]), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[14:])
	ip.Encode(&header.IPv4Fields{TotalLength: 32, TTL: 64, Protocol: ProtoUDP, SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	header.UDP(b[34:]).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: 12})
	return b
}

type fakeAttr struct {
	calls   atomic.Int32 // looks at the "guest" (batches)
	queries atomic.Int32
	missing atomic.Int32 // answer ErrNotFound this many times first
	// gate, when set, holds each batch until a value arrives.
	gate chan struct{}
	// subject, when set, attributes every query.
	subject func(Query) (event.Subject, error)
}

func (f *fakeAttr) AttributeBatch(_ context.Context, qs []Query, out []Attribution) {
	if f.gate != nil {
		<-f.gate
	}
	f.calls.Add(1)
	for i, q := range qs {
		f.queries.Add(1)
		out[i] = f.one(q)
	}
}

func (f *fakeAttr) one(q Query) Attribution {
	if f.missing.Add(-1) >= 0 {
		return Attribution{Err: ErrNotFound}
	}
	if f.subject != nil {
		s, err := f.subject(q)
		return Attribution{Subject: s, Err: err}
	}
	if q.Local.Port() == 1111 {
		return Attribution{Subject: event.Subject{PID: 42, Comm: "updater", Exe: "/usr/bin/updater"}}
	}
	return Attribution{Subject: event.Subject{PID: 7, Comm: "telnet", Exe: "/bin/busybox"}}
}

// fakeDecider allows updater, denies the rest (silently when port 9).
type fakeDecider struct {
	mu      sync.Mutex
	seen    []event.Event
	refused []secserver.Request
	seq     atomic.Uint64
	denyAll atomic.Bool
	// pending, when set, is returned with every decision.
	pending *secserver.Pending
}

func (d *fakeDecider) DecideBatch(reqs []secserver.Request) []secserver.Decision {
	out := make([]secserver.Decision, len(reqs))
	for i, r := range reqs {
		d.mu.Lock()
		if r.Refuse != nil {
			d.refused = append(d.refused, r)
			out[i] = secserver.Decision{Verdict: secserver.Deny, Errno: r.Refuse.Errno, Rule: r.Refuse.Rule, Reason: r.Refuse.Reason}
			d.mu.Unlock()
			continue
		}
		d.seen = append(d.seen, *r.Event)
		out[i].Pending = d.pending
		d.mu.Unlock()
		ev := r.Event
		switch {
		case ev.Subject.Exe == "/usr/bin/updater" && !d.denyAll.Load():
			out[i] = secserver.Decision{Verdict: secserver.Allow, Seq: d.seq.Load(), Pending: out[i].Pending}
		case ev.Port == 9:
			out[i] = secserver.Decision{Verdict: secserver.Deny, Errno: 110, Pending: out[i].Pending}
		default:
			out[i] = secserver.Decision{Verdict: secserver.Deny, Errno: 111, Rule: "r", Pending: out[i].Pending}
		}
	}
	return out
}

func (d *fakeDecider) refusals() []secserver.Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]secserver.Request(nil), d.refused...)
}

type harness struct {
	g              *Gate
	attr           *fakeAttr
	dec            *fakeDecider
	toNet, toGuest chan []byte
	recs           chan Record
}

func newHarness(t *testing.T) *harness { return newHarnessWith(t, &fakeAttr{}, Limits{}) }

func newHarnessWith(t *testing.T, attr *fakeAttr, lim Limits) *harness {
	h := &harness{attr: attr, dec: &fakeDecider{}, toNet: make(chan []byte, 4096), toGuest: make(chan []byte, 4096), recs: make(chan Record, 4096)}
	h.g = New(Config{Decider: h.dec, Attributor: h.attr, GuestMAC: guestMAC, Seq: h.dec.seq.Load, Limits: lim,
		ToNet: func(b [][]byte) {
			for _, f := range b {
				h.toNet <- f
			}
		},
		ToGuest: func(b [][]byte) {
			for _, f := range b {
				h.toGuest <- f
			}
		},
		OnDecision: func(r Record) { h.recs <- r },
		Retry:      []time.Duration{time.Millisecond, time.Millisecond}})
	t.Cleanup(h.g.Close)
	return h
}

func get(t *testing.T, ch chan []byte) []byte {
	t.Helper()
	select {
	case f := <-ch:
		return f
	case <-time.After(2 * time.Second):
		t.Fatal("no frame")
	}
	return nil
}

func empty(t *testing.T, ch chan []byte) {
	t.Helper()
	select {
	case <-ch:
		t.Fatal("unexpected frame")
	case <-time.After(30 * time.Millisecond):
	}
}

func TestGateAllowByIdentityThenFastPath(t *testing.T) {
	h := newHarness(t)
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 100, 0)})
	get(t, h.toNet)
	rec := <-h.recs
	if rec.Subject.PID != 42 || rec.Action != "forward" {
		t.Fatalf("record %+v", rec)
	}
	// SYN-ACK in, ACK and data out, FINs: no more attribution.
	h.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, r, l, tcpSYN|tcpACK, 500, 0)})
	get(t, h.toGuest)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpACK, 101, 100), tcpFrame(guestMAC, remoteMAC, l, r, tcpACK|tcpFIN, 201, 0)})
	get(t, h.toNet)
	get(t, h.toNet)
	h.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, r, l, tcpACK|tcpFIN, 501, 0)})
	get(t, h.toGuest)
	if n := h.attr.calls.Load(); n != 1 {
		t.Fatalf("attributed %d times", n)
	}
	st := h.g.Stats()
	if st.NewFlows != 1 || st.Allowed != 1 || st.Flows != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestGateReusedTupleIsDecidedAgain: a connection on the 5-tuple of a
// closed one may be another process's, bound to the same port: it must
// not ride on the old flow's verdict.
func TestGateReusedTupleIsDecidedAgain(t *testing.T) {
	h := newHarness(t)
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1, 0)})
	get(t, h.toNet)
	<-h.recs
	// A retransmitted SYN of the open connection is the same flow.
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1, 0)})
	get(t, h.toNet)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpACK|tcpFIN, 2, 0)})
	get(t, h.toNet)
	h.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, r, l, tcpACK|tcpFIN, 9, 0)})
	get(t, h.toGuest)
	if n := h.attr.calls.Load(); n != 1 {
		t.Fatalf("attributed %d times before the reuse", n)
	}
	// The same tuple again, now another process's: attributed, decided
	// (and here denied), reset.
	h.attr.missing.Store(0)
	h.dec.denyAll.Store(true)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 100, 0)})
	get(t, h.toGuest) // the RST
	empty(t, h.toNet)
	if rec := <-h.recs; rec.Action != "reset" || h.attr.calls.Load() != 2 {
		t.Fatalf("record %+v after %d attributions", rec, h.attr.calls.Load())
	}
	if st := h.g.Stats(); st.NewFlows != 2 || st.Denied != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGateDenyResets(t *testing.T) {
	h := newHarness(t)
	l, r := netip.AddrPortFrom(guestIP, 2222), netip.AddrPortFrom(remoteIP, 23)
	syn := tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1000, 0)
	h.g.Egress([][]byte{syn})
	rst := get(t, h.toGuest)
	var p Packet
	if err := Parse(rst, &p); err != nil || p.TCPFlags&tcpRST == 0 || p.Ack != 1001 || p.Src != remoteIP || p.DstPort != 2222 {
		t.Fatalf("RST %+v %v", p, err)
	}
	if VerifyTransport(&p) != nil {
		t.Fatal("RST checksum")
	}
	empty(t, h.toNet)
	// A retransmitted SYN gets the same answer without a new decision.
	h.g.Egress([][]byte{syn})
	get(t, h.toGuest)
	if n := h.attr.calls.Load(); n != 1 {
		t.Fatalf("attributed %d times", n)
	}
	// Silent drop: deny(ETIMEDOUT).
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, netip.AddrPortFrom(remoteIP, 9), tcpSYN, 1, 0)})
	empty(t, h.toGuest)
	empty(t, h.toNet)
}

func TestGateRetriesAttribution(t *testing.T) {
	h := newHarness(t)
	h.attr.missing.Store(2)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80), tcpSYN, 1, 0)})
	get(t, h.toNet)
	if rec := <-h.recs; rec.Attempts != 3 || rec.Subject.PID != 42 {
		t.Fatalf("record %+v", rec)
	}
}

func TestGateUDPAndInbound(t *testing.T) {
	h := newHarness(t)
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 53)
	h.g.Egress([][]byte{udpFrame(l, r, true)})
	get(t, h.toNet)
	h.g.Ingress([][]byte{udpFrame(r, l, false)}) // the reply: same flow
	get(t, h.toGuest)
	// An inbound SYN to a port the policy denies: RST back to the network.
	h.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, netip.AddrPortFrom(remoteIP, 5000), netip.AddrPortFrom(guestIP, 23), tcpSYN, 7, 0)})
	get(t, h.toNet)
	h.dec.mu.Lock()
	last := h.dec.seen[len(h.dec.seen)-1]
	h.dec.mu.Unlock()
	if last.Dir != event.DirIn || last.Op != "accept" || last.LocalPort != 23 || last.Port != 5000 {
		t.Fatalf("event %+v", last)
	}
}

func TestGateRefusesMalformed(t *testing.T) {
	h := newHarness(t)
	good := tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80), tcpSYN, 1, 0)
	frag := append([]byte(nil), good...)
	header.IPv4(frag[14:]).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	header.IPv4(frag[14:]).SetChecksum(0)
	header.IPv4(frag[14:]).SetChecksum(^header.IPv4(frag[14:]).CalculateChecksum())
	badsum := append([]byte(nil), good...)
	badsum[14+10] ^= 0xff
	badl4 := append([]byte(nil), good...)
	badl4[34+16] ^= 0xff
	badlen := append([]byte(nil), good...)
	badlen[14+2], badlen[14+3] = 0xff, 0xff
	spoof := append([]byte(nil), good...)
	spoof[11] ^= 1
	arp := func(sender [6]byte) []byte {
		b := make([]byte, 14+header.ARPSize)
		header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(guestMAC[:]), DstAddr: tcpip.LinkAddress(remoteMAC[:]), Type: header.ARPProtocolNumber})
		a := header.ARP(b[14:])
		a.SetIPv4OverEthernet()
		a.SetOp(header.ARPReply)
		copy(a.HardwareAddressSender(), sender[:])
		copy(a.ProtocolAddressSender(), []byte{10, 0, 2, 2}) // the gateway's address
		return b
	}
	arpSpoof := arp(remoteMAC)
	h.g.Egress([][]byte{{1, 2}, good[:20], good[:40], frag, badsum, badl4, badlen, spoof, arpSpoof})
	empty(t, h.toNet)
	st := h.g.Stats()
	if st.Dropped != 9 || st.NewFlows != 0 || st.DropReasons["spoofed ARP sender"] != 1 || st.DropReasons["spoofed source MAC"] != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The guest's own ARP passes.
	h.g.Egress([][]byte{arp(guestMAC)})
	get(t, h.toNet)
}

func TestGatePolicyReloadRevokes(t *testing.T) {
	h := newHarness(t)
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1, 0)})
	get(t, h.toNet)
	<-h.recs
	h.dec.denyAll.Store(true)
	h.dec.seq.Add(1)
	select {
	case rec := <-h.recs:
		if !rec.Revoked {
			t.Fatalf("record %+v", rec)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no revocation")
	}
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpACK, 2, 10)})
	get(t, h.toGuest) // reset
	empty(t, h.toNet)
}

func FuzzParse(f *testing.F) {
	f.Add(tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1), netip.AddrPortFrom(remoteIP, 2), tcpSYN, 1, 0))
	f.Add(udpFrame(netip.AddrPortFrom(guestIP, 1), netip.AddrPortFrom(remoteIP, 2), true))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if Parse(b, &p) == nil && p.Kind == KindIPv4 {
			_ = VerifyTransport(&p)
			if p.Proto == ProtoTCP {
				BuildRST(b, &p)
			}
		}
	})
}

// FuzzGate feeds arbitrary frames both ways through a gate.
func FuzzGate(f *testing.F) {
	f.Add(tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 2), tcpSYN, 1, 0), true)
	f.Add(udpFrame(netip.AddrPortFrom(remoteIP, 1), netip.AddrPortFrom(guestIP, 2), false), false)
	g := New(Config{Decider: &fakeDecider{}, Attributor: &fakeAttr{}, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {}, Retry: []time.Duration{}})
	f.Cleanup(g.Close)
	// The same with a source binding learned by DHCP from any server.
	bound := New(Config{Decider: &fakeDecider{}, Attributor: &fakeAttr{}, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {}, Retry: []time.Duration{},
		GuestMAC: guestMAC, Source: &SourceBinding{}})
	f.Cleanup(bound.Close)
	f.Fuzz(func(t *testing.T, b []byte, egress bool) {
		for _, g := range []*Gate{g, bound} {
			if egress {
				g.Egress([][]byte{b})
			} else {
				g.Ingress([][]byte{b})
			}
		}
	})
}

// BenchmarkFastPath is the gate's cost per frame of an established flow,
// in batches of 32 (what a busy NIC delivers).
func BenchmarkFastPath(b *testing.B) {
	g := New(Config{Decider: &fakeDecider{}, Attributor: &fakeAttr{}, GuestMAC: guestMAC, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {}})
	defer g.Close()
	done := make(chan struct{}, 1)
	g.cfg.OnDecision = func(Record) { done <- struct{}{} }
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)
	g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1, 0)})
	<-done
	batch := make([][]byte, 32)
	for i := range batch {
		batch[i] = tcpFrame(guestMAC, remoteMAC, l, r, tcpACK, uint32(i), 1448)
	}
	b.SetBytes(int64(len(batch[0])))
	b.ResetTimer()
	for i := 0; i < b.N; i += len(batch) {
		g.Egress(batch)
	}
}

// BenchmarkNewFlow is a flow start through the gate with an instant
// attributor and decider: the gate's own share of a new flow.
func BenchmarkNewFlow(b *testing.B) {
	done := make(chan struct{}, 1)
	g := New(Config{Decider: &fakeDecider{}, Attributor: &fakeAttr{}, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {},
		OnDecision: func(Record) { done <- struct{}{} }})
	defer g.Close()
	for i := 0; i < b.N; i++ {
		g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80), tcpSYN, 1, 0)})
		<-done
		g.mu.Lock()
		clear(g.flows)
		g.newest = nil
		g.mu.Unlock()
	}
}
