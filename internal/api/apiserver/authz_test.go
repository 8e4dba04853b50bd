package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// TestActions pins the action names: policies name them, so a rename
// breaks every policy that grants it.
func TestActions(t *testing.T) {
	want := []string{"vm.status", "vm.stop", "vm.exec", "vm.console", "vm.registers", "vm.memory",
		"memory.read", "memory.write",
		"ids.banner", "ids.syscalls", "ids.ps", "ids.threads", "ids.args", "ids.env", "ids.files", "ids.modules", "ids.sockets", "ids.hooks", "ids.check",
		"vm.dump", "vm.events", "policy.load", "proc.stop", "proc.cont", "proc.kill", "proc.freeze", "proc.thaw", "net.isolate", "net.restore", "net.flows", "vm.metrics",
		"auth.grant", "auth.ls", "auth.revoke", "files.open",
		"vm.restart", "vm.upgrade", "vm.snapshot", "vm.snapshots", "vm.rollback", "vm.snapshot.remove"}
	if diff := cmp.Diff(want, api.Actions()); diff != "" {
		t.Errorf("api.Actions() (-want +got):\n%s", diff)
	}
}

// TestSpecActionsMatchTable checks that openapi.yaml names, for every
// operation, the action the server authorizes it as, and that the spec and
// the endpoint table list the same operations.
func TestSpecActionsMatchTable(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(api.Spec)
	if err != nil {
		t.Fatal(err)
	}
	spec := map[string]string{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			a, _ := op.Extensions["x-gatevisor-action"].(string)
			if a == "" {
				t.Errorf("%s %s (%s) has no x-gatevisor-action", method, path, op.OperationID)
			}
			spec[method+" "+path] = a
		}
	}
	table := map[string]string{}
	for _, rt := range api.Endpoints {
		table[rt.Method+" "+rt.Path] = rt.SpecAction()
	}
	if diff := cmp.Diff(table, spec); diff != "" {
		t.Errorf("endpoint table vs openapi.yaml x-gatevisor-action (-table +spec):\n%s", diff)
	}
	// A parameterized action's values are the path parameter's enum.
	for _, rt := range api.Endpoints {
		if rt.Param == "" {
			continue
		}
		op := doc.Paths.Find(rt.Path).GetOperation(rt.Method)
		var enum []string
		for _, p := range op.Parameters {
			if p.Value.Name == rt.Param {
				for _, v := range p.Value.Schema.Value.Enum {
					enum = append(enum, fmt.Sprint(v))
				}
			}
		}
		if diff := cmp.Diff(rt.Values, enum); diff != "" {
			t.Errorf("%s %s: values of {%s} (-table +spec enum):\n%s", rt.Method, rt.Path, rt.Param, diff)
		}
	}
}

// authzRecorder is a fake policy: it records what it is asked and refuses
// the actions in deny.
type authzRecorder struct {
	mu    sync.Mutex
	deny  func(action string) bool
	asked []string
	who   []api.Caller
}

func (a *authzRecorder) authorize(_ context.Context, c api.Caller, action string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asked = append(a.asked, action)
	a.who = append(a.who, c)
	if a.deny(action) {
		return errors.New("rule viewer (test.policy:3:1) does not grant " + action)
	}
	return nil
}

func (a *authzRecorder) get() ([]string, []api.Caller) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.asked...), append([]api.Caller(nil), a.who...)
}

// sample is one request for an action, and the api.VM method it reaches.
type sample struct {
	method, path, body string
	vmCall             string
}

