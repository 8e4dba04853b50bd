package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiserver"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// hostile is guest-chosen text that would run as markup if written raw.
const hostile = `<script>alert("pwned")</script><img src=x onerror=alert(1)>`

// fakeVM is a VM whose guest is hostile: its process names, paths and
// event text are markup.
type fakeVM struct {
	mu     sync.Mutex
	procs  []string // proc actions done: "kill 42"
	caller []api.Caller
	// refuseFlows makes the policy refuse net.flows; refuse, the actions
	// it names.
	refuseFlows bool
	refuse      map[string]bool
	live        chan []byte // events to follow
	// snaps are the VM's snapshots, unreadable what its list cannot read;
	// lifecycle the snapshot calls made: "snapshot TAG", "rollback TAG",
	// "remove TAG".
	snaps      []api.Snapshot
	unreadable []string
	lifecycle  []string
	noSnapDir  bool // the monitor keeps no snapshot directory
}

func (f *fakeVM) Restart(context.Context, api.RestartRequest) (api.RestartResult, error) {
	return api.RestartResult{}, nil
}

func (f *fakeVM) Upgrade(context.Context, api.UpgradeRequest) (api.UpgradeResult, error) {
	return api.UpgradeResult{}, nil
}

func (f *fakeVM) Snapshot(_ context.Context, tag string) (api.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lifecycle = append(f.lifecycle, "snapshot "+tag)
	for _, s := range f.snaps {
		if s.Tag == tag {
			return api.Snapshot{}, &api.Error{Code: api.CodeConflict, Message: "snapshot " + tag + " exists: remove it first"}
		}
	}
	s := api.Snapshot{Tag: tag, Created: time.Date(2026, 12, 6, 17, 0, 0, 0, time.UTC), VM: "cam1", MemMiB: 256, CPUs: 1,
		RAMPages: 2000, RAMStoredBytes: 8 << 20, DeviceStateBytes: 5000, PolicyDigest: "sha256:feedfacefeedface0123", PausedSeconds: 0.0311}
	f.snaps = append(f.snaps, s)
	return s, nil
}

func (f *fakeVM) Snapshots(context.Context) (api.Snapshots, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noSnapDir {
		return api.Snapshots{}, &api.Error{Code: api.CodeConflict, Message: "this VM has no snapshot directory (the monitor was started without one)"}
	}
	return api.Snapshots{Dir: "/var/lib/gatevisor/vms/cam1/snapshots", Snapshots: append([]api.Snapshot{}, f.snaps...),
		Unreadable: append([]string(nil), f.unreadable...)}, nil
}

func (f *fakeVM) Rollback(_ context.Context, tag string) (api.RollbackResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lifecycle = append(f.lifecycle, "rollback "+tag)
	for _, s := range f.snaps {
		if s.Tag == tag {
			return api.RollbackResult{Tag: tag, VerifySeconds: 1.5, DowntimeSeconds: 0.0425, TotalSeconds: 2.25, RAMPages: s.RAMPages}, nil
		}
	}
	return api.RollbackResult{}, &api.Error{Code: api.CodeNotFound, Message: "no snapshot " + tag}
}

func (f *fakeVM) RemoveSnapshot(_ context.Context, tag string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lifecycle = append(f.lifecycle, "remove "+tag)
	for i, s := range f.snaps {
		if s.Tag == tag {
			f.snaps = append(f.snaps[:i], f.snaps[i+1:]...)
			return nil
		}
	}
	return &api.Error{Code: api.CodeNotFound, Message: "no snapshot " + tag}
}

// lifecycleDone returns the snapshot calls made, and forgets them.
func (f *fakeVM) lifecycleDone() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.lifecycle
	f.lifecycle = nil
	return l
}

func (f *fakeVM) Status(ctx context.Context) api.Status {
	return api.Status{Name: "cam1", State: api.StateRunning, GuestReady: true, Accel: "tcg", CPUs: 1, MemMiB: 256,
		StartedAt: time.Now().Add(-time.Minute),
		Policy:    &api.PolicyStatus{Digest: "sha256:0123456789abcdef", Seq: 3, Path: "/etc/gatevisor/cam.policy"},
		Gates:     []api.GateStatus{{Name: "kernel", Armed: true, Decisions: map[string]uint64{"deny": 2}}, {Name: "api", Armed: true}},
		Net:       &api.NetStatus{Mode: "isolated", Network: "lab", Gate: &api.NetGateStats{Flows: 1, Denied: 1}},
		Events:    &api.EventsStatus{Seq: 7}}
}
func (f *fakeVM) Stop(context.Context, api.StopRequest) error { return nil }
func (f *fakeVM) Exec(context.Context, api.ExecRequest) (api.ExecResult, error) {
	return api.ExecResult{}, nil
}
func (f *fakeVM) Registers(context.Context, int) (api.Registers, error) { return api.Registers{}, nil }
func (f *fakeVM) MemoryLayout() api.MemoryLayout                        { return api.MemoryLayout{} }
func (f *fakeVM) ReadPhysical(context.Context, uint64, []byte) error    { return nil }
func (f *fakeVM) WritePhysical(context.Context, uint64, []byte) error   { return nil }
func (f *fakeVM) Dump(context.Context, string) (api.DumpResult, error) {
	return api.DumpResult{}, nil
}
func (f *fakeVM) AttachConsole(context.Context, io.ReadWriteCloser, int) error { return nil }
func (f *fakeVM) LoadPolicy(_ context.Context, req api.PolicyRequest) (api.PolicyResult, error) {
	return api.PolicyResult{Seq: 4, Path: req.Path, Digest: "sha256:feed"}, nil
}
func (f *fakeVM) NetIsolate(context.Context, string) (api.NetIsolation, error) {
	return api.NetIsolation{Isolated: true}, nil
}
func (f *fakeVM) NetRestore(context.Context) (api.NetIsolation, error) {
	return api.NetIsolation{}, nil
}
func (f *fakeVM) Metrics(context.Context, io.Writer) error { return nil }

