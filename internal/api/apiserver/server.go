// Package apiserver serves one VM's local API (package api: the contract,
// openapi.yaml) over HTTP+JSON on a unix socket. Every request goes
//
//	peer credentials (SO_PEERCRED, per connection)
//	  -> the caller: the peer, or the user a root peer acts for (api.OnBehalfOfHeader)
//	  -> authorize: Options.Authorize(caller, action), or else our uid or root
//	  -> decode and validate the request
//	  -> the api.VM interface, which the monitor implements
//
// The monitor knows nothing of HTTP: the run command builds this server
// around it (Firecracker's rule: the VMM library has no HTTP).
package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/api"
)

// handlers serve the endpoints of api.Endpoints, by "METHOD PATH".
var handlers = map[string]func(*Server, http.ResponseWriter, *http.Request){
	"GET /v1/status":                  (*Server).status,
	"POST /v1/stop":                   (*Server).stop,
	"POST /v1/exec":                   (*Server).exec,
	"GET /v1/console":                 (*Server).console,
	"GET /v1/vcpus/{index}/registers": (*Server).registers,
	"GET /v1/memory":                  (*Server).memory,
	"GET /v1/memory/physical":         (*Server).readPhysical,
	"POST /v1/memory/physical":        (*Server).writePhysical,
	"GET /v1/ids/{query}":             (*Server).ids,
	"POST /v1/dump":                   (*Server).dump,
	"GET /v1/events":                  (*Server).events,
	"POST /v1/policy":                 (*Server).loadPolicy,
	"POST /v1/proc/{action}":          (*Server).proc,
	"POST /v1/net/isolate":            (*Server).netIsolate,
	"POST /v1/net/restore":            (*Server).netRestore,
	"GET /v1/net/flows":               (*Server).netFlows,
	"GET /v1/metrics":                 (*Server).metrics,
	"POST /v1/auth/grants":            (*Server).authGrant,
	"GET /v1/auth/grants":             (*Server).authList,
	"POST /v1/auth/revoke":            (*Server).authRevoke,
	"GET /v1/files/open":              (*Server).filesOpen,
	"POST /v1/restart":                (*Server).restart,
	"POST /v1/upgrade":                (*Server).upgrade,
	"POST /v1/snapshot":               (*Server).snapshot,
	"GET /v1/snapshots":               (*Server).snapshots,
	"POST /v1/rollback":               (*Server).rollback,
	"POST /v1/snapshot/remove":        (*Server).removeSnapshot,
}

// maxRequestBody bounds a JSON request body.
const maxRequestBody = 4 << 20

// Options configure a Server. The zero value is a api.VM started without
// a policy: only this process's uid and root may call the API.
type Options struct {
	// Authorize, when set, decides every request to a known endpoint before
	// its body is read or its arguments are checked: nil allows it, any
	// error refuses it with 403 and code "forbidden", the message naming
	// the action, the caller and the error's text (which should name the
	// policy rule). The owner-or-root rule then does not apply: Authorize
	// decides alone, for root and the owner too. An Authorize that cannot
	// decide must return an error (fail closed). It is called concurrently.
	Authorize func(ctx context.Context, c api.Caller, action string) error
	// Shared creates the socket 0666 instead of 0600, so that other local
	// users can connect and Authorize, not the file mode, decides what they
	// may do. Without Authorize the owner-or-root rule still refuses them.
	// Others reach the socket only if its directory is searchable by them
	// (see vmdir's Dir.Share).
	Shared bool
}

