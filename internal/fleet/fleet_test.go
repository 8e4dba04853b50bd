package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/eventbus"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
)

const testToken = "0123456789abcdef0123456789abcdef"

func TestTokenRoundTrip(t *testing.T) {
	for _, s := range []string{"cam1", "cam.1", "a%2Eb", "host.example.org", "x*y>z", "sp ace", "ünï"} {
		enc, err := EncodeToken(s)
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsAny(enc, ".*> \t") {
			t.Errorf("EncodeToken(%q) = %q: not one subject token", s, enc)
		}
		dec, err := DecodeToken(enc)
		if err != nil || dec != s {
			t.Errorf("DecodeToken(%q) = %q, %v; want %q", enc, dec, err, s)
		}
	}
	if _, err := EncodeToken(""); err == nil {
		t.Error("empty name encoded")
	}
	for _, bad := range []string{"%", "%2", "%zz", "%2e"} {
		if _, err := DecodeToken(bad); err == nil {
			t.Errorf("DecodeToken(%q) accepted", bad)
		}
	}
	subj, err := Subject("h.example", "cam.1", "ids", "finding")
	if err != nil {
		t.Fatal(err)
	}
	if subj != "gatevisor.h%2Eexample.cam%2E1.ids.finding" {
		t.Errorf("subject %q", subj)
	}
	w, err := ParseSubject(subj)
	if err != nil || w != (Where{Host: "h.example", VM: "cam.1", Kind: "ids.finding"}) {
		t.Errorf("ParseSubject = %+v, %v", w, err)
	}
}

func FuzzToken(f *testing.F) {
	for _, s := range []string{"cam1", "a.b", "%", "%2E", "x*>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if enc, err := EncodeToken(s); err == nil {
			if strings.ContainsAny(enc, ".*> \t\r\n") {
				t.Fatalf("EncodeToken(%q) = %q", s, enc)
			}
			if dec, err := DecodeToken(enc); err != nil || dec != s {
				t.Fatalf("round trip %q -> %q -> %q, %v", s, enc, dec, err)
			}
		}
		_, _ = DecodeToken(s)
		_, _ = ParseSubject(s)
	})
}

func TestSelector(t *testing.T) {
	for _, c := range []struct {
		sel      Selector
		host, vm string
		want     bool
	}{
		{"", "h", "cam1", true}, {"*", "h", "cam1", true}, {"cam*", "h", "cam1", true},
		{"cam*", "h", "door", false}, {"h/*", "h", "door", true}, {"g/*", "h", "door", false},
	} {
		if got := c.sel.Match(c.host, c.vm); got != c.want {
			t.Errorf("%q.Match(%s, %s) = %v", c.sel, c.host, c.vm, got)
		}
	}
	if Selector("[").Check() == nil {
		t.Error("bad glob accepted")
	}
}

// writeLines appends lines {"n": from..to} to path.
func writeLines(t *testing.T, path, field string, from, to int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := from; i <= to; i++ {
		fmt.Fprintf(f, "{%q:%d,\"x\":\"%s\"}\n", field, i, strings.Repeat("y", i%7))
	}
}

func drain(t *testing.T, tl *tailer) []uint64 {
	t.Helper()
	var keys []uint64
	for i := 0; i < 1000; i++ {
		ls, err := tl.next(3)
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) == 0 {
			return keys
		}
		for _, l := range ls {
			keys = append(keys, l.key)
		}
	}
	t.Fatal("tailer does not stop")
	return nil
}

func wantKeys(t *testing.T, got []uint64, from, to uint64) {
	t.Helper()
	if len(got) != int(to-from+1) {
		t.Fatalf("keys %v, want %d..%d", got, from, to)
	}
	for i, k := range got {
		if k != from+uint64(i) {
			t.Fatalf("keys %v, want %d..%d", got, from, to)
		}
	}
}

