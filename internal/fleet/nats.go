package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// Conn says how to reach the fleet's NATS.
type Conn struct {
	URL       string // nats://HOST:PORT[,nats://...]
	Token     string // a token (the embedded server's)
	CredsFile string // or a NATS credentials file (JWT + nkey seed), for an existing cluster
	CAFile    string // TLS: the CA that signed the servers' certificates (tls:// URLs)
	CertFile  string // TLS client certificate and key, if the servers ask for one
	KeyFile   string
	Name      string // the connection's name, shown by the servers
}

// Connect dials c. Reconnects go on for ever (a monitor's publisher waits
// for the fleet rather than giving up).
func (c Conn) Connect(extra ...nats.Option) (*nats.Conn, error) {
	if c.URL == "" {
		return nil, errors.New("fleet: no NATS address: start `gatevisor serve` (it embeds NATS) or give --nats nats://HOST:PORT")
	}
	opts := []nats.Option{
		nats.Name(c.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectBufSize(-1), // publishes fail fast while down; the files are the buffer
		nats.RetryOnFailedConnect(true),
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.CredsFile != "" {
		if err := safefile.CheckRegular(c.CredsFile); err != nil {
			return nil, fmt.Errorf("fleet: --nats-creds: %w", err)
		}
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.CAFile))
	}
	if c.CertFile != "" || c.KeyFile != "" {
		opts = append(opts, nats.ClientCert(c.CertFile, c.KeyFile))
	}
	nc, err := nats.Connect(c.URL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("fleet: connect to %s: %w", c.URL, err)
	}
	return nc, nil
}

// StreamOptions size the fleet's streams.
type StreamOptions struct {
	Replicas int           // 1 on one server; 3 in a 3-node cluster
	MaxAge   time.Duration // 0: 7 days
	MaxBytes int64         // 0: 1 GiB
}

// EnsureStreams creates the fleet's streams if they are missing (an
// existing stream is kept as configured: an operator may have resized it).
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MaxAge == 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 1 << 30
	}
	cfgs := []jetstream.StreamConfig{{
		Name:        EventsStream,
		Description: "gatevisor: every monitor's audit records and event stream",
		Subjects: []string{
			Root + ".*.*." + KindAudit,
			Root + ".*.*.ids.*",
			Root + ".*.*.decision.*",
			Root + ".*.*.notice.*",
		},
		Storage:    jetstream.FileStorage,
		Replicas:   o.Replicas,
		MaxAge:     o.MaxAge,
		MaxBytes:   o.MaxBytes,
		Duplicates: time.Hour,
		Discard:    jetstream.DiscardOld,
	}, {
		Name:              StateStream,
		Description:       "gatevisor: every monitor's last state",
		Subjects:          []string{Root + ".*.*." + KindState},
		Storage:           jetstream.FileStorage,
		Replicas:          o.Replicas,
		MaxMsgsPerSubject: 1,
		MaxAge:            o.MaxAge,
	}}
	for _, cfg := range cfgs {
		_, err := js.CreateStream(ctx, cfg)
		if err == nil || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			continue
		}
		return fmt.Errorf("fleet: create stream %s: %w", cfg.Name, err)
	}
	return nil
}

// ReadToken reads a token file: a regular file of ours (or root's) that
// others cannot read.
func ReadToken(path string) (string, error) {
	f, err := safefile.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return "", fmt.Errorf("fleet: token: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("fleet: %s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	b := make([]byte, 257)
	n, _ := f.Read(b)
	tok := strings.TrimSpace(string(b[:n]))
	if n > 256 || tok == "" {
		return "", fmt.Errorf("fleet: %s does not hold a token", path)
	}
	return tok, nil
}