var samples = map[string]sample{
	"vm.status":    {"GET", "/v1/status", "", "Status"},
	"vm.stop":      {"POST", "/v1/stop", `{"force":true}`, "Stop"},
	"vm.exec":      {"POST", "/v1/exec", `{"argv":["id"]}`, "Exec"},
	"vm.console":   {"GET", "/v1/console", "", "AttachConsole"},
	"vm.registers": {"GET", "/v1/vcpus/0/registers", "", "Registers"},
	"vm.memory":    {"GET", "/v1/memory", "", "MemoryLayout"},
	"memory.read":  {"GET", "/v1/memory/physical?address=0x10&length=4", "", "ReadPhysical"},
	"memory.write": {"POST", "/v1/memory/physical?address=0x10", "\x01\x02", "WritePhysical"},
	"vm.dump":      {"POST", "/v1/dump", `{"path":"/tmp/x.elf"}`, "Dump"},
	"vm.events":    {"GET", "/v1/events", "", "Events"},
	"policy.load":  {"POST", "/v1/policy", `{"path":"/p/x.policy","source":"x"}`, "LoadPolicy"},
	"net.isolate":  {"POST", "/v1/net/isolate", `{"reason":"x"}`, "NetIsolate"},
	"net.restore":  {"POST", "/v1/net/restore", "", "NetRestore"},
	"net.flows":    {"GET", "/v1/net/flows", "", "NetFlows"},
	"vm.metrics":   {"GET", "/v1/metrics", "", "Metrics"},
	"vm.restart":   {"POST", "/v1/restart", `{"keep_guest":true}`, "Restart"},
	"vm.upgrade":   {"POST", "/v1/upgrade", "", "Upgrade"},
	"vm.snapshot":  {"POST", "/v1/snapshot", `{"tag":"t1"}`, "Snapshot"},
	"vm.snapshots": {"GET", "/v1/snapshots", "", "Snapshots"},
	"vm.rollback":  {"POST", "/v1/rollback", `{"tag":"t1"}`, "Rollback"},

	"vm.snapshot.remove": {"POST", "/v1/snapshot/remove", `{"tag":"t1"}`, "RemoveSnapshot"},
}

func init() {
	for _, q := range api.IDSQueries {
		samples["ids."+q] = sample{"GET", "/v1/ids/" + q, "", "IDS"}
	}
	for _, a := range api.ProcActions {
		samples["proc."+a] = sample{"POST", "/v1/proc/" + a, `{"pid":42}`, "Proc"}
	}
}

// unixHTTP is a plain HTTP client for the socket at sock.
func unixHTTP(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

// call sends s to the server at sock; the console's upgrade is sent, and
// its stream closed at once.
func call(t *testing.T, hc *http.Client, s sample) (int, api.Error) {
	t.Helper()
	req, err := http.NewRequest(s.method, "http://gatevisor"+s.path, strings.NewReader(s.body))
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(s.body, "{") {
		req.Header.Set("Content-Type", "application/json")
	}
	if s.vmCall == "AttachConsole" {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", api.ConsoleUpgrade)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", s.method, s.path, err)
	}
	defer resp.Body.Close()
	var e api.Error
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s %s: %d with a body that is no API error: %q", s.method, s.path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, e
}

