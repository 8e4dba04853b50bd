package testvm

import (
	"bufio"
	"bytes"
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
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/guestexec"
	"github.com/gatevisor/gatevisor/internal/kit"
)

// Config describes a guest for Start.
type Config struct {
	// Kernel, Initrd and Append boot a Linux guest; with Kernel empty the
	// VM runs the firmware alone.
	Kernel, Initrd, Append string
	// MemoryMiB is the guest's RAM: 256 MiB with a kernel, 64 without, if 0.
	MemoryMiB int
	// Paused starts the VM with its vCPUs stopped (-S) until QMP cont or a
	// gdb continue.
	Paused bool
	// GDB adds a gdbstub on a unix socket (VM.GDB).
	GDB bool
	// Agent adds the virtio-serial port of the guest exec agent on a unix
	// socket (VM.AgentSocket).
	Agent bool
	// NoReboot makes a guest reboot end QEMU.
	NoReboot bool
	// Extra arguments go to QEMU after the ones above (devices, netdevs).
	Extra []string
}

// KitGuest is the configuration that boots kit k with its exec agent.
func KitGuest(k *kit.Kit) Config {
	return Config{Kernel: k.Kernel, Initrd: k.Initrd, Append: k.Append, Agent: true}
}

// VM is one QEMU process started by Start, with the serial console on its
// stdout.
type VM struct {
	Dir         string // private directory of the VM's sockets, removed when it stops
	QMP         string // QMP socket
	GDB         string // gdbstub socket, if Config.GDB
	AgentSocket string // exec agent socket, if Config.Agent
	Cmd         *exec.Cmd
	Started     time.Time

	readyOnce  sync.Once
	ready      chan struct{} // closed when the console shows kit.ReadyMarker
	readyAfter time.Duration // Started to the ready marker; set before ready closes
	exited     chan struct{} // closed when QEMU has exited
	waitErr    error         // QEMU's exit; set before exited closes

	agentOnce sync.Once
	agent     *guestexec.Client
	agentErr  error

	mu      sync.Mutex
	console bytes.Buffer // serial console and QEMU's stderr
}

// The VMs started in this test binary, for Main's check.
var started struct {
	mu  sync.Mutex
	vms []*VM
}

// Start boots a guest under QEMU (TCG; KVM if this QEMU has no TCG) and
// returns once every socket of it listens. It skips the test when QEMU is
// missing (see NeedQEMU). The VM is killed and its directory removed when
// the test ends, however it ends.
func Start(t testing.TB, cfg Config) *VM {
	t.Helper()
	NeedQEMU(t)
	v, err := start(cfg)
	if v != nil {
		t.Cleanup(func() {
			v.Stop()
			if t.Failed() {
				t.Logf("QEMU console and stderr (the last 8 KiB):\n%s", v.consoleTail(8<<10))
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func start(cfg Config) (*VM, error) {
	qemu, err := FindQEMU()
	if err != nil {
		return nil, err
	}
	removeStaleDirs()
	// Unix socket paths are limited to 108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, err
	}
	v := &VM{Dir: dir, QMP: filepath.Join(dir, "qmp.sock"), ready: make(chan struct{}), exited: make(chan struct{})}
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 64
		if cfg.Kernel != "" {
			mem = 256
		}
	}
	args := []string{"-machine", "q35", "-accel", qemuLookup.accel, "-nodefaults", "-display", "none",
		"-m", strconv.Itoa(mem), "-serial", "stdio", "-qmp", "unix:" + v.QMP + ",server=on,wait=off"}
	if cfg.Kernel != "" {
		args = append(args, "-kernel", cfg.Kernel, "-initrd", cfg.Initrd, "-append", cfg.Append)
	}
	if cfg.Paused {
		args = append(args, "-S")
	}
	if cfg.NoReboot {
		args = append(args, "-no-reboot")
	}
	if cfg.GDB {
		v.GDB = filepath.Join(dir, "gdb.sock")
		args = append(args, "-chardev", "socket,id=gdb0,path="+v.GDB+",server=on,wait=off", "-gdb", "chardev:gdb0")
	}
	if cfg.Agent {
		v.AgentSocket = filepath.Join(dir, "agent.sock")
		args = append(args, "-device", "virtio-serial-pci",
			"-chardev", "socket,id=gvx,path="+v.AgentSocket+",server=on,wait=off",
			"-device", "virtserialport,chardev=gvx,name="+guestexec.PortName)
	}
	args = append(args, cfg.Extra...)
	v.Cmd = exec.Command(qemu, args...)
	// QEMU dies with the thread that started it (below), whatever ends
	// the test binary.
	v.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := v.Cmd.StdoutPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	v.Cmd.Stderr = consoleWriter{v}
	startErr := make(chan error, 1)
	go func() {
		// PR_SET_PDEATHSIG fires when the thread that forked QEMU ends:
		// keep this goroutine on that thread until QEMU has exited.
		runtime.LockOSThread()
		v.Started = time.Now()
		if err := v.Cmd.Start(); err != nil {
			startErr <- fmt.Errorf("start QEMU: %w", err)
			return
		}
		startErr <- nil
		v.readConsole(stdout)
		v.waitErr = v.Cmd.Wait()
		close(v.exited)
	}()
	if err := <-startErr; err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	started.mu.Lock()
	started.vms = append(started.vms, v)
	started.mu.Unlock()
	if err := v.waitSockets(30 * time.Second); err != nil {
		return v, err
	}
	return v, nil
}

// dirPrefix starts the name of every VM's directory, followed by the pid
// of the test binary that made it.
const dirPrefix = "gvtest-"

var staleDirs sync.Once

// removeStaleDirs removes, once per test binary, the VM directories left
// by test binaries that died without cleaning up (a -timeout panics
// without running t.Cleanup; their QEMU died with them).
func removeStaleDirs() {
	staleDirs.Do(func() {
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*-*"))
		for _, d := range dirs {
			pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(filepath.Base(d), dirPrefix), "-", 2)[0])
			if err != nil || pid <= 0 || pid == os.Getpid() {
				continue
			}
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				os.RemoveAll(d)
			}
		}
	})
}

