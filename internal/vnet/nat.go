package vnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// The user-mode network's fixed addresses: gvisor-tap-vsock's (podman
// machine's) layout, so that habits and guest configurations carry over.
var (
	UserSubnet       = netip.MustParsePrefix("192.168.127.0/24")
	UserGateway      = netip.MustParseAddr("192.168.127.1")   // DHCP, DNS
	UserHostLoopback = netip.MustParseAddr("192.168.127.254") // the host's 127.0.0.1
	UserFirstLease   = netip.MustParseAddr("192.168.127.2")
	UserLastLease    = netip.MustParseAddr("192.168.127.253")
	NATMAC           = MAC{0x02, 0x67, 0x76, 0x00, 0x7f, 0x01}
)

// Bounds on what one guest can make the NAT hold open.
const (
	maxNATTCP      = 1024 // forwarded TCP connections
	maxNATUDP      = 256  // forwarded UDP flows
	maxNATDNS      = 32   // DNS lookups in progress
	natTCPInFlight = 256  // TCP handshakes waiting for the host dial
	natDialTimeout = 10 * time.Second
	natUDPIdle     = time.Minute
	natDNSTimeout  = 4 * time.Second
)

// NATConfig configures a NAT.
type NATConfig struct {
	// Deliver receives the frames for the guest, from one goroutine; it
	// owns them.
	Deliver func([][]byte)
	// Logf gets notices: the first time a limit refuses a flow (may be nil).
	Logf func(string, ...any)
	// Dial opens the host side of a forwarded flow (nil: net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolve looks up the IPv4 addresses of a name the NAT's own zone does
	// not hold (nil: the host's resolver).
	Resolve func(ctx context.Context, name string) ([]netip.Addr, error)
}

// NATStats are the NAT's counters.
type NATStats struct {
	Frames, DHCPReplies                                      uint64
	TCPForwarded, TCPRefused, UDPForwarded, UDPRefused       uint64
	Blocked, DNSQueries, DNSResolved, FramesToGuest, Dropped uint64
}

// NAT is the user-mode network (`--net user`): one guest behind a gVisor
// netstack that terminates its TCP and UDP flows and opens the same flows
// from host sockets, as QEMU's slirp and gvisor-tap-vsock do. The stack
// holds UserGateway (DHCP, DNS) and UserHostLoopback, which stands for the
// host's 127.0.0.1; every other destination is dialled as addressed, except
// those no guest may reach through the host: loopback, link-local (cloud
// metadata at 169.254.169.254), multicast, broadcast, 0.0.0.0/8 and the
// user subnet itself.
//
// The network gate sits in front of it like in front of an isolated
// network: the NAT only ever sees flows the gate let through.
type NAT struct {
	cfg     NATConfig
	ns      *netstack
	dhcp    *DHCPServer
	zone    map[string]netip.Addr
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	replies chan [][]byte
	tcpSem  chan struct{}
	udpSem  chan struct{}
	dnsSem  chan struct{}

	mu     sync.Mutex // guards conns and closed
	conns  map[io.Closer]struct{}
	closed bool

	tcpFull, udpFull atomic.Bool // the limit was logged

	frames, dhcpReplies, tcpForwarded, tcpRefused, udpForwarded, udpRefused atomic.Uint64
	blocked, dnsQueries, dnsResolved, toGuest, dropped                      atomic.Uint64
}

