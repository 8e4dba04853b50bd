package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/metrics"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

func init() {
	addSubcommand(newServeCmd)
	addSubcommand(newMetricsCmd)
}

// scrapeTimeout bounds one VM's scrape by gatevisor serve.
const scrapeTimeout = 5 * time.Second

func newServeCmd() *cobra.Command {
	var (
		listen        string
		openMetrics   bool
		tokenFileFlag bool
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "The host daemon: every running VM's Prometheus metrics on one TCP address",
		Long: `Serve, on --listen (loopback by default), GET /metrics: the Prometheus
metrics of every VM this user can reach (its own, and root's that root
shares), each VM's from its monitor's API socket (the policy's API gate
decides, as action vm.metrics), merged into one exposition, plus
gatevisor_serve_* metrics about the scrape itself; and GET /events, every
such VM's events as server-sent events (?format=jsonl: JSON lines). A VM
that does not answer is left out of that scrape and counted; no monitor
depends on the daemon. contrib/systemd/gatevisor-serve.service runs it
under systemd.

Every request over TCP needs "Authorization: Bearer TOKEN": the daemon
would otherwise hand its user's VMs (root's, under systemd) to every local
user who can reach the port. The same endpoints are served without a
token on a unix socket only the daemon's user (and root) may use,
serve.sock beside the token (curl --unix-socket PATH http://x/metrics). The token is in a file only its user can read,
$XDG_STATE_HOME/gatevisor/serve.token (~/.local/state/...), created on the
first start and kept (a Prometheus scrape config names it as
authorization.credentials_file); --token-file prints its path.
--metrics-without-token serves /metrics to anyone who can connect.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tokenPath, err := serveTokenPath()
			if err != nil {
				return err
			}
			if tokenFileFlag {
				fmt.Fprintln(cmd.OutOrStdout(), tokenPath)
				return nil
			}
			token, err := serveToken(tokenPath)
			if err != nil {
				return err
			}
			host, _, err := net.SplitHostPort(listen)
			if err != nil {
				return fmt.Errorf("--listen %q: want HOST:PORT, such as 127.0.0.1:9464: %w", listen, err)
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				fmt.Fprintf(os.Stderr, "gatevisor serve: warning: %s is not a loopback address: the metrics (VM names, policy digests, counts) are served to the network without authentication\n", listen)
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d := &daemon{token: token, openMetrics: openMetrics}
			srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute,
				ConnContext: withPeer}
			sockPath := filepath.Join(filepath.Dir(tokenPath), "serve.sock")
			ul, err := listenUnix(sockPath)
			if err != nil {
				l.Close()
				return err
			}
			defer os.Remove(sockPath)
			fmt.Fprintf(os.Stderr, "gatevisor serve: metrics on http://%s/metrics, events on /events; the bearer token is in %s; no token needed on %s\n", l.Addr(), tokenPath, sockPath)
			errc := make(chan error, 2)
			go func() { errc <- srv.Serve(l) }()
			go func() { errc <- srv.Serve(ul) }()
			select {
			case err := <-errc:
				return err
			case <-ctx.Done():
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return srv.Shutdown(sctx)
			}
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9464", "TCP address to serve on (HOST:PORT; loopback unless you mean otherwise)")
	cmd.Flags().BoolVar(&openMetrics, "metrics-without-token", false, "serve /metrics without the bearer token (any local user then reads your VMs' metrics)")
	cmd.Flags().BoolVar(&tokenFileFlag, "token-file", false, "print the token file's path and exit")
	return cmd
}

// serveTokenPath is where gatevisor serve keeps its bearer token.
func serveTokenPath() (string, error) {
	base, err := stateBase()
	if err != nil {
		return "", fmt.Errorf("serve: the token's directory: %w", err)
	}
	dir := filepath.Join(base, "gatevisor")
	if err := safefile.Dir(dir, 0o700); err != nil {
		return "", fmt.Errorf("serve: %w", err)
	}
	return filepath.Join(dir, "serve.token"), nil
}

// serveToken returns the token in path, creating it (32 random bytes, hex,
// mode 0600) when there is none. A token file that is not a regular file
// of ours, or is readable by others, is refused.
func serveToken(path string) (string, error) {
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

// daemon is gatevisor serve's state.
type daemon struct {
	token       string // every request's bearer token
	openMetrics bool   // /metrics needs no token

	mu       sync.Mutex
	scrapes  uint64
	failures map[string]uint64 // by VM
}

func (d *daemon) handler() http.Handler {
	mux := http.NewServeMux()
	if d.openMetrics {
		mux.HandleFunc("GET /metrics", d.metrics)
	} else {
		mux.HandleFunc("GET /metrics", d.authorized(d.metrics))
	}
	mux.HandleFunc("GET /events", d.authorized(d.events))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "gatevisor serve: GET /metrics (Prometheus), GET /events (every VM's events as server-sent events; ?format=jsonl for JSON lines)\n")
	})
	return mux
}

// peerKey carries a unix-socket peer's uid in a request's context.
type peerKey struct{}

// withPeer notes the uid of a unix-socket connection's peer (SO_PEERCRED).
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
	return context.WithValue(ctx, peerKey{}, cred.Uid)
}

// listenUnix listens on the unix socket path (mode 0600, in a directory
// only we control), replacing a stale socket of ours.
func listenUnix(path string) (net.Listener, error) {
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
	return l, nil
}

// authorized lets through requests from the daemon's user (or root) on the
// unix socket, and requests with the daemon's bearer token.
func (d *daemon) authorized(h http.HandlerFunc) http.HandlerFunc {
	want := []byte("Bearer " + d.token)
	self := uint32(os.Geteuid())
	return func(w http.ResponseWriter, r *http.Request) {
		if uid, ok := r.Context().Value(peerKey{}).(uint32); ok && (uid == self || uid == 0) {
			h(w, r)
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gatevisor"`)
			http.Error(w, "gatevisor serve: send Authorization: Bearer TOKEN, the token in the file 'gatevisor serve --token-file' names", http.StatusUnauthorized)
			return
		}
		h(w, r)
	}
}

