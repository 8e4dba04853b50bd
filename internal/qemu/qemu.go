// Package qemu launches and owns one qemu-system-x86_64 process: it builds
// the command line from a Config, starts QEMU so that it dies with its
// monitor, and maps guest RAM (see guestram.go). The protocol clients live in
// the subpackages qmp (QEMU Machine Protocol) and gdbrsp (the gdbstub).
//
// Everything QEMU prints or answers is treated as untrusted: a guest that
// exploits QEMU controls it.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gatevisor/gatevisor/internal/guestexec"
)

// Binary is the QEMU system emulator gatevisor runs.
const Binary = "qemu-system-x86_64"

// ErrNoQEMU means the QEMU binary is not installed.
var ErrNoQEMU = errors.New(Binary + " not found: install it with 'sudo apt-get install -y qemu-system-x86', or select one with " + EnvBinary + "=/absolute/path")

// Machine is the QEMU machine type. q35 (ICH9, PCIe) is QEMU's modern,
// maintained PC chipset and what libvirt picks for new VMs; i440fx ("pc") is
// kept for old guests. q35's ACPI power button drives orderly shutdown, and its
// native PCIe hosts the virtio devices directly. Measured boot-to-ready on the
// default kit differs by less than the run-to-run noise (docs/benchmarks.md).
const Machine = "q35"

// Memory limits for --mem, in MiB. Below 64 MiB the default kit's kernel and
// initramfs do not fit; above 1 TiB is beyond any device we target.
const (
	MinMemMiB = 64
	MaxMemMiB = 1 << 20
	MaxCPUs   = 64
)

// RAMBackendID names guest RAM's memory backend object.
const RAMBackendID = "gatevisor-ram"

// Sockets QEMU listens on inside the VM's private runtime directory.
const (
	QMPSocket    = "qmp.sock"
	GDBSocket    = "gdb.sock"
	SerialSocket = "serial.sock"
	ExecSocket   = "exec.sock"
)

// Config describes one VM.
type Config struct {
	Binary string // path of qemu-system-x86_64 (qemu-system-aarch64 for arm64)
	Arch   string // ArchAMD64 ("") or ArchARM64 (arch.go)
	Dir    string // private (0700) runtime directory for sockets
	Name   string
	MemMiB int
	CPUs   int
	Accel  string // "kvm" or "tcg"
	Kernel string
	Initrd string
	Append string
	// ExtraArgs go last, for features that add devices (network, disks).
	ExtraArgs []string
	// Incoming, when set, starts QEMU waiting for a migration stream
	// ("defer": given later with migrate-incoming) instead of booting: a
	// QEMU restart or a rollback loads the guest's device state into it,
	// over the RAM file the guest already has.
	Incoming string
	// ExtraFiles are inherited by QEMU as descriptors 4, 5, ... (after
	// guest RAM's 3; FDPath names them): a restarted QEMU reads the
	// kernel and initramfs the first one booted from the monitor's open
	// descriptors, whatever happened to their paths since.
	ExtraFiles []*os.File `json:"-"`
}

// FDPath is the path under which QEMU opens ExtraFiles[i].
func FDPath(i int) string { return "/proc/self/fd/" + strconv.Itoa(ramFD+1+i) }

// File is the path of one of QEMU's sockets (QMPSocket, ...).
func (c *Config) File(name string) string { return filepath.Join(c.Dir, name) }

// Validate checks the parts of c a user sets.
func (c *Config) Validate() error {
	if c.MemMiB < MinMemMiB {
		return fmt.Errorf("--mem %dM is too small: the guest needs at least %dM", c.MemMiB, MinMemMiB)
	}
	if c.MemMiB > MaxMemMiB {
		return fmt.Errorf("--mem %dM is too large: at most %dM", c.MemMiB, MaxMemMiB)
	}
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		return fmt.Errorf("--cpus %d is out of range: use 1 to %d", c.CPUs, MaxCPUs)
	}
	if c.Accel != "kvm" && c.Accel != "tcg" {
		return fmt.Errorf("accelerator %q: want kvm or tcg", c.Accel)
	}
	if c.Kernel == "" {
		return errors.New("no kernel: pass --kernel or use the default kit")
	}
	if err := ValidArch(c.Arch); err != nil {
		return err
	}
	return CheckCmdline(c.Append)
}

