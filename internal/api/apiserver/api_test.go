package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// fakeVM records calls and answers like a running api.VM.
type fakeVM struct {
	stopped  *api.StopRequest
	execErr  error
	lastExec api.ExecRequest
	console  chan []byte // what the console client typed
	written  []byte
	// eventsErr fails Events before it writes anything; lastEvents is the
	// query Events got.
	eventsErr  error
	lastEvents api.EventsQuery
	noNet      bool // NetFlows answers that the VM has no network

	mu     sync.Mutex // guards calls and caller
	calls  []string   // the api.VM methods called, in order
	caller api.Caller // the last api.Status call's caller
}

func (f *fakeVM) called(name string) {
	f.mu.Lock()
	f.calls = append(f.calls, name)
	f.mu.Unlock()
}

func (f *fakeVM) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeVM) Status(ctx context.Context) api.Status {
	f.called("Status")
	if c, ok := api.CallerFromContext(ctx); ok {
		f.mu.Lock()
		f.caller = c
		f.mu.Unlock()
	}
	return api.Status{Name: "vm1", State: api.StateRunning, QEMUStatus: "running", GuestReady: true, MonitorPID: 10, QEMUPID: 11,
		Accel: "tcg", AccelReason: "using TCG", Machine: "q35", MemMiB: 256, CPUs: 1, Kernel: "/k", Initrd: "/i",
		StartedAt: time.Unix(1700000000, 0).UTC(), RuntimeDir: "/run/gatevisor/vm1"}
}
func (f *fakeVM) Stop(_ context.Context, r api.StopRequest) error {
	f.called("Stop")
	f.stopped = &r
	return nil
}
func (f *fakeVM) Exec(_ context.Context, r api.ExecRequest) (api.ExecResult, error) {
	f.called("Exec")
	f.lastExec = r
	if f.execErr != nil {
		return api.ExecResult{}, f.execErr
	}
	return api.ExecResult{ExitCode: 3, Stdout: []byte("out\n"), Stderr: []byte{}}, nil
}
func (f *fakeVM) Registers(_ context.Context, vcpu int) (api.Registers, error) {
	f.called("Registers")
	if vcpu > 0 {
		return api.Registers{}, &api.Error{Code: api.CodeNotFound, Message: "vCPU 1 does not exist"}
	}
	return api.Registers{VCPU: 0, Registers: map[string]string{"rip": "0xffffffff81000000", "cr3": "0x1000"}}, nil
}
func (f *fakeVM) Proc(_ context.Context, action string, r api.ProcRequest) (api.ProcResult, error) {
	f.called("Proc")
	if r.PID == 404 {
		return api.ProcResult{}, &api.Error{Code: api.CodeNotFound, Message: "no process 404 in the guest (see 'gatevisor ids ps')"}
	}
	sig := map[string]string{"stop": "SIGSTOP", "freeze": "SIGSTOP", "kill": "SIGKILL", "cont": "SIGCONT", "thaw": "SIGCONT"}[action]
	return api.ProcResult{Action: action, PID: r.PID, Start: 5, Comm: "yes", Exe: "/bin/busybox", Signal: sig, StateBefore: "R",
		StateAfter: "T", Frozen: action == "freeze", Outcome: "sent", SafePointMillis: 1, CallMicros: 2, TookMillis: 3}, nil
}

func (f *fakeVM) Metrics(_ context.Context, w io.Writer) error {
	f.called("Metrics")
	_, err := io.WriteString(w, "# HELP gatevisor_vm_vcpus The guest's vCPUs.\n# TYPE gatevisor_vm_vcpus gauge\ngatevisor_vm_vcpus{vm=\"vm1\"} 1\n")
	return err
}

func (f *fakeVM) Restart(_ context.Context, req api.RestartRequest) (api.RestartResult, error) {
	f.called("Restart")
	return api.RestartResult{Mode: "x-ignore-shared", OldQEMUPID: 1, NewQEMUPID: 2}, nil
}

func (f *fakeVM) Upgrade(_ context.Context, req api.UpgradeRequest) (api.UpgradeResult, error) {
	f.called("Upgrade")
	return api.UpgradeResult{Binary: "/usr/bin/gatevisor", MonitorPID: 1, Upgrades: 1}, nil
}