// metrics scrapes every live VM in parallel and merges their metrics.
func (d *daemon) metrics(w http.ResponseWriter, r *http.Request) {
	entries, err := vmdir.ListAll()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	type got struct {
		name string
		body []byte
		err  error
	}
	var (
		wg      sync.WaitGroup
		results = make(chan got, len(entries))
	)
	for _, e := range entries {
		if !e.Live || e.Private {
			continue
		}
		wg.Add(1)
		go func(e vmdir.Entry) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(r.Context(), scrapeTimeout)
			defer cancel()
			b, err := apiclient.New(filepath.Join(e.Path, vmdir.APISocket)).Metrics(ctx)
			results <- got{e.Name, b, err}
		}(e)
	}
	wg.Wait()
	close(results)
	// A monitor whose answer does not parse is left out (and counted),
	// so that it cannot hide the others.
	ins := map[string]io.Reader{}
	var failed []string
	for g := range results {
		if g.err == nil {
			g.err = metrics.Merge(io.Discard, map[string]io.Reader{g.name: bytes.NewReader(g.body)})
		}
		if g.err != nil {
			failed = append(failed, g.name)
			continue
		}
		ins[g.name] = bytes.NewReader(g.body)
	}
	d.mu.Lock()
	d.scrapes++
	if d.failures == nil {
		d.failures = map[string]uint64{}
	}
	for _, n := range failed {
		d.failures[n]++
	}
	own := d.ownMetrics(len(ins))
	d.mu.Unlock()
	var b bytes.Buffer
	if err := metrics.Merge(&b, ins); err != nil {
		// Monitors of different versions that disagree on a family.
		http.Error(w, "gatevisor serve: "+err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", api.MetricsContentType)
	_, _ = w.Write(b.Bytes())
	_, _ = io.WriteString(w, own)
}

// ownMetrics is the daemon's own metrics, in the text format.
//
// Preconditions: d.mu held.
func (d *daemon) ownMetrics(vms int) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# HELP gatevisor_serve_vms VMs whose metrics this scrape merged.\n# TYPE gatevisor_serve_vms gauge\ngatevisor_serve_vms %d\n", vms)
	fmt.Fprintf(&b, "# HELP gatevisor_serve_scrapes_total Scrapes of /metrics served.\n# TYPE gatevisor_serve_scrapes_total counter\ngatevisor_serve_scrapes_total %d\n", d.scrapes)
	names := make([]string, 0, len(d.failures))
	for n := range d.failures {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) > 0 {
		b.WriteString("# HELP gatevisor_serve_scrape_failures_total Scrapes of a VM's monitor that failed (left out of that scrape).\n# TYPE gatevisor_serve_scrape_failures_total counter\n")
		for _, n := range names {
			fmt.Fprintf(&b, "gatevisor_serve_scrape_failures_total{vm=%q} %d\n", n, d.failures[n])
		}
	}
	return b.String()
}

// vmRescan is how often /events looks for VMs that started since.
const vmRescan = 2 * time.Second

// events streams every reachable VM's events, the recent ones first, then
// new ones as they come, also from VMs that start meanwhile: as server-sent
// events (event: the type, data: the event's JSON line, which names its
// VM), or with ?format=jsonl as JSON lines.
func (d *daemon) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	jsonl := r.URL.Query().Get("format") == "jsonl"
	if jsonl {
		w.Header().Set("Content-Type", "application/x-ndjson")
	} else {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	ctx := r.Context()
	lines := make(chan []byte, 256)
	ended := make(chan string, 16)
	following := map[string]bool{}
	follow := func() {
		entries, err := vmdir.ListAll()
		if err != nil {
			return
		}
		for _, e := range entries {
			if !e.Live || e.Private || following[e.Path] {
				continue
			}
			following[e.Path] = true
			go func(e vmdir.Entry) {
				defer func() {
					// Followed again if it comes back (a restart by name).
					select {
					case ended <- e.Path:
					case <-ctx.Done():
					}
				}()
				body, err := apiclient.New(filepath.Join(e.Path, vmdir.APISocket)).QueryEvents(ctx, api.EventsQuery{Follow: true, Limit: 20})
				if err != nil {
					return
				}
				defer body.Close()
				sc := bufio.NewScanner(body)
				sc.Buffer(make([]byte, 64<<10), maxEventLine)
				for sc.Scan() {
					line := append([]byte(nil), sc.Bytes()...)
					select {
					case lines <- line:
					case <-ctx.Done():
						return
					}
				}
			}(e)
		}
	}
	follow()
	tick := time.NewTicker(vmRescan)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			follow()
		case path := <-ended:
			delete(following, path)
		case line := <-lines:
			var head struct {
				Type string `json:"type"`
			}
			_ = json.Unmarshal(line, &head)
			if jsonl {
				_, _ = w.Write(append(line, '\n'))
			} else {
				fmt.Fprintf(w, "event: %s\ndata: %s\n\n", sseField(head.Type), line)
			}
			flusher.Flush()
		}
	}
}

// sseField keeps an SSE field value on one line of safe characters.
func sseField(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "message"
	}
	return b.String()
}

func newMetricsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "metrics NAME",
		Short: "Print a VM's Prometheus metrics (text exposition format)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			b, err := c.Metrics(ctx)
			if err != nil {
				return err
			}
			if len(b) == 0 {
				return errors.New("metrics: the monitor answered nothing")
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
}