// MaxCmdline is the longest kernel command line x86 Linux takes: its
// COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h) is 2048 bytes including
// the terminating NUL. The boot loader (QEMU) or the kernel cuts a longer one
// short, so the parameters at its end, and the console or ready marker among
// them, are silently lost: the guest then never says it is ready.
const MaxCmdline = 2048 - 1

// CheckCmdline checks a kernel command line (--append) before QEMU starts:
// at most MaxCmdline bytes, with no NUL byte (the kernel would end the line
// there) and no line break (it is one line of space-separated parameters).
func CheckCmdline(s string) error {
	if len(s) > MaxCmdline {
		return fmt.Errorf("--append is %d bytes: the x86 kernel command line holds at most %d (COMMAND_LINE_SIZE is 2048 with the terminating NUL); shorten it, and pass bulky settings in the initramfs instead (--add FILE:/etc/...)", len(s), MaxCmdline)
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return fmt.Errorf("--append has a NUL byte at offset %d: the kernel would end its command line there; remove it", i)
	}
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return fmt.Errorf("--append has a line break at offset %d: the kernel command line is one line; separate parameters with spaces", i)
	}
	return nil
}

// ramFD is the descriptor number guest RAM has in QEMU (ExtraFiles[0]).
const ramFD = 3

// VirtioOpts returns the options every virtio device of the VM takes.
//
// Under TCG, ioeventfd is off. Why: QEMU tears down and sets up again
// every virtqueue's ioeventfd (an eventfd, a memory-region change and a
// flat-view rebuild each) at every VM stop and resume, and the gates stop
// the VM for each trapped call: measured, 2,000 trapped opens took
// 4.2-4.4 s with ioeventfd and 1.4-1.5 s without (docs/benchmarks.md,
// "Syscall gate"). Under TCG an ioeventfd saves nothing: the vCPU thread
// handles the MMIO write either way. Under KVM it keeps a virtqueue kick
// from exiting to QEMU, and stays on (the default).
func (c *Config) VirtioOpts() string {
	if c.Accel == "tcg" {
		return ",ioeventfd=off"
	}
	return ""
}

// Args returns QEMU's arguments (without argv[0]).
func (c *Config) Args() []string {
	sock := c.File
	machine, cpu := c.machineCPU()
	args := []string{
		"-name", "guest=" + c.Name + ",debug-threads=on",
		"-machine", machine + ",accel=" + c.Accel + ",memory-backend=" + RAMBackendID,
		"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=/proc/self/fd/%d,share=on", RAMBackendID, c.MemMiB, ramFD),
		"-m", strconv.Itoa(c.MemMiB) + "M",
		"-smp", strconv.Itoa(c.CPUs),
		"-cpu", cpu,
		"-nodefaults", "-no-user-config", "-display", "none",
		// Start paused: the monitor attaches every channel before the guest runs.
		"-S",
		// A guest reset or panic ends the VM instead of looping.
		"-no-reboot",
		// Device state saved for a restart, an upgrade or a snapshot carries
		// no run state when the guest was saved paused: the new QEMU ends
		// paused (-S), and the monitor resumes it once its traps are set.
		// QEMU still sends any other run state, and a QEMU loading "debug"
		// (a guest stopped at a kernel gate's trap) aborts ("invalid
		// runstate transition: 'inmigrate' -> 'debug'"): the monitor saves
		// only from "paused" (the monitor's debugger.DoPaused).
		"-global", "migration.store-global-state=off",
		// QEMU's seccomp filter: a guest that escapes into QEMU cannot spawn
		// processes, change privileges or use obsolete system calls.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-qmp", "unix:" + sock(QMPSocket) + ",server=on,wait=off",
		// The gdbstub socket gives whoever connects full control of the guest:
		// it lives only in the 0700 runtime directory.
		"-chardev", "socket,id=gdb0,path=" + sock(GDBSocket) + ",server=on,wait=off",
		"-gdb", "chardev:gdb0",
		"-chardev", "socket,id=serial0,path=" + sock(SerialSocket) + ",server=on,wait=off",
		"-serial", "chardev:serial0",
		"-device", "virtio-serial-pci,id=vser0" + c.VirtioOpts(),
		"-chardev", "socket,id=gvx,path=" + sock(ExecSocket) + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=gvx,name=" + guestexec.PortName,
		"-kernel", c.Kernel,
	}
	if c.Initrd != "" {
		args = append(args, "-initrd", c.Initrd)
	}
	if c.Append != "" {
		args = append(args, "-append", c.Append)
	}
	if c.Incoming != "" {
		args = append(args, "-incoming", c.Incoming)
	}
	return append(args, c.ExtraArgs...)
}

