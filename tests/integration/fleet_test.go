package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/fleet"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// fleetPolicy denies an exec from /tmp/fleet/: each VM's denial is the
// event the fleet must carry.
const fleetPolicy = openBase + `exec default: allow
  fleet_demo: filePrefixEq("/tmp/fleet/") deny(EACCES)
`

// fleetPushed is what the push installs: the same, plus a second rule.
const fleetPushed = openBase + `exec default: allow
  fleet_demo: filePrefixEq("/tmp/fleet/") deny(EACCES)
  fleet_pushed: filePrefixEq("/tmp/pushed/") deny(EPERM)
`

// fleetEvent is one line of 'gatevisor fleet events --json'.
type fleetEvent struct {
	Host string          `json:"host"`
	VM   string          `json:"vm"`
	Kind string          `json:"kind"`
	Seq  uint64          `json:"seq"`
	Data json.RawMessage `json:"data"`
}

// fleetAudits returns, per VM, the audit record numbers the fleet stored
// (failing on one stored twice).
func fleetAudits(t *testing.T) map[string][]string {
	t.Helper()
	r := gv(t, 2*time.Minute, "fleet", "events", "--kind", "audit", "--json")
	if r.code != 0 {
		t.Fatalf("fleet events: exit %d: %s", r.code, r.stderr)
	}
	out := map[string][]string{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var e fleetEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("fleet events line %q: %v", sc.Text(), err)
		}
		var rec struct {
			N uint64 `json:"n"`
		}
		json.Unmarshal(e.Data, &rec)
		id := fmt.Sprintf("%s/%d", e.VM, rec.N)
		if seen[id] {
			t.Errorf("audit record %s stored twice", id)
		}
		seen[id] = true
		out[e.VM] = append(out[e.VM], fmt.Sprintf("%d:%s", rec.N, fleet.LineID(e.Data)[:12]))
	}
	return out
}

// vmAuditNs returns VM name's audit records from its log, as fleetAudits
// does: number and line hash (the fleet's copy must be byte for byte).
func vmAuditNs(t *testing.T, name string) []string {
	t.Helper()
	var ns []string
	file := filepath.Join(env.stateDir, "gatevisor", "vms", name, "audit.jsonl")
	rep, err := audit.Walk(file, audit.WalkOptions{Rotated: true}, func(r *audit.Record, line []byte) error {
		ns = append(ns, fmt.Sprintf("%d:%s", r.N, fleet.LineID(line)[:12]))
		return nil
	})
	if err != nil || !rep.Intact() {
		t.Fatalf("%s's audit log: %v %+v", name, err, rep)
	}
	return ns
}

