package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
)

func TestStatusOverAPI(t *testing.T) {
	needShared(t)
	st := status(t, sharedVM)
	if st.Name != sharedVM || st.State != "running" || !st.GuestReady || st.QEMUStatus != "running" {
		t.Fatalf("status = %+v; want running, guest ready", st)
	}
	if st.Accel != "tcg" && st.Accel != "kvm" || st.AccelReason == "" {
		t.Errorf("accelerator %q (%q): want kvm or tcg with a reason", st.Accel, st.AccelReason)
	}
	if st.MemMiB != 256 || st.CPUs != 1 || st.Machine != "q35" || st.QEMUPID <= 0 || st.BootSeconds <= 0 {
		t.Errorf("status fields: %+v", st)
	}
	r := gv(t, 30*time.Second, "ls")
	if r.code != 0 || !strings.Contains(r.stdout, sharedVM) || !strings.Contains(r.stdout, "ready") {
		t.Errorf("ls: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestExec(t *testing.T) {
	needShared(t)
	for _, tc := range []struct {
		name     string
		argv     []string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"echo", []string{"echo", "hello from the guest"}, "hello from the guest\n", "", 0},
		{"exit code", []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, "out\n", "err\n", 7},
		{"quoting", []string{"printf", "%s|", "a b", "it's", `"q"`, "$HOME"}, `a b|it's|"q"|$HOME|`, "", 0},
		{"missing command", []string{"/no/such/command"}, "", "", 127},
		{"guest proc", []string{"cat", "/proc/sys/kernel/ostype"}, "Linux\n", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := gv(t, time.Minute, append([]string{"exec", sharedVM, "--"}, tc.argv...)...)
			if r.code != tc.wantCode || r.stdout != tc.wantOut || (tc.wantErr != "" && r.stderr != tc.wantErr) {
				t.Fatalf("exec %q: code %d stdout %q stderr %q; want %d %q %q", tc.argv, r.code, r.stdout, r.stderr, tc.wantCode, tc.wantOut, tc.wantErr)
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		r := gv(t, time.Minute, "exec", sharedVM, "--timeout", "1s", "--", "sleep", "30")
		if r.code == 0 || time.Since(start) > 20*time.Second {
			t.Fatalf("sleep 30 with --timeout 1s: code %d after %v", r.code, time.Since(start))
		}
	})
	t.Run("large output", func(t *testing.T) {
		r := gv(t, time.Minute, "exec", sharedVM, "--", "sh", "-c", "seq 1 20000")
		if r.code != 0 || strings.Count(r.stdout, "\n") != 20000 || !strings.HasSuffix(r.stdout, "20000\n") {
			t.Fatalf("seq 1 20000: code %d, %d lines", r.code, strings.Count(r.stdout, "\n"))
		}
	})
}

// TestRAMMappingFindsBanner reads guest RAM through the monitor's live
// mapping and finds the kernel's banner, the same text as the guest's own
// /proc/version.
func TestRAMMappingFindsBanner(t *testing.T) {
	needShared(t)
	r := gv(t, time.Minute, "exec", sharedVM, "--", "cat", "/proc/version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "Linux version ") {
		t.Fatalf("/proc/version: %d %q", r.code, r.stdout)
	}
	want := []byte(strings.TrimSpace(r.stdout))
	ctx := context.Background()
	c := client(sharedVM)
	layout, err := c.MemoryLayout(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if layout.Size != 256<<20 || len(layout.Regions) == 0 {
		t.Fatalf("layout = %+v", layout)
	}
	const chunk = 1 << 20
	for _, reg := range layout.Regions {
		for off := uint64(0); off < reg.Size; off += chunk - uint64(len(want)) {
			n := min(uint64(chunk), reg.Size-off)
			b, err := c.ReadPhysical(ctx, reg.GPA+off, int(n))
			if err != nil {
				t.Fatalf("read %#x: %v", reg.GPA+off, err)
			}
			if i := bytes.Index(b, want); i >= 0 {
				t.Logf("banner at guest-physical %#x", reg.GPA+off+uint64(i))
				return
			}
		}
	}
	t.Fatalf("banner %q not found in guest RAM", want)
}

// TestRegisters reads vCPU registers through the gdbstub: RIP is a
// canonical kernel address and CR3 points into guest RAM.
func TestRegisters(t *testing.T) {
	needShared(t)
	ctx := context.Background()
	c := client(sharedVM)
	var rip, cr3 uint64
	// An idle guest is almost always in the kernel; a read that lands in
	// user mode is retried.
	for i := 0; i < 10; i++ {
		regs, err := c.Registers(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"rip", "cr3", "gs_base", "fs_base", "efer", "cr0", "cr4"} {
			if _, ok := regs.Registers[name]; !ok {
				t.Fatalf("register %s missing: %v", name, regs.Registers)
			}
		}
		rip, _ = strconv.ParseUint(regs.Registers["rip"], 0, 64)
		cr3, _ = strconv.ParseUint(regs.Registers["cr3"], 0, 64)
		if rip >= 0xffff800000000000 {
			break
		}
	}
	if rip < 0xffff800000000000 {
		t.Fatalf("rip %#x: not a canonical kernel address", rip)
	}
	pgd := cr3 & 0x000ffffffffff000
	if pgd == 0 || pgd >= 256<<20 {
		t.Fatalf("cr3 %#x: page-table root %#x outside guest RAM", cr3, pgd)
	}
	if _, err := c.Registers(ctx, 5); err == nil {
		t.Fatal("registers of a missing vCPU: no error")
	}
	// The guest keeps running after register reads.
	if st := status(t, sharedVM); st.QEMUStatus != "running" {
		t.Fatalf("after register reads QEMU is %q", st.QEMUStatus)
	}
}

func TestTwoVMsAndStop(t *testing.T) {
	needShared(t)
	const name = "second"
	r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", name, "--mem", "192M", "--ready-timeout", readyTimeout.String())
	if r.code != 0 {
		t.Fatalf("run --detach second: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if st := status(t, name); st.MemMiB != 192 || !st.GuestReady {
		t.Fatalf("second VM status: %+v", st)
	}
	ls := gv(t, 30*time.Second, "ls")
	if !strings.Contains(ls.stdout, sharedVM) || !strings.Contains(ls.stdout, name) {
		t.Fatalf("ls does not show both VMs:\n%s", ls.stdout)
	}
	a := gv(t, time.Minute, "exec", name, "--", "cat", "/proc/meminfo")
	if a.code != 0 || !strings.Contains(a.stdout, "MemTotal") {
		t.Fatalf("exec on second: %d %q", a.code, a.stderr)
	}
	// The same name cannot run twice.
	dup := gv(t, time.Minute, "run", "--name", name)
	if dup.code == 0 || !strings.Contains(dup.stderr, "already running") || !strings.Contains(dup.stderr, "gatevisor stop "+name) {
		t.Fatalf("duplicate name: exit %d, stderr %q", dup.code, dup.stderr)
	}
	stop := gv(t, 2*time.Minute, "stop", name)
	if stop.code != 0 {
		t.Fatalf("stop: %d %s", stop.code, stop.stderr)
	}
	waitNoQEMU(t, name, 10*time.Second)
	if _, err := os.Stat(filepath.Join(env.runtimeDir, name)); !os.IsNotExist(err) {
		t.Fatalf("runtime directory of %s survives stop: %v", name, err)
	}
	log, _ := os.ReadFile(filepath.Join(env.stateDir, "gatevisor", "vms", name, "console.log"))
	if !bytes.Contains(log, []byte("reboot: Power down")) {
		t.Errorf("the guest did not power down through ACPI; console log ends:\n%s", tail(log))
	}
	// The shared VM is unaffected.
	if st := status(t, sharedVM); !st.GuestReady {
		t.Fatal("shared VM affected by stopping the second")
	}
}

// TestForegroundConsole drives a foreground `gatevisor run` through a
// pseudo-terminal, as a person at a terminal: typed input reaches the
// guest and shows once, the monitor's lines start lines of their own, and
// the terminal is restored on every way out (Ctrl-C, SIGTERM, the guest
// powering off, QEMU dying under the monitor).
func TestForegroundConsole(t *testing.T) {
	needVM(t)
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, p *ptyCmd, st api.Status)
		code int    // want exit code (-1: any failure)
		says string // on the terminal after the end
	}{
		{"ctrl-c", func(t *testing.T, p *ptyCmd, _ api.Status) { p.typeIn(t, "\x03") }, 0, "shutting the guest down"},
		{"sigterm", func(t *testing.T, p *ptyCmd, _ api.Status) { _ = p.cmd.Process.Signal(syscall.SIGTERM) }, 0, "shutting the guest down"},
		{"poweroff", func(t *testing.T, p *ptyCmd, _ api.Status) { p.typeIn(t, "poweroff\r") }, 0, "reboot: Power down"},
		{"qemu-killed", func(t *testing.T, p *ptyCmd, st api.Status) {
			if err := syscall.Kill(st.QEMUPID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, -1, "qemu exited unexpectedly"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "fg-" + tc.name
			p := startForeground(t, name)
			p.waitFor(t, "ready after", readyTimeout)
			st := waitAPI(t, name, time.Minute)
			p.checkConsole(t, "fg")
			tc.end(t, p, st)
			code := p.wait(t, 2*time.Minute)
			out := p.out.String()
			if (tc.code >= 0 && code != tc.code) || (tc.code < 0 && code == 0) {
				t.Fatalf("exit code %d, want %d; terminal:\n%s", code, tc.code, tail([]byte(out)))
			}
			if !strings.Contains(out, tc.says) {
				t.Errorf("no %q on the terminal:\n%s", tc.says, tail([]byte(out)))
			}
			if !strings.Contains(out, "gatevisor-guest: ready") {
				t.Errorf("the serial console was not on the terminal")
			}
			checkStatusLine(t, out, "ready after")
			if tc.says != "reboot: Power down" {
				checkStatusLine(t, out, tc.says)
			}
			p.checkRestored(t)
			waitNoQEMU(t, name, 5*time.Second)
			if _, err := os.Stat(filepath.Join(env.runtimeDir, name)); !os.IsNotExist(err) {
				t.Errorf("runtime directory survives: %v", err)
			}
		})
	}
	if f := ramFiles(); len(f) > 0 && len(qemuPIDs("")) == 0 {
		t.Errorf("guest RAM files remain: %v", f)
	}
}

// TestKill9LeavesNothingAndIsCleaned kills the monitor with SIGKILL: QEMU
// must die with it (no RAM file survives), `ls` must call the VM stale, and
// the next run with that name must start after cleaning up.
func TestKill9LeavesNothingAndIsCleaned(t *testing.T) {
	needVM(t)
	const name = "kill9"
	cmd, out := foreground(t, name)
	st := waitAPI(t, name, 2*time.Minute)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd, out, 30*time.Second)
	waitNoQEMU(t, name, 10*time.Second)
	// An exiting QEMU drops its command line before it is gone: wait for
	// the process itself (a zombie awaiting its reaper counts as gone).
	for deadline := time.Now().Add(15 * time.Second); alive(st.QEMUPID); {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU pid %d survives its monitor", st.QEMUPID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ls := gv(t, 30*time.Second, "ls")
	if !strings.Contains(ls.stdout, name) || !strings.Contains(ls.stdout, "stale") {
		t.Fatalf("ls after kill -9:\n%s", ls.stdout)
	}
	if r := gv(t, 30*time.Second, "status", name); r.code == 0 || !strings.Contains(r.stderr, "not running") {
		t.Fatalf("status of a stale VM: %d %q", r.code, r.stderr)
	}
	cmd2, out2 := foreground(t, name)
	st2 := waitAPI(t, name, 2*time.Minute)
	if st2.QEMUPID == st.QEMUPID {
		t.Fatal("the restarted VM reports the old QEMU")
	}
	// A guest that ignores the power button: stop says it had to force
	// QEMU, and why.
	waitReady(t, name)
	if r := gv(t, time.Minute, "exec", name, "--", "killall", "acpid"); r.code != 0 {
		t.Fatalf("killall acpid: %d %s", r.code, r.stderr)
	}
	r := gv(t, time.Minute, "stop", name, "--timeout", "2s")
	if r.code != 0 || !strings.Contains(r.stderr, "forced: the guest did not power off within 2s of the ACPI power button") {
		t.Fatalf("stop of a guest that ignores the power button: exit %d, stderr %q", r.code, r.stderr)
	}
	if code := waitExit(t, cmd2, out2, time.Minute); code != 0 {
		t.Fatalf("run after stop --force exited %d:\n%s", code, tail(out2.Bytes()))
	}
	waitNoQEMU(t, name, 5*time.Second)
}

func tail(b []byte) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	return strings.Join(lines, "\n")
}

// alive reports whether pid runs (a zombie waiting for a reaper does not).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}
