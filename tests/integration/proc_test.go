package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// procStart starts script in the guest in the background and returns the
// pid it echoes.
func procStart(t *testing.T, vm, script string) int {
	t.Helper()
	r := guestSh(t, vm, script+" </dev/null >/dev/null 2>&1 & echo $!")
	pid, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if r.code != 0 || err != nil {
		t.Fatalf("start %q: exit %d %q %q", script, r.code, r.stdout, r.stderr)
	}
	return pid
}

// guestStates returns the guest's own view of the state of every thread of
// pid (from /proc/PID/task/*/stat), "gone" when there is no such process.
func guestStates(t *testing.T, vm string, pid int) string {
	t.Helper()
	r := guestSh(t, vm, fmt.Sprintf(`[ -d /proc/%d ] || { echo gone; exit 0; }; for s in /proc/%d/task/*/stat; do cut -d' ' -f3 $s; done | sort | uniq -c | tr -s ' \n' ' '`, pid, pid))
	return strings.TrimSpace(r.stdout)
}

// waitGuestState waits until guestStates is want.
func waitGuestState(t *testing.T, vm string, pid int, want string) {
	t.Helper()
	testvm.Eventually(t, 30*time.Second, fmt.Sprintf("pid %d in state %q in the guest's /proc", pid, want), func() error {
		if got := guestStates(t, vm, pid); got != want {
			return fmt.Errorf("state %q", got)
		}
		return nil
	})
}

// proc runs `gatevisor proc ACTION VM PID --json`.
func proc(t *testing.T, action, vm string, pid int) api.ProcResult {
	t.Helper()
	r := gv(t, 2*time.Minute, "proc", action, vm, strconv.Itoa(pid), "--json")
	if r.code != 0 {
		t.Fatalf("proc %s %d: exit %d\n%s%s", action, pid, r.code, r.stdout, r.stderr)
	}
	var res api.ProcResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("proc %s --json: %v\n%s", action, err, r.stdout)
	}
	return res
}