// waitSockets waits until each of the VM's sockets listens. QEMU creates a
// socket's file (bind) a moment before it listens, and sets up the gdbstub
// after QMP already accepts: the kernel's table of unix sockets says when
// each listens, without a connection that QEMU would notice.
func (v *VM) waitSockets(limit time.Duration) error {
	paths := []string{v.QMP}
	for _, p := range []string{v.GDB, v.AgentSocket} {
		if p != "" {
			paths = append(paths, p)
		}
	}
	deadline := time.Now().Add(limit)
	for {
		l, err := listeningUnixSockets()
		if err != nil {
			return err
		}
		missing := ""
		for _, p := range paths {
			if !l[p] {
				missing = p
				break
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-v.exited:
			return fmt.Errorf("QEMU exited (%v) before %s listened:\n%s", v.waitErr, missing, v.Console())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("QEMU's socket %s did not listen within %v", missing, limit)
		}
	}
}

// listeningUnixSockets returns the paths of the listening unix sockets in
// this network namespace, from /proc/net/unix.
func listeningUnixSockets() (map[string]bool, error) {
	const acceptCon = 0x10000 // __SO_ACCEPTCON: the socket listens
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil, err
	}
	l := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err == nil && flags&acceptCon != 0 {
			l[f[7]] = true
		}
	}
	return l, nil
}

func (v *VM) readConsole(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		v.mu.Lock()
		v.console.WriteString(line + "\n")
		v.mu.Unlock()
		if line == kit.ReadyMarker {
			v.readyOnce.Do(func() {
				v.readyAfter = time.Since(v.Started)
				close(v.ready)
			})
		}
	}
	// A line too long for the scanner: keep draining so QEMU never blocks.
	_, _ = io.Copy(consoleWriter{v}, r)
}

type consoleWriter struct{ v *VM }

func (w consoleWriter) Write(p []byte) (int, error) {
	w.v.mu.Lock()
	defer w.v.mu.Unlock()
	return w.v.console.Write(p)
}

// Console returns what the guest wrote to its serial console so far, and
// QEMU's stderr.
func (v *VM) Console() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.console.String()
}

