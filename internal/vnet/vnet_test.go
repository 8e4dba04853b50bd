package vnet

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/dhcpwire"
)

func frame(dst, src MAC, fill byte) []byte {
	b := make([]byte, 60)
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	b[12], b[13] = 0x08, 0x00
	for i := 14; i < len(b); i++ {
		b[i] = fill
	}
	return b
}

func collect() (func([][]byte), chan []byte) {
	ch := make(chan []byte, 64)
	return func(b [][]byte) {
		for _, f := range b {
			ch <- f
		}
	}, ch
}

func recv(t *testing.T, ch chan []byte) []byte {
	t.Helper()
	select {
	case f := <-ch:
		return f
	case <-time.After(2 * time.Second):
		t.Fatal("no frame")
	}
	return nil
}

func none(t *testing.T, ch chan []byte) {
	t.Helper()
	select {
	case f := <-ch:
		t.Fatalf("unexpected frame % x", f[:14])
	case <-time.After(50 * time.Millisecond):
	}
}

func TestSwitchLearnsAndFloods(t *testing.T) {
	sw := NewSwitch()
	da, ca := collect()
	db, cb := collect()
	dc, cc := collect()
	a, b, c := sw.Attach(da), sw.Attach(db), sw.Attach(dc)
	defer a.Close()
	defer b.Close()
	defer c.Close()
	ma, mb := MAC{2, 0, 0, 0, 0, 0xa}, MAC{2, 0, 0, 0, 0, 0xb}
	// Unknown destination: flooded to every other port, not back.
	a.Send([][]byte{frame(mb, ma, 1)})
	recv(t, cb)
	recv(t, cc)
	none(t, ca)
	// b answers: a's MAC is known now, so only a gets it.
	b.Send([][]byte{frame(ma, mb, 2)})
	if f := recv(t, ca); f[14] != 2 {
		t.Fatalf("wrong frame %d", f[14])
	}
	none(t, cc)
	// Broadcast goes everywhere but the sender.
	c.Send([][]byte{frame(Broadcast, MAC{2, 0, 0, 0, 0, 0xc}, 3)})
	recv(t, ca)
	recv(t, cb)
	// Runts are dropped.
	a.Send([][]byte{{1, 2, 3}})
	none(t, cb)
	if sw.Dropped.Load() != 1 {
		t.Fatalf("dropped = %d", sw.Dropped.Load())
	}
	// A closed port is forgotten: its MAC floods again.
	b.Close()
	a.Send([][]byte{frame(mb, ma, 4)})
	recv(t, cc)
}

func TestFrameCodec(t *testing.T) {
	var buf bytes.Buffer
	w := NewFrameWriter(&buf)
	if err := w.WriteFrames([][]byte{[]byte("one"), make([]byte, 1500), []byte("three")}); err != nil {
		t.Fatal(err)
	}
	r := NewFrameReader(&buf)
	batch, err := r.ReadBatch(nil, 64)
	if err != nil || len(batch) != 3 || string(batch[0]) != "one" || len(batch[1]) != 1500 || string(batch[2]) != "three" {
		t.Fatalf("batch %d frames, err %v", len(batch), err)
	}
	// A length beyond MaxFrame is an error, not an allocation.
	bad := binary.BigEndian.AppendUint32(nil, 1<<30)
	if _, err := NewFrameReader(bytes.NewReader(bad)).ReadFrame(); err == nil {
		t.Fatal("huge length accepted")
	}
	// A frame longer than MaxFrame (a guest with a 65535-byte MTU) is
	// skipped and counted; the next frame is read.
	long := binary.BigEndian.AppendUint32(nil, MaxFrame+14)
	long = append(long, make([]byte, MaxFrame+14)...)
	long = append(binary.BigEndian.AppendUint32(long, 3), "abc"...)
	lr := NewFrameReader(bytes.NewReader(long))
	if b, err := lr.ReadFrame(); err != nil || string(b) != "abc" || lr.Oversized.Load() != 1 {
		t.Fatalf("after an oversized frame: %q, %v, oversized %d", b, err, lr.Oversized.Load())
	}
	// A truncated frame is an error.
	tr := append(binary.BigEndian.AppendUint32(nil, 10), 1, 2)
	if _, err := NewFrameReader(bytes.NewReader(tr)).ReadFrame(); err == nil {
		t.Fatal("truncated frame accepted")
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 1, 2, 3})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewFrameReader(bytes.NewReader(b))
		for range 100 {
			batch, err := r.ReadBatch(nil, 8)
			for _, fr := range batch {
				if len(fr) > MaxFrame {
					t.Fatal("oversized frame")
				}
			}
			if err != nil {
				return
			}
		}
	})
}

