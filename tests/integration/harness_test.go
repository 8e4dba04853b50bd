package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// env is the test run's shared setup.
var env struct {
	gv         *testvm.Gatevisor // the binary under test and the run's directories
	bin        string            // env.gv.Bin
	runtimeDir string            // env.gv.RuntimeDir: GATEVISOR_RUNTIME_DIR for every VM of the run
	stateDir   string            // env.gv.StateDir: XDG_STATE_HOME (console and monitor logs)
	skip       string            // why VM tests cannot run here, if they cannot
	sharedErr  error             // why the shared VM did not come up
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
	g, err := testvm.BuildGatevisor()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer g.Close()
	env.gv, env.bin, env.runtimeDir, env.stateDir = g, g.Bin, g.RuntimeDir, g.StateDir
	g.StopOnInterrupt()
	if testing.Short() {
		env.skip = "boots guests under QEMU: run without -short"
		return m.Run()
	}
	if _, err := testvm.FindQEMU(); err != nil {
		env.skip = err.Error()
		return m.Run()
	}
	// Build (or verify) the default kit once, then boot the shared VM.
	if _, err := testvm.EnsureKit(os.Stderr); err != nil {
		if reason, ok := testvm.KitUnavailable(err); ok {
			env.skip = reason
			return m.Run()
		}
		fmt.Fprintf(os.Stderr, "build the default kit: %v\n", err)
		return 1
	}
	if _, err := g.Detach(sharedVM, readyTimeout); err != nil {
		env.sharedErr = err
	}
	code := m.Run()
	// Stop whatever is left, then prove nothing survived.
	_ = g.Stop(sharedVM, 20*time.Second)
	// An isolated network's host process ends a few seconds after its
	// last member (vnet.HostLinger).
	for i := 0; i < 100 && leftovers() != ""; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if leftovers := leftovers(); leftovers != "" {
		fmt.Fprintln(os.Stderr, "FAIL: left behind after the tests:", leftovers)
		return 1
	}
	return code
}

// gvCmd prepares a gatevisor command with the run's environment plus extra.
func gvCmd(ctx context.Context, extra []string, args ...string) *exec.Cmd {
	return env.gv.Command(ctx, extra, args...)
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

// needVM skips the test when this machine cannot boot guests, or fails it
// when VM tests are required (testvm.Skip decides).
func needVM(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		testvm.Skip(t, "%s", env.skip)
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
	var st api.Status
	err := testvm.Poll(timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		st, err = client(name).Status(ctx)
		return err
	})
	if err != nil {
		t.Fatalf("the API of %s did not answer within %v: %v", name, timeout, err)
	}
	return st
}

// waitReady waits until the guest of VM name printed its ready marker.
func waitReady(t *testing.T, name string) api.Status {
	t.Helper()
	var st api.Status
	err := testvm.Poll(readyTimeout, func() error {
		if st = waitAPI(t, name, time.Minute); !st.GuestReady {
			return errors.New("not ready")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("guest %s not ready within %v", name, readyTimeout)
	}
	return st
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

// qemuPIDs lists the QEMU processes of VM name (of every VM of the run if
// name is empty).
func qemuPIDs(name string) []int { return env.gv.QEMUPIDs(name) }

// waitNoQEMU waits until no QEMU of VM name runs.
func waitNoQEMU(t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	testvm.NoQEMU(t, filepath.Join(env.runtimeDir, name)+"/", timeout)
}

// ramFiles lists guest-RAM files of this user in the places gatevisor uses.
func ramFiles() []string { return env.gv.RAMFiles() }

// leftovers describes any QEMU, runtime directory, RAM file or tap device
// of this run.
func leftovers() string {
	parts := env.gv.Leftovers()
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
