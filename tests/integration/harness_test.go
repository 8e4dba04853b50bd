package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// env is the test run's shared setup.
var env struct {
	bin        string // the gatevisor binary under test
	runtimeDir string // GATEVISOR_RUNTIME_DIR for every VM of the run
	stateDir   string // XDG_STATE_HOME (console and monitor logs)
	skip       string // why VM tests cannot run here, if they cannot
	sharedErr  error  // why the shared VM did not come up
}

const sharedVM = "shared"

// openBase starts a test policy that controls one thing: it leaves every
// other class open, explicitly (the global default applies to every class
// a gate observes), and the control API to root.
const openBase = `default: allow;
role admin: *;
subject roles admin when uidEq(0);
`

// readyTimeout bounds one boot to the ready marker under TCG on a loaded
// 2-core machine (about 10 s when idle).
const readyTimeout = 4 * time.Minute

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "gatevisor-it-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	env.bin = filepath.Join(tmp, "gatevisor")
	env.runtimeDir = filepath.Join(tmp, "run")
	env.stateDir = filepath.Join(tmp, "state")
	stopOnInterrupt(tmp)
	build := exec.Command("go", "build", "-o", env.bin, "github.com/gatevisor/gatevisor/cmd/gatevisor")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build gatevisor:", err)
		return 1
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		env.skip = "qemu-system-x86_64 is not installed: run 'sudo apt-get install -y qemu-system-x86' (the README's test command does)"
		return m.Run()
	}
	// Build (or verify) the default kit once, then boot the shared VM.
	if out, err := gvCmd(context.Background(), nil, "kit", "build").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "gatevisor kit build: %v\n%s", err, out)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+time.Minute)
	out, err := gvCmd(ctx, nil, "run", "--detach", "--name", sharedVM, "--ready-timeout", readyTimeout.String()).CombinedOutput()
	cancel()
	if err != nil {
		env.sharedErr = fmt.Errorf("run --detach: %v\n%s", err, out)
	}
	code := m.Run()
	// Stop whatever is left, then prove nothing survived.
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = gvCmd(ctx, nil, "stop", sharedVM, "--timeout", "20s").Run()
	if leftovers := leftovers(); leftovers != "" {
		fmt.Fprintln(os.Stderr, "FAIL: left behind after the tests:", leftovers)
		return 1
	}
	return code
}

