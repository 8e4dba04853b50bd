package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// VM is what the server serves; the monitor implements it. Every method gets
// validated arguments.
type VM interface {
	Status(ctx context.Context) Status
	Stop(ctx context.Context, req StopRequest) error
	Exec(ctx context.Context, req ExecRequest) (ExecResult, error)
	Registers(ctx context.Context, vcpu int) (Registers, error)
	MemoryLayout() MemoryLayout
	ReadPhysical(ctx context.Context, addr uint64, p []byte) error
	// IDS runs one introspection query (see IDSQueries) from source "ram"
	// (default) or "gdbstub".
	IDS(ctx context.Context, query, source string) (IDSResult, error)
	// Dump writes an ELF dump of guest memory to path.
	Dump(ctx context.Context, path string) (DumpResult, error)
	// WritePhysical writes guest-physical memory (for tests and forensics).
	WritePhysical(ctx context.Context, addr uint64, p []byte) error
	// Events writes IDS events as JSON lines: the recent ones, then new ones
	// while follow, calling flush after each batch.
	Events(ctx context.Context, w io.Writer, follow bool, flush func()) error
	// AttachConsole streams the console over conn until either side closes;
	// replay bytes of recent output are sent first.
	AttachConsole(ctx context.Context, conn io.ReadWriteCloser, replay int) error
	// LoadPolicy replaces the security policy and moves the syscall gate's
	// breakpoints; on error the policy in force stays.
	LoadPolicy(ctx context.Context, req PolicyRequest) (PolicyResult, error)
}

// Server serves one VM's API.
type Server struct {
	vm VM
	// allowed is the owner-or-root rule, used when authorize is nil.
	allowed   func(uid uint32) bool
	authorize func(ctx context.Context, c Caller, action string) error
	shared    bool
	srv       *http.Server
}

// NewServer returns a server for vm configured by opt; without opt (the
// zero ServerOptions) it admits callers running as this process's uid or as
// root. At most one ServerOptions may be given.
func NewServer(vm VM, opt ...ServerOptions) *Server {
	if len(opt) > 1 {
		panic("api.NewServer: more than one ServerOptions")
	}
	var o ServerOptions
	if len(opt) == 1 {
		o = opt[0]
	}
	self := uint32(os.Getuid())
	s := &Server{vm: vm, allowed: func(uid uint32) bool { return uid == self || uid == 0 }, authorize: o.Authorize, shared: o.Shared}
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.HandleFunc(rt.method+" "+rt.path, s.guard(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, &Error{Code: CodeNotFound, Message: fmt.Sprintf("no endpoint %s %s: see openapi.yaml", r.Method, r.URL.Path)})
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
		if p, ok := r.Context().Value(peerKey{}).(peer); ok {
			if p.err != nil || !s.allowed(p.caller.UID) {
				writeError(w, http.StatusForbidden, &Error{Code: CodeForbidden, Message: fmt.Sprintf("caller uid %d may not use this VM's API: only its owner and root may", p.caller.UID)})
				return
			}
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
	CodeBadRequest:  http.StatusBadRequest,
	CodeForbidden:   http.StatusForbidden,
	CodeNotFound:    http.StatusNotFound,
	CodeNotReady:    http.StatusServiceUnavailable,
	CodeConflict:    http.StatusConflict,
	CodeUnavailable: http.StatusServiceUnavailable,
	CodeInternal:    http.StatusInternalServerError,
}

func writeError(w http.ResponseWriter, code int, e *Error) { writeJSON(w, code, e) }

// fail maps an error from the VM to a response.
func fail(w http.ResponseWriter, err error) {
	var e *Error
	if errors.As(err, &e) {
		writeError(w, codeStatus[e.Code], e)
		return
	}
	writeError(w, http.StatusInternalServerError, &Error{Code: CodeInternal, Message: err.Error()})
}

func badRequest(w http.ResponseWriter, format string, a ...any) {
	writeError(w, http.StatusBadRequest, &Error{Code: CodeBadRequest, Message: fmt.Sprintf(format, a...)})
}

// decode reads a JSON body into v, rejecting unknown fields and trailing data.
// An empty body leaves v as it is when optional.
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
	var req StopRequest
	if !decode(w, r, &req, true) {
		return
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > MaxStopTimeout {
		badRequest(w, "timeout_seconds %d: use 1 to %d", req.TimeoutSeconds, MaxStopTimeout)
		return
	}
	if err := s.vm.Stop(r.Context(), req); err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, s.vm.Status(r.Context()))
}

// ValidateExec checks an exec request against the API's limits.
func ValidateExec(req *ExecRequest) error {
	if len(req.Argv) == 0 {
		return errors.New("argv is empty: name the command to run")
	}
	if len(req.Argv) > MaxExecArgs {
		return fmt.Errorf("argv has %d words, the limit is %d", len(req.Argv), MaxExecArgs)
	}
	for i, a := range req.Argv {
		if len(a) > MaxExecArgLength {
			return fmt.Errorf("argv[%d] is %d bytes, the limit is %d", i, len(a), MaxExecArgLength)
		}
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > MaxExecTimeout {
		return fmt.Errorf("timeout_seconds %d: use 1 to %d", req.TimeoutSeconds, MaxExecTimeout)
	}
	if req.TimeoutSeconds == 0 {
		req.TimeoutSeconds = DefaultExecTimeout
	}
	return nil
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	var req ExecRequest
	if !decode(w, r, &req, false) {
		return
	}
	if err := ValidateExec(&req); err != nil {
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
	if err != nil || idx < 0 || idx > MaxVCPU {
		badRequest(w, "vCPU index %q: use 0 to %d", r.PathValue("index"), MaxVCPU)
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

// ParseAddress parses a decimal or 0x-prefixed hex address.
func ParseAddress(s string) (uint64, error) {
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		if len(h) == 0 || len(h) > 16 {
			return 0, fmt.Errorf("address %q: 1 to 16 hex digits after 0x", s)
		}
		return strconv.ParseUint(h, 16, 64)
	}
	return strconv.ParseUint(s, 10, 64)
}

func (s *Server) readPhysical(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	addr, err := ParseAddress(q.Get("address"))
	if err != nil {
		badRequest(w, "address %q: give a guest-physical address, decimal or 0x hex", q.Get("address"))
		return
	}
	n, err := strconv.Atoi(q.Get("length"))
	if err != nil || n < 1 || n > MaxReadLength {
		badRequest(w, "length %q: use 1 to %d bytes", q.Get("length"), MaxReadLength)
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
	if !strings.EqualFold(r.Header.Get("Upgrade"), ConsoleUpgrade) {
		badRequest(w, "the console needs 'Connection: Upgrade' and 'Upgrade: %s'", ConsoleUpgrade)
		return
	}
	replay := 0
	if v := r.URL.Query().Get("replay"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxConsoleReplay {
			badRequest(w, "replay %q: use 0 to %d bytes", v, MaxConsoleReplay)
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
	_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + ConsoleUpgrade + "\r\n\r\n")
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