// NetFlows answers two flows: an allowed one of the hostile process, and
// a denied one no process owned.
func (f *fakeVM) NetFlows(_ context.Context, limit int) (api.NetFlows, error) {
	t0 := time.Now().Add(-3 * time.Second).UTC()
	return api.NetFlows{Total: 2, Limit: limit, Flows: []api.NetFlow{
		{Proto: "tcp", Local: "10.0.2.15:40000", Remote: "10.0.2.3:80", Dir: "out", State: "allowed", Answered: true, Verdict: "allow",
			Action: "forward", Rule: "updater", Process: &api.NetFlowProcess{PID: 42, Start: 123456, Comm: hostile, Exe: "/tmp/" + hostile},
			Created: t0, Decided: &t0, Last: t0, FramesOut: 5, FramesIn: 4, BytesOut: 700, BytesIn: 3000},
		{Proto: "udp", Local: "10.0.2.15:5353", Remote: "198.51.100.7:53", Dir: "out", State: "denied", Verdict: "deny", Action: "drop",
			Rule: "egress_default", NoProcess: "no guest socket owns the flow", Created: t0, Decided: &t0, Last: t0, FramesOut: 1}}}, nil
}

func (f *fakeVM) Proc(ctx context.Context, action string, req api.ProcRequest) (api.ProcResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.procs = append(f.procs, fmt.Sprintf("%s %d", action, req.PID))
	return api.ProcResult{Action: action, PID: req.PID, Outcome: "pid " + fmt.Sprint(req.PID) + " " + hostile + " is gone"}, nil
}

func (f *fakeVM) done() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.procs...)
}

var fakeTasks = []linux.Task{
	{PID: 1, PPID: 0, Comm: "init", Exe: "/sbin/init", State: "S"},
	{PID: 2, PPID: 0, Comm: "kthreadd", KernelThread: true, State: "S"},
	{PID: 3, PPID: 2, Comm: "kworker/0:0", KernelThread: true, State: "I"},
	{PID: 42, PPID: 1, Comm: hostile, Exe: "/tmp/" + hostile, State: "R", StartTime: 123456},
	{PID: 43, PPID: 42, Comm: "sleep", Exe: "/bin/busybox", State: "S"},
}

func (f *fakeVM) IDS(_ context.Context, query, _ string) (api.IDSResult, error) {
	var v any
	switch query {
	case "ps":
		v = fakeTasks
	case "sockets":
		v = []linux.Socket{{Family: "inet", Proto: "tcp", LocalAddr: "10.0.0.2", LocalPort: 1234, RemoteAddr: "192.0.2.1", RemotePort: 80, State: "ESTABLISHED", PID: 42, Comm: hostile},
			{Family: "unix", Proto: "unix", PID: 1, Comm: "init"}}
	case "check":
		v = ids.Report{Findings: []ids.Finding{{Check: "hidden-process", Severity: "high", Summary: "pid 42 " + hostile + " hidden", PID: 42}},
			Checks: []ids.CheckStatus{{Name: "hidden-process", Ran: true, Findings: 1}}}
	default:
		return api.IDSResult{}, &api.Error{Code: api.CodeNotFound, Message: "no " + query}
	}
	b, _ := json.Marshal(v)
	return api.IDSResult{Query: query, Result: b, Frozen: []int{43}}, nil
}

// fakeEvents are the VM's history: a denied exec of a hostile path, an
// allowed net flow, a finding, a notice.
func fakeEvents() [][]byte {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	pts := []monitoring.Point{
		{Seq: 5, Time: t0, VM: "cam1", Kind: monitoring.ExecDecision, Decision: &monitoring.Decision{Class: "exec", PID: 42, Comm: hostile, Path: "/tmp/" + hostile, Verdict: "deny", Rule: "no_tmp_exec", Reason: hostile}},
		{Seq: 6, Time: t0, VM: "cam1", Kind: monitoring.Finding, Finding: &ids.Finding{Check: "hidden-process", Severity: "high", Summary: hostile, PID: 42}},
		{Seq: 7, Time: t0, VM: "cam1", Kind: monitoring.ProcNotice, Detail: "frozen " + hostile},
	}
	var out [][]byte
	for _, p := range pts {
		b, _ := json.Marshal(p)
		out = append(out, b)
	}
	return out
}

func (f *fakeVM) Events(ctx context.Context, w io.Writer, q api.EventsQuery, flush func()) error {
	for _, l := range fakeEvents() {
		var head struct{ Seq uint64 }
		_ = json.Unmarshal(l, &head)
		if q.HasAfter && head.Seq <= q.After {
			continue
		}
		_, _ = w.Write(append(l, '\n'))
	}
	flush()
	for q.Follow {
		select {
		case <-ctx.Done():
			return nil
		case l, ok := <-f.live:
			if !ok {
				return nil
			}
			_, _ = w.Write(append(l, '\n'))
			flush()
		}
	}
	return nil
}

// rig is a dashboard over one fake VM behind a real API server whose
// policy refuses proc.kill to uid 4242 and proc.freeze to everyone.
type rig struct {
	d    *Dashboard
	h    http.Handler
	vm   *fakeVM
	now  time.Time
	nowM sync.Mutex
}

const base = "http://127.0.0.1:9464"