// listen serves vm with opt on a socket in a fresh directory.
func listen(t *testing.T, vm api.VM, opt Options) string {
	t.Helper()
	s := New(vm, opt)
	sock := filepath.Join(t.TempDir(), "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return sock
}

// TestAuthorizeEveryEndpoint drives every action of the table over a real
// unix socket: refused, the answer is 403 naming the action and the rule,
// and the api.VM is never called; allowed, the api.VM method runs; either way
// Authorize saw exactly that action and the caller's real credentials.
func TestAuthorizeEveryEndpoint(t *testing.T) {
	self := api.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
	for _, action := range api.Actions() {
		s, ok := samples[action]
		if !ok {
			t.Fatalf("no sample request for action %s: add one to samples", action)
		}
		t.Run(action+"/denied", func(t *testing.T) {
			vm := &fakeVM{}
			az := &authzRecorder{deny: func(string) bool { return true }}
			hc := unixHTTP(listen(t, vm, Options{Authorize: az.authorize}))
			code, e := call(t, hc, s)
			if code != http.StatusForbidden || e.Code != api.CodeForbidden || !strings.Contains(e.Message, action+" refused") || !strings.Contains(e.Message, "test.policy:3:1") {
				t.Fatalf("got %d %+v; want 403 forbidden naming %s and the rule", code, e, action)
			}
			if calls := vm.Calls(); len(calls) != 0 {
				t.Fatalf("a refused request reached the VM: %v", calls)
			}
			asked, who := az.get()
			if diff := cmp.Diff([]string{action}, asked); diff != "" {
				t.Errorf("actions asked (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]api.Caller{self}, who); diff != "" {
				t.Errorf("caller (-want +got):\n%s", diff)
			}
		})
		t.Run(action+"/allowed", func(t *testing.T) {
			vm := &fakeVM{}
			az := &authzRecorder{deny: func(string) bool { return false }}
			hc := unixHTTP(listen(t, vm, Options{Authorize: az.authorize}))
			code, e := call(t, hc, s)
			if code >= 300 && code != http.StatusSwitchingProtocols {
				t.Fatalf("allowed request: %d %+v", code, e)
			}
			// The console's api.VM call follows its 101 answer.
			deadline := time.Now().Add(5 * time.Second)
			for !slices.Contains(vm.Calls(), s.vmCall) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if calls := vm.Calls(); !slices.Contains(calls, s.vmCall) {
				t.Fatalf("VM calls %v, want %s", calls, s.vmCall)
			}
			asked, who := az.get()
			if diff := cmp.Diff([]string{action}, asked); diff != "" {
				t.Errorf("actions asked (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]api.Caller{self}, who); diff != "" {
				t.Errorf("caller (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAuthorizeBeforeDecoding: a refused request is refused before its body
// or arguments are looked at; unknown endpoints are 404 without asking.
func TestAuthorizeBeforeDecoding(t *testing.T) {
	vm := &fakeVM{}
	az := &authzRecorder{deny: func(a string) bool { return a != "vm.status" }}
	sock := listen(t, vm, Options{Authorize: az.authorize})
	hc := unixHTTP(sock)
	for _, tc := range []struct {
		s        sample
		wantCode int
		want     string
	}{
		{sample{"POST", "/v1/exec", `{"argv":`, ""}, 403, "vm.exec refused"},
		{sample{"GET", "/v1/vcpus/99/registers", "", ""}, 403, "vm.registers refused"},
		{sample{"GET", "/v1/memory/physical?address=zz", "", ""}, 403, "memory.read refused"},
		{sample{"POST", "/v1/policy", strings.Repeat("x", 100), ""}, 403, "policy.load refused"},
		{sample{"GET", "/v1/nope", "", ""}, 404, "no endpoint"},
		{sample{"DELETE", "/v1/status", "", ""}, 404, "no endpoint"},
		{sample{"GET", "/v1/ids/nope", "", ""}, 404, "unknown IDS query"},
	} {
		code, e := call(t, hc, tc.s)
		if code != tc.wantCode || !strings.Contains(e.Message, tc.want) {
			t.Errorf("%s %s: got %d %q, want %d containing %q", tc.s.method, tc.s.path, code, e.Message, tc.wantCode, tc.want)
		}
	}
	asked, _ := az.get()
	if diff := cmp.Diff([]string{"vm.exec", "vm.registers", "memory.read", "policy.load"}, asked); diff != "" {
		t.Errorf("actions asked (-want +got):\n%s", diff)
	}
	if calls := vm.Calls(); len(calls) != 0 {
		t.Errorf("VM called: %v", calls)
	}
	// An allowed request carries its caller to the api.VM.
	if _, err := apiclient.New(sock).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	vm.mu.Lock()
	got := vm.caller
	vm.mu.Unlock()
	if want := (api.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}); got != want {
		t.Errorf("VM saw caller %+v, want %+v", got, want)
	}
}

// TestForbiddenMatchesSpec checks a refusal's answer against the spec.
func TestForbiddenMatchesSpec(t *testing.T) {
	router := loadRouter(t)
	deny := func(context.Context, api.Caller, string) error { return errors.New("no rule grants it") }
	h := New(&fakeVM{}, Options{Authorize: deny}).Handler()
	req := httptest.NewRequest("POST", "http://gatevisor/v1/stop", nil)
	rec := roundTrip(t, router, h, req, nil, true)
	if rec.Code != 403 || !strings.Contains(rec.Body.String(), `"code":"forbidden"`) || !strings.Contains(rec.Body.String(), "vm.stop refused") {
		t.Fatalf("got %d %s", rec.Code, rec.Body.String())
	}
}

func TestSharedSocketMode(t *testing.T) {
	for _, tc := range []struct {
		shared bool
		want   os.FileMode
	}{{false, 0o600}, {true, 0o666}} {
		sock := listen(t, &fakeVM{}, Options{Shared: tc.shared})
		fi, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != tc.want {
			t.Errorf("shared=%v: socket mode %04o, want %04o", tc.shared, perm, tc.want)
		}
	}
}

// TestOtherUserCaller connects as another uid (a copy of this test binary
// run as 12345:12346) and checks what the server sees and decides: with
// Authorize, exactly that uid and gid; without, the owner-or-root rule
// refuses it; a socket that is not shared cannot be reached at all.
func TestOtherUserCaller(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid; the CI runs as root")
	}
	const uid, gid = 12345, 12346
	// A directory the other uid can search holds the binary and sockets.
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "client.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(sock string) string {
		cmd := exec.Command(bin, "-test.run=^TestHelperClient$")
		cmd.Dir = "/"
		cmd.Env = []string{"GATEVISOR_TEST_CLIENT=" + sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
		}
		_, res, _ := strings.Cut(string(out), "RESULT ")
		res, _, _ = strings.Cut(res, "\n")
		return res
	}
	serve := func(name string, opt Options) string {
		s := New(&fakeVM{}, opt)
		sock := filepath.Join(dir, name)
		if err := s.Listen(sock); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		return sock
	}

	az := &authzRecorder{deny: func(a string) bool { return a != "vm.status" }}
	if got := run(serve("policy.sock", Options{Authorize: az.authorize, Shared: true})); got != "ok" {
		t.Errorf("status allowed by the policy: %s", got)
	}
	_, who := az.get()
	if len(who) != 1 || who[0].UID != uid || who[0].GID != gid || who[0].PID <= 0 || who[0].PID == int32(os.Getpid()) {
		t.Errorf("Authorize saw %+v, want uid %d gid %d and the client's pid", who, uid, gid)
	}
	if got := run(serve("owner.sock", Options{Shared: true})); !strings.Contains(got, "forbidden") || !strings.Contains(got, "only its owner and root") {
		t.Errorf("owner-or-root rule: %s", got)
	}
	if got := run(serve("private.sock", Options{Authorize: az.authorize})); !strings.Contains(got, "permission denied") {
		t.Errorf("a 0600 socket reached by another uid: %s", got)
	}
}

// TestHelperClient is the other user's client of TestOtherUserCaller.
func TestHelperClient(t *testing.T) {
	sock := os.Getenv("GATEVISOR_TEST_CLIENT")
	if sock == "" {
		t.Skip("helper process for TestOtherUserCaller; runs only when that test starts it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := apiclient.New(sock)
	if ob := os.Getenv("GATEVISOR_TEST_ON_BEHALF_OF"); ob != "" {
		uid, gid, err := api.ParseOnBehalfOf(ob)
		if err != nil {
			t.Fatal(err)
		}
		c = c.OnBehalfOf(uid, gid)
	}
	_, err := c.Status(ctx)
	res := "ok"
	var e *api.Error
	switch {
	case errors.As(err, &e):
		res = e.Code + ": " + e.Message
	case err != nil:
		res = err.Error()
	}
	fmt.Println("RESULT " + res)
}

// TestEveryEndpointHasAHandler: the server serves exactly api.Endpoints.
func TestEveryEndpointHasAHandler(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range api.Endpoints {
		k := e.Method + " " + e.Path
		if handlers[k] == nil {
			t.Errorf("no handler for %s", k)
		}
		seen[k] = true
	}
	for k := range handlers {
		if !seen[k] {
			t.Errorf("handler for %s, which is not in api.Endpoints", k)
		}
	}
}