func (f *fakeVM) Snapshot(_ context.Context, tag string) (api.Snapshot, error) {
	f.called("Snapshot")
	return api.Snapshot{Tag: tag}, nil
}

func (f *fakeVM) Snapshots(context.Context) (api.Snapshots, error) {
	f.called("Snapshots")
	return api.Snapshots{Snapshots: []api.Snapshot{}}, nil
}

func (f *fakeVM) Rollback(_ context.Context, tag string) (api.RollbackResult, error) {
	f.called("Rollback")
	return api.RollbackResult{Tag: tag}, nil
}

func (f *fakeVM) RemoveSnapshot(context.Context, string) error {
	f.called("RemoveSnapshot")
	return nil
}

func (f *fakeVM) NetIsolate(_ context.Context, reason string) (api.NetIsolation, error) {
	f.called("NetIsolate")
	return api.NetIsolation{Isolated: true, Reason: reason}, nil
}

func (f *fakeVM) NetRestore(context.Context) (api.NetIsolation, error) {
	f.called("NetRestore")
	return api.NetIsolation{}, nil
}

func (f *fakeVM) NetFlows(_ context.Context, limit int) (api.NetFlows, error) {
	f.called("NetFlows")
	if f.noNet {
		return api.NetFlows{}, &api.Error{Code: api.CodeConflict, Message: "the VM has no network: it was started without --net"}
	}
	t0 := time.Unix(1700000000, 0).UTC()
	return api.NetFlows{Total: 2, Limit: limit, Flows: []api.NetFlow{
		{Proto: "tcp", Local: "10.0.2.15:40000", Remote: "10.0.2.3:80", Dir: "out", State: "allowed", Answered: true, Verdict: "allow", Action: "forward",
			Rule: "updater", PolicySeq: 1, Process: &api.NetFlowProcess{PID: 42, Start: 5, Comm: "updater", Exe: "/usr/bin/updater"},
			Created: t0, Decided: &t0, Last: t0, FramesOut: 3, FramesIn: 2, BytesOut: 200, BytesIn: 100},
		{Proto: "udp", Local: "10.0.2.15:5353", Remote: "10.0.2.2:53", Dir: "out", State: "pending", NoProcess: "waiting for attribution",
			Created: t0, Last: t0, FramesOut: 1}}}, nil
}

func (f *fakeVM) LoadPolicy(_ context.Context, r api.PolicyRequest) (api.PolicyResult, error) {
	f.called("LoadPolicy")
	if strings.Contains(r.Source, "bad") {
		return api.PolicyResult{}, &api.Error{Code: api.CodeBadRequest, Message: "policy rejected, the policy in force stays: t.policy:1:1: bad"}
	}
	return api.PolicyResult{Seq: 2, Path: r.Path, Syscalls: []string{"open"},
		Breakpoints: []api.Breakpoint{{Symbol: "__x64_sys_openat", Syscall: "open", Addr: "0xffffffff81400000", PhysAddr: "0x1400000"},
			{Symbol: "security_file_open", Site: "read of security_hook_heads.file_open", Watchpoint: true, Syscall: "open", Addr: "0xffffffff82000000"}}}, nil
}
func (f *fakeVM) MemoryLayout() api.MemoryLayout {
	f.called("MemoryLayout")
	return api.MemoryLayout{Size: 1 << 20, Regions: []api.Region{{GPA: 0, Offset: 0, Size: 1 << 20}}}
}
func (f *fakeVM) ReadPhysical(_ context.Context, addr uint64, p []byte) error {
	f.called("ReadPhysical")
	if addr+uint64(len(p)) > 1<<20 {
		return &api.Error{Code: api.CodeBadRequest, Message: "not RAM"}
	}
	for i := range p {
		p[i] = byte(addr) + byte(i)
	}
	return nil
}
func (f *fakeVM) IDS(_ context.Context, q, src string) (api.IDSResult, error) {
	f.called("IDS")
	if src == "" {
		src = "ram"
	}
	return api.IDSResult{Query: q, Source: src, ElapsedMicros: 12, Result: json.RawMessage(`[{"pid":1,"comm":"init"}]`)}, nil
}
func (f *fakeVM) Dump(_ context.Context, path string) (api.DumpResult, error) {
	f.called("Dump")
	return api.DumpResult{Path: path, Size: 4096, ElapsedMicros: 5}, nil
}
func (f *fakeVM) WritePhysical(_ context.Context, addr uint64, p []byte) error {
	f.called("WritePhysical")
	f.written = append([]byte(nil), p...)
	return nil
}
func (f *fakeVM) Events(_ context.Context, w io.Writer, q api.EventsQuery, flush func()) error {
	f.called("Events")
	f.lastEvents = q
	if f.eventsErr != nil {
		return f.eventsErr
	}
	_, err := io.WriteString(w, `{"type":"finding"}`+"\n")
	flush()
	return err
}
func (f *fakeVM) AttachConsole(_ context.Context, conn io.ReadWriteCloser, replay int) error {
	f.called("AttachConsole")
	_, _ = conn.Write([]byte("login: "))
	buf := make([]byte, 5)
	n, _ := io.ReadFull(conn, buf)
	if f.console != nil {
		f.console <- buf[:n]
	}
	return nil
}

