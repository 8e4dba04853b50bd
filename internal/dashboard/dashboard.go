// Package dashboard is gatevisor serve's web dashboard: server-rendered
// pages (html/template: everything the guest chose, such as process names,
// paths and event text, is escaped where it is written) and a little
// JavaScript, all embedded, no external resource.
//
//	browser ──TCP── session cookie + CSRF token ─► Dashboard ─► apiclient ─► each VM's API socket
//	gatevisor serve login ──unix socket (SO_PEERCRED)── LoginHandler ─► one-time login link
//
// The dashboard decides nothing about VMs: every read and every action is a
// request to the VM's own API, whose policy (the API gate) decides it as
// for any caller, and a refusal is shown with the policy's words. The
// caller the API sees is the session's user when the daemon is root
// (api.OnBehalfOfHeader), else the daemon's own user. What the dashboard
// does decide is who may log in: a link is given only to the peer of a
// unix socket, whose credentials the kernel vouches for.
package dashboard

import (
	"context"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static/*
var staticFS embed.FS

// VM is one VM the dashboard can show: where its API answers.
type VM struct {
	Name   string
	Socket string // the API socket
	Owner  uint32 // the uid its runtime directory belongs to
	// Live says a monitor runs it; Private that its API is closed to the
	// daemon's user.
	Live, Private bool
}

// Config configures a Dashboard.
type Config struct {
	// VMs lists the VMs to show (the daemon's vmdir.ListAll).
	VMs func() ([]VM, error)
	// BaseURL is where browsers reach the dashboard ("http://127.0.0.1:9464"):
	// login links start with it.
	BaseURL string
	// Hosts, when set, are the only Host headers served (HOST:PORT): a
	// loopback dashboard then refuses a page that reached it through a
	// rebound DNS name.
	Hosts []string
	// Delegate says the daemon runs as root and makes each session's calls
	// as its user (api.OnBehalfOfHeader); otherwise every call is Self's.
	Delegate bool
	// Self is the daemon's own user.
	Self Identity
	// SessionTTL is a session's life (8 h when 0), TicketTTL a login
	// link's (60 s when 0).
	SessionTTL, TicketTTL time.Duration
	// Now is the clock (time.Now when nil; tests).
	Now func() time.Time
	// Fleet, when set, reads the fleet (package fleet) for the fleet page.
	Fleet func(ctx context.Context) (FleetView, error)
}

// Dashboard serves the pages; one per daemon.
type Dashboard struct {
	cfg   Config
	pages map[string]*template.Template

	mu       sync.Mutex
	tickets  map[string]ticket   // by secret
	sessions map[string]*session // by cookie value
	clients  map[string]*apiclient.Client
}

// callTimeout bounds one API call of a page.
const callTimeout = 20 * time.Second

// New returns the dashboard cfg describes.
func New(cfg Config) *Dashboard {
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.TicketTTL == 0 {
		cfg.TicketTTL = time.Minute
	}
	d := &Dashboard{cfg: cfg, pages: map[string]*template.Template{}, tickets: map[string]ticket{},
		sessions: map[string]*session{}, clients: map[string]*apiclient.Client{}}
	for _, p := range []string{"index", "vm", "check", "login", "error", "fleet"} {
		d.pages[p] = template.Must(template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html"))
	}
	return d
}

func (d *Dashboard) now() time.Time {
	if d.cfg.Now != nil {
		return d.cfg.Now()
	}
	return time.Now()
}

var funcs = template.FuncMap{
	"short": func(s string, n int) string {
		if len(s) > n {
			return s[:n]
		}
		return s
	},
	"ago":     func(t time.Time) string { return time.Since(t).Round(time.Second).String() },
	"stale":   func(t time.Time) bool { return time.Since(t) > 15*time.Second },
	"join":    strings.Join,
	"counts":  counts[uint64],
	"icounts": counts[int],
	"mib":     mib,
	"ms":      ms,
	// when writes a time as the host's clock reads it.
	"when": func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05 MST") },
}

// counts writes a map of counts as "k1 n1, k2 n2", by key.
func counts[N uint64 | int](m map[string]N) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}

// SetFleet gives the dashboard the fleet to show on /fleet (before it
// serves).
func (d *Dashboard) SetFleet(f func(ctx context.Context) (FleetView, error)) { d.cfg.Fleet = f }

// Handler serves the dashboard on TCP: the pages need a session; the
// login link and the static files do not.
func (d *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", d.login)
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		d.renderLogin(w, http.StatusForbidden, "login links are given only on gatevisor serve's unix socket, which vouches for who asks")
	})
	mux.HandleFunc("POST /logout", d.authed(d.logout, true))
	mux.HandleFunc("GET /{$}", d.authed(d.index, false))
	mux.HandleFunc("GET /fleet", d.authed(d.fleetPage, false))
	mux.HandleFunc("GET /vm/{name}", d.authed(d.vmPage, false))
	mux.HandleFunc("GET /vm/{name}/stream", d.authed(d.stream, false))
	mux.HandleFunc("GET /vm/{name}/check", d.authed(d.checkPage, false))
	mux.HandleFunc("POST /vm/{name}/proc/{action}", d.authed(d.proc, true))
	mux.HandleFunc("POST /vm/{name}/policy", d.authed(d.policy, true))
	mux.HandleFunc("POST /vm/{name}/net/{action}", d.authed(d.net, true))
	mux.HandleFunc("POST /vm/{name}/snapshot", d.authed(d.snapshot, true))
	mux.HandleFunc("POST /vm/{name}/snapshot/remove", d.authed(d.removeSnapshot, true))
	mux.HandleFunc("POST /vm/{name}/rollback", d.authed(d.rollback, true))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		d.renderError(w, r, nil, http.StatusNotFound, fmt.Sprintf("no page %s %s: the dashboard's pages are /, /vm/NAME and /fleet", r.Method, r.URL.Path))
	})
	return d.secure(mux)
}

// secure sets the headers every answer carries and refuses Host headers
// the dashboard is not served as.
func (d *Dashboard) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: under no-referrer a browser sends
		// "Origin: null" with the dashboard's own form posts, which the CSRF
		// check refuses; other sites never get a referrer either way.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Frame-Options", "DENY")
		if len(d.cfg.Hosts) > 0 && !hostAllowed(r.Host, d.cfg.Hosts) {
			http.Error(w, fmt.Sprintf("gatevisor serve: Host %q is not this dashboard's (%s): open the login link as printed", r.Host, strings.Join(d.cfg.Hosts, ", ")), http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func hostAllowed(host string, allowed []string) bool {
	for _, a := range allowed {
		if strings.EqualFold(host, a) {
			return true
		}
	}
	return false
}

// LoopbackHosts are the Host headers a dashboard listening on the loopback
// address addr (HOST:PORT) is reached as; nil for another address (any
// Host is then served).
func LoopbackHosts(addr string) []string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil
	}
	return []string{net.JoinHostPort("127.0.0.1", port), net.JoinHostPort("localhost", port), net.JoinHostPort("::1", port), net.JoinHostPort(host, port)}
}

// authed runs h for requests with a live session (and, for posts, the
// session's CSRF token); others get the login page or a refusal.
func (d *Dashboard) authed(h func(http.ResponseWriter, *http.Request, *session), post bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, why := d.sessionOf(r)
		if s == nil {
			d.renderLogin(w, http.StatusUnauthorized, why)
			return
		}
		if post {
			if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
				r.Body = http.MaxBytesReader(w, r.Body, 2*api.MaxPolicySource)
				if err := r.ParseMultipartForm(2 * api.MaxPolicySource); err != nil {
					d.renderError(w, r, s, http.StatusBadRequest, "the form could not be read: "+err.Error())
					return
				}
			}
			if err := checkCSRF(r, s); err != nil {
				d.renderError(w, r, s, http.StatusForbidden, "refused: "+err.Error())
				return
			}
		}
		h(w, r, s)
	}
}

// page is what the layout renders around a page's Body.
type page struct {
	Title   string
	Session *sessionView
	Flash   *flash
	Body    any
}

// sessionView is the session as pages show it.
type sessionView struct {
	User, As  Identity
	Delegated bool
	Self      bool // the daemon acts as itself (not root)
	CSRF      string
}

func (d *Dashboard) view(s *session) *sessionView {
	if s == nil {
		return nil
	}
	return &sessionView{User: s.user, As: s.as, Delegated: s.delegated, Self: !d.cfg.Delegate, CSRF: s.csrf}
}

// render writes page name with status code.
func (d *Dashboard) render(w http.ResponseWriter, code int, name string, p page) {
	var b strings.Builder
	if err := d.pages[name].ExecuteTemplate(&b, "layout", p); err != nil {
		http.Error(w, "gatevisor serve: render "+name+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

func (d *Dashboard) renderLogin(w http.ResponseWriter, code int, why string) {
	d.render(w, code, "login", page{Title: "Log in", Body: why})
}

func (d *Dashboard) renderError(w http.ResponseWriter, _ *http.Request, s *session, code int, msg string) {
	d.render(w, code, "error", page{Title: "Error", Session: d.view(s), Body: msg})
}

// client returns the API client of vm for s: the session's user's calls.
func (d *Dashboard) client(vm VM, s *session) *apiclient.Client {
	d.mu.Lock()
	c, ok := d.clients[vm.Socket]
	if !ok {
		c = apiclient.New(vm.Socket)
		d.clients[vm.Socket] = c
	}
	d.mu.Unlock()
	if s.delegated {
		return c.OnBehalfOf(s.as.UID, s.as.GID)
	}
	return c
}

// list returns the VMs, by name, and forgets the clients of VMs gone.
func (d *Dashboard) list() ([]VM, error) {
	vms, err := d.cfg.VMs()
	if err != nil {
		return nil, err
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	d.mu.Lock()
	keep := map[string]bool{}
	for _, v := range vms {
		keep[v.Socket] = true
	}
	for k := range d.clients {
		if !keep[k] {
			delete(d.clients, k)
		}
	}
	d.mu.Unlock()
	return vms, nil
}

// pageVM finds the VM a page's path names, or renders why not and
// returns false.
func (d *Dashboard) pageVM(w http.ResponseWriter, r *http.Request, s *session) (VM, bool) {
	vm, code, why := d.find(r.PathValue("name"))
	if why != "" {
		d.renderError(w, r, s, code, why)
		return VM{}, false
	}
	return vm, true
}

// find returns the live VM name, or an answer's status and why not.
func (d *Dashboard) find(name string) (VM, int, string) {
	vms, err := d.list()
	if err != nil {
		return VM{}, http.StatusInternalServerError, "the VMs cannot be listed: " + err.Error()
	}
	for _, v := range vms {
		if v.Name != name {
			continue
		}
		switch {
		case v.Private:
			return VM{}, http.StatusForbidden, fmt.Sprintf("VM %q belongs to uid %d and its API is closed to this daemon", name, v.Owner)
		case !v.Live:
			return VM{}, http.StatusNotFound, fmt.Sprintf("VM %q is not running", name)
		}
		return v, 0, ""
	}
	return VM{}, http.StatusNotFound, fmt.Sprintf("no VM %q: see the list of VMs", name)
}

// withTimeout is r's context bounded for one page's API calls.
func withTimeout(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), callTimeout)
}