func dhcpMsg(mac MAC, typ byte, requested netip.Addr) []byte {
	b := make([]byte, dhcpwire.FixedLen)
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

func TestDHCP(t *testing.T) {
	d := &DHCPServer{Server: GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: FirstLease, Last: netip.MustParseAddr("10.0.2.16")}
	m1, m2, m3 := MAC{2, 0, 0, 0, 0, 1}, MAC{2, 0, 0, 0, 0, 2}, MAC{2, 0, 0, 0, 0, 3}
	offer := d.Handle(dhcpMsg(m1, dhcpDiscover, netip.Addr{}))
	if offer == nil || netip.AddrFrom4([4]byte(offer[16:20])) != FirstLease || offer[dhcpwire.FixedLen+6] != dhcpOffer {
		t.Fatalf("offer % x", offer)
	}
	ack := d.Handle(dhcpMsg(m1, dhcpRequest, FirstLease))
	if ack == nil || ack[dhcpwire.FixedLen+6] != dhcpAck {
		t.Fatal("no ack")
	}
	// Same MAC, same address; another MAC, the next one.
	if a := d.Handle(dhcpMsg(m1, dhcpDiscover, netip.Addr{})); netip.AddrFrom4([4]byte(a[16:20])) != FirstLease {
		t.Fatal("lease not stable")
	}
	if a := d.Handle(dhcpMsg(m2, dhcpDiscover, netip.Addr{})); netip.AddrFrom4([4]byte(a[16:20])) != FirstLease.Next() {
		t.Fatal("second lease")
	}
	// Pool exhausted: no answer. Asking for someone else's address: NAK.
	if d.Handle(dhcpMsg(m3, dhcpDiscover, netip.Addr{})) != nil {
		t.Fatal("lease beyond the pool")
	}
	if n := d.Handle(dhcpMsg(m2, dhcpRequest, FirstLease)); n == nil || n[dhcpwire.FixedLen+6] != dhcpNak {
		t.Fatal("no NAK")
	}
	// Garbage is ignored.
	for _, g := range [][]byte{nil, {1, 1, 6}, make([]byte, 300)} {
		if d.Handle(g) != nil {
			t.Fatal("answered garbage")
		}
	}
}

func FuzzDHCP(f *testing.F) {
	f.Add(dhcpMsg(MAC{2}, dhcpDiscover, netip.Addr{}))
	f.Add(dhcpMsg(MAC{2}, dhcpRequest, FirstLease))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := &DHCPServer{Server: GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: FirstLease, Last: LastLease}
		d.Handle(b)
	})
}

func FuzzDHCPReplyFrame(f *testing.F) {
	mac := MAC{0x52, 0x54, 0, 9, 9, 9}
	f.Add(BuildUDP(mac, Broadcast, netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"), dhcpMsg(mac, dhcpDiscover, netip.Addr{})))
	// IHL 60 in a 62-byte packet: 2 bytes where the UDP header should be.
	short := BuildUDP(mac, Broadcast, netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"), make([]byte, 34))
	short[14] = 0x4f
	f.Add(short)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := &DHCPServer{Server: GatewayAddr, Mask: netip.MustParseAddr("255.255.255.0"), First: FirstLease, Last: LastLease}
		DHCPReplyFrame(d, ServicesMAC, b)
	})
}

func TestDNS(t *testing.T) {
	zone := map[string]netip.Addr{"host.gatevisor": GatewayAddr}
	q := func(name string) []byte {
		b := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
		for _, l := range bytes.Split([]byte(name), []byte(".")) {
			b = append(b, byte(len(l)))
			b = append(b, l...)
		}
		return append(b, 0, 0, 1, 0, 1)
	}
	a := DNSAnswer(q("host.gatevisor"), zone)
	if a == nil || a[3]&0xf != 0 || binary.BigEndian.Uint16(a[6:8]) != 1 || !bytes.HasSuffix(a, []byte{10, 0, 2, 2}) {
		t.Fatalf("answer % x", a)
	}
	if a := DNSAnswer(q("example.com"), zone); a == nil || a[3]&0xf != 3 {
		t.Fatalf("outside name not NXDOMAIN: % x", a)
	}
}

func FuzzDNS(f *testing.F) {
	f.Add([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, 'h', 'o', 's', 't', 0, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) { DNSAnswer(b, map[string]netip.Addr{"h": GatewayAddr}) })
}

// TestServices drives the netstack services through the switch with raw
// frames: ARP for the gateway is answered.
func TestServicesARP(t *testing.T) {
	sw := NewSwitch()
	s, err := NewServices(sw)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, ch := collect()
	p := sw.Attach(d)
	defer p.Close()
	me := MAC{2, 0, 0, 0, 0, 0x15}
	arp := make([]byte, 42)
	copy(arp[0:6], Broadcast[:])
	copy(arp[6:12], me[:])
	arp[12], arp[13] = 0x08, 0x06
	copy(arp[14:22], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	copy(arp[22:28], me[:])
	copy(arp[28:32], []byte{10, 0, 2, 15})
	copy(arp[38:42], []byte{10, 0, 2, 2})
	p.Send([][]byte{arp})
	r := recv(t, ch)
	if !bytes.Equal(r[6:12], ServicesMAC[:]) || r[21] != 2 {
		t.Fatalf("ARP reply % x", r)
	}
}