func init() {
	// Each line of an events stream must be one JSON object.
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", func(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(body)
		if err != nil {
			return nil, err
		}
		for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			var v map[string]any
			if len(line) > 0 && json.Unmarshal(line, &v) != nil {
				return nil, errors.New("ndjson line is not a JSON object: " + string(line))
			}
		}
		return string(b), nil
	})
}

func loadRouter(t *testing.T) routers.Router {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.Spec)
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not valid OpenAPI: %v", err)
	}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// roundTrip validates req against the spec (wantReqValid says whether it
// should conform), serves it, and validates the response against the spec.
func roundTrip(t *testing.T, router routers.Router, h http.Handler, req *http.Request, body []byte, wantReqValid bool) *httptest.ResponseRecorder {
	t.Helper()
	ctx := context.Background()
	route, params, err := router.FindRoute(req)
	var reqErr error
	var in *openapi3filter.RequestValidationInput
	if err != nil {
		reqErr = err
	} else {
		req.Body = io.NopCloser(bytes.NewReader(body))
		in = &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		reqErr = openapi3filter.ValidateRequest(ctx, in)
	}
	if (reqErr == nil) != wantReqValid {
		t.Fatalf("request %s %s: spec validation error = %v, want valid=%v", req.Method, req.URL, reqErr, wantReqValid)
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if in != nil {
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: rec.Code, Header: rec.Header(),
			Options: &openapi3filter.Options{IncludeResponseStatus: true}}
		out.SetBodyBytes(rec.Body.Bytes())
		if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
			t.Fatalf("response %d %s to %s %s does not match the spec: %v", rec.Code, rec.Body.String(), req.Method, req.URL, err)
		}
	}
	return rec
}

