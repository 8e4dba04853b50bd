package net

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gatevisor/gatevisor/internal/dhcpwire"
	"github.com/gatevisor/gatevisor/internal/vnet"
)

// dhcpRequest is a client's DHCPDISCOVER (1) or DHCPREQUEST (3) payload.
func dhcpRequest(mac [6]byte, typ byte, requested netip.Addr) []byte {
	b := make([]byte, dhcpwire.FixedLen, dhcpwire.FixedLen+16)
	b[0], b[1], b[2] = 1, 1, 6
	copy(b[4:8], []byte{1, 2, 3, 4})
	copy(b[28:34], mac[:])
	b = binary.BigEndian.AppendUint32(b, dhcpwire.Magic)
	b = append(b, 53, 1, typ)
	if requested.IsValid() {
		a := requested.As4()
		b = append(b, 50, 4, a[0], a[1], a[2], a[3])
	}
	return append(b, 255)
}

// dhcpReplyFrame is what the isolated network's DHCP server (vnet) answers
// to the client mac's message typ; nil if it does not answer.
func dhcpReplyFrame(d *vnet.DHCPServer, mac [6]byte, typ byte, requested netip.Addr) []byte {
	req := vnet.BuildUDP(mac, vnet.Broadcast, netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"), dhcpRequest(mac, typ, requested))
	return vnet.DHCPReplyFrame(d, vnet.ServicesMAC, req)
}

func arpFrame(mac [6]byte, senderIP netip.Addr) []byte {
	b := make([]byte, 14+header.ARPSize)
	header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(mac[:]), DstAddr: tcpip.LinkAddress(vnet.Broadcast[:]), Type: header.ARPProtocolNumber})
	a := header.ARP(b[14:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), mac[:])
	s := senderIP.As4()
	copy(a.ProtocolAddressSender(), s[:])
	copy(a.ProtocolAddressTarget(), []byte{10, 0, 2, 2})
	return b
}

// notes collects a gate's Logf lines.
type notes struct {
	mu    sync.Mutex
	lines []string
}

func (n *notes) logf(format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lines = append(n.lines, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (n *notes) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.lines, "\n")
}

// sourceHarness is a harness whose gate binds the guest's address: by
// DHCP from the isolated network's server, or to static addresses.
func sourceHarness(t *testing.T, static ...netip.Addr) (*harness, *notes) {
	h := newHarness(t)
	h.g.Close()
	n := &notes{}
	cfg := h.g.cfg
	cfg.Source = &SourceBinding{Static: static, DHCPServer: vnet.GatewayAddr, DHCPServerMAC: vnet.ServicesMAC}
	cfg.Logf = n.logf
	h.g = New(cfg)
	t.Cleanup(h.g.Close)
	return h, n
}

func drops(h *harness, reason string) uint64 { return h.g.Stats().DropReasons[reason] }

