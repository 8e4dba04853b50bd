package vnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// The netstack's one NIC.
const nicID tcpip.NICID = 1

// The link's queue length and MTU, and the most frames one batch to the
// guest side holds.
const (
	linkQueueLen = 1024
	linkMTU      = 1500
	maxBatch     = 64
)

// netstack is the host side of a virtual network: a gVisor TCP/IP stack
// (IPv4, ARP, TCP, UDP, ICMPv4) with one Ethernet NIC on an in-memory link,
// holding its addresses on one subnet, with a route to that subnet only.
// Frames come in with inject and go out with readBatch. Services and NAT
// each run one; what they serve on it is theirs.
type netstack struct {
	st *stack.Stack
	ch *channel.Endpoint
}

// newNetstack builds the stack with its NIC (Ethernet address mac) holding
// addrs in subnet.
func newNetstack(mac MAC, subnet netip.Prefix, addrs ...netip.Addr) (*netstack, error) {
	ns := &netstack{
		st: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
		}),
		ch: channel.New(linkQueueLen, linkMTU, tcpip.LinkAddress(mac[:])),
	}
	if err := ns.setup(subnet, addrs); err != nil {
		ns.close()
		return nil, err
	}
	return ns, nil
}

func (ns *netstack) setup(subnet netip.Prefix, addrs []netip.Addr) error {
	if err := ns.st.CreateNIC(nicID, ethernet.New(ns.ch)); err != nil {
		return fmt.Errorf("create NIC: %s", err)
	}
	for _, a := range addrs {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(a.As4()), PrefixLen: subnet.Bits()}}
		if err := ns.st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("add address %s: %s", a, err)
		}
	}
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom4(subnet.Masked().Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(subnet.Bits(), 32)))
	if err != nil {
		return fmt.Errorf("subnet %s: %w", subnet, err)
	}
	ns.st.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: nicID}})
	return nil
}

// close closes the link and then the stack.
func (ns *netstack) close() {
	ns.ch.Close()
	ns.st.Close()
}

// inject hands the stack one frame from the guest side; f is read, never
// modified or kept.
func (ns *netstack) inject(f []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
	ns.ch.InjectInbound(0, pkt)
	pkt.DecRef()
}

// readBatch waits for the stack's next outgoing frame and returns it with
// those already queued behind it, at most maxBatch in all. It returns nil
// once ctx is done.
func (ns *netstack) readBatch(ctx context.Context) [][]byte {
	pkt := ns.ch.ReadContext(ctx)
	if pkt == nil {
		return nil
	}
	batch := [][]byte{frameOf(pkt)}
	for len(batch) < maxBatch {
		p := ns.ch.Read()
		if p == nil {
			break
		}
		batch = append(batch, frameOf(p))
	}
	return batch
}

// frameOf copies the frame out of pkt and releases pkt.
func frameOf(pkt *stack.PacketBuffer) []byte {
	v := pkt.ToView()
	b := append([]byte(nil), v.AsSlice()...)
	v.Release()
	pkt.DecRef()
	return b
}

// full is a's port on the NIC.
func (ns *netstack) full(a netip.Addr, port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(a.As4()), Port: port}
}

// listenUDP binds a UDP socket of the stack to a:port.
func (ns *netstack) listenUDP(a netip.Addr, port uint16) (*gonet.UDPConn, error) {
	laddr := ns.full(a, port)
	c, err := gonet.DialUDP(ns.st, &laddr, nil, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("udp %s:%d: %w", a, port, err)
	}
	return c, nil
}

// serveUDP reads datagrams from c and hands each to handle until c fails
// (it is closed) or handle returns false. p is valid only until handle
// returns: a handler that keeps it copies it.
func serveUDP(c net.PacketConn, handle func(p []byte, from net.Addr) bool) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil || !handle(buf[:n], from) {
			return
		}
	}
}