// TestFleet: three monitors on this host join a 3-node NATS cluster
// (embedded servers) through gatevisor serve's fleet.json; each VM's
// denial reaches the fleet; a policy push reaches the two that take pushes
// and is refused by the third; a NATS node killed mid-stream loses
// nothing; a fleet that is down entirely gets every VM's backlog when it
// returns.
func TestFleet(t *testing.T) {
	needVM(t)
	const token = "fleet-test-token-0123456789abcdef"
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "nats.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The cluster: three embedded servers on loopback.
	var cport, rport [3]int
	for i := range cport {
		cport[i], rport[i] = freeTCPPort(t), freeTCPPort(t)
	}
	nodeOpts := func(i int) fleet.ServerOptions {
		var routes []string
		for j := range rport {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", rport[j]))
			}
		}
		return fleet.ServerOptions{Listen: fmt.Sprintf("127.0.0.1:%d", cport[i]), StoreDir: filepath.Join(dir, fmt.Sprint("n", i)),
			Token: token, Name: fmt.Sprint("n", i), ClusterName: "gvtest", ClusterListen: fmt.Sprintf("127.0.0.1:%d", rport[i]), Routes: routes}
	}
	var nodes [3]*server.Server
	var mu sync.Mutex
	startNode := func(i int) {
		s, err := fleet.StartServer(nodeOpts(i))
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		nodes[i] = s
		mu.Unlock()
	}
	stopNode := func(i int) {
		mu.Lock()
		s := nodes[i]
		nodes[i] = nil
		mu.Unlock()
		if s != nil {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func(i int) { defer wg.Done(); startNode(i) }(i)
	}
	wg.Wait()
	defer func() {
		for i := range nodes {
			stopNode(i)
		}
	}()
	if t.Failed() {
		t.FailNow()
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d,nats://127.0.0.1:%d", cport[0], cport[1], cport[2])
	// R3 streams, made before any monitor makes R1 ones.
	nc, err := fleet.Conn{URL: url, Token: token}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	testvm.Eventually(t, time.Minute, "the cluster's JetStream", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		return fleet.EnsureStreams(ctx, js, fleet.StreamOptions{Replicas: 3})
	})

	// gatevisor serve advertises the cluster in fleet.json (no embedded server).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serve := gvCmd(ctx, nil, "serve", "--listen", "127.0.0.1:0", "--no-login-socket", "--nats", url, "--nats-token-file", tokenFile)
	var serveOut syncBuffer
	serve.Stdout, serve.Stderr = &serveOut, &serveOut
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { serve.Process.Signal(syscall.SIGTERM); serve.Wait() }()
	testvm.Eventually(t, 30*time.Second, "serve's fleet.json", func() error {
		if !strings.Contains(serveOut.String(), "fleet NATS at") {
			return fmt.Errorf("serve says %q", serveOut.String())
		}
		return nil
	})

	pol := writePolicy(t, dir, "fleet.policy", fleetPolicy)
	names := []string{"fleet-a", "fleet-b", "fleet-c"}
	for _, n := range names {
		defer env.gv.Stop(n, 10*time.Second)
	}
	for i, n := range names {
		wg.Add(1)
		go func(i int, n string) {
			defer wg.Done()
			args := []string{"--fleet", "--policy", pol, "--mem", "192M"}
			if i < 2 {
				args = append(args, "--fleet-policy")
			}
			if out, err := env.gv.Detach(n, readyTimeout, args...); err != nil {
				t.Errorf("boot %s: %v\n%s", n, err, out)
			}
		}(i, n)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	deny := func(n, tag string) {
		r := guestSh(t, n, "mkdir -p /tmp/fleet && cp /bin/busybox /tmp/fleet/"+tag+" && /tmp/fleet/"+tag+" true; echo status=$?")
		if !strings.Contains(r.stdout, "status=126") {
			t.Fatalf("%s: the exec from /tmp/fleet was not denied: %q %q", n, r.stdout, r.stderr)
		}
	}
	// Every VM is listed, and its denial and every other audit record reach the fleet.
	var ls []fleet.State
	testvm.Eventually(t, time.Minute, "fleet ls listing the three VMs", func() error {
		r := gv(t, time.Minute, "fleet", "ls", "--json")
		if r.code != 0 {
			return fmt.Errorf("exit %d: %s", r.code, r.stderr)
		}
		ls = nil
		if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil {
			return err
		}
		if len(ls) != 3 {
			return fmt.Errorf("%d VMs", len(ls))
		}
		return nil
	})
	for _, s := range ls {
		if s.Host != fleet.Hostname() || s.Status.State != "running" || s.Status.Policy == nil {
			t.Errorf("fleet ls: %+v", s)
		}
	}
	for _, n := range names {
		deny(n, "one")
	}
	// A node dies while the monitors publish, and comes back.
	stopNode(1)
	for _, n := range names {
		deny(n, "two")
	}
	startNode(1)
	checkAll := func(what string) {
		t.Helper()
		testvm.Eventually(t, 2*time.Minute, what, func() error {
			got := fleetAudits(t)
			for _, n := range names {
				want := vmAuditNs(t, n)
				if fmt.Sprint(got[n]) != fmt.Sprint(want) {
					return fmt.Errorf("%s: the fleet has records %v, the log %v", n, got[n], want)
				}
			}
			return nil
		})
	}
	checkAll("every audit record of every VM in the fleet, once, after a node was lost")
	// A monitor upgrade keeps fleet-b in the fleet: what it decides after
	// it is published, once (the policy push below reaches it too).
	if r := gv(t, 3*time.Minute, "upgrade", "fleet-b"); r.code != 0 {
		t.Fatalf("upgrade fleet-b: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	deny("fleet-b", "upgraded")
	checkAll("every audit record of every VM in the fleet, once, after fleet-b's monitor upgrade")
	r := gv(t, time.Minute, "fleet", "events", "--vm", "fleet-b", "--kind", "decision.exec")
	if r.code != 0 || strings.Count(r.stdout, "deny exec /tmp/fleet/") != 3 || strings.Contains(r.stdout, "fleet-a") {
		t.Errorf("fleet events --vm fleet-b --kind decision.exec: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// A policy push: taken by fleet-a and fleet-b, refused by fleet-c.
	pushed := writePolicy(t, dir, "pushed.policy", fleetPushed)
	r = gv(t, 5*time.Minute, "fleet", "policy", "push", pushed, "--to", "fleet-*", "--json")
	if r.code != 1 {
		t.Errorf("push: exit %d (want 1: fleet-c refuses)\n%s%s", r.code, r.stdout, r.stderr)
	}
	var replies []fleet.PushReply
	if err := json.Unmarshal([]byte(r.stdout), &replies); err != nil || len(replies) != 3 {
		t.Fatalf("push replies %q: %v", r.stdout, err)
	}
	for _, rep := range replies {
		switch rep.VM {
		case "fleet-a", "fleet-b":
			st := status(t, rep.VM)
			if !rep.OK || st.Policy == nil || st.Policy.Digest != rep.Digest || st.Policy.Seq != rep.Seq {
				t.Errorf("%s: reply %+v, status policy %+v", rep.VM, rep, st.Policy)
			}
			r := guestSh(t, rep.VM, "mkdir -p /tmp/pushed && cp /bin/busybox /tmp/pushed/x && /tmp/pushed/x true; echo status=$?")
			if !strings.Contains(r.stdout, "status=126") {
				t.Errorf("%s: the pushed rule is not enforced: %q", rep.VM, r.stdout)
			}
		case "fleet-c":
			if rep.OK || !strings.Contains(rep.Error, "--fleet-policy") {
				t.Errorf("fleet-c took the push: %+v", rep)
			}
		}
	}

	t.Run("fleet page in a browser", func(t *testing.T) { fleetPageInBrowser(t, names) })

	// The whole fleet goes down; the monitors go on deciding; their backlog
	// arrives when it is back.
	for i := range nodes {
		stopNode(i)
	}
	for _, n := range names {
		deny(n, "three")
	}
	for i := range nodes {
		wg.Add(1)
		go func(i int) { defer wg.Done(); startNode(i) }(i)
	}
	wg.Wait()
	checkAll("every VM's backlog after the whole fleet was down")

	// The three views of the kernel gate's denials agree: the VM's
	// Prometheus metrics, its audit log, and the fleet's copy of that log.
	fleetDenies := map[string]int{}
	r = gv(t, 2*time.Minute, "fleet", "events", "--kind", "audit", "--json")
	for line := range strings.SplitSeq(strings.TrimSpace(r.stdout), "\n") {
		var e fleetEvent
		var rec audit.Record
		if json.Unmarshal([]byte(line), &e) == nil && json.Unmarshal(e.Data, &rec) == nil && rec.Kind == audit.KindDecision && rec.Verdict == "deny" {
			fleetDenies[e.VM] += repeatCount(&rec)
		}
	}
	for _, n := range names {
		m := gv(t, time.Minute, "metrics", n)
		checkPromtool(t, "gatevisor metrics "+n, m.stdout)
		series := fmt.Sprintf(`gatevisor_gate_decisions_total{gate="kernel",verdict="deny",vm=%q}`, n)
		v, ok := sample(m.stdout, series)
		logDenies := 0
		file := filepath.Join(env.stateDir, "gatevisor", "vms", n, "audit.jsonl")
		if _, err := audit.ReadFile(file, true, func(rec *audit.Record) error {
			if rec.Verdict == "deny" && rec.Event.Class != event.ClassAPI && rec.Event.Class != event.ClassNet {
				logDenies += repeatCount(rec)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !ok || int(v) != logDenies || fleetDenies[n] != logDenies || logDenies < 3 {
			t.Errorf("%s: kernel-gate denials: metrics %v (found %v), audit log %d, fleet %d; want equal, at least 3", n, v, ok, logDenies, fleetDenies[n])
		}
	}
}

// repeatCount is how many decisions an audit record stands for.
func repeatCount(r *audit.Record) int {
	if r.Repeat != nil {
		return int(r.Repeat.Count)
	}
	return 1
}

// freeTCPPort returns a loopback port nothing listens on now.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// fleetPageInBrowser logs headless Chromium into the running serve's
// dashboard as this user and reads the fleet page: every VM listed, the
// denials among the latest events; a screenshot is left beside the
// dashboard test's.
func fleetPageInBrowser(t *testing.T, names []string) {
	chromium := chromiumPath(t)
	r := gv(t, time.Minute, "serve", "login")
	link := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.Contains(link, "/login?ticket=") {
		t.Fatalf("serve login: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	base := link[:strings.Index(link, "/login?")]
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.WindowSize(1280, 900))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // as in TestDashboard: no sandbox for root; loopback pages of the test's own
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alloc, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	b, bcancel := chromedp.NewContext(alloc)
	defer bcancel()
	if err := chromedp.Do(b, chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS("#vm-list")),
		chromedp.Navigate(base+"/fleet"), chromedp.WaitVisible(chromedp.CSS("#fleet-vms"))); err != nil {
		t.Fatalf("the fleet page: %v", err)
	}
	vms, err := chromedp.Run(b, chromedp.TextContent(chromedp.CSS("#fleet-vms")))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !strings.Contains(vms, n) {
			t.Errorf("the fleet page does not list %s: %q", n, vms)
		}
	}
	evs, err := chromedp.Run(b, chromedp.TextContent(chromedp.CSS("#fleet-events")))
	if err != nil || !strings.Contains(evs, "/tmp/fleet/") {
		t.Errorf("the fleet page's events show no denial: %q %v", evs, err)
	}
	png, err := chromedp.Run(b, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(screenshotDir(t), "fleet.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}