func newRig(t *testing.T, delegate bool) *rig {
	t.Helper()
	r := &rig{vm: &fakeVM{live: make(chan []byte, 8), refuse: map[string]bool{},
		// The VM's snapshot "ready", and an entry of its directory that is
		// not a snapshot, whose name the guest's user could not choose but
		// is written as text anyway.
		snaps: []api.Snapshot{{Tag: "ready", Created: time.Date(2026, 12, 6, 16, 0, 0, 0, time.UTC), VM: "cam1", MemMiB: 256, CPUs: 1,
			RAMPages: 1234, RAMStoredBytes: 5 << 20, DeviceStateBytes: 4096, PolicyDigest: "sha256:0123456789abcdef0123456789", PausedSeconds: 0.0125}},
		unreadable: []string{"snapshot " + hostile + ": no manifest.json"}}, now: time.Now()}
	authorize := func(_ context.Context, c api.Caller, action string) error {
		r.vm.mu.Lock()
		r.vm.caller = append(r.vm.caller, c)
		refuseFlows, refused := r.vm.refuseFlows, r.vm.refuse[action]
		r.vm.mu.Unlock()
		if action == "proc.freeze" || action == "proc.kill" && c.UID == 4242 || action == "net.flows" && refuseFlows || refused {
			return errors.New("deny by rule viewers_read_only (test.policy:3:1)")
		}
		return nil
	}
	srv := apiserver.New(r.vm, apiserver.Options{Authorize: authorize})
	sock := filepath.Join(t.TempDir(), "api.sock")
	if err := srv.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	vms := []VM{{Name: "cam1", Socket: sock, Live: true}, {Name: "other", Socket: "/nonexistent", Owner: 7, Live: true, Private: true}}
	self := Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	r.d = New(Config{VMs: func() ([]VM, error) { return vms, nil }, BaseURL: base, Hosts: LoopbackHosts("127.0.0.1:9464"),
		Delegate: delegate, Self: self, SessionTTL: time.Hour, Now: r.clock})
	r.h = r.d.Handler()
	return r
}

func (r *rig) clock() time.Time {
	r.nowM.Lock()
	defer r.nowM.Unlock()
	return r.now
}

func (r *rig) advance(d time.Duration) {
	r.nowM.Lock()
	r.now = r.now.Add(d)
	r.nowM.Unlock()
}

// do serves one request; cookie, when set, is the session's.
func (r *rig) do(t *testing.T, method, path string, cookie *http.Cookie, form url.Values, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req := httptest.NewRequest(method, base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	rec := httptest.NewRecorder()
	r.h.ServeHTTP(rec, req)
	return rec
}

// login logs user in through a ticket and returns the session's cookie
// and CSRF token.
func (r *rig) login(t *testing.T, user Identity) (*http.Cookie, string) {
	t.Helper()
	tk, err := r.d.NewTicket(user)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(tk.URL)
	rec := r.do(t, "GET", u.RequestURI(), nil, nil)
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("login link: %d %s", rec.Code, rec.Body.String())
	}
	var c *http.Cookie
	for _, k := range rec.Result().Cookies() {
		if k.Name == cookieName {
			c = k
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.MaxAge <= 0 {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, expiring", c)
	}
	r.d.mu.Lock()
	csrf := r.d.sessions[c.Value].csrf
	r.d.mu.Unlock()
	return c, csrf
}

// TestHostileNamesEscaped: the guest's process names, paths and event
// text reach every page as text, never as markup.
func TestHostileNamesEscaped(t *testing.T) {
	r := newRig(t, false)
	c, csrf := r.login(t, Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())})
	// An action's outcome, which quotes the guest, is shown as the flash.
	if rec := r.do(t, "POST", "/vm/cam1/proc/stop", c, url.Values{"csrf": {csrf}, "pid": {"42"}}); rec.Code != http.StatusSeeOther {
		t.Fatalf("stop: %d %s", rec.Code, rec.Body.String())
	}
	for _, path := range []string{"/", "/vm/cam1", "/vm/cam1?kthreads=1", "/vm/cam1/check"} {
		rec := r.do(t, "GET", path, c, nil)
		body := rec.Body.String()
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d\n%s", path, rec.Code, body)
		}
		for _, raw := range []string{"<script>alert", "<img src=x", "onerror=alert"} {
			if strings.Contains(body, raw) && !strings.Contains(body, "&lt;img src=x onerror=alert") {
				t.Errorf("GET %s: the guest's %q is written raw", path, raw)
			}
		}
		if strings.Count(body, "<script") != 1 || !strings.Contains(body, `<script src="/static/app.js"></script>`) {
			t.Errorf("GET %s: scripts other than the dashboard's own", path)
		}
		if path != "/" && !strings.Contains(body, "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;") {
			t.Errorf("GET %s: the hostile name is not shown escaped", path)
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
	}
	vm := r.do(t, "GET", "/vm/cam1", c, nil).Body.String()
	for _, want := range []string{`id="proc-42"`, `id="proc-43"`, "└─ ", "frozen", "kernel threads hidden", "10.0.0.2:1234", "no_tmp_exec",
		`<tr class="snapshot" data-tag="ready">`, "not a usable snapshot: snapshot &lt;script&gt;", "sha256:0123456789abcdef", `data-stream="/vm/cam1/stream?after=7"`} {
		if !strings.Contains(vm, want) {
			t.Errorf("the VM page lacks %q", want)
		}
	}
	if strings.Contains(vm, `id="proc-3"`) {
		t.Error("kernel threads shown by default")
	}
	if !strings.Contains(r.do(t, "GET", "/vm/cam1?kthreads=1", c, nil).Body.String(), `id="proc-3"`) {
		t.Error("kthreads=1 does not show kernel threads")
	}
}

