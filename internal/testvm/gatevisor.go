package testvm

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Gatevisor is the gatevisor binary built for a test run, with its own
// runtime and state directories, so that the run's VMs are its own: the
// harness of the suites that test the built binary (tests/integration).
// Such a suite must run with -count=1: Go's test cache cannot see a change
// in a package that only the built binary imports.
type Gatevisor struct {
	Bin        string // the binary under test
	RuntimeDir string // GATEVISOR_RUNTIME_DIR of every command
	StateDir   string // XDG_STATE_HOME of every command (console, monitor and audit logs)
	dir        string // holds the three

	mu       sync.Mutex
	stopping string // Bin's new name once the run is ending (see endRun)
}

// BuildGatevisor builds cmd/gatevisor into a fresh temporary directory;
// the compiler's output goes to stderr. Close removes the directory.
func BuildGatevisor() (*Gatevisor, error) {
	dir, err := os.MkdirTemp("", "gatevisor-it-*")
	if err != nil {
		return nil, err
	}
	g := &Gatevisor{Bin: filepath.Join(dir, "gatevisor"), RuntimeDir: filepath.Join(dir, "run"),
		StateDir: filepath.Join(dir, "state"), dir: dir}
	build := exec.Command("go", "build", "-o", g.Bin, "github.com/gatevisor/gatevisor/cmd/gatevisor")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("build gatevisor: %w", err)
	}
	return g, nil
}

// Close removes the binary and the run's directories.
func (g *Gatevisor) Close() { os.RemoveAll(g.dir) }

// Command prepares a gatevisor command with the run's environment plus
// extra (NAME=value entries).
func (g *Gatevisor) Command(ctx context.Context, extra []string, args ...string) *exec.Cmd {
	bin := g.Bin
	g.mu.Lock()
	if g.stopping != "" && len(args) > 0 && args[0] == "stop" {
		bin = g.stopping
	}
	g.mu.Unlock()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "GATEVISOR_RUNTIME_DIR="+g.RuntimeDir, "XDG_STATE_HOME="+g.StateDir)
	cmd.Env = append(cmd.Env, extra...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Detach boots VM name with `gatevisor run --detach`, which returns once
// the guest is ready (within readyTimeout), and returns its output.
func (g *Gatevisor) Detach(name string, readyTimeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+time.Minute)
	defer cancel()
	args = append([]string{"run", "--detach", "--name", name, "--ready-timeout", readyTimeout.String()}, args...)
	out, err := g.Command(ctx, nil, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("gatevisor %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Stop stops VM name with `gatevisor stop`, giving the guest timeout to
// power off.
func (g *Gatevisor) Stop(name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Minute)
	defer cancel()
	return g.Command(ctx, nil, "stop", name, "--timeout", timeout.String()).Run()
}

// StopAll stops every VM in the run's runtime directory, in parallel.
func (g *Gatevisor) StopAll() {
	ents, _ := os.ReadDir(g.RuntimeDir)
	var wg sync.WaitGroup
	for _, e := range ents {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			_ = g.Stop(name, 10*time.Second)
		}(e.Name())
	}
	wg.Wait()
}

// StopOnInterrupt stops every VM of the run when the test binary is
// interrupted (SIGINT, SIGTERM), then exits; and when its -timeout is a
// minute away, since a timeout panics without running deferred cleanup and
// detached VMs would outlive the binary. Call it from TestMain: it parses
// the test flags.
func (g *Gatevisor) StopOnInterrupt() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-ch
		g.StopAll()
		g.Close()
		fmt.Fprintf(os.Stderr, "testvm: %v: every VM stopped\n", s)
		os.Exit(1)
	}()
	flag.Parse()
	if f := flag.Lookup("test.timeout"); f != nil {
		if gt, ok := f.Value.(flag.Getter); ok {
			if d, ok := gt.Get().(time.Duration); ok && d > 2*time.Minute {
				time.AfterFunc(d-time.Minute, g.endRun)
			}
		}
	}
}

// endRun stops every VM of the run when its -timeout is near, and keeps
// doing so until the timeout ends the binary: tests still running would
// start VMs after a single sweep, which would outlive the binary. The
// binary is renamed first, so that no command but stop runs from then on
// (tests that exec Bin themselves fail to start).
func (g *Gatevisor) endRun() {
	fmt.Fprintln(os.Stderr, "testvm: -timeout is near: stopping every VM, and every VM started from now on")
	g.mu.Lock()
	if err := os.Rename(g.Bin, g.Bin+".stopping"); err == nil {
		g.stopping = g.Bin + ".stopping"
	}
	g.mu.Unlock()
	for {
		g.StopAll()
		time.Sleep(2 * time.Second)
	}
}

// QEMUPIDs lists the QEMU processes of VM name, or of every VM of the run
// when name is empty.
func (g *Gatevisor) QEMUPIDs(name string) []int {
	return QEMUProcesses(filepath.Join(g.RuntimeDir, name) + "/")
}

// RAMFiles lists guest-RAM files of this user in the places gatevisor
// keeps them.
func (g *Gatevisor) RAMFiles() []string {
	var out []string
	for _, dir := range []string{filepath.Join("/dev/shm", fmt.Sprintf("gatevisor-%d", os.Getuid())), g.RuntimeDir} {
		_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() && strings.HasPrefix(fi.Name(), "ram-") {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

// NetHostPIDs lists the isolated networks' host processes of the run.
func (g *Gatevisor) NetHostPIDs() []int {
	return processes("net-host", "--root\x00"+g.RuntimeDir+"\x00")
}

// Leftovers describes any QEMU, network host process, runtime directory
// or RAM file of the run.
func (g *Gatevisor) Leftovers() []string {
	var parts []string
	if pids := g.QEMUPIDs(""); len(pids) > 0 {
		parts = append(parts, fmt.Sprintf("QEMU pids %v", pids))
	}
	if pids := g.NetHostPIDs(); len(pids) > 0 {
		parts = append(parts, fmt.Sprintf("network host pids %v", pids))
	}
	if ents, _ := os.ReadDir(g.RuntimeDir); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		parts = append(parts, "runtime dirs "+strings.Join(names, ","))
	}
	if f := g.RAMFiles(); len(f) > 0 {
		parts = append(parts, "RAM files "+strings.Join(f, ","))
	}
	return parts
}
