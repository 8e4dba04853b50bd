package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// ServerOptions configure a Server. The zero value is a VM started without
// a policy: only this process's uid and root may call the API.
type ServerOptions struct {
	// Authorize, when set, decides every request to a known endpoint before
	// its body is read or its arguments are checked: nil allows it, any
	// error refuses it with 403 and code "forbidden", the message naming
	// the action, the caller and the error's text (which should name the
	// policy rule). The owner-or-root rule then does not apply: Authorize
	// decides alone, for root and the owner too. An Authorize that cannot
	// decide must return an error (fail closed). It is called concurrently.
	Authorize func(ctx context.Context, c Caller, action string) error
	// Shared creates the socket 0666 instead of 0600, so that other local
	// users can connect and Authorize, not the file mode, decides what they
	// may do. Without Authorize the owner-or-root rule still refuses them.
	// Others reach the socket only if its directory is searchable by them
	// (see vmdir's Dir.Share).
	Shared bool
}

// Caller is the process at the other end of an API connection, from the
// socket's peer credentials (SO_PEERCRED, as they were when it connected).
type Caller struct {
	UID uint32
	GID uint32
	PID int32
}

// CallerFromContext returns the caller of the request whose context ctx is
// (the VM's methods get it), and false outside a request.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

type callerKey struct{}

// route is one endpoint: its method and path as in openapi.yaml, the action
// a policy names to allow it (the operation's x-gatevisor-action there), and
// its handler. This table is the only list of endpoints and actions.
type route struct {
	method string
	path   string
	// action is the action's name, or its prefix when param is set: the
	// action is then action + the value of path parameter param, which
	// must be one of values (others are 404, naming what).
	action string
	param  string
	values []string
	what   string
	handle func(*Server, http.ResponseWriter, *http.Request)
}

var routes = []route{
	{method: "GET", path: "/v1/status", action: "vm.status", handle: (*Server).status},
	{method: "POST", path: "/v1/stop", action: "vm.stop", handle: (*Server).stop},
	{method: "POST", path: "/v1/exec", action: "vm.exec", handle: (*Server).exec},
	{method: "GET", path: "/v1/console", action: "vm.console", handle: (*Server).console},
	{method: "GET", path: "/v1/vcpus/{index}/registers", action: "vm.registers", handle: (*Server).registers},
	{method: "GET", path: "/v1/memory", action: "vm.memory", handle: (*Server).memory},
	{method: "GET", path: "/v1/memory/physical", action: "memory.read", handle: (*Server).readPhysical},
	{method: "POST", path: "/v1/memory/physical", action: "memory.write", handle: (*Server).writePhysical},
	{method: "GET", path: "/v1/ids/{query}", action: "ids.", param: "query", values: IDSQueries, what: "IDS query", handle: (*Server).ids},
	{method: "POST", path: "/v1/dump", action: "vm.dump", handle: (*Server).dump},
	{method: "GET", path: "/v1/events", action: "vm.events", handle: (*Server).events},
	{method: "POST", path: "/v1/policy", action: "policy.load", handle: (*Server).loadPolicy},
}

// specAction is the route's action as openapi.yaml writes it in
// x-gatevisor-action ("ids.{query}" for a parameterized one).
func (rt route) specAction() string {
	if rt.param != "" {
		return rt.action + "{" + rt.param + "}"
	}
	return rt.action
}

// Actions returns the name of every action the API asks Authorize about, in
// the order of the endpoint table: a policy naming any other is wrong.
func Actions() []string {
	var out []string
	for _, rt := range routes {
		if rt.param == "" {
			out = append(out, rt.action)
			continue
		}
		for _, v := range rt.values {
			out = append(out, rt.action+v)
		}
	}
	return out
}

// guard authorizes a request for rt, puts its caller in the context and
// runs rt's handler; a refused request never reaches the handler.
func (s *Server) guard(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		action := rt.action
		if rt.param != "" {
			v := r.PathValue(rt.param)
			if !slices.Contains(rt.values, v) {
				writeError(w, http.StatusNotFound, &Error{Code: CodeNotFound, Message: fmt.Sprintf("unknown %s %q: use one of %s", rt.what, v, strings.Join(rt.values, ", "))})
				return
			}
			action += v
		}
		c, err := callerOf(r)
		if err != nil {
			writeError(w, http.StatusForbidden, &Error{Code: CodeForbidden, Message: fmt.Sprintf("%s refused: the caller cannot be identified: %v", action, err)})
			return
		}
		ctx := context.WithValue(r.Context(), callerKey{}, c)
		if s.authorize != nil {
			if err := s.authorize(ctx, c, action); err != nil {
				writeError(w, http.StatusForbidden, &Error{Code: CodeForbidden, Message: fmt.Sprintf("%s refused for uid %d (gid %d, pid %d): %v", action, c.UID, c.GID, c.PID, err)})
				return
			}
		}
		rt.handle(s, w, r.WithContext(ctx))
	}
}

// peer is what the server knows of a connection's other end.
type peer struct {
	caller Caller
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
// no connection.
func callerOf(r *http.Request) (Caller, error) {
	if p, ok := r.Context().Value(peerKey{}).(peer); ok {
		return p.caller, p.err
	}
	return Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}, nil
}

// peerCred returns the credentials of the process at the other end of c.
func peerCred(c net.Conn) (Caller, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Caller{}, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if cerr != nil {
		return Caller{}, cerr
	}
	return Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}