// CommandLine renders argv for logs and for the equivalent plain command the
// benchmark runs.
func CommandLine(binary string, args []string) string {
	q := make([]string, 0, len(args)+1)
	for _, a := range append([]string{binary}, args...) {
		if strings.ContainsAny(a, " '\"$\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q = append(q, a)
	}
	return strings.Join(q, " ")
}

// Process is a running QEMU.
type Process struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // valid after done is closed
	stderr *tailBuffer
}

// Start runs QEMU with guest RAM as its descriptor 3. QEMU gets SIGKILL when
// the monitor process dies for any reason, kill -9 included: the command is
// started from an OS thread that stays locked until QEMU exits, because
// Linux sends the parent-death signal when the creating thread ends.
func Start(c *Config, ram *os.File, log io.Writer) (*Process, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	p := &Process{done: make(chan struct{}), stderr: &tailBuffer{max: 8 << 10}}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command(c.Binary, c.Args()...)
		cmd.ExtraFiles = append([]*os.File{ram}, c.ExtraFiles...)
		cmd.Stdin = nil
		var w io.Writer = p.stderr
		if log != nil {
			w = io.MultiWriter(p.stderr, log)
		}
		cmd.Stdout, cmd.Stderr = w, w
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("start %s: %w", c.Binary, err)
			return
		}
		p.cmd = cmd
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// Pid is QEMU's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when QEMU has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitError describes how QEMU ended; nil for a clean exit. Valid after Done.
func (p *Process) ExitError() error {
	if p.err == nil {
		return nil
	}
	if tail := strings.TrimSpace(p.stderr.String()); tail != "" {
		return fmt.Errorf("%w; QEMU said: %s", p.err, lastLines(tail, 5))
	}
	return p.err
}

// Stderr returns the last lines QEMU printed.
func (p *Process) Stderr() string { return p.stderr.String() }

// Kill ends QEMU at once and waits for it, at most timeout.
func (p *Process) Kill(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("qemu pid %d did not exit %v after SIGKILL", p.Pid(), timeout)
	}
}

// WaitSocket waits until QEMU has created socket name in dir, QEMU exits,
// or timeout passes.
func (p *Process) WaitSocket(dir, name string, timeout time.Duration) error {
	path := filepath.Join(dir, name)
	deadline := time.Now().Add(timeout)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("qemu exited before creating %s: %v", name, p.ExitError())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu did not create %s within %v", name, timeout)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex // guards buf
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// DialUnix connects to one of QEMU's listening sockets. QEMU creates a
// socket's file (bind) a moment before it listens, so a refused connection is
// retried until ctx ends or timeout passes.
func DialUnix(ctx context.Context, path string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) || time.Now().After(deadline) {
			return nil, fmt.Errorf("connect to %s: %w", filepath.Base(path), err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to %s: %w", filepath.Base(path), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
