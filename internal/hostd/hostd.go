// Package hostd is the host daemon, gatevisor serve: on one TCP address
// (loopback by default) the merged Prometheus metrics of every VM this
// user can reach (GET /metrics), their events (GET /events), and the web
// dashboard (package dashboard); on a unix socket beside its token the
// same without a token for its own user and root, and login links.
//
//	TCP  /metrics, /events ── bearer token (the daemon's own user)
//	     /, /vm/...         ── dashboard session (a login link's cookie)
//	unix serve.sock         ── peer credentials: the daemon's uid or root; POST /login
//	unix login socket       ── (root daemons) any local user: POST /login only
//
// The daemon holds no state a monitor depends on: each VM is reached
// through its API socket, whose policy decides every request; a daemon
// that is down or slow weakens no gate. The cli parses flags into a
// Config and calls Run; whatever the daemon serves is wired here.
package hostd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/dashboard"
	"github.com/gatevisor/gatevisor/internal/fleet"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

// DefaultLoginSocket is where a root daemon takes login requests from
// every local user (its own serve.sock is in root's private state
// directory); gatevisor serve login looks there after the user's own.
const DefaultLoginSocket = "/run/gatevisor-serve/login.sock"

// Config configures the daemon.
type Config struct {
	// Listen is the TCP address (HOST:PORT).
	Listen string
	// MetricsWithoutToken serves /metrics to anyone who connects.
	MetricsWithoutToken bool
	// StateDir holds serve.token and serve.sock: a directory of the
	// daemon's user, mode 0700 ($XDG_STATE_HOME/gatevisor).
	StateDir string
	// LoginSocket, when set, is a socket every local user may connect to,
	// to ask for a login link (peer credentials name them). Only a root
	// daemon, which acts for each user, has a use for one.
	LoginSocket string
	// SessionTTL is a dashboard session's life (dashboard's default when 0).
	SessionTTL time.Duration
	// Log gets the daemon's notices (os.Stderr when nil).
	Log io.Writer

	// NATSListen, when set, embeds the fleet's NATS server (package fleet)
	// on that address (HOST:PORT), with JetStream's files in StateDir/nats
	// and every client authenticated by the daemon's token; fleet.json in
	// StateDir then tells run --fleet and the fleet commands where it is.
	NATSListen string
	// NATSURL, when set instead, is an existing NATS the daemon only
	// advertises in fleet.json (with NATSCredsFile, if any).
	NATSURL       string
	NATSCredsFile string
	NATSTokenFile string
	// NATSListenDefault says NATSListen is the default, not the user's
	// choice: if it is taken the daemon runs on without a fleet, saying so.
	NATSListenDefault bool
}

// scrapeTimeout bounds one VM's scrape.
const scrapeTimeout = 5 * time.Second

// TokenPath is where a daemon with state directory dir keeps its bearer
// token; the directory is created (0700) or checked.
func TokenPath(dir string) (string, error) {
	if err := safefile.Dir(dir, 0o700); err != nil {
		return "", fmt.Errorf("serve: %w", err)
	}
	return filepath.Join(dir, "serve.token"), nil
}

// SocketPath is the daemon's own unix socket in state directory dir.
func SocketPath(dir string) string { return filepath.Join(dir, "serve.sock") }

