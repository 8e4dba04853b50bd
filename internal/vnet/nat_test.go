package vnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

var guestAddr = netip.MustParseAddr("192.168.127.2")

// natGuest is a second netstack playing the guest, wired to a NAT.
type natGuest struct {
	nat *NAT
	st  *stack.Stack
	ch  *channel.Endpoint
	ctx context.Context
}

func newNATGuest(t *testing.T, cfg NATConfig) *natGuest {
	t.Helper()
	g := &natGuest{}
	var cancel context.CancelFunc
	g.ctx, cancel = context.WithCancel(context.Background())
	g.st = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	g.ch = channel.New(256, 1500, tcpip.LinkAddress([]byte{0x52, 0x54, 0, 1, 2, 3}))
	if err := g.st.CreateNIC(1, ethernet.New(g.ch)); err != nil {
		t.Fatal(err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(guestAddr.As4()), PrefixLen: 24}}
	if err := g.st.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	sub, _ := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{192, 168, 127, 0}), tcpip.MaskFromBytes([]byte{255, 255, 255, 0}))
	g.st.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: 1}, {Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(UserGateway.As4()), NIC: 1}})
	cfg.Deliver = func(frames [][]byte) {
		for _, f := range frames {
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
			g.ch.InjectInbound(0, pkt)
			pkt.DecRef()
		}
	}
	n, err := NewNAT(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.nat = n
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			pkt := g.ch.ReadContext(g.ctx)
			if pkt == nil {
				return
			}
			n.Send([][]byte{frameOf(pkt)})
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		n.Close()
		g.ch.Close()
		g.st.Close()
	})
	return g
}

func (g *natGuest) dial(t *testing.T, a netip.Addr, port uint16) (net.Conn, error) {
	return g.dialTimeout(t, a, port, 5*time.Second)
}

func (g *natGuest) dialTimeout(t *testing.T, a netip.Addr, port uint16, d time.Duration) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return gonet.DialContextTCP(ctx, g.st, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(a.As4()), Port: port}, ipv4.ProtocolNumber)
}

func loopbackEcho(t *testing.T) (port uint16) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TestNATHostLoopbackTCP: the guest reaches a listener on the host's
// 127.0.0.1 at UserHostLoopback, with half-close passed through.
func TestNATHostLoopbackTCP(t *testing.T) {
	port := loopbackEcho(t)
	g := newNATGuest(t, NATConfig{})
	c, err := g.dial(t, UserHostLoopback, port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("gatevisor "), 20000) // several windows
	go func() {
		_, _ = c.Write(msg)
		_ = c.(*gonet.TCPConn).CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d of %d bytes, err %v", len(got), len(msg), err)
	}
	if st := g.nat.Stats(); st.TCPForwarded != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestNATRefusesAndBlocks: a closed host port and destinations the NAT
// never forwards are refused, not dialled.
func TestNATRefusesAndBlocks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	var mu sync.Mutex
	var dialled []string
	g := newNATGuest(t, NATConfig{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialled = append(dialled, addr)
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}})
	if _, err := g.dial(t, UserHostLoopback, closed); err == nil || !errors.Is(err, syscall.ECONNREFUSED) && !bytes.Contains([]byte(err.Error()), []byte("refused")) {
		t.Fatalf("closed port: %v", err)
	}
	// Refused at once: link-local, the gateway, 0.0.0.0/8.
	for _, a := range []string{"169.254.169.254", "192.168.127.1", "0.1.2.3"} {
		if _, err := g.dial(t, netip.MustParseAddr(a), 80); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: %v, want refused", a, err)
		}
	}
	// Nobody answers: another address of the subnet (the NAT does not
	// claim it in ARP), multicast.
	for _, a := range []string{"192.168.127.9", "224.0.0.1"} {
		if _, err := g.dialTimeout(t, netip.MustParseAddr(a), 80, 500*time.Millisecond); err == nil || strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: %v, want no answer", a, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialled) != 1 || dialled[0] != "127.0.0.1:"+strconv.Itoa(int(closed)) {
		t.Fatalf("dialled %v, want only the closed loopback port", dialled)
	}
	if st := g.nat.Stats(); st.TCPRefused != 1 || st.Blocked < 3 {
		t.Fatalf("stats %+v", st)
	}
}

