package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// dashboardPolicy is loaded on the shared VM for the dashboard test: root
// is admin; uid 4242 a viewer, who may read but not act on processes; an
// exec from /tmp/dash/ is denied (the live event the browser must see).
const dashboardPolicy = `default: allow;
role admin: *;
role viewer: vm.status, vm.metrics, vm.events, ids.*, net.flows;
subject roles admin when uidEq(0);
subject roles viewer when uidEq(4242);
exec default: allow
  dashboard_demo: filePrefixEq("/tmp/dash/") deny(EACCES)
`

// viewerUID is the dashboard test's user without proc.* in the policy.
const viewerUID = 4242

// chromiumPath finds headless Chromium (GATEVISOR_CHROMIUM, else on PATH).
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("GATEVISOR_CHROMIUM"); p != "" {
		return p
	}
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	testvm.Skip(t, "the dashboard test drives headless Chromium, which is not installed: apt-get install chromium (scripts/install-deps does), or set GATEVISOR_CHROMIUM")
	return ""
}

// screenshotDir is where the test leaves its screenshots:
// GATEVISOR_SCREENSHOTS, else a directory of the test.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("GATEVISOR_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// guestPID runs script in the shared guest; it prints a pid.
func guestPID(t *testing.T, script string) int {
	t.Helper()
	r := guestSh(t, sharedVM, script)
	pid, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if r.code != 0 || err != nil {
		t.Fatalf("%s: exit %d %q %q", script, r.code, r.stdout, r.stderr)
	}
	return pid
}

// guestTask returns pid's task as the IDS reads it, or false once it is
// gone (or a zombie).
func guestTask(t *testing.T, pid int) (linux.Task, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := client(sharedVM).IDS(ctx, "ps", "")
	if err != nil {
		t.Fatal(err)
	}
	var ts []linux.Task
	if err := json.Unmarshal(res.Result, &ts); err != nil {
		t.Fatal(err)
	}
	for _, tk := range ts {
		if tk.PID == pid && tk.State != "Z" && tk.State != "X" {
			return tk, true
		}
	}
	return linux.Task{}, false
}