// NewNAT starts a NAT.
func NewNAT(cfg NATConfig) (*NAT, error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: natDialTimeout}
		cfg.Dial = d.DialContext
	}
	if cfg.Resolve == nil {
		cfg.Resolve = func(ctx context.Context, name string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip4", name)
		}
	}
	n := &NAT{
		cfg:  cfg,
		dhcp: &DHCPServer{Server: UserGateway, Mask: netip.AddrFrom4([4]byte{255, 255, 255, 0}), First: UserFirstLease, Last: UserLastLease, Domain: Domain},
		zone: map[string]netip.Addr{
			"gateway." + Domain: UserGateway, "host." + Domain: UserHostLoopback,
			"host.containers.internal": UserHostLoopback,
		},
		replies: make(chan [][]byte, 16),
		tcpSem:  make(chan struct{}, maxNATTCP),
		udpSem:  make(chan struct{}, maxNATUDP),
		dnsSem:  make(chan struct{}, maxNATDNS),
		conns:   map[io.Closer]struct{}{},
	}
	ns, err := newNetstack(NATMAC, UserSubnet, UserGateway, UserHostLoopback)
	if err != nil {
		return nil, fmt.Errorf("vnet: nat: %w", err)
	}
	if err := natStack(ns.st); err != nil {
		ns.close()
		return nil, fmt.Errorf("vnet: nat: %w", err)
	}
	n.ns = ns
	n.ctx, n.cancel = context.WithCancel(context.Background())
	ns.st.SetTransportProtocolHandler(tcp.ProtocolNumber, tcp.NewForwarder(ns.st, 0, natTCPInFlight, n.forwardTCP).HandlePacket)
	ns.st.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(ns.st, n.forwardUDP).HandlePacket)
	if err := n.serveDNS(); err != nil {
		n.Close()
		return nil, err
	}
	n.wg.Add(1)
	go n.outbound()
	return n, nil
}

// natStack makes st terminate flows to any address: TCP tuned for bulk
// transfers to and from the host, and the NIC promiscuous (it accepts
// packets for any address: the guest's flows to the world end here) and
// spoofing (it answers from those addresses).
func natStack(st *stack.Stack) error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	if err := st.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fmt.Errorf("TCP SACK: %s", err)
	}
	if err := st.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate); err != nil {
		return fmt.Errorf("TCP receive buffer moderation: %s", err)
	}
	if err := st.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("promiscuous mode: %s", err)
	}
	if err := st.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("spoofing: %s", err)
	}
	return nil
}

// Send takes frames from the guest (through the gate). It never blocks on
// the guest side: DHCP replies and the stack's frames go out from the NAT's
// own goroutine.
func (n *NAT) Send(frames [][]byte) {
	for _, f := range frames {
		n.frames.Add(1)
		if r := DHCPReplyFrame(n.dhcp, NATMAC, f); r != nil {
			n.dhcpReplies.Add(1)
			select {
			case n.replies <- [][]byte{r}:
			default:
				n.dropped.Add(1)
			}
			continue
		}
		if arpForOther(f) {
			continue
		}
		n.ns.inject(f)
	}
}

// arpForOther reports an ARP request for an address other than the
// gateway's and UserHostLoopback: a spoofing NIC would answer it, claiming
// every address of the subnet, the guest's own included.
func arpForOther(f []byte) bool {
	if len(f) < header.EthernetMinimumSize+header.ARPSize || header.Ethernet(f).Type() != header.ARPProtocolNumber {
		return false
	}
	a := header.ARP(f[header.EthernetMinimumSize:])
	if !a.IsValid() || a.Op() != header.ARPRequest {
		return false
	}
	t := netip.AddrFrom4([4]byte(a.ProtocolAddressTarget()))
	return t != UserGateway && t != UserHostLoopback
}

// Stats returns the counters.
func (n *NAT) Stats() NATStats {
	return NATStats{Frames: n.frames.Load(), DHCPReplies: n.dhcpReplies.Load(), TCPForwarded: n.tcpForwarded.Load(),
		TCPRefused: n.tcpRefused.Load(), UDPForwarded: n.udpForwarded.Load(), UDPRefused: n.udpRefused.Load(),
		Blocked: n.blocked.Load(), DNSQueries: n.dnsQueries.Load(), DNSResolved: n.dnsResolved.Load(),
		FramesToGuest: n.toGuest.Load(), Dropped: n.dropped.Load()}
}