func TestTailerRotationAndCursor(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "log.jsonl")
	writeLines(t, p+".2", "n", 1, 4)
	writeLines(t, p+".1", "n", 5, 9)
	writeLines(t, p, "n", 10, 12)
	// From a cursor in the middle of the oldest kept file.
	tl := newTailer(p, 1024, 2, auditKey)
	defer tl.close()
	wantKeys(t, drain(t, tl), 3, 12)
	// A torn line is not handed out until its newline comes.
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"n":13,`)
	if got := drain(t, tl); len(got) != 0 {
		t.Fatalf("torn line handed out: %v", got)
	}
	f.WriteString("\"x\":1}\n")
	f.Close()
	wantKeys(t, drain(t, tl), 13, 13)
	// Rotation: the file becomes .1 with one more line written first.
	writeLines(t, p, "n", 14, 14)
	os.Rename(p+".2", p+".3")
	os.Rename(p+".1", p+".2")
	os.Rename(p, p+".1")
	writeLines(t, p, "n", 15, 16)
	wantKeys(t, drain(t, tl), 14, 16)
	// Two rotations between looks: the file in between is found by key.
	writeLines(t, p, "n", 17, 18)
	os.Rename(p+".1", p+".2")
	os.Rename(p, p+".1")
	writeLines(t, p, "n", 19, 20)
	os.Rename(p+".1", p+".2")
	os.Rename(p, p+".1")
	writeLines(t, p, "n", 21, 22)
	wantKeys(t, drain(t, tl), 17, 22)
	// Rewind: the lines after the key come again.
	tl.rewind(18)
	wantKeys(t, drain(t, tl), 19, 22)
}

func TestTailerBadLines(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "log.jsonl")
	body := `{"n":1}` + "\n" + "not json\n" + `{"n":2,"x":"` + strings.Repeat("z", 200) + `"}` + "\n" + `{"n":3}` + "\n"
	os.WriteFile(p, []byte(body), 0o600)
	tl := newTailer(p, 64, 0, auditKey)
	defer tl.close()
	got := drain(t, tl)
	if len(got) != 2 || got[0] != 1 || got[1] != 3 || tl.Skipped != 2 {
		t.Fatalf("keys %v skipped %d: want [1 3], 2 skipped", got, tl.Skipped)
	}
	// A symbolic link is not followed.
	os.Symlink(p, filepath.Join(dir, "link"))
	tl2 := newTailer(filepath.Join(dir, "link"), 64, 0, auditKey)
	if _, err := tl2.next(10); err == nil {
		t.Fatal("followed a symbolic link")
	}
}

// FuzzTailer feeds arbitrary bytes as a log: no panic, keys only grow.
func FuzzTailer(f *testing.F) {
	f.Add([]byte("{\"n\":1}\n{\"n\":2}\n"))
	f.Add([]byte("{\"n\":5}\n{\"n\":3}\nxx\n{\"n\":9"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "log")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		tl := newTailer(p, 128, 0, auditKey)
		defer tl.close()
		var last uint64
		for i := 0; i < 100; i++ {
			ls, err := tl.next(4)
			if err != nil {
				t.Fatal(err)
			}
			if len(ls) == 0 {
				return
			}
			for _, l := range ls {
				if l.key <= last {
					t.Fatalf("key %d after %d", l.key, last)
				}
				last = l.key
			}
		}
	})
}

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startServer(t *testing.T, o ServerOptions) *server.Server {
	t.Helper()
	if o.Token == "" {
		o.Token = testToken
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	s, err := StartServer(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// fakeMember is a monitor without a VM.
type fakeMember struct {
	mu    sync.Mutex
	loads []api.PolicyRequest
	fail  error
}

func (m *fakeMember) Status(context.Context) api.Status {
	return api.Status{Name: "x", State: "running"}
}

func (m *fakeMember) LoadPolicy(_ context.Context, req api.PolicyRequest) (api.PolicyResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return api.PolicyResult{}, m.fail
	}
	m.loads = append(m.loads, req)
	return api.PolicyResult{Seq: uint64(len(m.loads) + 1), Digest: "sha256:" + strings.Repeat("a", 64)}, nil
}

// vmLogs is one VM's audit log and event bus, as a monitor keeps them.
type vmLogs struct {
	log *audit.Log
	bus *eventbus.Bus
	dir string
}

func newVMLogs(t *testing.T, name string) *vmLogs {
	t.Helper()
	dir := t.TempDir()
	l, err := audit.Open(filepath.Join(dir, "audit.jsonl"), audit.Options{VM: name, MaxSize: 4096, Keep: 50, Sync: audit.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	b, err := eventbus.Open(eventbus.Options{VM: name, Path: filepath.Join(dir, "events.jsonl"), MaxSize: eventbus.MinMaxSize, Keep: 5})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); b.Close() })
	return &vmLogs{log: l, bus: b, dir: dir}
}

// decide writes n deny records and as many IDS findings.
func (v *vmLogs) decide(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		ev := event.Event{Class: event.ClassExec, Op: "exec", Path: fmt.Sprintf("/bin/x%d", i), Subject: event.Subject{PID: int32(100 + i), Comm: "sh"}}
		if err := v.log.Append(&audit.Record{Time: time.Now(), Verdict: "deny", Rule: "r", Reason: "test", Event: ev}); err != nil {
			t.Fatal(err)
		}
		v.bus.Publish(monitoring.Point{Time: time.Now(), VM: "x", Kind: monitoring.Finding, Finding: &ids.Finding{Check: "test", Severity: "high", Summary: fmt.Sprint(i)}})
	}
}

func (v *vmLogs) agent(name string, m Member) *Agent {
	return &Agent{Host: "h1", VM: name, AuditLog: filepath.Join(v.dir, "audit.jsonl"), EventsLog: filepath.Join(v.dir, "events.jsonl"),
		Cursor: filepath.Join(v.dir, "fleet.cursor"), Member: m, Poll: 20 * time.Millisecond, StateInterval: 100 * time.Millisecond, Batch: 32}
}

// runAgent runs a in the background until the test ends.
func runAgent(t *testing.T, a *Agent, nc *nats.Conn) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, nc) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}
	return stop
}

// count returns the messages stored under filter, checking that no audit
// record or event is stored twice.
func count(t *testing.T, js jetstream.JetStream, sel Selector, kinds ...string) (audits, events int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	seen := map[string]bool{}
	err := Events(ctx, js, EventsOptions{Select: sel, Kinds: kinds}, func(e Event) error {
		var k struct {
			N   uint64 `json:"n"`
			Seq uint64 `json:"seq"`
		}
		json.Unmarshal(e.Data, &k)
		id := fmt.Sprintf("%s/%s/%s/%d/%d", e.Host, e.VM, e.Kind, k.N, k.Seq)
		if seen[id] {
			t.Errorf("stored twice: %s", id)
		}
		seen[id] = true
		if e.Kind == KindAudit {
			audits++
		} else {
			events++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return audits, events
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func connect(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := Conn{URL: url, Token: testToken, Name: t.Name()}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// TestAgentOfflineBacklog: a monitor whose fleet is down keeps deciding;
// when the fleet comes back, every record written meanwhile arrives
// once, also across the agent's own restart (the cursor).
func TestAgentOfflineBacklog(t *testing.T) {
	store := t.TempDir()
	port := freePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	v := newVMLogs(t, "cam1")
	v.decide(t, 40) // written before any fleet exists: rotates the 4 KiB audit file
	nc, err := Conn{URL: "nats://" + listen, Token: testToken}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	a := v.agent("cam1", &fakeMember{})
	stop := runAgent(t, a, nc)
	time.Sleep(300 * time.Millisecond) // the agent runs with no server
	s := startServer(t, ServerOptions{Listen: listen, StoreDir: store})
	head, _ := v.log.Head()
	waitFor(t, "the backlog", 30*time.Second, func() bool { return a.Stats().AuditN == head && a.Stats().EventSeq >= 40 })
	// The server goes away mid-stream and comes back with its store.
	s.Shutdown()
	v.decide(t, 25)
	stop()
	s = startServer(t, ServerOptions{Listen: listen, StoreDir: store})
	a = v.agent("cam1", &fakeMember{}) // a new monitor process: the cursor file says where it was
	stop = runAgent(t, a, nc)
	defer stop()
	head, _ = v.log.Head()
	waitFor(t, "the second backlog", 30*time.Second, func() bool { return a.Stats().AuditN == head && a.Stats().EventSeq >= 65 })
	_, js := connect(t, s.ClientURL())
	audits, events := count(t, js, "")
	if audits != int(head) {
		t.Errorf("%d audit records stored, the log holds %d", audits, head)
	}
	if events != 65 {
		t.Errorf("%d events stored, want 65", events)
	}
	states, err := List(context.Background(), js)
	if err != nil || len(states) != 1 || states[0].VM != "cam1" || states[0].Status.State != "running" {
		t.Errorf("List = %+v, %v", states, err)
	}
}

// TestClusterNodeLoss: a 3-node cluster, three monitors; one node is
// killed mid-stream and comes back: nothing is lost or stored twice.
func TestClusterNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster")
	}
	var cl [3]int
	var cp [3]int
	for i := range cl {
		cl[i], cp[i] = freePort(t), freePort(t)
	}
	stores := [3]string{t.TempDir(), t.TempDir(), t.TempDir()}
	opts := func(i int) ServerOptions {
		var routes []string
		for j := range cl {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cl[j]))
			}
		}
		return ServerOptions{Listen: fmt.Sprintf("127.0.0.1:%d", cp[i]), StoreDir: stores[i], Name: fmt.Sprintf("n%d", i),
			ClusterName: "gv", ClusterListen: fmt.Sprintf("127.0.0.1:%d", cl[i]), Routes: routes}
	}
	var srv [3]*server.Server
	var wg sync.WaitGroup
	for i := range srv {
		wg.Add(1)
		go func(i int) { defer wg.Done(); srv[i] = startServer(t, opts(i)) }(i)
	}
	wg.Wait()
	url := fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d,nats://127.0.0.1:%d", cp[0], cp[1], cp[2])
	_, js := connect(t, url)
	waitFor(t, "JetStream's meta leader", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return EnsureStreams(ctx, js, StreamOptions{Replicas: 3}) == nil
	})
	var agents []*Agent
	var logs []*vmLogs
	for i, name := range []string{"cam1", "cam2", "door"} {
		v := newVMLogs(t, name)
		nc, err := Conn{URL: url, Token: testToken}.Connect()
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		a := v.agent(name, &fakeMember{})
		a.Streams.Replicas = 3
		defer runAgent(t, a, nc)()
		agents, logs = append(agents, a), append(logs, v)
		_ = i
	}
	writers := sync.WaitGroup{}
	for _, v := range logs {
		writers.Add(1)
		go func(v *vmLogs) {
			defer writers.Done()
			for k := 0; k < 10; k++ {
				v.decide(t, 5)
				time.Sleep(50 * time.Millisecond)
			}
		}(v)
	}
	time.Sleep(150 * time.Millisecond)
	srv[1].Shutdown() // a node dies mid-stream
	srv[1].WaitForShutdown()
	writers.Wait()
	for i, a := range agents {
		head, _ := logs[i].log.Head()
		waitFor(t, "every record with a node down", 60*time.Second, func() bool { return a.Stats().AuditN == head && a.Stats().EventSeq >= 50 })
	}
	srv[1] = startServer(t, opts(1)) // it comes back
	for _, v := range logs {
		v.decide(t, 5)
	}
	for i, a := range agents {
		head, _ := logs[i].log.Head()
		waitFor(t, "every record after the node returned", 60*time.Second, func() bool { return a.Stats().AuditN == head && a.Stats().EventSeq >= 55 })
	}
	for i, name := range []string{"cam1", "cam2", "door"} {
		head, _ := logs[i].log.Head()
		audits, events := count(t, js, Selector(name))
		if audits != int(head) || events != 55 {
			t.Errorf("%s: %d audit records (log %d), %d events (want 55)", name, audits, head, events)
		}
	}
	// Only the findings of one VM.
	if _, ev := count(t, js, "cam2", "ids.finding"); ev != 55 {
		t.Errorf("cam2's findings: %d", ev)
	}
	if au, ev := count(t, js, "cam2", "ids"); au != 0 || ev != 55 {
		t.Errorf("cam2's ids kind: %d audit, %d events", au, ev)
	}
}

func TestPolicyPush(t *testing.T) {
	s := startServer(t, ServerOptions{StoreDir: t.TempDir()})
	nc, js := connect(t, s.ClientURL())
	accept, refuse, deny := &fakeMember{}, &fakeMember{}, &fakeMember{}
	for _, c := range []struct {
		name string
		m    *fakeMember
		acc  bool
		auth func(context.Context, api.Caller, string) error
	}{
		{"cam1", accept, true, nil},
		{"cam2", refuse, false, nil},
		{"door", deny, true, func(_ context.Context, c api.Caller, action string) error {
			return fmt.Errorf("rule api_deny denies %s to uid %d", action, c.UID)
		}},
	} {
		v := newVMLogs(t, c.name)
		a := v.agent(c.name, c.m)
		a.AcceptPolicy, a.Authorize = c.acc, c.auth
		defer runAgent(t, a, nc)()
	}
	var states []State
	waitFor(t, "three VMs listed", 20*time.Second, func() bool {
		states, _ = List(context.Background(), js)
		return len(states) == 3
	})
	states = append(states, State{Host: "h1", VM: "gone"})
	req := PushRequest{Policy: api.PolicyRequest{Path: "/p/x.policy", Source: "include \"y.policy\";", Files: map[string]string{"y.policy": "exec default: allow;"}}, By: "test"}
	replies := Push(context.Background(), nc, states, req, 5*time.Second)
	got := map[string]PushReply{}
	for _, r := range replies {
		got[r.VM] = r
	}
	if r := got["cam1"]; !r.OK || r.Seq != 2 || len(accept.loads) != 1 || accept.loads[0].Files["y.policy"] == "" {
		t.Errorf("cam1: %+v, loads %+v", r, accept.loads)
	}
	if r := got["cam2"]; r.OK || !strings.Contains(r.Error, "--fleet-policy") || len(refuse.loads) != 0 {
		t.Errorf("cam2: %+v", r)
	}
	if r := got["door"]; r.OK || !strings.Contains(r.Error, "api_deny") || len(deny.loads) != 0 {
		t.Errorf("door: %+v", r)
	}
	if r := got["gone"]; r.OK || !strings.Contains(r.Error, "no monitor answers") {
		t.Errorf("gone: %+v", r)
	}
	accept.fail = errors.New("policy rejected, policy 2 stays in force")
	r := Push(context.Background(), nc, states[:1], req, 5*time.Second)
	if r[0].OK || !strings.Contains(r[0].Error, "stays in force") {
		t.Errorf("a rejected policy: %+v", r[0])
	}
	// A push without Files never reads includes from the monitor's disk.
	accept.fail = nil
	req.Policy.Files = nil
	Push(context.Background(), nc, states[:1], req, 5*time.Second)
	if n := len(accept.loads); n != 2 || accept.loads[1].Files == nil {
		t.Errorf("push without files reached LoadPolicy with Files nil: %+v", accept.loads)
	}
}