// NewServer returns a server for vm configured by opt; without opt (the
// zero Options) it admits callers running as this process's uid or as
// root. At most one Options may be given.
func New(vm api.VM, opt ...Options) *Server {
	if len(opt) > 1 {
		panic("apiserver.New: more than one Options")
	}
	var o Options
	if len(opt) == 1 {
		o = opt[0]
	}
	self := uint32(os.Getuid())
	s := &Server{vm: vm, allowed: func(uid uint32) bool { return uid == self || uid == 0 }, authorize: o.Authorize, shared: o.Shared}
	mux := http.NewServeMux()
	for _, e := range api.Endpoints {
		h, ok := handlers[e.Method+" "+e.Path]
		if !ok {
			panic("apiserver: no handler for " + e.Method + " " + e.Path)
		}
		mux.HandleFunc(e.Method+" "+e.Path, s.guard(e, h))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("no endpoint %s %s: see openapi.yaml", r.Method, r.URL.Path)})
	})
	var h http.Handler = mux
	if s.authorize == nil {
		h = s.checkPeer(mux)
	}
	s.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       connContext,
	}
	return s
}

// Server serves one api.VM's API.
type Server struct {
	vm api.VM
	// allowed is the owner-or-root rule, used when authorize is nil.
	allowed   func(uid uint32) bool
	authorize func(ctx context.Context, c api.Caller, action string) error
	shared    bool
	srv       *http.Server
}

// Listen creates the socket at path (replacing a stale one), 0600 or, for a
// shared server, 0666, and serves until Shutdown. It returns once the socket
// accepts connections.
func (s *Server) Listen(path string) error {
	_ = os.Remove(path)
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("api: listen on %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if s.shared {
		mode = 0o666
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return fmt.Errorf("api: %w", err)
	}
	go func() { _ = s.srv.Serve(l) }()
	return nil
}

// Handler returns the HTTP handler (for tests). A request it serves without
// a connection is this process's own.
func (s *Server) Handler() http.Handler { return s.srv.Handler }

// Shutdown stops the server, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// checkPeer is the owner-or-root rule of a server without Authorize; it
// applies to every request, to unknown endpoints too.
func (s *Server) checkPeer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, code, err := callerOf(r)
		if err != nil {
			writeError(w, code, err)
			return
		}
		if !s.allowed(c.UID) {
			writeError(w, http.StatusForbidden, &api.Error{Code: api.CodeForbidden, Message: fmt.Sprintf("caller uid %d may not use this api.VM's API: only its owner and root may", c.UID)})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

var codeStatus = map[string]int{
	api.CodeBadRequest:  http.StatusBadRequest,
	api.CodeForbidden:   http.StatusForbidden,
	api.CodeNotFound:    http.StatusNotFound,
	api.CodeNotReady:    http.StatusServiceUnavailable,
	api.CodeConflict:    http.StatusConflict,
	api.CodeUnavailable: http.StatusServiceUnavailable,
	api.CodeInternal:    http.StatusInternalServerError,
}

func writeError(w http.ResponseWriter, code int, e *api.Error) { writeJSON(w, code, e) }

// fail maps an error from the api.VM to a response.
func fail(w http.ResponseWriter, err error) {
	var e *api.Error
	if errors.As(err, &e) {
		writeError(w, codeStatus[e.Code], e)
		return
	}
	writeError(w, http.StatusInternalServerError, &api.Error{Code: api.CodeInternal, Message: err.Error()})
}

func badRequest(w http.ResponseWriter, format string, a ...any) {
	writeError(w, http.StatusBadRequest, &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf(format, a...)})
}

// decode reads a JSON body into v, rejecting unknown fields and trailing data.
// An empty body leaves v as it is when optional.
// reply answers with a call's result as JSON (200), or with its error.
func reply(w http.ResponseWriter, res any, err error) {
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		badRequest(w, "content type %q: send application/json", ct)
		return false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		badRequest(w, "request body: %v (at most %d bytes)", err, maxRequestBody)
		return false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		if optional {
			return true
		}
		badRequest(w, "request body is empty: send a JSON object")
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		badRequest(w, "request body: %v", err)
		return false
	}
	if dec.More() {
		badRequest(w, "request body: data after the JSON object")
		return false
	}
	return true
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.vm.Status(r.Context()))
}

