package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

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