// TestFlows: the network gate's flows are on the VM page with their
// processes, the guest's names as text; a policy that refuses net.flows
// is shown in its words, and the rest of the page stays.
func TestFlows(t *testing.T) {
	r := newRig(t, false)
	c, _ := r.login(t, Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())})
	page := r.do(t, "GET", "/vm/cam1", c, nil).Body.String()
	start, end := strings.Index(page, `<table id="flows">`), strings.Index(page, "<h3>Sockets</h3>")
	if start < 0 || end < start {
		t.Fatalf("no flows table before the sockets:\n%s", page)
	}
	table := page[start:end]
	if n := strings.Count(table, "<tr class=\"v-"); n != 2 {
		t.Errorf("%d flow rows, want 2 (a guest name forged or lost one):\n%s", n, table)
	}
	for _, want := range []string{"10.0.2.15:40000", "10.0.2.3:80", "allow (forward)", "updater", "<td>42</td>",
		`<td class="comm">&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;</td>`,
		"198.51.100.7:53", "deny (drop)", "egress_default", "no guest socket owns the flow", "<td>5/4</td>"} {
		if !strings.Contains(table, want) {
			t.Errorf("the flows table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "<script>") || strings.Contains(table, "<img") {
		t.Errorf("the guest's name is written raw:\n%s", table)
	}

	r.vm.mu.Lock()
	r.vm.refuseFlows = true
	r.vm.mu.Unlock()
	page = r.do(t, "GET", "/vm/cam1", c, nil).Body.String()
	if strings.Contains(page, `<table id="flows">`) || !strings.Contains(page, `id="flows-error"`) ||
		!strings.Contains(page, "net.flows refused for uid") || !strings.Contains(page, "viewers_read_only (test.policy:3:1)") {
		t.Errorf("the refusal of net.flows is not shown in the policy's words:\n%s", page)
	}
	if !strings.Contains(page, `id="proc-42"`) || !strings.Contains(page, `<table id="sockets">`) {
		t.Error("a refused net.flows took the rest of the page with it")
	}
}

// section returns the VM page's section id, or fails.
func section(t *testing.T, page, id string) string {
	t.Helper()
	start := strings.Index(page, `<section id="`+id+`">`)
	if start < 0 {
		t.Fatalf("no section %s:\n%s", id, page)
	}
	end := strings.Index(page[start:], "</section>")
	if end < 0 {
		t.Fatalf("section %s does not end", id)
	}
	return page[start : start+end]
}

// TestSnapshots: the VM's snapshots are listed; taking one, rolling back
// and removing one are each one request to the VM's API, with the
// session's token; a rollback needs its confirmation, a bad tag never
// reaches the VM, and the policy's refusals are shown in its words.
func TestSnapshots(t *testing.T) {
	r := newRig(t, false)
	c, csrf := r.login(t, Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())})
	get := func() string {
		t.Helper()
		rec := r.do(t, "GET", "/vm/cam1", c, nil)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET /vm/cam1: %d\n%s", rec.Code, rec.Body.String())
		}
		return rec.Body.String()
	}
	post := func(path string, form url.Values) *httptest.ResponseRecorder {
		t.Helper()
		if form.Get("csrf") == "-" {
			form.Del("csrf")
		} else {
			form.Set("csrf", csrf)
		}
		return r.do(t, "POST", path, c, form)
	}
	flash := func(page string) string {
		t.Helper()
		i := strings.Index(page, `<div id="flash"`)
		if i < 0 {
			t.Fatalf("no outcome on the page:\n%s", page)
		}
		return page[i : i+strings.Index(page[i:], "</div>")]
	}
	expect := func(what string, want ...string) {
		t.Helper()
		if got := r.vm.lifecycleDone(); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%s: the VM was asked %q, want %q", what, got, want)
		}
	}

	// The list.
	sec := section(t, get(), "snapshots")
	for _, want := range []string{
		`<tr class="snapshot" data-tag="ready">`, "<code>ready</code>", "<td>1234</td>", "<td>5.0 MiB of 256 MiB</td>", "<td>4096 B</td>", "<td>12.5 ms</td>",
		`<code title="sha256:0123456789abcdef0123456789">sha256:0123456789ab</code>`,
		time.Date(2026, 12, 6, 16, 0, 0, 0, time.UTC).Local().Format("2006-01-02 15:04:05 MST"),
		"/var/lib/gatevisor/vms/cam1/snapshots",
		`<p class="warn unreadable">not a usable snapshot: snapshot &lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;: no manifest.json</p>`,
		`action="/vm/cam1/snapshot"`, `action="/vm/cam1/rollback"`, `action="/vm/cam1/snapshot/remove"`,
		`<input type="checkbox" name="confirm" value="state-lost" required> I understand the guest's state since then is lost`,
		`<input type="hidden" name="csrf" value="` + csrf + `"><input type="hidden" name="tag" value="ready">`,
	} {
		if !strings.Contains(sec, want) {
			t.Errorf("the snapshots section lacks %q:\n%s", want, sec)
		}
	}
	if strings.Contains(sec, "<script>") || strings.Contains(sec, "<img") {
		t.Errorf("an unreadable entry is written raw:\n%s", sec)
	}

	// Take one, named and unnamed.
	if rec := post("/vm/cam1/snapshot", url.Values{"tag": {" before-upgrade "}}); rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/vm/cam1#flash" {
		t.Fatalf("take a snapshot: %d %v", rec.Code, rec.Header())
	}
	expect("take before-upgrade", "snapshot before-upgrade")
	page := get()
	if f := flash(page); !strings.Contains(f, `class="flash ok"`) || !strings.Contains(f, "take snapshot before-upgrade: taken: 2000 RAM pages (8.0 MiB on disk of 256 MiB), device state 5000 bytes, guest paused 31.1 ms") {
		t.Errorf("the snapshot's outcome: %s", f)
	}
	if !strings.Contains(section(t, page, "snapshots"), `data-tag="before-upgrade"`) {
		t.Error("the new snapshot is not listed")
	}
	post("/vm/cam1/snapshot", url.Values{"tag": {""}})
	expect("take an unnamed one", "snapshot "+r.clock().Format("20060102-150405"))
	get()

	// A bad tag, and a post without the token, never reach the VM.
	for _, tc := range []struct {
		path string
		form url.Values
		code int
		want string
	}{
		{"/vm/cam1/snapshot", url.Values{"tag": {"../../etc"}}, 400, "it may not start with"},
		{"/vm/cam1/snapshot", url.Values{"tag": {"a b"}}, 400, "use letters, digits"},
		{"/vm/cam1/snapshot", url.Values{"tag": {strings.Repeat("x", 65)}}, 400, "give 1 to 64 characters"},
		{"/vm/cam1/snapshot", url.Values{"tag": {hostile}}, 400, "snapshot tag &#34;&lt;script&gt;"},
		{"/vm/cam1/rollback", url.Values{"tag": {"-rf"}, "confirm": {"state-lost"}}, 400, "it may not start with"},
		{"/vm/cam1/rollback", url.Values{"tag": {""}, "confirm": {"state-lost"}}, 400, "give 1 to 64 characters"},
		{"/vm/cam1/snapshot/remove", url.Values{"tag": {"x/y"}}, 400, "use letters, digits"},
		{"/vm/cam1/snapshot", url.Values{"tag": {"t"}, "csrf": {"-"}}, 403, "refused"},
		{"/vm/cam1/rollback", url.Values{"tag": {"ready"}, "confirm": {"state-lost"}, "csrf": {"-"}}, 403, "refused"},
		{"/vm/cam1/snapshot/remove", url.Values{"tag": {"ready"}, "csrf": {"-"}}, 403, "refused"},
		// A rollback without the confirmation, or with another value.
		{"/vm/cam1/rollback", url.Values{"tag": {"ready"}}, 400, "roll back to snapshot ready: not done: tick &#34;I understand the guest&#39;s state since then is lost&#34; first"},
		{"/vm/cam1/rollback", url.Values{"tag": {"ready"}, "confirm": {"on"}}, 400, "not done: tick"},
		{"/vm/nope/rollback", url.Values{"tag": {"ready"}, "confirm": {"state-lost"}}, 404, "no VM"},
	} {
		rec := post(tc.path, tc.form)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("POST %s %v: %d, want %d with %q:\n%s", tc.path, tc.form, rec.Code, tc.code, tc.want, rec.Body.String())
		}
		expect(fmt.Sprintf("POST %s %v", tc.path, tc.form))
	}

	// Roll back, confirmed.
	if rec := post("/vm/cam1/rollback", url.Values{"tag": {"ready"}, "confirm": {"state-lost"}}); rec.Code != http.StatusSeeOther {
		t.Fatalf("roll back: %d %s", rec.Code, rec.Body.String())
	}
	expect("roll back", "rollback ready")
	if f := flash(get()); !strings.Contains(f, `class="flash ok"`) || !strings.Contains(f, "roll back to snapshot ready: rolled back: 1234 RAM pages restored, guest paused 42.5 ms (snapshot verified in 1.50 s, 2.25 s in all)") {
		t.Errorf("the rollback's outcome: %s", f)
	}
	// The VM's own error, in its words.
	post("/vm/cam1/rollback", url.Values{"tag": {"gone"}, "confirm": {"state-lost"}})
	expect("roll back to a missing snapshot", "rollback gone")
	if f := flash(get()); !strings.Contains(f, `class="flash err"`) || !strings.Contains(f, "roll back to snapshot gone: not done: no snapshot gone") {
		t.Errorf("a missing snapshot's rollback: %s", f)
	}

	// Remove.
	post("/vm/cam1/snapshot/remove", url.Values{"tag": {"before-upgrade"}})
	expect("remove", "remove before-upgrade")
	page = get()
	if f := flash(page); !strings.Contains(f, "remove snapshot before-upgrade: removed") {
		t.Errorf("the removal's outcome: %s", f)
	}
	if strings.Contains(section(t, page, "snapshots"), `data-tag="before-upgrade"`) {
		t.Error("a removed snapshot is listed")
	}

	// The policy refuses: each action's refusal, then the list's, in its
	// words; the rest of the page stays.
	r.vm.mu.Lock()
	for _, a := range []string{"vm.snapshot", "vm.rollback", "vm.snapshot.remove"} {
		r.vm.refuse[a] = true
	}
	r.vm.mu.Unlock()
	for _, tc := range []struct {
		path string
		form url.Values
		want string
	}{
		{"/vm/cam1/snapshot", url.Values{"tag": {"t1"}}, "take snapshot t1: not done: vm.snapshot refused for uid"},
		{"/vm/cam1/rollback", url.Values{"tag": {"ready"}, "confirm": {"state-lost"}}, "roll back to snapshot ready: not done: vm.rollback refused for uid"},
		{"/vm/cam1/snapshot/remove", url.Values{"tag": {"ready"}}, "remove snapshot ready: not done: vm.snapshot.remove refused for uid"},
	} {
		if rec := post(tc.path, tc.form); rec.Code != http.StatusSeeOther {
			t.Errorf("POST %s: %d", tc.path, rec.Code)
		}
		if f := flash(get()); !strings.Contains(f, `class="flash err"`) || !strings.Contains(f, tc.want) || !strings.Contains(f, "viewers_read_only (test.policy:3:1)") {
			t.Errorf("POST %s: the refusal is not shown with the policy's reason: %s", tc.path, f)
		}
	}
	expect("refused actions")
	r.vm.mu.Lock()
	r.vm.refuse["vm.snapshots"] = true
	r.vm.mu.Unlock()
	page = get()
	sec = section(t, page, "snapshots")
	if !strings.Contains(sec, `<p class="err" id="snapshots-error">vm.snapshots refused for uid`) || !strings.Contains(sec, "viewers_read_only (test.policy:3:1)") {
		t.Errorf("the refusal of vm.snapshots is not shown in the policy's words:\n%s", sec)
	}
	if strings.Contains(sec, `id="snapshot-list"`) || !strings.Contains(sec, `id="snapshot-form"`) {
		t.Errorf("a refused list: the list shown, or the form gone:\n%s", sec)
	}
	if !strings.Contains(page, `id="proc-42"`) || !strings.Contains(page, `<table id="flows">`) {
		t.Error("a refused vm.snapshots took the rest of the page with it")
	}

	// A monitor without a snapshot directory: not available, no form.
	r.vm.mu.Lock()
	r.vm.refuse["vm.snapshots"], r.vm.noSnapDir = false, true
	r.vm.mu.Unlock()
	sec = section(t, get(), "snapshots")
	if !strings.Contains(sec, `<p class="na" id="snapshots-na">Not available: this VM has no snapshot directory`) || strings.Contains(sec, `id="snapshot-form"`) || strings.Contains(sec, `class="err"`) {
		t.Errorf("a VM without snapshots:\n%s", sec)
	}
}

