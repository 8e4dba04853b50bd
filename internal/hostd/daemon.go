package hostd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/dashboard"
	"github.com/gatevisor/gatevisor/internal/metrics"
)

// daemon is gatevisor serve's state: the wiring root of what it serves.
type daemon struct {
	token       string // every TCP request's bearer token, but the dashboard's
	openMetrics bool   // /metrics needs no token
	self        uint32 // the daemon's uid
	dash        *dashboard.Dashboard
	// vms lists the VMs (vmdir.ListAll; tests replace it).
	vms func() ([]dashboard.VM, error)

	mu       sync.Mutex
	scrapes  uint64
	failures map[string]uint64 // by VM
}

// newDaemon wires the daemon: base is the dashboard's URL, hosts the Host
// headers it is served as (nil: any).
func newDaemon(token string, cfg Config, base string, hosts []string) *daemon {
	self := dashboard.Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	d := &daemon{token: token, openMetrics: cfg.MetricsWithoutToken, self: self.UID, vms: listVMs}
	d.dash = dashboard.New(dashboard.Config{VMs: func() ([]dashboard.VM, error) { return d.vms() }, BaseURL: base, Hosts: hosts,
		Delegate: self.UID == 0, Self: self, SessionTTL: cfg.SessionTTL})
	return d
}

// handler serves TCP: the token's endpoints, and the dashboard.
func (d *daemon) handler() http.Handler {
	mux := http.NewServeMux()
	if d.openMetrics {
		mux.HandleFunc("GET /metrics", d.metrics)
	} else {
		mux.HandleFunc("GET /metrics", d.authorized(d.metrics))
	}
	mux.HandleFunc("GET /events", d.authorized(d.events))
	mux.Handle("/", d.dash.Handler())
	return mux
}

// socketHandler serves the daemon's own unix socket: the token's
// endpoints to its uid and root, and login links.
func (d *daemon) socketHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", d.authorized(d.metrics))
	mux.HandleFunc("GET /events", d.authorized(d.events))
	mux.Handle("POST /login", d.dash.LoginHandler(peerOf))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "gatevisor serve's socket: GET /metrics, GET /events, POST /login (gatevisor serve login)", http.StatusNotFound)
	})
	return mux
}

// loginHandler serves the login socket: login links, nothing else.
func (d *daemon) loginHandler() http.Handler { return d.dash.LoginHandler(peerOf) }

// authorized lets through requests from the daemon's user (or root) on the
// unix socket, and requests with the daemon's bearer token.
func (d *daemon) authorized(h http.HandlerFunc) http.HandlerFunc {
	want := []byte("Bearer " + d.token)
	return func(w http.ResponseWriter, r *http.Request) {
		if id, ok := peerOf(r); ok && (id.UID == d.self || id.UID == 0) {
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
	vms, err := d.vms()
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
		results = make(chan got, len(vms))
	)
	for _, v := range vms {
		if !v.Live || v.Private {
			continue
		}
		wg.Add(1)
		go func(v dashboard.VM) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(r.Context(), scrapeTimeout)
			defer cancel()
			b, err := apiclient.New(v.Socket).Metrics(ctx)
			results <- got{v.Name, b, err}
		}(v)
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

// maxEventLine bounds one event's JSON line.
const maxEventLine = 1 << 20

// events streams every reachable VM's events, the recent ones first, then
// new ones as they come, also from VMs that start meanwhile: as server-sent
// events (event: the type, data: the event's JSON line, which names its
// VM), or with ?format=jsonl as JSON lines.
func (d *daemon) events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	jsonl := r.URL.Query().Get("format") == "jsonl"
	if jsonl {
		w.Header().Set("Content-Type", "application/x-ndjson")
	} else {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return
	}
	ctx := r.Context()
	lines := make(chan []byte, 256)
	ended := make(chan string, 16)
	following := map[string]bool{}
	follow := func() {
		vms, err := d.vms()
		if err != nil {
			return
		}
		for _, v := range vms {
			if !v.Live || v.Private || following[v.Socket] {
				continue
			}
			following[v.Socket] = true
			go func(v dashboard.VM) {
				defer func() {
					// Followed again if it comes back (a restart by name).
					select {
					case ended <- v.Socket:
					case <-ctx.Done():
					}
				}()
				body, err := apiclient.New(v.Socket).QueryEvents(ctx, api.EventsQuery{Follow: true, Limit: 20})
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
			}(v)
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
			// A reader that takes nothing for a minute is dropped; a
			// stream that flows may last as long as it likes.
			_ = rc.SetWriteDeadline(time.Now().Add(time.Minute))
			if jsonl {
				_, _ = w.Write(append(line, '\n'))
			} else {
				fmt.Fprintf(w, "event: %s\ndata: %s\n\n", sseField(head.Type), line)
			}
			if rc.Flush() != nil {
				return
			}
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