// Close stops the NAT and closes every forwarded flow.
func (n *NAT) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	cs := n.conns
	n.conns = nil
	n.mu.Unlock()
	n.cancel()
	for c := range cs {
		c.Close()
	}
	// Flows end once their connections are closed; a guest handshake in
	// progress waits for the guest's ACK until the stack is closed, so the
	// stack goes after a short grace period even if some are left.
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	n.ns.close()
	<-done
}

// enter counts a goroutine of the NAT in, unless it is closed.
func (n *NAT) enter() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	return true
}

// track registers c to be closed by Close; false if the NAT is closed.
func (n *NAT) track(cs ...io.Closer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	for _, c := range cs {
		n.conns[c] = struct{}{}
	}
	return true
}

func (n *NAT) untrack(cs ...io.Closer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range cs {
		delete(n.conns, c)
		c.Close()
	}
}

// outbound moves DHCP replies and the stack's frames to the guest.
func (n *NAT) outbound() {
	defer n.wg.Done()
	batches := make(chan [][]byte)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(batches)
		for {
			batch := n.ns.readBatch(n.ctx)
			if batch == nil {
				return
			}
			select {
			case batches <- batch:
			case <-n.ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case r := <-n.replies:
			n.toGuest.Add(uint64(len(r)))
			n.cfg.Deliver(r)
		case batch, ok := <-batches:
			if !ok {
				return
			}
			n.toGuest.Add(uint64(len(batch)))
			n.cfg.Deliver(batch)
		}
	}
}

// target maps a destination the guest addressed to the host address to
// dial; ok is false for destinations the NAT does not forward.
func target(dst netip.Addr, port uint16) (string, bool) {
	switch {
	case dst == UserHostLoopback:
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))), true
	case !dst.Is4(), UserSubnet.Contains(dst), !dst.IsGlobalUnicast(), dst.As4()[0] == 0:
		return "", false
	}
	return net.JoinHostPort(dst.String(), strconv.Itoa(int(port))), true
}

func addrOf(a tcpip.Address) netip.Addr {
	if a.Len() != 4 {
		return netip.Addr{}
	}
	return netip.AddrFrom4(a.As4())
}

// forwardTCP handles a guest SYN: it dials the host side first, so that a
// refused or unreachable destination is a RST to the guest, then completes
// the guest's handshake and splices the two connections.
func (n *NAT) forwardTCP(r *tcp.ForwarderRequest) {
	if !n.enter() {
		r.Complete(true)
		return
	}
	defer n.wg.Done()
	id := r.ID()
	dst, ok := target(addrOf(id.LocalAddress), id.LocalPort)
	if !ok {
		n.blocked.Add(1)
		r.Complete(true)
		return
	}
	select {
	case n.tcpSem <- struct{}{}:
	default:
		if !n.tcpFull.Swap(true) {
			n.cfg.Logf("nat: %d TCP connections open: refusing new ones until some close", maxNATTCP)
		}
		n.tcpRefused.Add(1)
		r.Complete(true)
		return
	}
	release := func() { <-n.tcpSem }
	ctx, cancel := context.WithTimeout(n.ctx, natDialTimeout)
	hc, err := n.cfg.Dial(ctx, "tcp", dst)
	cancel()
	if err != nil {
		n.tcpRefused.Add(1)
		r.Complete(true)
		release()
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		hc.Close()
		release()
		return
	}
	gc := gonet.NewTCPConn(&wq, ep)
	if !n.track(gc, hc) {
		gc.Close()
		hc.Close()
		release()
		return
	}
	n.tcpForwarded.Add(1)
	defer release()
	splice(gc, hc)
	n.untrack(gc, hc)
}