func (v *VM) consoleTail(n int) string {
	s := v.Console()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// WaitReady waits until the guest prints kit.ReadyMarker on its console
// and returns the time from QEMU's start to it. It fails the test if QEMU
// exits first or limit passes.
func (v *VM) WaitReady(t testing.TB, limit time.Duration) time.Duration {
	t.Helper()
	d, err := v.waitReady(limit)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (v *VM) waitReady(limit time.Duration) (time.Duration, error) {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-v.ready:
		return v.readyAfter, nil
	case <-v.exited:
		return 0, fmt.Errorf("QEMU exited (%v) before %q; console:\n%s", v.waitErr, kit.ReadyMarker, v.Console())
	case <-timer.C:
		return 0, fmt.Errorf("no %q within %v; console:\n%s", kit.ReadyMarker, limit, v.Console())
	}
}

// Agent returns the client of the guest's exec agent (Config.Agent), once
// the agent answers: init starts it after the ready marker, and a request
// sent before it opens its port is lost. The client is closed when the VM
// stops.
func (v *VM) Agent(t testing.TB) *guestexec.Client {
	t.Helper()
	c, err := v.dialAgent(2 * time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (v *VM) dialAgent(limit time.Duration) (*guestexec.Client, error) {
	v.agentOnce.Do(func() {
		if v.AgentSocket == "" {
			v.agentErr = errors.New("testvm: the VM has no exec agent port (Config.Agent)")
			return
		}
		conn, err := net.Dial("unix", v.AgentSocket)
		if err != nil {
			v.agentErr = fmt.Errorf("dial the exec agent: %w", err)
			return
		}
		c := guestexec.NewClient(conn)
		v.agentErr = Poll(limit, func() error {
			select {
			case <-v.exited:
				return fmt.Errorf("QEMU exited: %v", v.waitErr)
			default:
			}
			ctx, cancel := contextWithTimeout(10 * time.Second)
			defer cancel()
			res, err := c.Run(ctx, "true", time.Second)
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("true: exit %d", res.ExitCode)
			}
			return err
		})
		if v.agentErr != nil {
			c.Close()
			v.agentErr = fmt.Errorf("the exec agent does not answer: %w; console:\n%s", v.agentErr, v.consoleTail(8<<10))
			return
		}
		v.agent = c
	})
	return v.agent, v.agentErr
}

// Exited is closed when QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Wait waits until QEMU exits by itself and returns how it exited; it
// fails the test if that takes longer than limit.
func (v *VM) Wait(t testing.TB, limit time.Duration) error {
	t.Helper()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-v.exited:
		return v.waitErr
	case <-timer.C:
		t.Fatalf("QEMU still running after %v; console:\n%s", limit, v.Console())
		return nil
	}
}

// Kill kills QEMU and waits until it is gone.
func (v *VM) Kill() {
	select {
	case <-v.exited:
		return
	default:
	}
	_ = v.Cmd.Process.Kill()
	<-v.exited
}

// Stop kills QEMU if it still runs, closes the agent client and removes
// the VM's directory.
func (v *VM) Stop() {
	v.Kill()
	if v.agent != nil {
		v.agent.Close()
	}
	os.RemoveAll(v.Dir)
}

// Shared is a guest that the tests of one package share: the first test
// that calls VM boots it and waits until it is ready (and its exec agent
// answers, with Config.Agent); Main stops it after the last test. Tests
// that use it must leave it as they would want to find it.
type Shared struct {
	// ReadyLimit bounds the boot (2 minutes if 0).
	ReadyLimit time.Duration

	once sync.Once
	vm   *VM
	err  error
}

var sharedVMs struct {
	mu  sync.Mutex
	all []*Shared
}

// VM returns the shared guest, booting it with cfg on the first call (later
// calls' cfg is not looked at). It skips the test when QEMU is missing (see
// NeedQEMU) and fails it when the guest did not come up.
func (s *Shared) VM(t testing.TB, cfg Config) *VM {
	t.Helper()
	NeedQEMU(t)
	s.once.Do(func() {
		sharedVMs.mu.Lock()
		sharedVMs.all = append(sharedVMs.all, s)
		sharedVMs.mu.Unlock()
		limit := s.ReadyLimit
		if limit == 0 {
			limit = 2 * time.Minute
		}
		s.vm, s.err = start(cfg)
		if s.err != nil {
			return
		}
		var d time.Duration
		if d, s.err = s.vm.waitReady(limit); s.err != nil {
			return
		}
		t.Logf("shared guest ready after %v (TCG)", d.Round(100*time.Millisecond))
		if cfg.Agent {
			_, s.err = s.vm.dialAgent(2 * time.Minute)
		}
	})
	if s.err != nil && s.vm != nil {
		s.vm.Stop() // free the CPU for the tests that follow
	}
	if s.err != nil {
		t.Fatalf("the shared guest did not start: %v", s.err)
	}
	return s.vm
}

// Main runs the tests (m.Run), then stops the shared guests and fails the
// run if any QEMU started by this harness still runs. Use it as TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testvm.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	sharedVMs.mu.Lock()
	for _, s := range sharedVMs.all {
		if s.vm != nil {
			s.vm.Stop()
		}
	}
	sharedVMs.mu.Unlock()
	if left := Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: QEMU left running by the tests: %s\n", strings.Join(left, "; "))
		return 1
	}
	return code
}

// Leftovers describes every QEMU started by Start or Shared in this test
// binary that still runs. It kills each one, so that the report is the
// only consequence.
func Leftovers() []string {
	started.mu.Lock()
	defer started.mu.Unlock()
	var left []string
	for _, v := range started.vms {
		select {
		case <-v.exited:
			continue
		default:
		}
		left = append(left, fmt.Sprintf("pid %d (%s)", v.Cmd.Process.Pid, v.Dir))
		v.Stop()
	}
	return left
}
