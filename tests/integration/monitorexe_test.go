package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMonitorExecutable builds gatevisor and gatevisor-monitor the way
// scripts/build does (one source stamp; the monitor with -tags
// gatevisor_monitor and without cgo) and checks that `run` hands the
// monitor over to gatevisor-monitor, whose gates then decide as
// gatevisor's own would, and that a gatevisor-monitor that is not
// provably the same build is named and not run.
func TestMonitorExecutable(t *testing.T) {
	needVM(t)
	dir := t.TempDir()
	full, mon := filepath.Join(dir, "gatevisor"), filepath.Join(dir, "gatevisor-monitor")
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	ld := "-X github.com/gatevisor/gatevisor/internal/cli.sourceDigest=test-" + hex.EncodeToString(b)
	build := func(out string, env []string, args ...string) {
		t.Helper()
		cmd := exec.Command("go", append(append([]string{"build", "-ldflags", ld}, args...), "-o", out, "github.com/gatevisor/gatevisor/cmd/gatevisor")...)
		cmd.Env = append(os.Environ(), env...)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", out, err, o)
		}
	}
	build(full, nil)
	build(mon, []string{"CGO_ENABLED=0"}, "-tags", "gatevisor_monitor")
	cmd := func(ctx context.Context, args ...string) *exec.Cmd {
		c := exec.CommandContext(ctx, full, args...)
		c.Env = append(os.Environ(), "GATEVISOR_RUNTIME_DIR="+env.runtimeDir, "XDG_STATE_HOME="+env.stateDir)
		c.WaitDelay = 5 * time.Second
		return c
	}
	runCmd := func(timeout time.Duration, args ...string) (string, string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c := cmd(ctx, args...)
		var o, e bytes.Buffer
		c.Stdout, c.Stderr = &o, &e
		err := c.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("gatevisor %v: %v", args, err)
		}
		return o.String(), e.String(), code
	}

	const vm = "monexe"
	policy := repoPolicy(t, "iot-default.policy")
	t.Cleanup(func() { runCmd(time.Minute, "stop", vm, "--timeout", "20s") })
	if out, errOut, code := runCmd(readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--net", "isolated:"+vm, "--policy", policy); code != 0 {
		t.Fatalf("run: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code := runCmd(time.Minute, "status", vm, "--json")
	if code != 0 {
		t.Fatalf("status: exit %d", code)
	}
	i := strings.Index(out, `"monitor_pid":`)
	if i < 0 {
		t.Fatalf("status: no monitor_pid: %s", out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.Trim(strings.Fields(out[i+len(`"monitor_pid":`):])[0], ",")))
	if err != nil {
		t.Fatalf("status: monitor_pid: %v", err)
	}
	if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err != nil || exe != mon {
		t.Fatalf("the monitor runs %q (%v), want %s", exe, err, mon)
	}
	// The gates of iot-default, decided by gatevisor-monitor: uid 1000 may
	// not read /etc/shadow even when the file lets it.
	if _, _, code := runCmd(time.Minute, "exec", vm, "--", "sh", "-c", "chmod 644 /etc/shadow && su user -c 'cat /etc/shadow'"); code == 0 {
		t.Error("uid 1000 read /etc/shadow under iot-default with gatevisor-monitor")
	}
	if o, e, code := runCmd(time.Minute, "exec", vm, "--", "cat", "/etc/hostname"); code != 0 || strings.TrimSpace(o) == "" {
		t.Errorf("cat /etc/hostname: exit %d %q %q", code, o, e)
	}
	if o, e, code := runCmd(2*time.Minute, "ids", "check", "--vm", vm); code != 0 {
		t.Errorf("ids check: exit %d\n%s%s", code, o, e)
	}
	if _, e, code := runCmd(time.Minute, "stop", vm, "--timeout", "20s"); code != 0 {
		t.Errorf("stop: exit %d %s", code, e)
	}
	waitNoQEMU(t, vm, 30*time.Second)

	// Not provably this build (here: writable by others): named, not run.
	if err := os.Chmod(mon, 0o777); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCmd(time.Minute, "run", "--help")
	if code != 0 || !strings.Contains(errOut, mon+" not used: writable by others") || !strings.Contains(errOut, "the monitor runs in "+full) {
		t.Errorf("run --help with a world-writable gatevisor-monitor: exit %d, stderr %q", code, errOut)
	}
}