// TestProcFromBelow stops, continues, kills, freezes and thaws guest
// processes from outside the VM: a sleeping one, a multi-threaded busy
// loop that blocks every signal and makes no syscalls, and a frozen one
// that the guest's root resumes. (A process whose kill syscall a rootkit
// hooks: rk_protect in TestRootkitModules.)
func TestProcFromBelow(t *testing.T) {
	needVM(t)
	const vm = "proc"
	spin := buildStatic(t, "spin")
	r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--ready-timeout", readyTimeout.String(),
		"--add", spin+":/usr/bin/spin")
	if r.code != 0 {
		t.Fatalf("run: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { gv(t, 2*time.Minute, "stop", vm, "--force") })

	t.Run("sleeping process", func(t *testing.T) {
		pid := procStart(t, vm, "sleep 600")
		waitGuestState(t, vm, pid, "1 S")
		if res := proc(t, "stop", vm, pid); res.StateBefore != "S" || res.StateAfter != "T" || res.Signal != "SIGSTOP" || res.Comm != "sleep" {
			t.Errorf("stop: %+v", res)
		}
		waitGuestState(t, vm, pid, "1 T")
		if res := proc(t, "cont", vm, pid); res.StateAfter == "T" {
			t.Errorf("cont: %+v", res)
		}
		waitGuestState(t, vm, pid, "1 S")
		if res := proc(t, "kill", vm, pid); res.StateAfter != "gone" && res.StateAfter != "Z" {
			t.Errorf("kill: %+v", res)
		}
		waitGuestState(t, vm, pid, "gone")
	})

	t.Run("busy loop, three threads, every signal blocked", func(t *testing.T) {
		pid := procStart(t, vm, "/usr/bin/spin 3")
		waitGuestState(t, vm, pid, "3 R")
		// The guest's own kill -TERM is blocked; kill -STOP is not, but
		// gatevisor does not need the guest to send it.
		guestSh(t, vm, fmt.Sprintf("kill -TERM %d", pid))
		res := proc(t, "stop", vm, pid)
		if res.StateAfter != "T" {
			t.Fatalf("stop: %+v", res)
		}
		waitGuestState(t, vm, pid, "3 T")
		// Off the CPU: its CPU time stands still.
		cpu := func() string {
			return guestSh(t, vm, fmt.Sprintf("cut -d' ' -f14,15 /proc/%d/stat", pid)).stdout
		}
		before := cpu()
		time.Sleep(time.Second)
		if after := cpu(); after != before {
			t.Errorf("a stopped process still got CPU time: utime stime %q -> %q", before, after)
		}
		proc(t, "cont", vm, pid)
		waitGuestState(t, vm, pid, "3 R")
		if res := proc(t, "kill", vm, pid); res.Signal != "SIGKILL" {
			t.Errorf("kill: %+v", res)
		}
		waitGuestState(t, vm, pid, "gone")
	})

	t.Run("freeze: the guest's root cannot resume it", func(t *testing.T) {
		pid := procStart(t, vm, "/usr/bin/spin 1")
		res := proc(t, "freeze", vm, pid)
		if !res.Frozen || res.StateAfter != "T" {
			t.Fatalf("freeze: %+v", res)
		}
		for range 3 {
			guestSh(t, vm, fmt.Sprintf("kill -CONT %d", pid))
			time.Sleep(300 * time.Millisecond)
			waitGuestState(t, vm, pid, "1 T")
		}
		if ps := gv(t, time.Minute, "ids", "ps", "--vm", vm); !strings.Contains(ps.stdout, fmt.Sprintf("frozen by gatevisor (stopped again whenever resumed, until 'gatevisor proc thaw'): %d", pid)) {
			t.Errorf("ids ps does not show the frozen process:\n%s", ps.stdout)
		}
		ev := gv(t, time.Minute, "events", vm, "--limit", "200")
		if !strings.Contains(ev.stdout, fmt.Sprintf("frozen pid %d (spin) was resumed in the guest", pid)) {
			t.Errorf("no event for the resumed frozen process:\n%s", tail([]byte(ev.stdout)))
		}
		if res := proc(t, "thaw", vm, pid); res.Frozen || res.StateAfter == "T" {
			t.Errorf("thaw: %+v", res)
		}
		waitGuestState(t, vm, pid, "1 R")
		proc(t, "kill", vm, pid)
		waitGuestState(t, vm, pid, "gone")
	})

	t.Run("refused: init, kernel threads, threads, unknown pids, a reused pid", func(t *testing.T) {
		pid := procStart(t, vm, "/usr/bin/spin 2")
		defer proc(t, "kill", vm, pid)
		var threads []linux.Task
		idsJSON(t, &threads, "threads", "--vm", vm)
		tid, start := 0, uint64(0)
		for _, th := range threads {
			if th.TGID == pid && th.PID != pid {
				tid = th.PID
			}
			if th.PID == pid {
				start = th.StartTime
			}
		}
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"kill", vm, "1"}, "pid 1 is the guest's init"},
			{[]string{"stop", vm, "2"}, "kernel thread (kthreadd)"},
			{[]string{"stop", vm, strconv.Itoa(tid)}, fmt.Sprintf("is a thread of process %d", pid)},
			{[]string{"stop", vm, "4000000"}, "no process 4000000 in the guest"},
			{[]string{"stop", vm, strconv.Itoa(pid), "--start", strconv.FormatUint(start+1, 10)}, "is now another process"},
			{[]string{"pause", vm, "5"}, "unknown action \"pause\""},
		} {
			r := gv(t, time.Minute, append([]string{"proc"}, c.args...)...)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("proc %v: exit %d, stderr %q; want %q", c.args, r.code, r.stderr, c.want)
			}
		}
	})

	t.Run("audited before and after", func(t *testing.T) {
		file := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
		a := gv(t, time.Minute, "audit", "--file", file, "--rule", "proc.stop", "--json")
		if a.code != 0 || !strings.Contains(a.stdout, "requested by uid 0: sending") || !strings.Contains(a.stdout, "its state went") {
			t.Errorf("audit of proc.stop: exit %d\n%s%s", a.code, a.stdout, a.stderr)
		}
	})
}