// TestDashboard drives the dashboard of gatevisor serve (a root daemon, as
// under systemd) in headless Chromium against the shared guest: the
// processes (a hostile name shown as text), a denied exec arriving live
// on the stream, a kill that the policy permits root and that happens in
// the guest, a snapshot taken through the dashboard, listed and removed,
// and a kill and the snapshot list that uid 4242's role lacks, refused
// with the policy's reason on the page; then the latency from a denied
// exec to its event on the dashboard's stream.
func TestDashboard(t *testing.T) {
	needShared(t)
	chromium := chromiumPath(t)
	if os.Geteuid() != 0 {
		testvm.Skip(t, "the dashboard test runs the daemon as root, which acts for uid %d: run it as root", viewerUID)
	}
	shots := screenshotDir(t)
	t.Logf("screenshots in %s", shots)

	// The policy, and what the guest runs for the test.
	dir := t.TempDir()
	loadPolicy(t, sharedVM, writePolicy(t, dir, "dashboard.policy", dashboardPolicy))
	t.Cleanup(func() { loadPolicy(t, sharedVM, writePolicy(t, dir, "base.policy", openBase)) })
	if r := guestSh(t, sharedVM, "rm -rf /tmp/dash && mkdir -p /tmp/dash && cp /bin/busybox /tmp/dash/denied && for i in $(seq 0 49); do ln /tmp/dash/denied /tmp/dash/d$i; done && echo ok"); r.stdout != "ok\n" {
		t.Fatalf("guest setup: %d %q %q", r.code, r.stdout, r.stderr)
	}
	// A process named with markup (its comm is the script's name), and one
	// for the viewer's refused kill.
	hostile := "<b>gv<b>" // no slash: it is a file name too
	victim := guestPID(t, `printf '#!/bin/sh\nwhile :; do sleep 5; done\n' > '/tmp/`+hostile+`' && chmod +x '/tmp/`+hostile+`' && { '/tmp/`+hostile+`' </dev/null >/dev/null 2>&1 & echo $!; }`)
	keep := guestPID(t, `printf '#!/bin/sh\nwhile :; do sleep 5; done\n' > /tmp/gv-dash-keep && chmod +x /tmp/gv-dash-keep && { /tmp/gv-dash-keep </dev/null >/dev/null 2>&1 & echo $!; }`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, p := range []int{victim, keep} {
			_, _ = client(sharedVM).Proc(ctx, "kill", api.ProcRequest{PID: p})
		}
	})

	// The daemon, as root, with a login socket every user may reach.
	pub := filepath.Join(dir, "pub")
	if err := os.Mkdir(pub, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	loginSock := filepath.Join(pub, "login", "login.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serve := gvCmd(ctx, nil, "serve", "--listen", "127.0.0.1:0", "--login-socket", loginSock, "--no-fleet")
	var serveOut strings.Builder
	serve.Stdout, serve.Stderr = &serveOut, &serveOut
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = serve.Process.Signal(syscall.SIGTERM)
		_ = serve.Wait()
		t.Logf("gatevisor serve:\n%s", serveOut.String())
	}()
	if err := testvm.Poll(30*time.Second, func() error { _, err := os.Stat(loginSock); return err }); err != nil {
		t.Fatalf("gatevisor serve made no login socket: %v\n%s", err, serveOut.String())
	}
	// Login links: root's, and uid 4242's from a copy of the binary it can run.
	login := func(cred *syscall.Credential) string {
		t.Helper()
		bin := env.bin
		if cred != nil {
			bin = filepath.Join(pub, "gatevisor")
			if _, err := os.Stat(bin); err != nil {
				data, err := os.ReadFile(env.bin)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(bin, data, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		lctx, lcancel := context.WithTimeout(ctx, time.Minute)
		defer lcancel()
		cmd := exec.CommandContext(lctx, bin, "serve", "login", "--socket", loginSock)
		cmd.Dir = "/"
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			cmd.Env = []string{"HOME=/"}
		}
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("gatevisor serve login: %v %s", err, stderr)
		}
		u := strings.TrimSpace(string(out))
		if !strings.HasPrefix(u, "http://127.0.0.1:") || !strings.Contains(u, "/login?ticket=") {
			t.Fatalf("gatevisor serve login printed %q", u)
		}
		return u
	}
	rootURL := login(nil)
	viewerURL := login(&syscall.Credential{Uid: viewerUID, Gid: viewerUID})
	base := rootURL[:strings.Index(rootURL, "/login?")]

	// Chromium.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.WindowSize(1280, 1000))
	if os.Geteuid() == 0 {
		// Chromium refuses to start its sandbox as root (it needs an
		// unprivileged user for its namespaces); the pages it loads here
		// are the test's own, from loopback.
		opts = append(opts, chromedp.NoSandbox)
	}
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx, opts...)
	defer allocCancel()
	browser, browserCancel := chromedp.NewContext(allocCtx)
	defer browserCancel()
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start %s: %v", chromium, err)
	}
	step := func(t *testing.T, bctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 90*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			hctx, hcancel := context.WithTimeout(bctx, 10*time.Second)
			html, _ := chromedp.Run(hctx, chromedp.OuterHTML(chromedp.CSS("body")))
			hcancel()
			t.Fatalf("%s: %v\npage:\n%s", what, err, html)
		}
	}
	text := func(t *testing.T, bctx context.Context, sel string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 30*time.Second)
		defer scancel()
		s, err := chromedp.Run(sctx, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}
	shot := func(t *testing.T, bctx context.Context, name string) {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 30*time.Second)
		defer scancel()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	poll := func(js string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](js, chromedp.WithPollingTimeout(80*time.Second), chromedp.WithPollingInterval(100*time.Millisecond))
	}

	t.Run("index and processes", func(t *testing.T) {
		step(t, browser, "log in as root", chromedp.Navigate(rootURL), chromedp.WaitVisible(chromedp.CSS("#vm-list")))
		if s := text(t, browser, "#vm-list"); !strings.Contains(s, sharedVM) || !strings.Contains(s, "running") || !strings.Contains(s, "kernel: armed") {
			t.Errorf("the index lacks the shared VM running with its kernel gate armed:\n%s", s)
		}
		shot(t, browser, "dashboard-index.png")
		step(t, browser, "open the VM", chromedp.Navigate(base+"/vm/"+sharedVM), chromedp.WaitVisible(chromedp.CSS("#procs")),
			chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf("#proc-%d", victim))))
		row := text(t, browser, fmt.Sprintf("#proc-%d .comm", victim))
		if row != hostile {
			t.Errorf("the hostile process's name reads %q, want %q as text", row, hostile)
		}
		n, err := chromedp.Run(browser, chromedp.Evaluate[int]("document.querySelectorAll('#procs b').length"))
		if err != nil || n != 0 {
			t.Errorf("the guest's <b> became markup: %d elements, %v", n, err)
		}
		for _, want := range []string{"init", "gv-dash-keep"} {
			if !strings.Contains(text(t, browser, "#procs"), want) {
				t.Errorf("the process tree lacks %s", want)
			}
		}
	})

	t.Run("a denied exec appears live", func(t *testing.T) {
		step(t, browser, "stream live", poll(`document.getElementById('stream-status').textContent === 'live'`))
		if r := guestSh(t, sharedVM, "/tmp/dash/denied echo ran"); strings.Contains(r.stdout, "ran") {
			t.Fatalf("the exec the policy denies ran: %q", r.stdout)
		}
		step(t, browser, "the deny on the page", poll(`document.getElementById('event-rows').textContent.includes('deny exec /tmp/dash/denied')`))
		if s := text(t, browser, "#event-rows"); !strings.Contains(s, "rule dashboard_demo") {
			t.Errorf("the live event does not name the rule:\n%s", s)
		}
		shot(t, browser, "dashboard-vm.png")
		// The filter: exec denials only.
		step(t, browser, "filter", chromedp.Navigate(base+"/vm/"+sharedVM+"?verdict=deny&class=exec"), chromedp.WaitVisible(chromedp.CSS("#event-rows")))
		for _, row := range strings.Split(strings.TrimSpace(text(t, browser, "#event-rows")), "\n") {
			if row = strings.TrimSpace(row); row != "" && !strings.Contains(row, "deny") {
				t.Errorf("a filtered row is not a deny: %q", row)
			}
		}
	})

	t.Run("a permitted kill happens in the guest", func(t *testing.T) {
		step(t, browser, "kill", chromedp.Navigate(base+"/vm/"+sharedVM),
			chromedp.Click(chromedp.CSS(fmt.Sprintf(`#proc-%d button[value="kill"]`, victim))),
			chromedp.WaitVisible(chromedp.CSS("#flash")))
		if s := text(t, browser, "#flash"); !strings.Contains(s, fmt.Sprintf("kill pid %d:", victim)) || strings.Contains(s, "not done") {
			t.Fatalf("the kill's outcome: %q", s)
		}
		if cls, _ := chromedp.Run(browser, chromedp.Evaluate[string]("document.getElementById('flash').className")); !strings.Contains(cls, "ok") {
			t.Errorf("the kill's outcome is shown as %q", cls)
		}
		// Gone from the kernel's task list (a zombie counts as gone: its
		// reaping is init's) and, once init reaped it, from the guest's /proc.
		if err := testvm.Poll(30*time.Second, func() error {
			if _, alive := guestTask(t, victim); alive {
				return fmt.Errorf("pid %d still runs (ids ps)", victim)
			}
			if r := guestSh(t, sharedVM, fmt.Sprintf("test -e /proc/%d && echo alive || echo gone", victim)); r.stdout != "gone\n" {
				return fmt.Errorf("pid %d is still in the guest's /proc: %q", victim, r.stdout)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("snapshots", func(t *testing.T) {
		tag := fmt.Sprintf("dash-%d", time.Now().Unix())
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = client(sharedVM).RemoveSnapshot(ctx, tag) // when the dashboard's removal did not happen
		})
		row := fmt.Sprintf(`#snapshot-list tr[data-tag="%s"]`, tag)
		step(t, browser, "take a snapshot", chromedp.Navigate(base+"/vm/"+sharedVM), chromedp.WaitVisible(chromedp.CSS("#snapshot-form")),
			chromedp.SetValue(chromedp.CSS(`#snapshot-form input[name="tag"]`), tag),
			chromedp.Click(chromedp.CSS("#snapshot-form button")),
			chromedp.WaitVisible(chromedp.CSS("#flash")))
		if s := text(t, browser, "#flash"); !strings.Contains(s, "take snapshot "+tag+": taken: ") || strings.Contains(s, "not done") {
			t.Fatalf("the snapshot's outcome: %q", s)
		}
		step(t, browser, "the snapshot listed", chromedp.WaitVisible(chromedp.CSS(row)))
		if s := text(t, browser, row); !strings.Contains(s, tag) || !strings.Contains(s, "MiB of") {
			t.Errorf("the snapshot's row: %q", s)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		list, err := client(sharedVM).Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, s := range list.Snapshots {
			found = found || s.Tag == tag
		}
		if !found {
			t.Errorf("the API does not list snapshot %s: %+v", tag, list)
		}
		// Roll back is not sent until its confirmation is ticked (the
		// browser's own form validation; the server checks it too).
		if ok, err := chromedp.Run(browser, chromedp.Evaluate[bool](fmt.Sprintf(`document.querySelector('%s form.rollback').checkValidity()`, row))); err != nil || ok {
			t.Errorf("the rollback form is valid without its confirmation: %v %v", ok, err)
		}
		shot(t, browser, "dashboard-snapshots.png")
		step(t, browser, "remove it", chromedp.Navigate(base+"/vm/"+sharedVM), chromedp.WaitVisible(chromedp.CSS(row)),
			chromedp.Click(chromedp.CSS(row+" form.remove button")),
			chromedp.WaitVisible(chromedp.CSS("#flash")))
		if s := text(t, browser, "#flash"); !strings.Contains(s, "remove snapshot "+tag+": removed") {
			t.Errorf("the removal's outcome: %q", s)
		}
		if n, err := chromedp.Run(browser, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll('%s').length`, row))); err != nil || n != 0 {
			t.Errorf("the removed snapshot is still listed: %d rows, %v", n, err)
		}
	})

	t.Run("an action the role lacks is refused", func(t *testing.T) {
		viewer, vcancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
		defer vcancel()
		// The first run on a context makes its tab, which lives as long as
		// that run's context: not a step's, which times out.
		if err := chromedp.Do(viewer); err != nil {
			t.Fatalf("a browser context for uid %d: %v", viewerUID, err)
		}
		step(t, viewer, "log in as uid 4242", chromedp.Navigate(viewerURL), chromedp.WaitVisible(chromedp.CSS("#vm-list")))
		if s := text(t, viewer, "#who"); !strings.Contains(s, "uid 4242") {
			t.Errorf("the viewer's page says %q", s)
		}
		step(t, viewer, "open the VM", chromedp.Navigate(base+"/vm/"+sharedVM), chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf("#proc-%d", keep))),
			chromedp.Click(chromedp.CSS(fmt.Sprintf(`#proc-%d button[value="kill"]`, keep))),
			chromedp.WaitVisible(chromedp.CSS("#flash")))
		s := text(t, viewer, "#flash")
		if !strings.Contains(s, fmt.Sprintf("kill pid %d: not done: proc.kill refused for uid %d", keep, viewerUID)) {
			t.Errorf("the refusal on the page: %q", s)
		}
		if s := text(t, viewer, "#snapshots-error"); !strings.Contains(s, fmt.Sprintf("vm.snapshots refused for uid %d", viewerUID)) {
			t.Errorf("the viewer's snapshot list: %q, want the refusal", s)
		}
		shot(t, viewer, "dashboard-refused.png")
		if _, alive := guestTask(t, keep); !alive {
			t.Errorf("pid %d is gone after a refused kill", keep)
		}
	})

	t.Run("latency", func(t *testing.T) {
		dashboardLatency(t, login(nil), 50)
	})
}

// dashboardLatency measures, over n denied execs, the time from the gate's
// decision (the event's time, on the monitor's clock) and from the exec's
// request to the event's arrival on the dashboard's stream, as a browser's
// EventSource reads it.
func dashboardLatency(t *testing.T, loginURL string, n int) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Jar: jar}
	resp, err := hc.Get(loginURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	base := loginURL[:strings.Index(loginURL, "/login?")]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/vm/"+sharedVM+"/stream?verdict=deny&class=exec", nil)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %s", resp.Status)
	}
	type arrival struct {
		text string
		at   time.Time
		when time.Time
	}
	arrivals := make(chan arrival, 256)
	go func() {
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				close(arrivals)
				return
			}
			if !strings.HasPrefix(line, "data: ") {
				continue
			}
			now := time.Now()
			var v struct {
				Text string    `json:"text"`
				At   time.Time `json:"at"`
			}
			if json.Unmarshal([]byte(line[6:]), &v) == nil && v.Text != "" {
				arrivals <- arrival{v.Text, v.At, now}
			}
		}
	}()
	var fromDecision, fromRequest []time.Duration
	for i := range n {
		path := fmt.Sprintf("/tmp/dash/d%d ", i)
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			ectx, ecancel := context.WithTimeout(ctx, time.Minute)
			defer ecancel()
			_, err := client(sharedVM).Exec(ectx, api.ExecRequest{Argv: []string{"/tmp/dash/d" + strconv.Itoa(i)}})
			done <- err
		}()
		timeout := time.After(time.Minute)
	wait:
		for {
			select {
			case a, ok := <-arrivals:
				if !ok {
					t.Fatalf("the stream ended at exec %d", i)
				}
				if strings.Contains(a.text, path) {
					fromDecision = append(fromDecision, a.when.Sub(a.at))
					fromRequest = append(fromRequest, a.when.Sub(start))
					break wait
				}
			case <-timeout:
				t.Fatalf("exec %d: no event on the dashboard's stream within a minute", i)
			}
		}
		if err := <-done; err != nil {
			t.Fatalf("exec %d: %v", i, err)
		}
	}
	pct := func(d []time.Duration, p int) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
		return s[(len(s)*p+99)/100-1]
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	t.Logf("dashboard stream latency over %d denied execs: from the gate's decision p50 %s, p90 %s, max %s; from the exec request p50 %s, p90 %s, max %s",
		n, ms(pct(fromDecision, 50)), ms(pct(fromDecision, 90)), ms(pct(fromDecision, 100)),
		ms(pct(fromRequest, 50)), ms(pct(fromRequest, 90)), ms(pct(fromRequest, 100)))
}