func (s *Server) stop(w http.ResponseWriter, r *http.Request) {
	var req api.StopRequest
	if !decode(w, r, &req, true) {
		return
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > api.MaxStopTimeout {
		badRequest(w, "timeout_seconds %d: use 1 to %d", req.TimeoutSeconds, api.MaxStopTimeout)
		return
	}
	if err := s.vm.Stop(r.Context(), req); err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, s.vm.Status(r.Context()))
}

func (s *Server) proc(w http.ResponseWriter, r *http.Request) {
	var req api.ProcRequest
	if !decode(w, r, &req, false) {
		return
	}
	if req.PID < 1 || req.PID > api.MaxPID {
		badRequest(w, "pid %d: use a process id from 1 to %d (see 'gatevisor ids ps')", req.PID, api.MaxPID)
		return
	}
	res, err := s.vm.Proc(r.Context(), r.PathValue("action"), req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) netIsolate(w http.ResponseWriter, r *http.Request) {
	var req api.NetIsolateRequest
	if !decode(w, r, &req, true) {
		return
	}
	if len(req.Reason) > 1024 {
		badRequest(w, "reason: %d bytes, at most 1024", len(req.Reason))
		return
	}
	res, err := s.vm.NetIsolate(r.Context(), req.Reason)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	if err := s.vm.Metrics(r.Context(), &b); err != nil {
		fail(w, err)
		return
	}
	w.Header().Set("Content-Type", api.MetricsContentType)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b.Bytes())
}

func (s *Server) netRestore(w http.ResponseWriter, r *http.Request) {
	res, err := s.vm.NetRestore(r.Context())
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) netFlows(w http.ResponseWriter, r *http.Request) {
	limit, err := api.ParseNetFlowsLimit(r.URL.Query().Get("limit"))
	if err != nil {
		badRequest(w, "%v", err)
		return
	}
	res, err := s.vm.NetFlows(r.Context(), limit)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	if !decode(w, r, &req, false) {
		return
	}
	if err := api.ValidateExec(&req); err != nil {
		badRequest(w, "%v", err)
		return
	}
	res, err := s.vm.Exec(r.Context(), req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) registers(w http.ResponseWriter, r *http.Request) {
	idx, err := strconv.Atoi(r.PathValue("index"))
	if err != nil || idx < 0 || idx > api.MaxVCPU {
		badRequest(w, "vCPU index %q: use 0 to %d", r.PathValue("index"), api.MaxVCPU)
		return
	}
	regs, err := s.vm.Registers(r.Context(), idx)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, regs)
}

func (s *Server) memory(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.vm.MemoryLayout())
}

func (s *Server) readPhysical(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	addr, err := api.ParseAddress(q.Get("address"))
	if err != nil {
		badRequest(w, "address %q: give a guest-physical address, decimal or 0x hex", q.Get("address"))
		return
	}
	n, err := strconv.Atoi(q.Get("length"))
	if err != nil || n < 1 || n > api.MaxReadLength {
		badRequest(w, "length %q: use 1 to %d bytes", q.Get("length"), api.MaxReadLength)
		return
	}
	buf := make([]byte, n)
	if err := s.vm.ReadPhysical(r.Context(), addr, buf); err != nil {
		fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(buf)
}

func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.ConsoleUpgrade) {
		badRequest(w, "the console needs 'Connection: Upgrade' and 'Upgrade: %s'", api.ConsoleUpgrade)
		return
	}
	replay := 0
	if v := r.URL.Query().Get("replay"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > api.MaxConsoleReplay {
			badRequest(w, "replay %q: use 0 to %d bytes", v, api.MaxConsoleReplay)
			return
		}
		replay = n
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		fail(w, errors.New("console: connection cannot be upgraded"))
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + api.ConsoleUpgrade + "\r\n\r\n")
	if err := rw.Flush(); err != nil {
		conn.Close()
		return
	}
	// Bytes the client sent after its request are already buffered in rw.
	stream := &bufferedConn{Conn: conn, r: rw.Reader}
	_ = s.vm.AttachConsole(context.WithoutCancel(r.Context()), stream, replay)
	stream.Close()
}