// TestProcStress stops and continues a busy loop on both vCPUs of a
// 2-vCPU guest over and over: the guest kernel must stay healthy (no
// oops, no lockup, its own ps consistent, still answering).
func TestProcStress(t *testing.T) {
	needVM(t)
	const vm = "procstress"
	const cycles = 500
	spin := buildStatic(t, "spin")
	r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--cpus", "2", "--ready-timeout", readyTimeout.String(),
		"--add", spin+":/usr/bin/spin")
	if r.code != 0 {
		t.Fatalf("run: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { gv(t, 2*time.Minute, "stop", vm, "--force") })
	pid := procStart(t, vm, "/usr/bin/spin 2")
	other := procStart(t, vm, "/usr/bin/spin 1") // a load the actions do not touch
	start := time.Now()
	for i := range cycles {
		if res := proc(t, "stop", vm, pid); res.StateAfter != "T" {
			t.Fatalf("cycle %d: stop: %+v", i, res)
		}
		if res := proc(t, "cont", vm, pid); res.StateAfter == "T" {
			t.Fatalf("cycle %d: cont: %+v", i, res)
		}
	}
	t.Logf("%d stop/cont cycles in %v", cycles, time.Since(start).Round(time.Millisecond))
	waitGuestState(t, vm, pid, "2 R")
	waitGuestState(t, vm, other, "1 R")
	if r := guestSh(t, vm, "dmesg | grep -iE '(^|[^a-z_])oops|bug:|lockup|rcu.*stall|general protection' || echo healthy"); !strings.Contains(r.stdout, "healthy") {
		t.Errorf("the guest kernel complains:\n%s", r.stdout)
	}
	var ps []linux.Task
	idsJSON(t, &ps, "ps", "--vm", vm)
	seen := false
	for _, p := range ps {
		seen = seen || p.PID == pid
	}
	if !seen || guestStates(t, vm, pid) != "2 R" {
		t.Errorf("after the cycles: in ids ps %v, guest state %q", seen, guestStates(t, vm, pid))
	}
	proc(t, "kill", vm, pid)
	proc(t, "kill", vm, other)
}

// TestCPUHogResponse is seed 003's scenario end to end: a CPU-hog DoS in
// the guest is found by the continuous scan from the kernel's own CPU
// accounting and descheduled by the policy's response within seconds,
// while the device's web server keeps answering; the finding and the
// response are in the event stream and the audit log.
func TestCPUHogResponse(t *testing.T) {
	needVM(t)
	const vm = "cpuhog"
	spin := buildStatic(t, "spin")
	dir := t.TempDir()
	pol := writePolicy(t, dir, "hog.policy", openBase+`response stop_hogs: on finding("cpu-hog") do stop limit 5;
`)
	r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--ready-timeout", readyTimeout.String(),
		"--add", spin+":/usr/bin/spin", "--policy", pol, "--ids-interval", "1s", "--cpu-hog-threshold", "0.6", "--cpu-hog-window", "3s")
	if r.code != 0 {
		t.Fatalf("run: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { gv(t, 2*time.Minute, "stop", vm, "--force") })
	if r := guestSh(t, vm, "wget -qO- http://127.0.0.1/ >/dev/null && echo web-ok"); !strings.Contains(r.stdout, "web-ok") {
		t.Fatalf("the guest's web server does not answer before the DoS: %q %q", r.stdout, r.stderr)
	}
	began := time.Now()
	pid := procStart(t, vm, "/usr/bin/spin 2")
	waitGuestState(t, vm, pid, "2 T")
	took := time.Since(began)
	t.Logf("CPU hog detected and stopped %v after it started", took.Round(100*time.Millisecond))
	if took > 30*time.Second {
		t.Errorf("the hog ran %v before the response stopped it", took)
	}
	if r := guestSh(t, vm, "wget -qO- http://127.0.0.1/ >/dev/null && echo web-ok"); !strings.Contains(r.stdout, "web-ok") {
		t.Errorf("the guest's web server does not answer after the response: %q %q", r.stdout, r.stderr)
	}
	ev := gv(t, time.Minute, "events", vm, "--limit", "500")
	if !strings.Contains(ev.stdout, `"check":"cpu-hog"`) || !strings.Contains(ev.stdout, "by response stop_hogs") {
		t.Errorf("no cpu-hog finding or response in the events:\n%s", tail([]byte(ev.stdout)))
	}
	// From the finding to the response having taken effect (its event is
	// published once guest memory shows the process stopped).
	var found, acted time.Time
	for line := range strings.SplitSeq(ev.stdout, "\n") {
		var e struct {
			Time    time.Time `json:"time"`
			Type    string    `json:"type"`
			Detail  string    `json:"detail"`
			Finding *struct {
				Check string `json:"check"`
			} `json:"finding"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch {
		case e.Type == "finding" && e.Finding != nil && e.Finding.Check == "cpu-hog" && found.IsZero():
			found = e.Time
		case e.Type == "proc" && strings.Contains(e.Detail, "by response stop_hogs") && acted.IsZero():
			acted = e.Time
		}
	}
	if found.IsZero() || acted.Before(found) {
		t.Errorf("finding at %v, response at %v", found, acted)
	} else {
		t.Logf("from the cpu-hog finding to the process stopped by the response: %v", acted.Sub(found).Round(time.Millisecond))
	}
	if st := status(t, vm); st.Responses == nil || len(st.Responses.Responses) != 1 || st.Responses.Responses[0].Taken < 1 {
		t.Errorf("status of the responses: %+v", st.Responses)
	}
	file := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
	a := gv(t, time.Minute, "audit", "--file", file, "--rule", "response:stop_hogs", "--json")
	if a.code != 0 || !strings.Contains(a.stdout, "finding cpu-hog") || !strings.Contains(a.stdout, "its state went") {
		t.Errorf("audit of the response: exit %d\n%s%s", a.code, a.stdout, a.stderr)
	}
	proc(t, "kill", vm, pid)
	// Without a continuous scan, a response to findings is refused at start.
	r = gv(t, time.Minute, "run", "--detach", "--name", vm+"-noscan", "--policy", pol)
	if r.code == 0 || !strings.Contains(r.stderr, "no continuous scan") || !strings.Contains(r.stderr, "--ids-interval") {
		t.Errorf("run with a finding response and no --ids-interval: exit %d, stderr %q", r.code, r.stderr)
		gv(t, time.Minute, "stop", vm+"-noscan", "--force")
	}
}

// TestNetIsolate cuts a VM's network off by a policy response (an exec the
// policy kills) and by hand, and restores it: new flows are denied while
// it lasts, each action is audited, and a response the VM cannot carry out
// (isolate without --net) is refused at start.
func TestNetIsolate(t *testing.T) {
	needVM(t)
	const vm = "isolate"
	dir := t.TempDir()
	pol := writePolicy(t, dir, "iso.policy", openBase+`exec default: allow
  no_tmp_exec: filePrefixEq("/tmp/") kill
response cut: on verdict(kill) in exec do isolate;
`)
	r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--ready-timeout", readyTimeout.String(),
		"--net", "isolated:iso-test", "--policy", pol)
	if r.code != 0 {
		t.Fatalf("run: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { gv(t, 2*time.Minute, "stop", vm, "--force") })
	leaseIPv4(t, vm, "10.0.2.")
	web := func() string {
		return strings.TrimSpace(guestSh(t, vm, "timeout 10 wget -qO- http://10.0.2.2/ >/dev/null 2>&1 && echo up || echo down").stdout)
	}
	if w := web(); w != "up" {
		t.Fatalf("the gateway's web service is %s before any isolation", w)
	}
	guestSh(t, vm, "cp /bin/busybox /tmp/x; /tmp/x true; echo status=$?")
	testvm.Eventually(t, time.Minute, "the response's isolation in status", func() error {
		if st := status(t, vm); st.Net == nil || !strings.Contains(st.Net.Isolated, "by response cut") {
			return fmt.Errorf("net status %+v", st.Net)
		}
		return nil
	})
	if w := web(); w != "down" {
		t.Errorf("the network answers while isolated: %s", w)
	}
	if r := gv(t, time.Minute, "status", vm); !strings.Contains(r.stdout, "ISOLATED:") {
		t.Errorf("status does not show the isolation:\n%s", r.stdout)
	}
	if r := gv(t, time.Minute, "net", "restore", vm); r.code != 0 {
		t.Fatalf("net restore: %d %s", r.code, r.stderr)
	}
	if w := web(); w != "up" {
		t.Errorf("the network is %s after net restore", w)
	}
	if r := gv(t, time.Minute, "net", "isolate", vm, "--reason", "by hand"); r.code != 0 || !strings.Contains(r.stdout, "network isolated") {
		t.Fatalf("net isolate: %d %s%s", r.code, r.stdout, r.stderr)
	}
	if w := web(); w != "down" {
		t.Errorf("the network answers after net isolate: %s", w)
	}
	gv(t, time.Minute, "net", "restore", vm)
	file := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
	for _, rule := range []string{"response:cut", "net.isolate", "net.restore", "net-isolated"} {
		if a := gv(t, time.Minute, "audit", "--file", file, "--rule", rule, "--json"); a.code != 0 || !strings.Contains(a.stdout, rule) {
			t.Errorf("no audit record of rule %s: exit %d %s", rule, a.code, a.stderr)
		}
	}
	checkMetrics(t, vm)
	// A VM without a network cannot carry the response out: refused.
	r = gv(t, time.Minute, "run", "--detach", "--name", vm+"-nonet", "--policy", pol)
	if r.code == 0 || !strings.Contains(r.stderr, "response cut isolates the VM's network, and the VM has no gated network") {
		t.Errorf("run with an isolate response and no --net: exit %d, stderr %q", r.code, r.stderr)
		gv(t, time.Minute, "stop", vm+"-nonet", "--force")
	}
}

// promtool returns the path of promtool (scripts/install-deps unpacks it).
func promtool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	cache, err := kit.CacheDir() // ~/.cache/gatevisor, where install-deps unpacks it
	if err != nil {
		testvm.Skip(t, "no cache directory for promtool: %v", err)
	}
	p := filepath.Join(cache, "bin", "promtool")
	if _, err := os.Stat(p); err != nil {
		testvm.Skip(t, "no promtool: run scripts/install-deps (it unpacks Debian's prometheus package's promtool)")
	}
	return p
}

// checkPromtool runs promtool check metrics on exposition text.
func checkPromtool(t *testing.T, what, text string) {
	t.Helper()
	cmd := exec.Command(promtool(t), "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
}

// sample returns the value of the sample line that starts with series.
func sample(text, series string) (float64, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// checkMetrics checks a VM's metrics, alone and through gatevisor serve,
// against promtool and against the VM's status.
func checkMetrics(t *testing.T, vm string) {
	t.Helper()
	r := gv(t, time.Minute, "metrics", vm)
	if r.code != 0 {
		t.Fatalf("gatevisor metrics: exit %d %s", r.code, r.stderr)
	}
	checkPromtool(t, "gatevisor metrics "+vm, r.stdout)
	st := status(t, vm)
	for _, g := range st.Gates {
		for verdict, n := range g.Decisions {
			series := fmt.Sprintf(`gatevisor_gate_decisions_total{gate=%q,verdict=%q,vm=%q}`, g.Name, verdict, vm)
			// The metrics were read first: a count can only have grown since.
			if v, ok := sample(r.stdout, series); !ok || uint64(v) > n {
				t.Errorf("%s = %v (found %v), status says %d", series, v, ok, n)
			}
		}
	}
	// The VM's stopped time and stops (QEMU's STOP/RESUME), read before
	// the status: never more than it says.
	for series, now := range map[string]float64{
		fmt.Sprintf(`gatevisor_vm_stopped_seconds_total{vm=%q}`, vm): float64(st.StoppedMicros) / 1e6,
		fmt.Sprintf(`gatevisor_vm_stops_total{vm=%q}`, vm):           float64(st.StopIntervals),
	} {
		if v, ok := sample(r.stdout, series); !ok || v > now+1e-6 {
			t.Errorf("%s = %v (found %v), status says %v", series, v, ok, now)
		}
	}
	for _, series := range []string{fmt.Sprintf(`gatevisor_vm_state{state="running",vm=%q}`, vm), fmt.Sprintf(`gatevisor_vm_guest_ready{vm=%q}`, vm)} {
		if v, ok := sample(r.stdout, series); !ok || v != 1 {
			t.Errorf("%s = %v (found %v), want 1", series, v, ok)
		}
	}
	// The host daemon, on a loopback port of its choosing.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := gvCmd(ctx, nil, "serve", "--listen", "127.0.0.1:0")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	var url string
	testvm.Eventually(t, 30*time.Second, "gatevisor serve's address", func() error {
		m := regexp.MustCompile(`dashboard on http://(127\.0\.0\.1:\d+)/`).FindStringSubmatch(stderr.String())
		if m == nil {
			return errors.New("not yet")
		}
		url = "http://" + m[1] + "/metrics"
		return nil
	})
	// Without the token: refused (another local user could connect).
	if resp, err := http.Get(url); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("gatevisor serve /metrics without the token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	tok, err := os.ReadFile(filepath.Join(env.stateDir, "gatevisor", "serve.token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(env.stateDir, "gatevisor", "serve.token")); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the token file's mode: %v", fi)
	}
	bearer := "Bearer " + strings.TrimSpace(string(tok))
	mreq, _ := http.NewRequest(http.MethodGet, url, nil)
	mreq.Header.Set("Authorization", bearer)
	resp, err := http.DefaultClient.Do(mreq)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	if resp.StatusCode != 200 || !strings.Contains(text, fmt.Sprintf(`gatevisor_vm_vcpus{vm=%q}`, vm)) {
		t.Fatalf("gatevisor serve /metrics: %d\n%s", resp.StatusCode, text)
	}
	// Its user needs no token on the unix socket beside the token.
	sock := filepath.Join(env.stateDir, "gatevisor", "serve.sock")
	uc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	if uresp, err := uc.Get("http://serve/metrics"); err != nil || uresp.StatusCode != http.StatusOK {
		t.Errorf("gatevisor serve /metrics on %s without a token: %v %v", sock, uresp, err)
	} else {
		uresp.Body.Close()
	}
	if v, ok := sample(text, "gatevisor_serve_vms"); !ok || v < 1 {
		t.Errorf("gatevisor_serve_vms = %v (found %v)", v, ok)
	}
	checkPromtool(t, "gatevisor serve /metrics", text)
	// Every VM's events, streamed: the recent ones come first.
	ectx, ecancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ecancel()
	req, _ := http.NewRequestWithContext(ectx, http.MethodGet, strings.TrimSuffix(url, "/metrics")+"/events", nil)
	req.Header.Set("Authorization", bearer)
	eresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer eresp.Body.Close()
	if ct := eresp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("/events content type %q", ct)
	}
	br := bufio.NewReader(eresp.Body)
	want := fmt.Sprintf(`"vm":%q`, vm)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("/events: no event of %s: %v", vm, err)
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, want) {
			break
		}
	}
}