// TestCSRF: a post without the session's token, with another's, or from
// another origin, is refused and never reaches the VM.
func TestCSRF(t *testing.T) {
	r := newRig(t, false)
	me := Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	c, csrf := r.login(t, me)
	_, other := r.login(t, me)
	for _, tc := range []struct {
		name   string
		form   url.Values
		header []string
	}{
		{"no token", url.Values{"pid": {"42"}}, nil},
		{"empty token", url.Values{"pid": {"42"}, "csrf": {""}}, nil},
		{"another session's token", url.Values{"pid": {"42"}, "csrf": {other}}, nil},
		{"the token in the query", nil, nil},
		{"another origin", url.Values{"pid": {"42"}, "csrf": {csrf}}, []string{"Origin", "http://evil.example"}},
	} {
		path := "/vm/cam1/proc/kill"
		if tc.form == nil {
			path += "?csrf=" + csrf + "&pid=42"
		}
		rec := r.do(t, "POST", path, c, tc.form, tc.header...)
		if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "refused") {
			t.Errorf("%s: %d, want 403 naming the refusal", tc.name, rec.Code)
		}
	}
	if got := r.vm.done(); len(got) != 0 {
		t.Fatalf("refused posts reached the VM: %v", got)
	}
	// Without a session at all: the login page.
	if rec := r.do(t, "POST", "/vm/cam1/proc/kill", nil, url.Values{"pid": {"42"}, "csrf": {csrf}}); rec.Code != http.StatusUnauthorized {
		t.Errorf("no session: %d", rec.Code)
	}
	rec := r.do(t, "POST", "/vm/cam1/proc/kill", c, url.Values{"pid": {"42"}, "csrf": {csrf}}, "Origin", base)
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/vm/cam1#flash" {
		t.Fatalf("a good post: %d %v", rec.Code, rec.Header())
	}
	if got := r.vm.done(); len(got) != 1 || got[0] != "kill 42" {
		t.Fatalf("the VM did %v, want kill 42", got)
	}
	if page := r.do(t, "GET", "/vm/cam1", c, nil).Body.String(); !strings.Contains(page, `id="flash" class="flash ok"`) || !strings.Contains(page, "kill pid 42: pid 42") {
		t.Error("the action's outcome is not shown")
	}
}

