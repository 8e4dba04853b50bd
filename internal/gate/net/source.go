package net

import (
	"fmt"
	"net/netip"
	"slices"
)

// Drop reasons of the anti-spoofing checks (keys of Stats.DropReasons).
const (
	ReasonSpoofedMAC     = "spoofed source MAC"
	ReasonSpoofedARP     = "spoofed ARP sender"
	ReasonSpoofedIPv4    = "spoofed source IPv4 address"
	ReasonSpoofedARPIPv4 = "spoofed ARP sender IPv4 address"
	// ReasonUnbound: the guest sent from an address before any was bound
	// to it (no DHCP lease yet, or a static address the gate was not told).
	ReasonUnbound = "no IPv4 address bound to the guest"
)

// MaxStaticAddrs bounds SourceBinding.Static.
const MaxStaticAddrs = 8

// SourceBinding binds the IPv4 source addresses the guest may use, in IPv4
// headers and as an ARP sender (IP source guard). Either Static lists them,
// or the gate learns the one address from DHCP (DHCP snooping): the yiaddr
// of the last DHCPACK for the guest's MAC that came from the network side,
// from DHCPServer and DHCPServerMAC when they are set; a DHCPNAK for the
// guest's MAC unbinds it. In both modes a guest may send DHCP client
// messages from 0.0.0.0 (UDP 68 to 67, to the broadcast address or the
// server) and ARP probes with the sender 0.0.0.0.
type SourceBinding struct {
	Static []netip.Addr
	// DHCPServer and DHCPServerMAC, when set, are the only source of DHCP
	// replies believed; unset, any server on the network side is (a tap:
	// the host's side, which the guest cannot send into through the gate).
	DHCPServer    netip.Addr
	DHCPServerMAC [6]byte
}

// Validate checks the static addresses.
func (b *SourceBinding) Validate() error {
	if len(b.Static) > MaxStaticAddrs {
		return fmt.Errorf("gate: %d static guest addresses, at most %d", len(b.Static), MaxStaticAddrs)
	}
	for _, a := range b.Static {
		if !leasable(a) {
			return fmt.Errorf("gate: %v cannot be a guest's IPv4 address", a)
		}
	}
	return nil
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// checkSource applies the source binding to a frame from the guest; it
// returns a drop reason, or "".
// Preconditions: g.mu held; g.cfg.Source != nil.
func (g *Gate) checkSource(p *Packet) string {
	if p.Kind == KindARP {
		if p.ARPSenderIP.IsUnspecified() || g.mayUse(p.ARPSenderIP) { // a probe (RFC 5227), or its own
			return ""
		}
		return g.unbound(ReasonSpoofedARPIPv4, p.ARPSenderIP)
	}
	if g.mayUse(p.Src) {
		return ""
	}
	if p.Src.IsUnspecified() && p.Proto == ProtoUDP && p.SrcPort == dhcpClientPort && p.DstPort == dhcpServerPort &&
		(p.Dst == limitedBroadcast || (g.cfg.Source.DHCPServer.IsValid() && p.Dst == g.cfg.Source.DHCPServer)) {
		return ""
	}
	return g.unbound(ReasonSpoofedIPv4, p.Src)
}

// mayUse reports whether the guest may send from a.
// Preconditions: g.mu held.
func (g *Gate) mayUse(a netip.Addr) bool {
	if len(g.cfg.Source.Static) > 0 {
		return slices.Contains(g.cfg.Source.Static, a)
	}
	return g.leased.IsValid() && a == g.leased
}

// unbound returns reason, or ReasonUnbound when no address is bound yet
// (noting the first such drop for the log: a guest with a static address
// the gate was not told about loses every frame).
// Preconditions: g.mu held.
func (g *Gate) unbound(reason string, a netip.Addr) string {
	if len(g.cfg.Source.Static) > 0 || g.leased.IsValid() {
		return reason
	}
	if !g.warnedUnbound {
		g.warnedUnbound = true
		g.notes = append(g.notes, fmt.Sprintf("network gate: dropping the guest's frames from %v: no address is bound to it yet (no DHCP lease seen)", a))
	}
	return ReasonUnbound
}

// snoopDHCP follows DHCP replies for the guest to learn its address.
// Preconditions: g.mu held; p is an IPv4 UDP datagram from port 67 to 68
// for the guest.
func (g *Gate) snoopDHCP(p *Packet) {
	src := g.cfg.Source
	if len(src.Static) > 0 || (src.DHCPServer.IsValid() && p.Src != src.DHCPServer) ||
		(src.DHCPServerMAC != ([6]byte{}) && p.SrcMAC != src.DHCPServerMAC) || VerifyTransport(p) != nil {
		return
	}
	r, ok := ParseDHCPReply(p.l4[8 : 8+p.Payload])
	if !ok || (g.cfg.GuestMAC != ([6]byte{}) && r.ClientMAC != g.cfg.GuestMAC) {
		return
	}
	switch {
	case r.Type == DHCPAck && leasable(r.YourAddr) && r.YourAddr != p.Src && r.YourAddr != g.leased:
		old := g.leased
		g.leased, g.warnedUnbound = r.YourAddr, false
		if old.IsValid() {
			g.notes = append(g.notes, fmt.Sprintf("network gate: the guest's address is now %v (was %v), by a DHCP lease from %v", r.YourAddr, old, p.Src))
		} else {
			g.notes = append(g.notes, fmt.Sprintf("network gate: the guest's address is %v, by a DHCP lease from %v", r.YourAddr, p.Src))
		}
	case r.Type == DHCPNak && g.leased.IsValid():
		g.notes = append(g.notes, fmt.Sprintf("network gate: %v is no longer the guest's address (DHCPNAK from %v)", g.leased, p.Src))
		g.leased = netip.Addr{}
	}
}

// BoundAddrs returns the IPv4 addresses the guest may send from now (nil
// without a source binding, or before a DHCP lease).
func (g *Gate) BoundAddrs() []netip.Addr {
	if g.cfg.Source == nil {
		return nil
	}
	if len(g.cfg.Source.Static) > 0 {
		return slices.Clone(g.cfg.Source.Static)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.leased.IsValid() {
		return []netip.Addr{g.leased}
	}
	return nil
}