type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (s *Server) ids(w http.ResponseWriter, r *http.Request) {
	q := r.PathValue("query")
	known := false
	for _, k := range api.IDSQueries {
		known = known || k == q
	}
	if !known {
		writeError(w, http.StatusNotFound, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("unknown IDS query %q: use one of %s", q, strings.Join(api.IDSQueries, ", "))})
		return
	}
	src := r.URL.Query().Get("source")
	if src != "" && src != "ram" && src != "gdbstub" {
		badRequest(w, "source %q: use ram or gdbstub", src)
		return
	}
	res, err := s.vm.IDS(r.Context(), q, src)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) dump(w http.ResponseWriter, r *http.Request) {
	var req api.DumpRequest
	if !decode(w, r, &req, false) {
		return
	}
	if !filepath.IsAbs(req.Path) || len(req.Path) > 4096 || strings.ContainsRune(req.Path, 0) {
		badRequest(w, "path %q: give an absolute file path", req.Path)
		return
	}
	res, err := s.vm.Dump(r.Context(), req.Path)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) writePhysical(w http.ResponseWriter, r *http.Request) {
	addr, err := api.ParseAddress(r.URL.Query().Get("address"))
	if err != nil {
		badRequest(w, "address %q: give a guest-physical address, decimal or 0x hex", r.URL.Query().Get("address"))
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxReadLength))
	if err != nil || len(data) == 0 {
		badRequest(w, "body: send 1 to %d bytes to write", api.MaxReadLength)
		return
	}
	if err := s.vm.WritePhysical(r.Context(), addr, data); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q, err := parseEventsQuery(r.URL.Query())
	if err == nil {
		err = api.ValidateEventsQuery(&q)
	}
	if err != nil {
		badRequest(w, "%v", err)
		return
	}
	// The status is sent with the first byte or flush, so that an error
	// before any (the event files cannot be read) is still an error answer.
	lw := &lazyHeader{w: w}
	flusher, _ := w.(http.Flusher)
	flush := func() {
		lw.start()
		if flusher != nil {
			flusher.Flush()
		}
	}
	if err := s.vm.Events(r.Context(), lw, q, flush); err != nil && !lw.started {
		fail(w, err)
	}
}

// parseEventsQuery reads GET /v1/events's query parameters.
func parseEventsQuery(v url.Values) (api.EventsQuery, error) {
	var q api.EventsQuery
	if f := v.Get("follow"); f != "" {
		b, err := strconv.ParseBool(f)
		if err != nil {
			return q, fmt.Errorf("follow %q: use true or false", f)
		}
		q.Follow = b
	}
	seq := func(name string, min uint64, what string) (uint64, bool, error) {
		s := v.Get(name)
		if s == "" {
			return 0, false, nil
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n < min {
			return 0, false, fmt.Errorf("%s %q: give an event's seq (%s)", name, s, what)
		}
		return n, true, nil
	}
	var err error
	if q.Before, _, err = seq("before", 1, "1 or more: the events older than it are returned"); err != nil {
		return q, err
	}
	if q.After, q.HasAfter, err = seq("after", 0, "0 or more: the events newer than it are returned"); err != nil {
		return q, err
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			return q, fmt.Errorf("limit %q: ask for 1 to %d events", l, api.MaxEventsLimit)
		}
		q.Limit = n
	}
	return q, nil
}

// lazyHeader sends 200 and the content type with the first write.
type lazyHeader struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyHeader) start() {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/x-ndjson")
		l.w.WriteHeader(http.StatusOK)
	}
}

func (l *lazyHeader) Write(p []byte) (int, error) {
	l.start()
	return l.w.Write(p)
}