// TestRefusalShown: the VM's policy decides; its refusal, in its words,
// is what the page shows.
func TestRefusalShown(t *testing.T) {
	r := newRig(t, false)
	c, csrf := r.login(t, Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())})
	r.do(t, "POST", "/vm/cam1/proc/freeze", c, url.Values{"pid": {"42"}, "csrf": {csrf}})
	page := r.do(t, "GET", "/vm/cam1", c, nil).Body.String()
	if !strings.Contains(page, `class="flash err"`) || !strings.Contains(page, "freeze pid 42: not done: proc.freeze refused for uid") || !strings.Contains(page, "viewers_read_only (test.policy:3:1)") {
		t.Errorf("the refusal is not shown with the policy's reason:\n%s", page)
	}
	// Shown once.
	if page := r.do(t, "GET", "/vm/cam1", c, nil).Body.String(); strings.Contains(page, `id="flash"`) {
		t.Error("the outcome is shown twice")
	}
}

// TestDelegation: under a root daemon, a user's session calls the VM as
// that user, whose role the policy judges.
func TestDelegation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the API honours a delegation only from root; the CI runs as root")
	}
	r := newRig(t, true)
	c, csrf := r.login(t, Identity{UID: 4242, GID: 4243})
	if rec := r.do(t, "POST", "/vm/cam1/proc/kill", c, url.Values{"pid": {"42"}, "csrf": {csrf}}); rec.Code != http.StatusSeeOther {
		t.Fatalf("kill: %d", rec.Code)
	}
	page := r.do(t, "GET", "/vm/cam1", c, nil).Body.String()
	if !strings.Contains(page, "proc.kill refused for uid 4242 (gid 4243, through root&#39;s pid") {
		t.Errorf("uid 4242's kill: not refused as uid 4242:\n%s", page)
	}
	if !strings.Contains(page, "each VM's policy decides as uid 4242") {
		t.Error("the page does not say whom the VMs see")
	}
	r.vm.mu.Lock()
	callers := append([]api.Caller(nil), r.vm.caller...)
	r.vm.mu.Unlock()
	for _, cl := range callers {
		if cl.UID != 4242 || cl.GID != 4243 || !cl.Delegated {
			t.Errorf("the API saw %+v, want uid 4242 gid 4243 delegated", cl)
		}
	}
	if len(r.vm.done()) != 0 {
		t.Error("the refused kill reached the VM")
	}
	// Root's own session is root's.
	rc, rcsrf := r.login(t, Identity{UID: 0, GID: 0})
	r.do(t, "POST", "/vm/cam1/proc/kill", rc, url.Values{"pid": {"42"}, "csrf": {rcsrf}})
	if got := r.vm.done(); len(got) != 1 {
		t.Errorf("root's kill: %v", got)
	}
}

