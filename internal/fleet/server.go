//go:build !gatevisor_monitor

package fleet

// The embedded NATS server (gatevisor serve, bench fleet): not in the
// monitor's executable (built with -tags gatevisor_monitor), which only
// publishes to a fleet.

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// ServerOptions configure an embedded NATS server with JetStream.
type ServerOptions struct {
	Listen   string // HOST:PORT for clients ("127.0.0.1:4222"; port 0 picks one)
	StoreDir string // JetStream's files (created 0700)
	Token    string // every client must present it; "" is refused
	Name     string // the server's name (unique in a cluster); "" means the host's name

	// A cluster of embedded servers (tests; a real cluster is better run
	// as nats-server itself): this server's route address and its peers'.
	ClusterName   string
	ClusterListen string
	Routes        []string // nats-route://HOST:PORT
}

// StartServer starts an embedded NATS server with JetStream and waits
// until it takes connections.
func StartServer(o ServerOptions) (*server.Server, error) {
	if len(o.Token) < 16 {
		return nil, errors.New("fleet: the embedded NATS server needs a token of 16 characters or more")
	}
	host, port, err := splitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("fleet: NATS address %q: %w", o.Listen, err)
	}
	if port != server.RANDOM_PORT {
		// Say at once that the address is taken (the server would only
		// fail to become ready).
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return nil, fmt.Errorf("fleet: NATS address %s: %w", o.Listen, err)
		}
		l.Close()
	}
	if err := safefile.Dir(o.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("fleet: JetStream's directory: %w", err)
	}
	name := o.Name
	if name == "" {
		name = Hostname()
	}
	opts := &server.Options{
		ServerName:    name,
		Host:          host,
		Port:          port,
		Authorization: o.Token,
		JetStream:     true,
		StoreDir:      o.StoreDir,
		NoSigs:        true,
		NoLog:         true,
		MaxPayload:    2 << 20,
	}
	if o.ClusterListen != "" {
		ch, cp, err := splitHostPort(o.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("fleet: cluster address %q: %w", o.ClusterListen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: ch, Port: cp, Username: "route", Password: o.Token}
		for _, r := range o.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("fleet: route %q: want nats-route://HOST:PORT", r)
			}
			u.User = url.UserPassword("route", o.Token)
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("fleet: NATS server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("fleet: the NATS server did not take connections on %s within 10s (is the port in use?)", o.Listen)
	}
	return s, nil
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if n == 0 {
		n = server.RANDOM_PORT
	}
	return h, n, nil
}