type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both directions ended, passing half-closes
// on.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// forwardUDP handles the first datagram of a guest UDP flow; false makes
// the stack answer ICMP port unreachable.
func (n *NAT) forwardUDP(r *udp.ForwarderRequest) bool {
	if !n.enter() {
		return false
	}
	defer n.wg.Done()
	id := r.ID()
	dst, ok := target(addrOf(id.LocalAddress), id.LocalPort)
	if !ok {
		n.blocked.Add(1)
		return false
	}
	select {
	case n.udpSem <- struct{}{}:
	default:
		if !n.udpFull.Swap(true) {
			n.cfg.Logf("nat: %d UDP flows open: refusing new ones until some end", maxNATUDP)
		}
		n.udpRefused.Add(1)
		return false
	}
	release := func() { <-n.udpSem }
	// A UDP "dial" sends nothing; it only picks the host's source address.
	hc, err := n.cfg.Dial(n.ctx, "udp", dst)
	if err != nil {
		n.udpRefused.Add(1)
		release()
		return false
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		hc.Close()
		release()
		return true
	}
	gc := gonet.NewUDPConn(&wq, ep)
	if !n.track(gc, hc) {
		gc.Close()
		hc.Close()
		release()
		return true
	}
	n.udpForwarded.Add(1)
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	relay := func(dst, src net.Conn) {
		buf := make([]byte, 65535)
		for {
			_ = src.SetReadDeadline(time.Now().Add(natUDPIdle))
			k, err := src.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < natUDPIdle {
					continue
				}
				break
			}
			last.Store(time.Now().UnixNano())
			if _, err := dst.Write(buf[:k]); err != nil && !isTransient(err) {
				break
			}
		}
		// Either side ending ends the flow: unblock the other reader.
		gc.Close()
		hc.Close()
	}
	if !n.enter() {
		n.untrack(gc, hc)
		release()
		return true
	}
	go func() {
		defer n.wg.Done()
		done := make(chan struct{})
		go func() { relay(hc, gc); close(done) }()
		relay(gc, hc)
		<-done
		n.untrack(gc, hc)
		release()
	}()
	return true
}

// isTransient reports a send error that does not end a UDP flow (an ICMP
// error reported on a connected socket, a full buffer).
func isTransient(err error) bool {
	var ne net.Error
	return !errors.Is(err, net.ErrClosed) && (errors.As(err, &ne) || errors.Is(err, io.ErrShortWrite))
}

// serveDNS answers DNS on UserGateway:53: the NAT's own names, then the
// host's resolver for IPv4 addresses.
func (n *NAT) serveDNS() error {
	c, err := n.ns.listenUDP(UserGateway, DNSPort)
	if err != nil {
		return fmt.Errorf("vnet: nat: dns: %w", err)
	}
	if !n.track(c) {
		c.Close()
		return errors.New("vnet: nat: closed")
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		serveUDP(c, func(p []byte, from net.Addr) bool {
			q := append([]byte(nil), p...)
			dq, ok := ParseDNSQuery(q)
			if !ok {
				return true
			}
			n.dnsQueries.Add(1)
			if a, ok := n.zone[dq.Name]; ok {
				_, _ = c.WriteTo(DNSReply(q, dq, []netip.Addr{a}, false), from)
				return true
			}
			select {
			case n.dnsSem <- struct{}{}:
			default:
				return true // the guest retries
			}
			if !n.enter() {
				<-n.dnsSem
				return false
			}
			go func() {
				defer n.wg.Done()
				defer func() { <-n.dnsSem }()
				_, _ = c.WriteTo(n.resolve(q, dq), from)
			}()
			return true
		})
	}()
	return nil
}

// resolve answers a query for a name outside the zone from the host's
// resolver: A records for A queries, an empty answer for other types of a
// name that exists, NXDOMAIN for one that does not.
func (n *NAT) resolve(q []byte, dq DNSQuery) []byte {
	ctx, cancel := context.WithTimeout(n.ctx, natDNSTimeout)
	defer cancel()
	addrs, err := n.cfg.Resolve(ctx, dq.Name)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return DNSReply(q, dq, nil, true)
	}
	if err == nil {
		n.dnsResolved.Add(1)
	}
	// A lookup that failed otherwise (timeout, no resolver) answers empty:
	// the guest's resolver tries again or gives up, nothing is cached.
	return DNSReply(q, dq, addrs, false)
}