// TestAdmission: a daemon that is not root admits only itself and root,
// and acts as itself for both.
func TestAdmission(t *testing.T) {
	d := New(Config{VMs: func() ([]VM, error) { return nil, nil }, BaseURL: base, Self: Identity{UID: 1000, GID: 1000}})
	if _, err := d.NewTicket(Identity{UID: 4242, GID: 4242}); !errors.Is(err, ErrNotAdmitted) || !strings.Contains(err.Error(), "admits uid 1000 and root, not uid 4242") {
		t.Errorf("another user: %v", err)
	}
	for _, u := range []Identity{{UID: 1000, GID: 1000}, {UID: 0, GID: 0}} {
		tk, err := d.NewTicket(u)
		if err != nil || tk.ActsAs != (Identity{UID: 1000, GID: 1000}) || tk.User != u {
			t.Errorf("uid %d: %+v %v; want to act as uid 1000", u.UID, tk, err)
		}
	}
	// Login links are bounded.
	for range maxTickets {
		_, _ = d.NewTicket(Identity{UID: 1000, GID: 1000})
	}
	if _, err := d.NewTicket(Identity{UID: 1000, GID: 1000}); err == nil || !strings.Contains(err.Error(), "waiting to be used") {
		t.Errorf("login link %d: %v", maxTickets+2, err)
	}
}

// TestExpiry: a login link lasts TicketTTL and works once; a session
// lasts SessionTTL; logging out ends it.
func TestExpiry(t *testing.T) {
	r := newRig(t, false)
	me := Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	tk, err := r.d.NewTicket(me)
	if err != nil {
		t.Fatal(err)
	}
	r.advance(2 * time.Minute)
	u, _ := url.Parse(tk.URL)
	if rec := r.do(t, "GET", u.RequestURI(), nil, nil); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "expired") {
		t.Errorf("an expired login link: %d", rec.Code)
	}
	c, csrf := r.login(t, me)
	if rec := r.do(t, "GET", "/", c, nil); rec.Code != http.StatusOK {
		t.Fatalf("a fresh session: %d", rec.Code)
	}
	r.advance(59 * time.Minute)
	if rec := r.do(t, "GET", "/", c, nil); rec.Code != http.StatusOK {
		t.Fatalf("a session before its end: %d", rec.Code)
	}
	r.advance(2 * time.Minute)
	if rec := r.do(t, "GET", "/", c, nil); rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), "your session expired") {
		t.Errorf("an expired session: %d", rec.Code)
	}
	if rec := r.do(t, "POST", "/vm/cam1/proc/kill", c, url.Values{"pid": {"42"}, "csrf": {csrf}}); rec.Code != http.StatusUnauthorized {
		t.Errorf("a post in an expired session: %d", rec.Code)
	}
	c, csrf = r.login(t, me)
	if rec := r.do(t, "POST", "/logout", c, url.Values{"csrf": {csrf}}); rec.Code != http.StatusOK {
		t.Fatalf("logout: %d", rec.Code)
	}
	if rec := r.do(t, "GET", "/", c, nil); rec.Code != http.StatusUnauthorized {
		t.Errorf("after logout: %d", rec.Code)
	}
	if rec := r.do(t, "GET", "/login?ticket=nope", nil, nil); rec.Code != http.StatusForbidden {
		t.Errorf("a made-up ticket: %d", rec.Code)
	}
	if rec := r.do(t, "POST", "/login", nil, nil); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "unix socket") {
		t.Errorf("POST /login over TCP: %d", rec.Code)
	}
}

func TestBadInput(t *testing.T) {
	r := newRig(t, false)
	c, csrf := r.login(t, Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())})
	for _, tc := range []struct {
		method, path string
		form         url.Values
		code         int
		want         string
	}{
		{"GET", "/vm/cam1?verdict=maybe", nil, 400, "verdict &#34;maybe&#34;: use one of allow, alert, deny, kill"},
		{"GET", "/vm/cam1?pid=-3", nil, 400, "give a process id from 1 to"},
		{"GET", "/vm/nope", nil, 404, "no VM &#34;nope&#34;"},
		{"GET", "/vm/other", nil, 403, "its API is closed to this daemon"},
		{"POST", "/vm/cam1/proc/explode", url.Values{"csrf": {csrf}, "pid": {"1"}}, 404, "use one of stop, cont, kill, freeze, thaw"},
		{"POST", "/vm/cam1/proc/kill", url.Values{"csrf": {csrf}, "pid": {"x"}}, 400, "give a process id"},
		{"POST", "/vm/cam1/policy", url.Values{"csrf": {csrf}, "path": {"rel.policy"}}, 400, "absolute path"},
		{"POST", "/vm/cam1/net/explode", url.Values{"csrf": {csrf}}, 404, "use isolate or restore"},
		{"GET", "/nowhere", nil, 404, "no page"},
	} {
		rec := r.do(t, tc.method, tc.path, c, tc.form)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("%s %s: %d, want %d with %q:\n%s", tc.method, tc.path, rec.Code, tc.code, tc.want, rec.Body.String())
		}
	}
	// A page reached through another host name (DNS rebinding) is refused.
	req := httptest.NewRequest("GET", "http://evil.example:9464/", nil)
	req.AddCookie(c)
	rec := httptest.NewRecorder()
	r.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusMisdirectedRequest {
		t.Errorf("Host evil.example: %d", rec.Code)
	}
}

