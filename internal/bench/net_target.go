package bench

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/vnet"
)

// netTarget is where the network workloads go: the isolated network's
// services (10.0.2.2), or, with --net user, listeners of this process on
// the host's loopback, which the guests reach through their NATs at
// 192.168.127.254.
type netTarget struct {
	net, addr, leasePrefix  string
	discard, http, echoPort int
}

var isolatedTarget = netTarget{net: "isolated", addr: vnet.GatewayAddr.String(), leasePrefix: "10.0.2.",
	discard: vnet.DiscardPort, http: vnet.HTTPPort, echoPort: vnet.EchoPort}

// targetFor returns the target of network mode netMode ("isolated" or
// "user") and a function that ends what serves it.
func targetFor(netMode string) (netTarget, func(), error) {
	if netMode != "user" {
		return isolatedTarget, func() {}, nil
	}
	h := &hostServices{conns: map[net.Conn]bool{}}
	t := netTarget{net: "user", addr: vnet.UserHostLoopback.String(), leasePrefix: "192.168.127."}
	if err := h.start(&t); err != nil {
		h.close()
		return t, nil, fmt.Errorf("host services: %w", err)
	}
	return t, h.close, nil
}

// hostServices serves discard, HTTP and echo on the host's 127.0.0.1.
type hostServices struct {
	srv *http.Server

	mu    sync.Mutex
	lns   []net.Listener
	conns map[net.Conn]bool
}

// start listens for the three services and records their ports in t.
func (h *hostServices) start(t *netTarget) error {
	h.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "gatevisor bench net\n")
	})}
	l, err := h.listen(&t.http)
	if err != nil {
		return err
	}
	go func() { _ = h.srv.Serve(l) }()
	for _, s := range []struct {
		port   *int
		handle func(net.Conn)
	}{
		{&t.discard, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }},
		{&t.echoPort, func(c net.Conn) { _, _ = io.Copy(c, c) }},
	} {
		l, err := h.listen(s.port)
		if err != nil {
			return err
		}
		go h.accept(l, s.handle)
	}
	return nil
}

// listen listens on a free port of 127.0.0.1 and stores it in port.
func (h *hostServices) listen(port *int) (net.Listener, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.lns = append(h.lns, l)
	h.mu.Unlock()
	*port = l.Addr().(*net.TCPAddr).Port
	return l, nil
}

// accept serves each connection of l with handle until l is closed.
func (h *hostServices) accept(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		h.conns[c] = true
		h.mu.Unlock()
		go func() {
			handle(c)
			c.Close()
			h.mu.Lock()
			delete(h.conns, c)
			h.mu.Unlock()
		}()
	}
}

// close ends every service and connection.
func (h *hostServices) close() {
	if h.srv != nil {
		h.srv.Close()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range h.lns {
		l.Close()
	}
	for c := range h.conns {
		c.Close()
	}
}
