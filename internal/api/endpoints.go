package api

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Endpoint is one API endpoint: its method and path as in openapi.yaml, and
// the action a policy names to allow it (the operation's x-gatevisor-action
// there). Endpoints is the only list of endpoints and actions: the server
// routes by it, the policy compiler checks action names against Actions.
type Endpoint struct {
	Method string
	Path   string
	// Action is the action's name, or its prefix when Param is set: the
	// action is then Action + the value of path parameter Param, which
	// must be one of Values (others are 404, naming What).
	Action string
	Param  string
	Values []string
	What   string
}

// Endpoints are the API's endpoints, in the order of openapi.yaml.
var Endpoints = []Endpoint{
	{Method: "GET", Path: "/v1/status", Action: "vm.status"},
	{Method: "POST", Path: "/v1/stop", Action: "vm.stop"},
	{Method: "POST", Path: "/v1/exec", Action: "vm.exec"},
	{Method: "GET", Path: "/v1/console", Action: "vm.console"},
	{Method: "GET", Path: "/v1/vcpus/{index}/registers", Action: "vm.registers"},
	{Method: "GET", Path: "/v1/memory", Action: "vm.memory"},
	{Method: "GET", Path: "/v1/memory/physical", Action: "memory.read"},
	{Method: "POST", Path: "/v1/memory/physical", Action: "memory.write"},
	{Method: "GET", Path: "/v1/ids/{query}", Action: "ids.", Param: "query", Values: IDSQueries, What: "IDS query"},
	{Method: "POST", Path: "/v1/dump", Action: "vm.dump"},
	{Method: "GET", Path: "/v1/events", Action: "vm.events"},
	{Method: "POST", Path: "/v1/policy", Action: "policy.load"},
	{Method: "POST", Path: "/v1/proc/{action}", Action: "proc.", Param: "action", Values: ProcActions, What: "process action"},
	{Method: "POST", Path: "/v1/net/isolate", Action: "net.isolate"},
	{Method: "POST", Path: "/v1/net/restore", Action: "net.restore"},
	{Method: "GET", Path: "/v1/net/flows", Action: "net.flows"},
	{Method: "GET", Path: "/v1/metrics", Action: "vm.metrics"},
	{Method: "POST", Path: "/v1/auth/grants", Action: "auth.grant"},
	{Method: "GET", Path: "/v1/auth/grants", Action: "auth.ls"},
	{Method: "POST", Path: "/v1/auth/revoke", Action: "auth.revoke"},
	{Method: "GET", Path: "/v1/files/open", Action: "files.open"},
	{Method: "POST", Path: "/v1/restart", Action: "vm.restart"},
	{Method: "POST", Path: "/v1/upgrade", Action: "vm.upgrade"},
	{Method: "POST", Path: "/v1/snapshot", Action: "vm.snapshot"},
	{Method: "GET", Path: "/v1/snapshots", Action: "vm.snapshots"},
	{Method: "POST", Path: "/v1/rollback", Action: "vm.rollback"},
	{Method: "POST", Path: "/v1/snapshot/remove", Action: "vm.snapshot.remove"},
}

// SpecAction is the endpoint's action as openapi.yaml writes it in
// x-gatevisor-action ("ids.{query}" for a parameterized one).
func (e Endpoint) SpecAction() string {
	if e.Param != "" {
		return e.Action + "{" + e.Param + "}"
	}
	return e.Action
}

// Actions returns the name of every action the API asks Authorize about, in
// the order of Endpoints: a policy naming any other is wrong.
func Actions() []string {
	var out []string
	for _, e := range Endpoints {
		if e.Param == "" {
			out = append(out, e.Action)
			continue
		}
		for _, v := range e.Values {
			out = append(out, e.Action+v)
		}
	}
	return out
}

// ProcActions are what the monitor can do to a guest process from below.
var ProcActions = []string{"stop", "cont", "kill", "freeze", "thaw"}

// IDSQueries are the introspection queries the API answers.
var IDSQueries = []string{"banner", "syscalls", "ps", "threads", "args", "env", "files", "modules", "sockets", "hooks", "check"}

// Caller is the process at the other end of an API connection, from the
// socket's peer credentials (SO_PEERCRED, as they were when it connected),
// or the user a root peer acts for (OnBehalfOfHeader).
type Caller struct {
	UID uint32
	GID uint32
	// PID is the connecting process's, also when it acts for another user.
	PID int32
	// Delegated says UID and GID are those a root peer named in the
	// OnBehalfOfHeader (gatevisor serve acting for a dashboard user), not
	// the connection's own.
	Delegated bool
}

// OnBehalfOfHeader names, on an API request, the user a peer acts for:
// "UID:GID" in decimal. The server honours it only when the connection's
// peer is root (uid 0): root may act as anyone anyway, so a root daemon
// (gatevisor serve under systemd) can then make each dashboard user's
// calls as that user, and the policy decides on that user's roles. From
// any other peer the request is refused (403): a user cannot claim to be
// another.
const OnBehalfOfHeader = "Gatevisor-On-Behalf-Of"

// FormatOnBehalfOf is OnBehalfOfHeader's value for uid and gid.
func FormatOnBehalfOf(uid, gid uint32) string {
	return strconv.FormatUint(uint64(uid), 10) + ":" + strconv.FormatUint(uint64(gid), 10)
}

// ParseOnBehalfOf reads OnBehalfOfHeader's value "UID:GID". The ids are
// decimal, 0 to 4294967294 (4294967295 is the kernel's "no id").
func ParseOnBehalfOf(v string) (uid, gid uint32, err error) {
	us, gs, ok := strings.Cut(v, ":")
	id := func(s string) (uint32, bool) {
		if s == "" || len(s) > 10 || strings.TrimLeft(s, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseUint(s, 10, 32)
		return uint32(n), err == nil && n != 1<<32-1
	}
	u, uok := id(us)
	g, gok := id(gs)
	if !ok || !uok || !gok {
		return 0, 0, fmt.Errorf("%s %q: give the user's ids as UID:GID in decimal (such as 1000:1000)", OnBehalfOfHeader, v)
	}
	return u, g, nil
}

// CallerFromContext returns the caller of the request whose context ctx is
// (the VM's methods get it), and false outside a request.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// WithCaller returns ctx carrying the caller of a request (the server sets
// it for every request it serves).
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

type callerKey struct{}