// TestStream: the stream sends the events the filter selects, after the
// seq the page had, then live ones, as JSON the page writes as text.
func TestStream(t *testing.T) {
	r := newRig(t, false)
	c, _ := r.login(t, Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())})
	srv := httptest.NewServer(r.h)
	defer srv.Close()
	r.d.cfg.Hosts = nil // the test server's address
	get := func(query string, header ...string) (*bufio.Reader, func()) {
		req, _ := http.NewRequest("GET", srv.URL+"/vm/cam1/stream?"+query, nil)
		req.AddCookie(c)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
			t.Fatalf("stream: %s %q", resp.Status, ct)
		}
		return bufio.NewReader(resp.Body), func() { resp.Body.Close() }
	}
	next := func(br *bufio.Reader) (event string, id string, data string) {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				event = line[7:]
			case strings.HasPrefix(line, "id: "):
				id = line[4:]
			case strings.HasPrefix(line, "data: "):
				data = line[6:]
			case line == "" && event != "":
				return
			}
		}
	}
	br, stop := get("verdict=deny")
	if ev, _, _ := next(br); ev != "open" {
		t.Fatalf("first event %q, want open", ev)
	}
	ev, id, data := next(br)
	var v eventView
	if err := json.Unmarshal([]byte(data), &v); err != nil || ev != "ev" || id != "5" || v.Verdict != "deny" || v.PID != 42 || v.Comm != hostile || v.Class != "exec" {
		t.Fatalf("first matching event: %s %s %s (%+v, %v)", ev, id, data, v, err)
	}
	if strings.Contains(data, "<script>") {
		t.Errorf("the stream's JSON holds raw markup: %s", data)
	}
	// The allowed one is filtered out; the next denied one comes live.
	t0 := time.Now().UTC()
	for _, p := range []monitoring.Point{
		{Seq: 8, Time: t0, Kind: monitoring.ExecDecision, Decision: &monitoring.Decision{Class: "exec", PID: 50, Comm: "sh", Path: "/bin/ls", Verdict: "allow", Rule: "ok"}},
		{Seq: 9, Time: t0, Kind: monitoring.ExecDecision, Decision: &monitoring.Decision{Class: "exec", PID: 51, Comm: "sh", Path: "/tmp/x", Verdict: "deny", Rule: "no_tmp_exec"}},
	} {
		b, _ := json.Marshal(p)
		r.vm.live <- b
	}
	if _, id, data := next(br); id != "9" || !strings.Contains(data, "deny exec") {
		t.Fatalf("live: id %s %s", id, data)
	}
	stop()
	// A reconnecting browser resumes after its Last-Event-ID.
	br, stop = get("", "Last-Event-ID", "6")
	defer stop()
	next(br)
	if _, id, data := next(br); id != "7" || !strings.Contains(data, "frozen") {
		t.Fatalf("after Last-Event-ID 6: id %s %s", id, data)
	}
}

func TestProcessTree(t *testing.T) {
	ts := []linux.Task{
		{PID: 1, PPID: 0, Comm: "init"},
		{PID: 10, PPID: 1, Comm: "a"},
		{PID: 11, PPID: 10, Comm: "b"},
		{PID: 12, PPID: 1, Comm: "c"},
		{PID: 20, PPID: 21, Comm: "loop1"}, // a loop of parents the guest forged
		{PID: 21, PPID: 20, Comm: "loop2"},
		{PID: 30, PPID: 30, Comm: "self"},
		{PID: 10, PPID: 1, Comm: "dup"}, // a pid listed twice
		{PID: 40, PPID: 999, Comm: "orphan"},
	}
	got := processTree(ts, []int{11})
	var lines []string
	for _, p := range got {
		f := ""
		if p.Frozen {
			f = " (frozen)"
		}
		lines = append(lines, p.Prefix+p.Task.Comm+f)
	}
	want := []string{"init", "├─ a", "│  └─ b (frozen)", "└─ c", "dup", "self", "orphan", "loop1", "└─ loop2"}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	// A chain deeper than the bound is cut, and nothing is lost or doubled.
	var deep []linux.Task
	for i := 1; i <= 200; i++ {
		deep = append(deep, linux.Task{PID: i, PPID: i - 1, Comm: "d"})
	}
	if got := processTree(deep, nil); len(got) != 200 {
		t.Errorf("a 200-deep chain drew %d rows", len(got))
	}
}

func TestViewOf(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		p    monitoring.Point
		want eventView
	}{
		{monitoring.Point{Seq: 1, Time: t0, Kind: monitoring.FileDecision, Decision: &monitoring.Decision{Class: "file", Op: "open", PID: 9, Comm: "cat", UID: 1000, Path: "/etc/shadow", Verdict: "deny", Rule: "shadow", Reason: "not yours"}},
			eventView{Class: "file", Verdict: "deny", PID: 9, Comm: "cat", Text: "deny file open /etc/shadow by pid 9 (cat, uid 1000), rule shadow: not yours"}},
		{monitoring.Point{Seq: 2, Time: t0, Kind: monitoring.Finding, Finding: &ids.Finding{Check: "cpu-hog", Severity: "medium", Summary: "pid 7 uses 99%", PID: 7, Name: "spin"}},
			eventView{Class: "finding", PID: 7, Comm: "spin", Severity: "medium", Text: "[medium] cpu-hog: pid 7 uses 99%"}},
		{monitoring.Point{Seq: 3, Time: t0, Kind: monitoring.ProcNotice, Detail: "network isolated: demo"},
			eventView{Class: "notice", Text: "network isolated: demo"}},
		{monitoring.Point{Seq: 4, Time: t0, Kind: monitoring.ExecDecision, Decision: &monitoring.Decision{Class: "exec", PID: 5, Comm: "sh", Path: "/tmp/x", Verdict: "kill", Rule: "t"},
			Repeat: &monitoring.Repeat{Count: 30, Last: t0}},
			eventView{Class: "exec", Verdict: "kill", PID: 5, Comm: "sh", Text: "kill exec /tmp/x by pid 5 (sh, uid 0), rule t ×30 until " + t0.Local().Format("15:04:05")}},
	} {
		got := viewOf(tc.p)
		if got.Class != tc.want.Class || got.Verdict != tc.want.Verdict || got.PID != tc.want.PID || got.Comm != tc.want.Comm || got.Text != tc.want.Text || got.Severity != tc.want.Severity {
			t.Errorf("viewOf(%s):\n got %+v\nwant %+v", tc.p.Kind, got, tc.want)
		}
	}
	long := monitoring.Point{Kind: monitoring.ProcNotice, Detail: strings.Repeat("é", maxText)}
	if v := viewOf(long); len(v.Text) > maxText+len("…") {
		t.Errorf("a long text is %d bytes", len(v.Text))
	}
}