func TestEndpointsMatchSpec(t *testing.T) {
	router := loadRouter(t)
	for _, tc := range []struct {
		name, method, path, body string
		reqValid                 bool
		wantCode                 int
		wantBody                 string
	}{
		{"status", "GET", "/v1/status", "", true, 200, `"state":"running"`},
		{"stop default", "POST", "/v1/stop", "", true, 202, `"name":"vm1"`},
		{"stop force", "POST", "/v1/stop", `{"force":true,"timeout_seconds":5}`, true, 202, ""},
		{"stop bad timeout", "POST", "/v1/stop", `{"timeout_seconds":6000}`, false, 400, `"code":"bad_request"`},
		{"stop unknown field", "POST", "/v1/stop", `{"forse":true}`, false, 400, "unknown field"},
		{"exec", "POST", "/v1/exec", `{"argv":["echo","hi"]}`, true, 200, `"exit_code":3`},
		{"exec empty argv", "POST", "/v1/exec", `{"argv":[]}`, false, 400, "argv is empty"},
		{"exec no body", "POST", "/v1/exec", "", false, 400, "body is empty"},
		{"exec bad json", "POST", "/v1/exec", `{"argv":`, false, 400, "request body"},
		{"registers", "GET", "/v1/vcpus/0/registers", "", true, 200, `"rip":"0xffffffff81000000"`},
		{"registers missing vcpu", "GET", "/v1/vcpus/1/registers", "", true, 404, "does not exist"},
		{"registers bad index", "GET", "/v1/vcpus/99/registers", "", false, 400, "use 0 to 63"},
		{"memory", "GET", "/v1/memory", "", true, 200, `"regions":[{"gpa":0`},
		{"read", "GET", "/v1/memory/physical?address=0x10&length=4", "", true, 200, "\x10\x11\x12\x13"},
		{"read decimal", "GET", "/v1/memory/physical?address=16&length=1", "", true, 200, "\x10"},
		{"read too long", "GET", "/v1/memory/physical?address=0&length=2000000", "", false, 400, "use 1 to"},
		{"read bad address", "GET", "/v1/memory/physical?address=zz&length=1", "", false, 400, "address"},
		{"read outside RAM", "GET", "/v1/memory/physical?address=0xfffff&length=16", "", true, 400, "not RAM"},
		{"console without upgrade", "GET", "/v1/console", "", true, 400, "Upgrade"},
		{"ids ps", "GET", "/v1/ids/ps", "", true, 200, `"result":[{"pid":1`},
		{"ids check gdbstub", "GET", "/v1/ids/check?source=gdbstub", "", true, 200, `"source":"gdbstub"`},
		{"ids unknown query", "GET", "/v1/ids/nope", "", false, 404, "unknown IDS query"},
		{"ids bad source", "GET", "/v1/ids/ps?source=disk", "", false, 400, "use ram or gdbstub"},
		{"dump", "POST", "/v1/dump", `{"path":"/tmp/x.elf"}`, true, 200, `"size":4096`},
		{"dump relative", "POST", "/v1/dump", `{"path":"x.elf"}`, false, 400, "absolute"},
		{"events", "GET", "/v1/events", "", true, 200, `"type":"finding"`},
		{"policy load", "POST", "/v1/policy", `{"path":"/p/seed.policy","source":"open default: allow"}`, true, 200, `"__x64_sys_openat"`},
		{"policy rejected", "POST", "/v1/policy", `{"path":"/p/x.policy","source":"bad"}`, true, 400, "stays"},
		{"policy relative", "POST", "/v1/policy", `{"path":"x.policy","source":""}`, false, 400, "absolute"},
		{"proc stop", "POST", "/v1/proc/stop", `{"pid":42}`, true, 200, `"signal":"SIGSTOP"`},
		{"net isolate", "POST", "/v1/net/isolate", `{"reason":"a scan"}`, true, 200, `"isolated":true`},
		{"net isolate no body", "POST", "/v1/net/isolate", "", true, 200, `"isolated":true`},
		{"net restore", "POST", "/v1/net/restore", "", true, 200, `"isolated":false`},
		{"metrics", "GET", "/v1/metrics", "", true, 200, `gatevisor_vm_vcpus{vm="vm1"} 1`},
		{"net flows", "GET", "/v1/net/flows", "", true, 200, `"limit":500`},
		{"net flows limit", "GET", "/v1/net/flows?limit=7", "", true, 200, `"comm":"updater"`},
		{"net flows limit 0", "GET", "/v1/net/flows?limit=0", "", false, 400, "ask for 1 to 10000 flows"},
		{"net flows limit too large", "GET", "/v1/net/flows?limit=10001", "", false, 400, "ask for 1 to 10000 flows"},
		{"net flows bad limit", "GET", "/v1/net/flows?limit=x", "", false, 400, "ask for 1 to 10000 flows"},
		{"proc freeze", "POST", "/v1/proc/freeze", `{"pid":42,"start_ns":5}`, true, 200, `"frozen":true`},
		{"proc unknown action", "POST", "/v1/proc/pause", `{"pid":42}`, false, 404, "unknown process action"},
		{"proc pid 0", "POST", "/v1/proc/kill", `{"pid":0}`, false, 400, "use a process id from 1"},
		{"proc no such pid", "POST", "/v1/proc/kill", `{"pid":404}`, true, 404, "no process 404"},
		{"proc no body", "POST", "/v1/proc/kill", "", false, 400, "body is empty"},
		{"events bad follow", "GET", "/v1/events?follow=maybe", "", false, 400, "true or false"},
		{"events page back", "GET", "/v1/events?before=500&limit=20", "", true, 200, `"type":"finding"`},
		{"events forward, following", "GET", "/v1/events?after=0&follow=true", "", true, 200, `"type":"finding"`},
		{"events last N, following", "GET", "/v1/events?limit=10&follow=true", "", true, 200, `"type":"finding"`},
		{"events limit too large", "GET", "/v1/events?limit=10001", "", false, 400, "1 to 10000"},
		{"events limit 0", "GET", "/v1/events?limit=0", "", false, 400, "1 to 10000"},
		{"events before 0", "GET", "/v1/events?before=0", "", false, 400, "1 or more"},
		{"events bad after", "GET", "/v1/events?after=-1", "", false, 400, "0 or more"},
		{"events before with follow", "GET", "/v1/events?before=9&follow=true", "", true, 400, "cannot follow"},
		{"events empty range", "GET", "/v1/events?after=5&before=6", "", true, 400, "select no event"},
		{"events after, follow, limit", "GET", "/v1/events?after=5&follow=true&limit=3", "", true, 400, "gap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := &fakeVM{}
			h := New(vm).Handler()
			req := httptest.NewRequest(tc.method, "http://gatevisor"+tc.path, nil)
			if tc.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			rec := roundTrip(t, router, h, req, []byte(tc.body), tc.reqValid)
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Fatalf("got %d %q; want %d containing %q", rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
		})
	}
}