// TestNATUDPAndDNS: a UDP flow to the host's loopback, and DNS for the
// NAT's own names and through the (stubbed) host resolver.
func TestNATUDPAndDNS(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:k]...), from)
		}
	}()
	g := newNATGuest(t, NATConfig{Resolve: func(_ context.Context, name string) ([]netip.Addr, error) {
		if name == "device.example" {
			return []netip.Addr{netip.MustParseAddr("203.0.113.7")}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}})
	udpc := func(dst netip.Addr, port uint16) *gonet.UDPConn {
		c, err := gonet.DialUDP(g.st, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.As4()), Port: port}, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	roundTrip := func(c *gonet.UDPConn, msg []byte) []byte {
		t.Helper()
		buf := make([]byte, 2048)
		for range 5 { // the first datagram may wait for ARP
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			if k, err := c.Read(buf); err == nil {
				return buf[:k]
			}
		}
		t.Fatalf("no answer to %q", msg)
		return nil
	}
	if got := roundTrip(udpc(UserHostLoopback, uint16(pc.LocalAddr().(*net.UDPAddr).Port)), []byte("ping")); string(got) != "echo:ping" {
		t.Fatalf("udp: %q", got)
	}
	dns := udpc(UserGateway, DNSPort)
	query := func(name string) []byte {
		b := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
		for _, l := range bytes.Split([]byte(name), []byte(".")) {
			b = append(b, byte(len(l)))
			b = append(b, l...)
		}
		return append(b, 0, 0, 1, 0, 1)
	}
	for _, tc := range []struct {
		name   string
		rcode  byte
		answer []byte
	}{
		{"host.gatevisor", 0, []byte{192, 168, 127, 254}},
		{"host.containers.internal", 0, []byte{192, 168, 127, 254}},
		{"device.example", 0, []byte{203, 0, 113, 7}},
		{"nothing.example", 3, nil},
	} {
		a := roundTrip(dns, query(tc.name))
		if len(a) < 12 || a[3]&0xf != tc.rcode || (tc.answer != nil && (binary.BigEndian.Uint16(a[6:8]) != 1 || !bytes.HasSuffix(a, tc.answer))) {
			t.Errorf("%s: answer % x", tc.name, a)
		}
	}
	if st := g.nat.Stats(); st.UDPForwarded != 1 || st.DNSQueries < 4 {
		t.Fatalf("stats %+v", st)
	}
}

// TestNATDHCP: the guest's DHCP discover is answered with a lease in the
// user subnet, the gateway as router and DNS server.
func TestNATDHCP(t *testing.T) {
	var got [][]byte
	var mu sync.Mutex
	n, err := NewNAT(NATConfig{Deliver: func(b [][]byte) { mu.Lock(); got = append(got, b...); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	mac := MAC{0x52, 0x54, 0, 9, 9, 9}
	n.Send([][]byte{BuildUDP(mac, Broadcast, netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"), dhcpMsg(mac, dhcpDiscover, netip.Addr{}))})
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		k := len(got)
		mu.Unlock()
		if k > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("%d replies", len(got))
	}
	r := got[0]
	const off = header.EthernetMinimumSize + header.IPv4MinimumSize + header.UDPMinimumSize
	if len(r) < off+20 || !bytes.Equal(r[off+16:off+20], []byte{192, 168, 127, 2}) || !bytes.Equal(r[6:12], NATMAC[:]) {
		t.Fatalf("reply % x", r)
	}
}

// TestNATCloseDuringHandshake: a guest that sends a SYN and never answers
// the SYN-ACK does not hold up Close.
func TestNATCloseDuringHandshake(t *testing.T) {
	port := loopbackEcho(t)
	n, err := NewNAT(NATConfig{Deliver: func([][]byte) {}})
	if err != nil {
		t.Fatal(err)
	}
	const hl = header.EthernetMinimumSize + header.IPv4MinimumSize + header.TCPMinimumSize
	b := make([]byte, hl)
	mac := MAC{0x52, 0x54, 0, 1, 2, 3}
	header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(mac[:]), DstAddr: tcpip.LinkAddress(NATMAC[:]), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	src, dst := tcpip.AddrFrom4(guestAddr.As4()), tcpip.AddrFrom4(UserHostLoopback.As4())
	ip.Encode(&header.IPv4Fields{TotalLength: header.IPv4MinimumSize + header.TCPMinimumSize, TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	tc := header.TCP(b[header.EthernetMinimumSize+header.IPv4MinimumSize:])
	tc.Encode(&header.TCPFields{SrcPort: 40000, DstPort: port, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	tc.SetChecksum(^checksum.Checksum(tc, header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, header.TCPMinimumSize)))
	n.Send([][]byte{b})
	time.Sleep(300 * time.Millisecond) // dialled, SYN-ACK sent, waiting for the ACK
	start := time.Now()
	n.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}
