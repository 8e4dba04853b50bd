package vnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// The isolated network's fixed addresses.
var (
	Subnet      = netip.MustParsePrefix("10.0.2.0/24")
	GatewayAddr = netip.MustParseAddr("10.0.2.2") // DHCP, DNS, echo, HTTP
	UpdateAddr  = netip.MustParseAddr("10.0.2.3") // the demo's update server
	FirstLease  = netip.MustParseAddr("10.0.2.15")
	LastLease   = netip.MustParseAddr("10.0.2.254")
	ServicesMAC = MAC{0x02, 0x67, 0x76, 0x00, 0x02, 0x02}
)

// Domain is the DNS zone the services answer for.
const Domain = "gatevisor"

// Service ports on GatewayAddr.
const (
	EchoPort    = 7  // TCP and UDP echo
	DiscardPort = 9  // TCP discard
	HTTPPort    = 80 // HTTP: see Services.httpHandler
	DNSPort     = 53
)

// Services is the host side of an isolated network: a gVisor netstack
// holding GatewayAddr and UpdateAddr, with forwarding off, and gatevisor's
// own services on it. Nothing in it opens a host socket.
type Services struct {
	ns      *netstack
	port    Port
	dhcp    *DHCPServer
	zone    map[string]netip.Addr
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closers []io.Closer

	Frames, DHCPReplies, Discarded atomic.Uint64
}

// NewServices attaches the services to sw.
func NewServices(sw *Switch) (*Services, error) {
	s := &Services{
		dhcp: &DHCPServer{Server: GatewayAddr, Mask: netip.AddrFrom4([4]byte{255, 255, 255, 0}), First: FirstLease, Last: LastLease, Domain: Domain},
		zone: map[string]netip.Addr{
			"gateway." + Domain: GatewayAddr, "host." + Domain: GatewayAddr,
			"updates." + Domain: UpdateAddr,
		},
	}
	ns, err := newNetstack(ServicesMAC, Subnet, GatewayAddr, UpdateAddr)
	if err != nil {
		return nil, fmt.Errorf("vnet: %w", err)
	}
	s.ns = ns
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.port = sw.Attach(s.deliver)
	if err := s.serve(); err != nil {
		s.Close()
		return nil, err
	}
	s.wg.Add(1)
	go s.outbound()
	return s, nil
}

// Close stops the services and detaches them from the switch.
func (s *Services) Close() {
	s.cancel()
	for _, c := range s.closers {
		c.Close()
	}
	s.port.Close()
	s.ns.close()
	s.wg.Wait()
}

// deliver takes frames from the switch: DHCP is answered here, everything
// else goes to the stack. Frames are read, never modified.
func (s *Services) deliver(frames [][]byte) {
	var replies [][]byte
	for _, f := range frames {
		s.Frames.Add(1)
		if r := s.dhcpReply(f); r != nil {
			replies = append(replies, r)
			continue
		}
		s.ns.inject(f)
	}
	if len(replies) > 0 {
		s.DHCPReplies.Add(uint64(len(replies)))
		s.port.Send(replies)
	}
}

// dhcpReply answers a DHCP request frame, or returns nil if f is not one.
func (s *Services) dhcpReply(f []byte) []byte { return DHCPReplyFrame(s.dhcp, ServicesMAC, f) }

// outbound moves the stack's frames to the switch, in batches.
func (s *Services) outbound() {
	defer s.wg.Done()
	for {
		batch := s.ns.readBatch(s.ctx)
		if batch == nil {
			return
		}
		s.port.Send(batch)
	}
}

func (s *Services) listen(a netip.Addr, port uint16, serve func(net.Conn)) error {
	l, err := gonet.ListenTCP(s.ns.st, s.ns.full(a, port), ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("vnet: listen %s:%d: %w", a, port, err)
	}
	s.closers = append(s.closers, l)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return nil
}

func (s *Services) serve() error {
	idle := func(c net.Conn) { _ = c.SetDeadline(time.Now().Add(5 * time.Minute)) }
	if err := s.listen(GatewayAddr, EchoPort, func(c net.Conn) { idle(c); _, _ = io.Copy(c, c) }); err != nil {
		return err
	}
	if err := s.listen(GatewayAddr, DiscardPort, func(c net.Conn) {
		idle(c)
		n, _ := io.Copy(io.Discard, c)
		s.Discarded.Add(uint64(n))
	}); err != nil {
		return err
	}
	for _, a := range []netip.Addr{GatewayAddr, UpdateAddr} {
		l, err := gonet.ListenTCP(s.ns.st, s.ns.full(a, HTTPPort), ipv4.ProtocolNumber)
		if err != nil {
			return fmt.Errorf("vnet: listen %s:%d: %w", a, HTTPPort, err)
		}
		srv := &http.Server{Handler: s.httpHandler(a), ReadHeaderTimeout: 10 * time.Second}
		s.closers = append(s.closers, srv)
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = srv.Serve(l) }()
	}
	for _, p := range []uint16{EchoPort, DNSPort} {
		c, err := s.ns.listenUDP(GatewayAddr, p)
		if err != nil {
			return fmt.Errorf("vnet: %w", err)
		}
		s.closers = append(s.closers, c)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			serveUDP(c, func(out []byte, from net.Addr) bool {
				if p == DNSPort {
					if out = DNSAnswer(out, s.zone); out == nil {
						return true
					}
				}
				_, _ = c.WriteTo(out, from)
				return true
			})
		}()
	}
	return nil
}

// httpHandler serves:
//
//	GET  /              a greeting naming the address
//	POST /discard       reads the body, answers its size
//	GET  /bytes?n=N     N bytes (at most 64 MiB)
//	GET  /dial?port=P   connects back to the caller's port P and says whether
//	                    it could: an inbound connection for the caller's gate
func (s *Services) httpHandler(a netip.Addr) http.Handler {
	mux := http.NewServeMux()
	if a == UpdateAddr {
		mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, "gatevisor update server: firmware 2.0 available")
		})
		return mux
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "gatevisor host service at %s\n", a) })
	mux.HandleFunc("/discard", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		s.Discarded.Add(uint64(n))
		fmt.Fprintf(w, "%d\n", n)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > 64<<20 {
			http.Error(w, "n: 0 to 67108864", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		chunk := make([]byte, 32<<10)
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		port, err := strconv.ParseUint(r.URL.Query().Get("port"), 10, 16)
		if err != nil || port == 0 {
			http.Error(w, "port: 1 to 65535", http.StatusBadRequest)
			return
		}
		peer, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, s.dialBack(r.Context(), peer.Addr(), uint16(port)))
	})
	return mux
}

// dialBack connects to addr:port from GatewayAddr and reports the outcome:
// "connected", "refused" or "timeout".
func (s *Services) dialBack(ctx context.Context, addr netip.Addr, port uint16) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, s.ns.st, s.ns.full(addr, port), ipv4.ProtocolNumber)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && ctx.Err() == nil {
			return "refused"
		}
		if ctx.Err() != nil {
			return "timeout"
		}
		return "refused"
	}
	c.Close()
	return "connected"
}