func TestSourceBindingDHCP(t *testing.T) {
	h, log := sourceHarness(t)
	srv := &vnet.DHCPServer{Server: vnet.GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: guestIP, Last: vnet.LastLease}
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)
	syn := tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1, 0)

	// Before a lease, only DHCP from 0.0.0.0 and ARP probes leave.
	h.g.Egress([][]byte{syn})
	empty(t, h.toNet)
	if n := drops(h, ReasonUnbound); n != 1 {
		t.Fatalf("unbound drops %d; stats %+v", n, h.g.Stats())
	}
	if !strings.Contains(log.String(), "no address is bound") {
		t.Fatalf("log %q", log)
	}
	discover := udpFrame(netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"), true)
	toServer := udpFrame(netip.MustParseAddrPort("0.0.0.0:68"), netip.AddrPortFrom(vnet.GatewayAddr, 67), true)
	notDHCP := udpFrame(netip.MustParseAddrPort("0.0.0.0:68"), netip.AddrPortFrom(vnet.UpdateAddr, 67), true)
	wrongPort := udpFrame(netip.MustParseAddrPort("0.0.0.0:1000"), netip.MustParseAddrPort("255.255.255.255:67"), true)
	h.g.Egress([][]byte{discover, toServer, notDHCP, wrongPort, arpFrame(guestMAC, netip.IPv4Unspecified()), arpFrame(guestMAC, guestIP)})
	get(t, h.toNet) // the ARP probe
	st := h.g.Stats()
	if st.NewFlows != 2 || st.DropReasons[ReasonUnbound] != 4 {
		t.Fatalf("stats %+v", st)
	}

	// Replies that must not bind: an OFFER, an ACK for another MAC, from
	// another address or MAC, or with a bad checksum.
	offer := dhcpReplyFrame(srv, guestMAC, 1, netip.Addr{})
	other := dhcpReplyFrame(srv, [6]byte{0x52, 0x54, 0, 9, 9, 9}, 3, netip.Addr{})
	ack := dhcpReplyFrame(srv, guestMAC, 3, guestIP)
	if offer == nil || other == nil || ack == nil {
		t.Fatal("the DHCP server did not answer")
	}
	payload := ack[14+20+8:]
	bcast := netip.MustParseAddrPort("255.255.255.255:68")
	fromIP := vnet.BuildUDP(vnet.ServicesMAC, vnet.Broadcast, netip.AddrPortFrom(vnet.UpdateAddr, 67), bcast, payload)
	fromMAC := vnet.BuildUDP(vnet.MAC{2, 0x66, 0x66, 0x66, 0x66, 0x66}, vnet.Broadcast, netip.AddrPortFrom(vnet.GatewayAddr, 67), bcast, payload)
	if _, ok := parseReply(t, fromIP); !ok {
		t.Fatal("the forged ACK does not parse")
	}
	badSum := append([]byte(nil), ack...)
	badSum[len(badSum)-2] ^= 0xff
	for name, f := range map[string][]byte{"offer": offer, "other MAC": other, "other server address": fromIP, "other server MAC": fromMAC, "bad checksum": badSum} {
		h.g.Ingress([][]byte{f})
		if b := h.g.BoundAddrs(); b != nil {
			t.Fatalf("%s bound %v", name, b)
		}
	}

	// The ACK binds; then the lease works and nothing else does.
	h.g.Ingress([][]byte{ack})
	if b := h.g.BoundAddrs(); len(b) != 1 || b[0] != guestIP {
		t.Fatalf("bound %v after the ACK", b)
	}
	if !strings.Contains(log.String(), "the guest's address is 10.0.2.15, by a DHCP lease from 10.0.2.2") {
		t.Fatalf("log %q", log)
	}
	h.g.Egress([][]byte{syn})
	get(t, h.toNet)
	forged := netip.MustParseAddr("10.0.2.99")
	h.g.Egress([][]byte{
		tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(forged, 1111), r, tcpSYN, 1, 0),
		udpFrame(netip.AddrPortFrom(forged, 1111), netip.AddrPortFrom(remoteIP, 53), true),
		udpFrame(netip.MustParseAddrPort("0.0.0.0:1111"), netip.AddrPortFrom(remoteIP, 53), true),
		arpFrame(guestMAC, forged),
	})
	empty(t, h.toNet)
	if n, a := drops(h, ReasonSpoofedIPv4), drops(h, ReasonSpoofedARPIPv4); n != 3 || a != 1 {
		t.Fatalf("spoofed drops: %d IPv4, %d ARP; stats %+v", n, a, h.g.Stats())
	}
	h.g.Egress([][]byte{arpFrame(guestMAC, guestIP), arpFrame(guestMAC, netip.IPv4Unspecified())})
	get(t, h.toNet)
	get(t, h.toNet)

	// Ingress is not filtered by the binding.
	h.g.Ingress([][]byte{tcpFrame(remoteMAC, guestMAC, r, l, tcpSYN|tcpACK, 5, 0)})
	get(t, h.toGuest)

	// A NAK for the guest unbinds it.
	nak := dhcpReplyFrame(srv, guestMAC, 3, netip.MustParseAddr("10.0.2.200"))
	if p, ok := parseReply(t, nak); !ok || p.Type != DHCPNak {
		t.Fatalf("not a NAK: %+v", p)
	}
	h.g.Ingress([][]byte{nak})
	if b := h.g.BoundAddrs(); b != nil {
		t.Fatalf("bound %v after the NAK", b)
	}
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpACK, 2, 10)})
	empty(t, h.toNet)
	if n := drops(h, ReasonUnbound); n != 5 {
		t.Fatalf("unbound drops after the NAK: %d", n)
	}
}

func parseReply(t *testing.T, frame []byte) (DHCPReply, bool) {
	t.Helper()
	var p Packet
	if err := Parse(frame, &p); err != nil || p.Proto != ProtoUDP {
		t.Fatalf("parse the reply: %v", err)
	}
	return ParseDHCPReply(p.l4[8 : 8+p.Payload])
}

func TestSourceBindingStatic(t *testing.T) {
	second := netip.MustParseAddr("10.0.2.16")
	h, _ := sourceHarness(t, guestIP, second)
	r := netip.AddrPortFrom(remoteIP, 80)
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, netip.AddrPortFrom(guestIP, 1111), r, tcpSYN, 1, 0)})
	get(t, h.toNet)
	h.g.Egress([][]byte{udpFrame(netip.AddrPortFrom(second, 1111), netip.AddrPortFrom(remoteIP, 53), true)})
	get(t, h.toNet)
	if st := h.g.Stats(); st.NewFlows != 2 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	// DHCP does not move a static binding.
	srv := &vnet.DHCPServer{Server: vnet.GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: netip.MustParseAddr("10.0.2.50"), Last: vnet.LastLease}
	h.g.Ingress([][]byte{dhcpReplyFrame(srv, guestMAC, 3, netip.Addr{})})
	if b := h.g.BoundAddrs(); len(b) != 2 || b[0] != guestIP || b[1] != second {
		t.Fatalf("bound %v", b)
	}
	h.g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, netip.MustParseAddrPort("10.0.2.50:1111"), r, tcpSYN, 1, 0)})
	empty(t, h.toNet)
	if n := drops(h, ReasonSpoofedIPv4); n != 1 {
		t.Fatalf("spoofed drops %d", n)
	}
}