func (s *Server) loadPolicy(w http.ResponseWriter, r *http.Request) {
	var req api.PolicyRequest
	if !decode(w, r, &req, false) {
		return
	}
	if !filepath.IsAbs(req.Path) || len(req.Path) > 4096 || strings.ContainsRune(req.Path, 0) {
		badRequest(w, "path %q: give the policy file's absolute path", req.Path)
		return
	}
	if len(req.Source) > api.MaxPolicySource {
		badRequest(w, "source: larger than %d bytes", api.MaxPolicySource)
		return
	}
	if err := req.CheckFiles(); err != nil {
		badRequest(w, "%v", err)
		return
	}
	res, err := s.vm.LoadPolicy(r.Context(), req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// peer is what the server knows of a connection's other end.
type peer struct {
	caller api.Caller
	err    error
}

type peerKey struct{}

// connContext records the peer credentials of a new connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	var p peer
	p.caller, p.err = peerCred(c)
	return context.WithValue(ctx, peerKey{}, p)
}

// callerOf returns the caller of r: the peer of its connection, or this
// process for a request served in process (Handler, in tests), which has
// no connection; or, when that peer is root and r carries
// api.OnBehalfOfHeader, the user it names (with the peer's pid). The
// header from a peer that is not root is refused (403), not ignored: a
// caller that believes it acts for someone else must learn it does not.
// On error it returns the answer's status and error.
func callerOf(r *http.Request) (api.Caller, int, *api.Error) {
	c := api.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
	if p, ok := r.Context().Value(peerKey{}).(peer); ok {
		if p.err != nil {
			return api.Caller{}, http.StatusForbidden, &api.Error{Code: api.CodeForbidden, Message: fmt.Sprintf("the caller cannot be identified: %v", p.err)}
		}
		c = p.caller
	}
	vals, ok := r.Header[http.CanonicalHeaderKey(api.OnBehalfOfHeader)]
	if !ok {
		return c, 0, nil
	}
	if c.UID != 0 {
		return api.Caller{}, http.StatusForbidden, &api.Error{Code: api.CodeForbidden, Message: fmt.Sprintf(
			"%s is honoured only from root (uid 0), and this caller is uid %d (pid %d): call without it, as yourself", api.OnBehalfOfHeader, c.UID, c.PID)}
	}
	if len(vals) != 1 {
		return api.Caller{}, http.StatusBadRequest, &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("%s given %d times: give it once", api.OnBehalfOfHeader, len(vals))}
	}
	uid, gid, err := api.ParseOnBehalfOf(vals[0])
	if err != nil {
		return api.Caller{}, http.StatusBadRequest, &api.Error{Code: api.CodeBadRequest, Message: err.Error()}
	}
	return api.Caller{UID: uid, GID: gid, PID: c.PID, Delegated: true}, 0, nil
}

// peerCred returns the credentials of the process at the other end of c.
func peerCred(c net.Conn) (api.Caller, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return api.Caller{}, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return api.Caller{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return api.Caller{}, err
	}
	if cerr != nil {
		return api.Caller{}, cerr
	}
	return api.Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}

// guard authorizes a request for endpoint rt, puts its caller in the
// context and runs handle; a refused request never reaches it.
func (s *Server) guard(rt api.Endpoint, handle func(*Server, http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		action := rt.Action
		if rt.Param != "" {
			v := r.PathValue(rt.Param)
			if !slices.Contains(rt.Values, v) {
				writeError(w, http.StatusNotFound, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("unknown %s %q: use one of %s", rt.What, v, strings.Join(rt.Values, ", "))})
				return
			}
			action += v
		}
		c, code, cerr := callerOf(r)
		if cerr != nil {
			writeError(w, code, &api.Error{Code: cerr.Code, Message: fmt.Sprintf("%s refused: %s", action, cerr.Message)})
			return
		}
		ctx := api.WithCaller(r.Context(), c)
		if s.authorize != nil {
			if err := s.authorize(ctx, c, action); err != nil {
				pid := "pid"
				if c.Delegated {
					pid = "through root's pid"
				}
				writeError(w, http.StatusForbidden, &api.Error{Code: api.CodeForbidden, Message: fmt.Sprintf("%s refused for uid %d (gid %d, %s %d): %v", action, c.UID, c.GID, pid, c.PID, err)})
				return
			}
		}
		handle(s, w, r.WithContext(ctx))
	}
}