func TestEventsQuery(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  api.EventsQuery
	}{
		{"", api.EventsQuery{}},
		{"?follow=true", api.EventsQuery{Follow: true}},
		{"?before=500", api.EventsQuery{Before: 500, Limit: api.DefaultEventsLimit}},
		{"?limit=7", api.EventsQuery{Limit: 7}},
		{"?after=0", api.EventsQuery{HasAfter: true, Limit: api.DefaultEventsLimit}},
		{"?after=18446744073709551614&follow=1", api.EventsQuery{Follow: true, HasAfter: true, After: 1<<64 - 2}},
	} {
		vm := &fakeVM{}
		rec := httptest.NewRecorder()
		New(vm).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "http://gatevisor/v1/events"+tc.query, nil))
		if rec.Code != 200 {
			t.Errorf("%q: %d %s", tc.query, rec.Code, rec.Body)
		}
		if diff := cmp.Diff(tc.want, vm.lastEvents); diff != "" {
			t.Errorf("%q: query the api.VM got (-want +got):\n%s", tc.query, diff)
		}
	}
	// An error before the stream starts is an error answer, not a 200.
	vm := &fakeVM{eventsErr: errors.New("events log: refusing /x/events.jsonl.1: it is a symbolic link")}
	rec := httptest.NewRecorder()
	New(vm).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "http://gatevisor/v1/events?limit=5", nil))
	if rec.Code != 500 || !strings.Contains(rec.Body.String(), "symbolic link") {
		t.Errorf("failing Events: %d %s", rec.Code, rec.Body)
	}
}

func TestExecDefaultsTimeout(t *testing.T) {
	vm := &fakeVM{}
	h := New(vm).Handler()
	req := httptest.NewRequest("POST", "http://gatevisor/v1/exec", strings.NewReader(`{"argv":["true"]}`))
	h.ServeHTTP(httptest.NewRecorder(), req)
	if diff := cmp.Diff(api.ExecRequest{Argv: []string{"true"}, TimeoutSeconds: api.DefaultExecTimeout}, vm.lastExec); diff != "" {
		t.Errorf("request passed to the api.VM (-want +got):\n%s", diff)
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err      error
		wantCode int
	}{
		{api.ErrNotReady, 503}, {api.ErrUnavailable, 503}, {&api.Error{Code: api.CodeConflict, Message: "x"}, 409}, {errors.New("boom"), 500},
	} {
		vm := &fakeVM{execErr: tc.err}
		rec := httptest.NewRecorder()
		New(vm).Handler().ServeHTTP(rec, httptest.NewRequest("POST", "http://gatevisor/v1/exec", strings.NewReader(`{"argv":["x"]}`)))
		if rec.Code != tc.wantCode {
			t.Errorf("%v: code %d, want %d", tc.err, rec.Code, tc.wantCode)
		}
		var e api.Error
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" {
			t.Errorf("%v: body %q is not an API error", tc.err, rec.Body.String())
		}
	}
}