func TestSourceBindingAnyServer(t *testing.T) {
	// A tap without ip=: replies from any server on the network side bind.
	h := newHarness(t)
	h.g.Close()
	cfg := h.g.cfg
	cfg.Source = &SourceBinding{}
	h.g = New(cfg)
	t.Cleanup(h.g.Close)
	srv := &vnet.DHCPServer{Server: netip.MustParseAddr("192.0.2.1"), Mask: netip.MustParseAddr("255.255.255.0"), First: netip.MustParseAddr("192.0.2.10"), Last: netip.MustParseAddr("192.0.2.20")}
	h.g.Ingress([][]byte{dhcpReplyFrame(srv, guestMAC, 3, netip.Addr{})})
	if b := h.g.BoundAddrs(); len(b) != 1 || b[0] != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("bound %v", b)
	}
}

func TestSourceBindingValidate(t *testing.T) {
	for _, tc := range []struct {
		addrs []string
		ok    bool
	}{
		{[]string{"10.0.2.15"}, true},
		{[]string{"0.0.0.0"}, false},
		{[]string{"255.255.255.255"}, false},
		{[]string{"127.0.0.1"}, false},
		{[]string{"224.0.0.1"}, false},
		{[]string{"169.254.1.1"}, false},
		{[]string{"fe80::1"}, false},
		{strings.Fields("10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6 10.0.0.7 10.0.0.8 10.0.0.9"), false},
	} {
		t.Run(strings.Join(tc.addrs, ","), func(t *testing.T) {
			var b SourceBinding
			for _, a := range tc.addrs {
				b.Static = append(b.Static, netip.MustParseAddr(a))
			}
			if err := b.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// TestParseDHCPReplyOfServer parses what vnet's DHCP server sends.
func TestParseDHCPReplyOfServer(t *testing.T) {
	srv := &vnet.DHCPServer{Server: vnet.GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: guestIP, Last: vnet.LastLease}
	for _, tc := range []struct {
		typ  byte
		want DHCPReply
	}{
		{1, DHCPReply{Type: 2, ClientMAC: guestMAC, YourAddr: guestIP, ServerID: vnet.GatewayAddr}},
		{3, DHCPReply{Type: DHCPAck, ClientMAC: guestMAC, YourAddr: guestIP, ServerID: vnet.GatewayAddr}},
	} {
		got, ok := parseReply(t, dhcpReplyFrame(srv, guestMAC, tc.typ, netip.Addr{}))
		if !ok || got != tc.want {
			t.Errorf("message %d: got %+v (ok %v), want %+v", tc.typ, got, ok, tc.want)
		}
	}
	for _, b := range [][]byte{nil, make([]byte, 240), dhcpRequest(guestMAC, 1, netip.Addr{})} {
		if r, ok := ParseDHCPReply(b); ok {
			t.Errorf("parsed %x as %+v", b, r)
		}
	}
}

func FuzzDHCPReply(f *testing.F) {
	srv := &vnet.DHCPServer{Server: vnet.GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: guestIP, Last: vnet.LastLease}
	var p Packet
	if Parse(dhcpReplyFrame(srv, guestMAC, 3, netip.Addr{}), &p) == nil {
		f.Add(append([]byte(nil), p.l4[8:8+p.Payload]...))
	}
	f.Add(dhcpRequest(guestMAC, 1, netip.Addr{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := ParseDHCPReply(b)
		if ok && r.Type == 0 {
			t.Fatal("ok without a message type")
		}
	})
}

// BenchmarkFastPathBound is BenchmarkFastPath with a DHCP-learned source
// binding: the anti-spoofing check on every frame.
func BenchmarkFastPathBound(b *testing.B) {
	done := make(chan struct{}, 1)
	g := New(Config{Decider: &fakeDecider{}, Attributor: &fakeAttr{}, GuestMAC: guestMAC, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {},
		Source: &SourceBinding{DHCPServer: vnet.GatewayAddr, DHCPServerMAC: vnet.ServicesMAC}, OnDecision: func(Record) { done <- struct{}{} }})
	defer g.Close()
	srv := &vnet.DHCPServer{Server: vnet.GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: guestIP, Last: vnet.LastLease}
	g.Ingress([][]byte{dhcpReplyFrame(srv, guestMAC, 3, netip.Addr{})})
	if len(g.BoundAddrs()) != 1 {
		b.Fatal("no binding")
	}
	l, r := netip.AddrPortFrom(guestIP, 1111), netip.AddrPortFrom(remoteIP, 80)
	g.Egress([][]byte{tcpFrame(guestMAC, remoteMAC, l, r, tcpSYN, 1, 0)})
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		b.Fatal("no decision")
	}
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
