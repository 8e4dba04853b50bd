package vnet

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gatevisor/gatevisor/internal/dhcpwire"
)

// DHCP message types (RFC 2132 option 53).
const (
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5
	dhcpNak      = 6
)

const (
	// LeaseTime is what the DHCP server grants; leases are kept per MAC for
	// the life of the network, so a guest always gets the same address.
	LeaseTime = 24 * time.Hour
)

// DHCPServer hands out addresses of one /24 by MAC. It is pure: Handle
// takes a request payload and returns the reply payload.
type DHCPServer struct {
	Server  netip.Addr // server identifier, router and DNS server
	Mask    netip.Addr
	First   netip.Addr // first address to lease
	Last    netip.Addr
	Domain  string
	mu      sync.Mutex // guards leases and next
	leases  map[MAC]netip.Addr
	byAddr  map[netip.Addr]MAC
	nextOff netip.Addr
}

// lease returns the address for mac, allocating one; ok is false when the
// pool is exhausted.
func (d *DHCPServer) lease(mac MAC) (netip.Addr, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.leases == nil {
		d.leases, d.byAddr, d.nextOff = map[MAC]netip.Addr{}, map[netip.Addr]MAC{}, d.First
	}
	if a, ok := d.leases[mac]; ok {
		return a, true
	}
	for a := d.nextOff; a.IsValid() && a.Compare(d.Last) <= 0; a = a.Next() {
		if _, used := d.byAddr[a]; !used {
			d.leases[mac], d.byAddr[a] = a, mac
			d.nextOff = a.Next()
			return a, true
		}
	}
	return netip.Addr{}, false
}

// Handle answers one BOOTP/DHCP request payload (the UDP payload), or
// returns nil when there is nothing to answer. Malformed input is ignored.
func (d *DHCPServer) Handle(req []byte) []byte {
	opts, ok := dhcpwire.Options(req, dhcpwire.OpRequest)
	if !ok {
		return nil
	}
	mac := MAC(dhcpwire.ClientMAC(req))
	msgType, requested := byte(0), netip.Addr{}
	ok = dhcpwire.Walk(opts, func(code byte, val []byte) {
		switch {
		case code == 53 && len(val) == 1:
			msgType = val[0]
		case code == 50 && len(val) == 4:
			requested = netip.AddrFrom4([4]byte(val))
		}
	})
	if !ok {
		return nil
	}
	var reply byte
	switch msgType {
	case dhcpDiscover:
		reply = dhcpOffer
	case dhcpRequest:
		reply = dhcpAck
	default:
		return nil
	}
	addr, ok := d.lease(mac)
	if !ok {
		return nil
	}
	if msgType == dhcpRequest && requested.IsValid() && requested != addr {
		reply = dhcpNak
	}
	out := make([]byte, dhcpwire.FixedLen, dhcpwire.FixedLen+64)
	out[0], out[1], out[2] = 2, 1, 6
	copy(out[4:8], req[4:8])     // xid
	copy(out[10:12], req[10:12]) // flags
	if reply != dhcpNak {
		a4 := addr.As4()
		copy(out[16:20], a4[:]) // yiaddr
	}
	s4 := d.Server.As4()
	copy(out[20:24], s4[:])      // siaddr
	copy(out[28:44], req[28:44]) // chaddr
	out = binary.BigEndian.AppendUint32(out, dhcpwire.Magic)
	out = append(out, 53, 1, reply, 54, 4)
	out = append(out, s4[:]...)
	if reply != dhcpNak {
		m4 := d.Mask.As4()
		out = append(out, 51, 4)
		out = binary.BigEndian.AppendUint32(out, uint32(LeaseTime/time.Second))
		out = append(out, 1, 4)
		out = append(out, m4[:]...)
		out = append(out, 3, 4)
		out = append(out, s4[:]...)
		out = append(out, 6, 4)
		out = append(out, s4[:]...)
		if d.Domain != "" && len(d.Domain) < 64 {
			out = append(out, 15, byte(len(d.Domain)))
			out = append(out, d.Domain...)
		}
	}
	return append(out, 255)
}

// DHCPReplyFrame answers frame f when it carries a DHCP request (an IPv4
// UDP datagram to port 67, not fragmented) with d's reply, broadcast from
// srvMAC and d.Server; it returns nil for every other frame.
func DHCPReplyFrame(d *DHCPServer, srvMAC MAC, f []byte) []byte {
	eth := header.Ethernet(f)
	if len(f) < header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize || eth.Type() != header.IPv4ProtocolNumber {
		return nil
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.UDPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
		return nil
	}
	ip = ip[:ip.TotalLength()]
	if len(ip)-int(ip.HeaderLength()) < header.UDPMinimumSize {
		return nil
	}
	u := header.UDP(ip[ip.HeaderLength():])
	if u.DestinationPort() != 67 || int(u.Length()) > len(u) || u.Length() < header.UDPMinimumSize {
		return nil
	}
	payload := d.Handle(u[header.UDPMinimumSize:u.Length()])
	if payload == nil {
		return nil
	}
	return BuildUDP(srvMAC, Broadcast, netip.AddrPortFrom(d.Server, 67), netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68), payload)
}
