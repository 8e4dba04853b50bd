package net

import (
	"net/netip"

	"github.com/gatevisor/gatevisor/internal/dhcpwire"
)

// DHCP message types the source binding follows (RFC 2132 option 53).
const (
	DHCPAck = 5
	DHCPNak = 6
)

// DHCP and BOOTP ports.
const (
	dhcpServerPort = 67
	dhcpClientPort = 68
)

// dhcpMaxOpts bounds the options scanned (RFC 2131's minimum message).
const dhcpMaxOpts = 312

// DHCPReply is what the source binding needs of a DHCP reply.
type DHCPReply struct {
	Type      uint8      // option 53: DHCPAck, DHCPNak, ...
	ClientMAC [6]byte    // chaddr
	YourAddr  netip.Addr // yiaddr: the address leased to the client
	ServerID  netip.Addr // option 54, if present
}

// ParseDHCPReply parses a BOOTREPLY UDP payload (op 2, Ethernet hardware
// addresses, the DHCP magic cookie, a message type). It is pure and bounds
// every length; ok is false for anything else.
func ParseDHCPReply(b []byte) (r DHCPReply, ok bool) {
	opts, ok := dhcpwire.Options(b, dhcpwire.OpReply)
	if !ok {
		return DHCPReply{}, false
	}
	r.YourAddr = netip.AddrFrom4([4]byte(b[16:20]))
	r.ClientMAC = dhcpwire.ClientMAC(b)
	if len(opts) > dhcpMaxOpts {
		opts = opts[:dhcpMaxOpts]
	}
	ok = dhcpwire.Walk(opts, func(code byte, val []byte) {
		switch {
		case code == 53 && len(val) == 1:
			r.Type = val[0]
		case code == 54 && len(val) == 4:
			r.ServerID = netip.AddrFrom4([4]byte(val))
		}
	})
	if !ok {
		return DHCPReply{}, false
	}
	return r, r.Type != 0
}

// leasable reports whether a is an address a DHCP server may lease to a
// guest: unicast, not 0.0.0.0/8, loopback, link-local, multicast or the
// limited broadcast.
func leasable(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast() && !a.IsLinkLocalUnicast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255}) && a.As4()[0] != 0
}