// Token returns the token in path, creating it (32 random bytes, hex,
// mode 0600) when there is none. A token file that is not a regular file
// of ours, or is readable by others, is refused.
func Token(path string) (string, error) {
	f, err := safefile.OpenFile(path, os.O_RDONLY, 0)
	if err == nil {
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return "", err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("serve: %s is readable by others (mode %v): remove it, a new one is made", path, fi.Mode().Perm())
		}
		b, err := io.ReadAll(io.LimitReader(f, 256))
		if err != nil {
			return "", err
		}
		tok := strings.TrimSpace(string(b))
		if len(tok) < 32 {
			return "", fmt.Errorf("serve: %s holds no token (under 32 characters): remove it, a new one is made", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("serve: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(raw[:])
	if err := safefile.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("serve: write the token: %w", err)
	}
	return tok, nil
}

// Run serves cfg until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	tokenPath, err := TokenPath(cfg.StateDir)
	if err != nil {
		return err
	}
	token, err := Token(tokenPath)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, such as 127.0.0.1:9464: %w", cfg.Listen, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		fmt.Fprintf(cfg.Log, "gatevisor serve: warning: %s is not a loopback address: the dashboard and the metrics are served to the network over plain HTTP (a login cookie or the token could be read on the way)\n", cfg.Listen)
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer l.Close()
	addr := l.Addr().String()
	if h, p, err := net.SplitHostPort(addr); err == nil && host == "localhost" {
		addr = net.JoinHostPort(host, p)
	} else if err == nil && (h == "::" || h == "0.0.0.0") {
		addr = net.JoinHostPort("127.0.0.1", p)
	}
	fc, stopFleet, err := startFleet(cfg, tokenPath, token)
	if err != nil {
		return err
	}
	defer stopFleet()
	d := newDaemon(token, cfg, "http://"+addr, dashboard.LoopbackHosts(l.Addr().String()))
	if fc != nil {
		fr := &fleetReader{conn: *fc}
		defer fr.close()
		d.dash.SetFleet(fr.view)
	}
	sockPath := SocketPath(cfg.StateDir)
	ul, err := listenUnix(sockPath, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(sockPath)
	listeners := []struct {
		l net.Listener
		h http.Handler
	}{{l, d.handler()}, {ul, d.socketHandler()}}
	if cfg.LoginSocket != "" {
		ldir := filepath.Dir(cfg.LoginSocket)
		if err := safefile.Dir(ldir, 0o755); err != nil {
			return fmt.Errorf("serve: the login socket's directory: %w", err)
		}
		if fi, err := os.Stat(ldir); err == nil && fi.Mode().Perm()&0o001 == 0 {
			fmt.Fprintf(cfg.Log, "gatevisor serve: warning: %s (mode %v) is closed to other users: they cannot reach the login socket in it (chmod 0755 it)\n", ldir, fi.Mode().Perm())
		}
		ll, err := listenUnix(cfg.LoginSocket, 0o666)
		if err != nil {
			return err
		}
		defer os.Remove(cfg.LoginSocket)
		listeners = append(listeners, struct {
			l net.Listener
			h http.Handler
		}{ll, d.loginHandler()})
	}
	fmt.Fprintf(cfg.Log, "gatevisor serve: dashboard on http://%s/ (log in with 'gatevisor serve login'), metrics on /metrics, events on /events; the bearer token is in %s; no token needed on %s\n", addr, tokenPath, sockPath)
	errc := make(chan error, len(listeners))
	var servers []*http.Server
	for _, x := range listeners {
		srv := &http.Server{Handler: x.h, ReadHeaderTimeout: 10 * time.Second, ConnContext: withPeer, MaxHeaderBytes: 64 << 10}
		servers = append(servers, srv)
		go func(l net.Listener) { errc <- srv.Serve(l) }(x.l)
	}
	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			_ = s.Shutdown(sctx)
		}
	}
	select {
	case err := <-errc:
		shutdown()
		return err
	case <-ctx.Done():
		shutdown()
		return nil
	}
}

// peerKey carries a unix-socket peer's credentials in a request's context.
type peerKey struct{}

// withPeer notes the credentials of a unix-socket connection's peer
// (SO_PEERCRED).
func withPeer(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) { cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, dashboard.Identity{UID: cred.Uid, GID: cred.Gid})
}

// peerOf returns the unix-socket peer of r; false over TCP.
func peerOf(r *http.Request) (dashboard.Identity, bool) {
	id, ok := r.Context().Value(peerKey{}).(dashboard.Identity)
	return id, ok
}

// listenUnix listens on the unix socket path with mode, in a directory
// only we control, replacing a stale socket of ours.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Type() != os.ModeSocket || !ok || int(st.Uid) != os.Geteuid() {
			return nil, fmt.Errorf("serve: %s exists and is not a socket of ours: remove it", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("serve: another gatevisor serve answers on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	if mode != 0o600 {
		if err := os.Chmod(path, mode); err != nil {
			l.Close()
			return nil, fmt.Errorf("serve: %w", err)
		}
	}
	return l, nil
}