// gvCmd prepares a gatevisor command with the run's environment plus extra.
func gvCmd(ctx context.Context, extra []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, env.bin, args...)
	cmd.Env = append(os.Environ(), "GATEVISOR_RUNTIME_DIR="+env.runtimeDir, "XDG_STATE_HOME="+env.stateDir)
	cmd.Env = append(cmd.Env, extra...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

type result struct {
	stdout, stderr string
	code           int
}

// gv runs gatevisor to completion (at most timeout).
func gv(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	return gvEnv(t, timeout, nil, args...)
}

func gvEnv(t *testing.T, timeout time.Duration, extra []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := gvCmd(ctx, extra, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		} else {
			t.Fatalf("gatevisor %v: %v", args, err)
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("gatevisor %v did not finish within %v; stderr:\n%s", args, timeout, r.stderr)
	}
	return r
}

func needVM(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
}

func needShared(t *testing.T) {
	t.Helper()
	needVM(t)
	if env.sharedErr != nil {
		t.Fatalf("the shared VM did not start: %v", env.sharedErr)
	}
}

// client returns an API client for VM name.
func client(name string) *apiclient.Client {
	return apiclient.New(filepath.Join(env.runtimeDir, name, "api.sock"))
}

// status returns the VM's status via the CLI's JSON output.
func status(t *testing.T, name string) api.Status {
	t.Helper()
	r := gv(t, 30*time.Second, "status", name, "--json")
	if r.code != 0 {
		t.Fatalf("status %s: exit %d: %s", name, r.code, r.stderr)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// waitAPI waits until VM name's API answers, or fails the test.
func waitAPI(t *testing.T, name string, timeout time.Duration) api.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := client(name).Status(ctx)
		cancel()
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API of %s did not answer within %v: %v", name, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReady waits until the guest of VM name printed its ready marker.
func waitReady(t *testing.T, name string) api.Status {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		st := waitAPI(t, name, time.Minute)
		if st.GuestReady {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest %s not ready within %v", name, readyTimeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// foreground starts `gatevisor run` for name in the foreground.
func foreground(t *testing.T, name string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	cmd := gvCmd(context.Background(), nil, append([]string{"run", "--name", name}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, &out
}

// waitExit waits for cmd to exit and returns its exit code.
func waitExit(t *testing.T, cmd *exec.Cmd, out *bytes.Buffer, timeout time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			return 0
		}
		if ee, ok := err.(*exec.ExitError); ok {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return -int(ws.Signal())
			}
			return ee.ExitCode()
		}
		t.Fatalf("wait: %v", err)
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		t.Fatalf("gatevisor run did not exit within %v; output:\n%s", timeout, out.String())
	}
	return -1
}

// qemuPIDs lists QEMU processes started for this test run.
func qemuPIDs(name string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("qemu-system")) {
			continue
		}
		if bytes.Contains(cmdline, []byte(filepath.Join(env.runtimeDir, name)+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitNoQEMU waits until no QEMU of VM name runs.
func waitNoQEMU(t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(qemuPIDs(name)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU of %s still running after %v: %v", name, timeout, qemuPIDs(name))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ramFiles lists guest-RAM files of this user in the places gatevisor uses.
func ramFiles() []string {
	var out []string
	for _, dir := range []string{filepath.Join("/dev/shm", fmt.Sprintf("gatevisor-%d", os.Getuid())), env.runtimeDir} {
		_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() && strings.HasPrefix(fi.Name(), "ram-") {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

// stopOnInterrupt stops every VM of the run when the test binary is
// interrupted (Ctrl-C, SIGTERM) or is about to hit its -timeout (which
// panics without running deferred cleanup): detached VMs would otherwise
// outlive it.
func stopOnInterrupt(tmp string) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-ch
		stopAllVMs()
		os.RemoveAll(tmp)
		fmt.Fprintf(os.Stderr, "integration tests: %v: every VM stopped\n", s)
		os.Exit(1)
	}()
	flag.Parse()
	if f := flag.Lookup("test.timeout"); f != nil {
		if g, ok := f.Value.(flag.Getter); ok {
			if d, ok := g.Get().(time.Duration); ok && d > 2*time.Minute {
				time.AfterFunc(d-time.Minute, func() {
					fmt.Fprintln(os.Stderr, "integration tests: -timeout is near: stopping every VM")
					stopAllVMs()
				})
			}
		}
	}
}

// stopAllVMs stops every VM in the run's runtime directory, in parallel.
func stopAllVMs() {
	ents, _ := os.ReadDir(env.runtimeDir)
	var wg sync.WaitGroup
	for _, e := range ents {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = gvCmd(ctx, nil, "stop", name, "--timeout", "10s").Run()
		}(e.Name())
	}
	wg.Wait()
}

// leftovers describes any QEMU, runtime directory, RAM file or tap device
// of this run.
func leftovers() string {
	var parts []string
	if pids := qemuPIDs(""); len(pids) > 0 {
		parts = append(parts, fmt.Sprintf("QEMU pids %v", pids))
	}
	if ents, _ := os.ReadDir(env.runtimeDir); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		parts = append(parts, "runtime dirs "+strings.Join(names, ","))
	}
	if f := ramFiles(); len(f) > 0 {
		parts = append(parts, "RAM files "+strings.Join(f, ","))
	}
	if taps := leftTaps(); len(taps) > 0 {
		parts = append(parts, "tap devices "+strings.Join(taps, ","))
	}
	return strings.Join(parts, "; ")
}

// leftTaps lists the tests' tap devices (gvitPID) that this run made or
// whose test process is gone; another live run's taps are its own.
func leftTaps() []string {
	ifs, _ := net.Interfaces()
	var taps []string
	for _, i := range ifs {
		pid, err := strconv.Atoi(strings.TrimPrefix(i.Name, tapPrefix))
		if !strings.HasPrefix(i.Name, tapPrefix) || err != nil {
			continue
		}
		if pid == os.Getpid() || syscall.Kill(pid, 0) != nil {
			taps = append(taps, i.Name)
		}
	}
	return taps
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