// TestUnixSocketClient runs the real server on a unix socket and drives it
// with the client, the console upgrade and the peer-credential check included.
func TestUnixSocketClient(t *testing.T) {
	vm := &fakeVM{console: make(chan []byte, 1)}
	s := New(vm)
	sock := filepath.Join(t.TempDir(), "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	c := apiclient.New(sock)
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil || st.Name != "vm1" {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"id"}})
	if err != nil || res.ExitCode != 3 || string(res.Stdout) != "out\n" {
		t.Fatalf("Exec = %+v, %v", res, err)
	}
	b, err := c.ReadPhysical(ctx, 0x20, 3)
	if err != nil || !bytes.Equal(b, []byte{0x20, 0x21, 0x22}) {
		t.Fatalf("ReadPhysical = %x, %v", b, err)
	}
	if _, err := c.Registers(ctx, 1); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("Registers(1) error = %v, want not_found", err)
	}
	if err := c.WritePhysical(ctx, 0x40, []byte{1, 2, 3}); err != nil || !bytes.Equal(vm.written, []byte{1, 2, 3}) {
		t.Fatalf("WritePhysical: %v, api.VM got %x", err, vm.written)
	}
	ir, err := c.IDS(ctx, "ps", "")
	if err != nil || ir.Source != "ram" || !strings.Contains(string(ir.Result), `"comm":"init"`) {
		t.Fatalf("IDS = %+v, %v", ir, err)
	}
	fl, err := c.NetFlows(ctx, 0)
	if err != nil || fl.Limit != api.DefaultNetFlowsLimit || len(fl.Flows) != 2 || fl.Flows[0].Process.Comm != "updater" || fl.Flows[1].NoProcess == "" {
		t.Fatalf("NetFlows = %+v, %v", fl, err)
	}
	if fl, err := c.NetFlows(ctx, 3); err != nil || fl.Limit != 3 {
		t.Fatalf("NetFlows(3) = %+v, %v", fl, err)
	}
	vm.noNet = true
	if _, err := c.NetFlows(ctx, 0); !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "without --net") {
		t.Fatalf("NetFlows without a network: %v, want conflict", err)
	}
	vm.noNet = false
	if _, err := c.QueryEvents(ctx, api.EventsQuery{Before: 3, Follow: true}); !api.IsCode(err, api.CodeBadRequest) {
		t.Fatalf("QueryEvents(before, follow) error = %v, want bad_request", err)
	}
	ev, err := c.QueryEvents(ctx, api.EventsQuery{HasAfter: true, After: 0, Limit: 4})
	if err != nil {
		t.Fatal(err)
	}
	evb, _ := io.ReadAll(ev)
	ev.Close()
	if string(evb) != `{"type":"finding"}`+"\n" || !vm.lastEvents.HasAfter || vm.lastEvents.Limit != 4 {
		t.Fatalf("QueryEvents = %q, the api.VM got %+v", evb, vm.lastEvents)
	}
	ev, err = c.Events(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	evb, _ = io.ReadAll(ev)
	ev.Close()
	if string(evb) != `{"type":"finding"}`+"\n" {
		t.Fatalf("Events = %q", evb)
	}
	conn, err := c.Console(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	prompt := make([]byte, 7)
	if _, err := io.ReadFull(conn, prompt); err != nil || string(prompt) != "login: " {
		t.Fatalf("console read %q, %v", prompt, err)
	}
	_, _ = conn.Write([]byte("root\n"))
	select {
	case got := <-vm.console:
		if string(got) != "root\n" {
			t.Fatalf("console input reached the api.VM as %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("console input never reached the api.VM")
	}
	conn.Close()

	// A caller whose uid is not admitted is refused on every endpoint.
	deny := New(vm)
	deny.allowed = func(uint32) bool { return false }
	denySock := filepath.Join(t.TempDir(), "deny.sock")
	if err := deny.Listen(denySock); err != nil {
		t.Fatal(err)
	}
	defer deny.Shutdown(context.Background())
	if _, err := apiclient.New(denySock).Status(ctx); !api.IsCode(err, api.CodeForbidden) {
		t.Fatalf("Status from a refused uid: %v, want forbidden", err)
	}
}

func TestSocketMode(t *testing.T) {
	s := New(&fakeVM{})
	sock := filepath.Join(t.TempDir(), "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("socket mode %o, want 600", perm)
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"0x0", "0xffffffffffffffff", "123", "0x", "", "0x1ffffffffffffffff", "-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := api.ParseAddress(s)
		if err == nil && strings.HasPrefix(s, "0x") && len(s) > 18 {
			t.Fatalf("accepted %q as %#x", s, v)
		}
	})
}