// listVMs is the dashboard's view of vmdir.ListAll.
func listVMs() ([]dashboard.VM, error) {
	entries, err := vmdir.ListAll()
	if err != nil {
		return nil, err
	}
	out := make([]dashboard.VM, 0, len(entries))
	for _, e := range entries {
		out = append(out, dashboard.VM{Name: e.Name, Socket: filepath.Join(e.Path, vmdir.APISocket), Owner: e.Owner, Live: e.Live, Private: e.Private})
	}
	return out, nil
}

// startFleet starts the embedded NATS server of cfg, or advertises the
// existing one, and returns how to reach it (nil: no fleet) and how to
// stop it.
func startFleet(cfg Config, tokenPath, token string) (*fleet.Conn, func(), error) {
	switch {
	case cfg.NATSListen != "":
		s, err := fleet.StartServer(fleet.ServerOptions{Listen: cfg.NATSListen, StoreDir: filepath.Join(cfg.StateDir, "nats"), Token: token})
		if err != nil && cfg.NATSListenDefault {
			fmt.Fprintf(cfg.Log, "gatevisor serve: warning: no fleet: %v (give --nats-listen another address, or --no-fleet to silence this)\n", err)
			return nil, func() {}, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("serve: %w (--nats-listen another address, or --no-fleet)", err)
		}
		url := s.ClientURL()
		if err := fleet.WriteLocal(cfg.StateDir, fleet.Local{URL: url, TokenFile: tokenPath}); err != nil {
			s.Shutdown()
			return nil, nil, err
		}
		fmt.Fprintf(cfg.Log, "gatevisor serve: fleet NATS (JetStream) on %s; monitors join with 'gatevisor run --fleet'\n", url)
		return &fleet.Conn{URL: url, Token: token, Name: "gatevisor serve"}, func() { s.Shutdown(); s.WaitForShutdown() }, nil
	case cfg.NATSURL != "":
		if err := fleet.WriteLocal(cfg.StateDir, fleet.Local{URL: cfg.NATSURL, CredsFile: cfg.NATSCredsFile, TokenFile: cfg.NATSTokenFile}); err != nil {
			return nil, nil, err
		}
		c := &fleet.Conn{URL: cfg.NATSURL, CredsFile: cfg.NATSCredsFile, Name: "gatevisor serve"}
		if cfg.NATSTokenFile != "" {
			tok, err := fleet.ReadToken(cfg.NATSTokenFile)
			if err != nil {
				return nil, nil, err
			}
			c.Token = tok
		}
		fmt.Fprintf(cfg.Log, "gatevisor serve: fleet NATS at %s (not embedded)\n", cfg.NATSURL)
		return c, func() {}, nil
	}
	return nil, func() {}, nil
}

// fleetReader reads the fleet for the dashboard, over one connection made
// on first use.
type fleetReader struct {
	conn fleet.Conn
	mu   sync.Mutex
	nc   *nats.Conn
}

// fleetEvents is how many of the fleet's latest events the page shows.
const fleetEvents = 50

func (f *fleetReader) view(ctx context.Context) (dashboard.FleetView, error) {
	f.mu.Lock()
	if f.nc == nil {
		nc, err := f.conn.Connect(nats.RetryOnFailedConnect(false), nats.Timeout(5*time.Second))
		if err != nil {
			f.mu.Unlock()
			return dashboard.FleetView{}, err
		}
		f.nc = nc
	}
	nc := f.nc
	f.mu.Unlock()
	js, err := jetstream.New(nc)
	if err != nil {
		return dashboard.FleetView{}, err
	}
	v := dashboard.FleetView{Source: f.conn.URL}
	if v.States, err = fleet.List(ctx, js); err != nil {
		return v, err
	}
	if len(v.States) == 0 {
		return v, nil // nothing published yet: no events stream either
	}
	err = fleet.Events(ctx, js, fleet.EventsOptions{Last: fleetEvents}, func(e fleet.Event) error {
		v.Events = append(v.Events, e)
		return nil
	})
	return v, err
}

func (f *fleetReader) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.nc != nil {
		f.nc.Close()
	}
}
