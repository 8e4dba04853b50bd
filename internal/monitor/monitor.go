// Package monitor runs one VM's lifecycle and wires its parts together: the
// runtime directory and its lock (vmdir), the QEMU process (qemu), the QMP
// and gdbstub clients, the live guest-RAM mapping, the serial console, the
// exec channel (guestexec), the policy, its security server and audit log,
// and the gates. It knows no HTTP: it implements api.VM, and the run
// command serves that with internal/api/apiserver.
//
// Lifecycle: Start launches QEMU paused, attaches every channel and maps
// guest RAM; the caller serves the API; Run lets the guest run. Wait returns when the
// VM is over: nil when the guest powered off or an operator stopped it, an
// error when the guest reset or panicked (QEMU runs with -no-reboot) or QEMU
// died. Whatever ends the VM, Wait leaves no QEMU process, no guest-RAM file
// and no runtime directory behind; a monitor killed with -9 takes QEMU with it
// (parent-death signal) and the next Start of that name cleans the rest.
//
// Lock order: Monitor.mu, then console.mu.
package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/accel"
	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/guestexec"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/metrics"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/qemu/qmp"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/termtext"
	"github.com/gatevisor/gatevisor/internal/vmdir"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
	"github.com/gatevisor/gatevisor/internal/vnet"
)

// ReadyMarker is the line the default kit's init prints when the guest is up.
const ReadyMarker = "gatevisor-guest: ready"

// DefaultStopTimeout is how long an ACPI shutdown may take before QEMU is
// told to quit.
const DefaultStopTimeout = 30 * time.Second

// Config describes the VM to run.
type Config struct {
	Name   string
	MemMiB int
	CPUs   int
	Accel  accel.Choice
	Kernel string
	// Arch is the guest's architecture: qemu.ArchAMD64 ("") or
	// qemu.ArchARM64 (qemu-system-aarch64 -machine virt).
	Arch string
	// Profile says where the kernel's structure layouts come from when
	// its image has no .BTF (a symbol table given to run --symbols).
	Profile linux.ProfileOptions `json:"-"`
	// Symbols is the --symbols file Profile was read from, open (nil
	// without): a monitor upgrade hands the same file over, so that the
	// new monitor reads the layouts the old one used.
	Symbols    *os.File `json:"-"`
	Initrd     string
	Append     string
	QEMUBinary string
	// Console receives the guest's serial output (the terminal in the
	// foreground); nil when detached.
	Console io.Writer `json:"-"`
	// ConsoleInput is forwarded to the serial console; nil for none.
	ConsoleInput io.Reader `json:"-"`
	// ConsoleLog is a file that receives the serial output; "" for none.
	ConsoleLog string
	// Log receives the monitor's own notices and QEMU's stderr.
	Log io.Writer `json:"-"`
	// ReadyMarker overrides the default marker (for a user's own initrd).
	ReadyMarker string
	// CPUHog detects processes that keep a CPU busy (the continuous
	// scan's cpu-hog check); zero Threshold disables it.
	CPUHog ids.HogDetector
	// IDSInterval, when positive, scans the guest this often once it is
	// ready and publishes what changed as events.
	IDSInterval time.Duration
	// EventsLog is a JSON-lines file that receives every event; "" for none.
	// EventsMaxSize and EventsKeep are its retention: rotate at this size,
	// keep this many rotated files (0: the eventbus package's defaults).
	EventsLog     string
	EventsMaxSize int64
	EventsKeep    int
	// Net is the guest's network (see netgate.go); the zero value is none.
	Net NetOptions
	// NetHost starts an isolated network's host process (vnet.Spawn); nil
	// hosts the network's switch in this process, as tests do.
	NetHost vnet.Spawn `json:"-"`
	// Files are the directories the file gate serves (filegate.go).
	Files []FileShare
	// FilesPeer9P, for benchmarks only, exports a directory with QEMU's
	// own virtio-9p (tag peer), with no gate.
	FilesPeer9P string
	// PolicyFile is the security server's policy ("" denies every gated
	// event); AuditLog receives its audit records. Read once at start,
	// and checked against this VM's gates before QEMU starts.
	PolicyFile, AuditLog string
	// AuditMaxSize and AuditKeep are the audit log's retention: rotate at
	// this size, keep this many rotated files (0: the audit package's
	// defaults).
	AuditMaxSize int64
	AuditKeep    int
	// SnapshotDir is where the VM's snapshots are kept ("" none);
	// SnapshotReady takes snapshot ReadySnapshot once the guest is ready.
	SnapshotDir   string
	SnapshotReady bool
	// AutoUpgrade replaces the monitor (Upgrade) whenever a new binary is
	// installed over the one it runs (upgrade.go, watchBinary).
	AutoUpgrade bool
	// KitModules are the SHA-256s of the kernel modules the guest kit
	// ships: module loads of them are labelled "kit" for the policy.
	KitModules []string
}

// ErrGuestReset means the guest rebooted or panicked; with -no-reboot QEMU
// stops instead of resetting.
var ErrGuestReset = errors.New("the guest rebooted or its kernel panicked (QEMU runs with -no-reboot)")

// ErrFailedClosed means a gate could not be armed or enforced and the
// monitor stopped the VM rather than let it run unguarded.
var ErrFailedClosed = errors.New("a gate failed closed")

// ErrQEMUDied means QEMU ended without being asked to.
var ErrQEMUDied = errors.New("qemu exited unexpectedly")

// Monitor is one running VM.
type Monitor struct {
	cfg       Config
	started   time.Time
	dir       *vmdir.Dir
	ramFile   *os.File
	ram       *qemu.GuestRAM
	side      atomic.Pointer[qemuSide] // the QEMU process and its channels (m.q)
	rs        restartState             // QEMU restarts, snapshots, rollbacks (restart.go)
	up        upgradeState             // the monitor's own replacement (upgrade.go)
	bootFiles bootFiles                // kernel and initramfs, open for restarts (restart.go)
	console   *console
	logFile   *os.File
	events    *eventBus
	intro     introspection
	dbg       *debugger     // owns the gdbstub's run state (debugger.go)
	pol       policyState   // the policy in force, its security server and audit log (policy.go)
	scans     scanState     // the periodic IDS scan, for status (events.go)
	inj       injector      // kernel calls from below (inject.go)
	frozen    freezer       // processes kept stopped (proc.go)
	resp      responder     // the policy's responses (respond.go)
	netIso    netIsolation  // the network cut off (isolate.go)
	metrics   *metrics.VM   // Prometheus metrics (metrics.go)
	kg        kernelGate    // the kernel gate's traps (kernelgate.go)
	net       *netState     // nil without --net
	files     *fileState    // nil without --files (filegate.go)
	grants    grantTable    // users the monitor authenticated (fileauth.go)
	done      chan struct{} // closed when the VM is over and cleaned up
	stopCh    chan struct{} // closed when a stop is first requested

	profileMu sync.Mutex     // guards profile
	profile   *linux.Profile // the guest kernel's, loaded once (kernelProfile)

	kitModules []string // cfg.KitModules
	bootID     string   // names this run (snapshots record it)
	apiShared  bool     // other users can reach the API socket (a policy decides the API)
	apiPrivate string   // why other users cannot reach the API socket ("" when they can, or no policy)
	failApply  string   // testFailApplyEnv: a gate whose policy step fails (tests)

	mu        sync.Mutex // guards the fields below
	state     string
	readyAt   time.Time
	stopAsked bool
	stopReq   chan time.Duration // buffered; a stop request with its timeout
	exitErr   error
	failErr   error  // why a gate failed closed (failClosed); the VM's exit error
	shutdown  string // reason of QEMU's SHUTDOWN event
	stopHow   string // how the requested stop goes (api.StopStatus.Outcome)
	forced    bool   // QEMU was told to quit or killed (api.StopStatus.Forced)
}

// setStopHow records how the stop goes, for status and `gatevisor stop`.
func (m *Monitor) setStopHow(forced bool, format string, a ...any) {
	m.mu.Lock()
	m.stopHow = fmt.Sprintf(format, a...)
	m.forced = m.forced || forced
	m.mu.Unlock()
}

// logf writes a notice to the monitor's log. Notices carry guest-derived
// text (paths, names, errors read from guest memory): it is escaped, so
// that nothing in it can forge a log line or reach the terminal as a
// control sequence.
func (m *Monitor) logf(format string, a ...any) {
	if m.cfg.Log != nil {
		fmt.Fprintf(m.cfg.Log, "gatevisor: %s\n", termtext.Escape(fmt.Sprintf(format, a...)))
	}
}

// Start launches the VM paused: QEMU running with every channel attached,
// guest RAM mapped, the policy read, checked against the gates and in
// force. The guest runs only once Run is called (after the caller serves
// the API); Close ends a VM that never ran. On error nothing is left
// running.
func Start(ctx context.Context, cfg Config) (_ *Monitor, err error) {
	if cfg.ReadyMarker == "" {
		cfg.ReadyMarker = ReadyMarker
	}
	m := &Monitor{cfg: cfg, started: time.Now(), state: api.StateStarting, done: make(chan struct{}), stopCh: make(chan struct{}), stopReq: make(chan time.Duration, 1), bootID: newBootID()}
	m.rs.swapped = make(chan struct{}, 1)
	m.up.ch = make(chan *Handover, 1)
	qcfg := &qemu.Config{Binary: cfg.QEMUBinary, Arch: cfg.Arch, Name: cfg.Name, MemMiB: cfg.MemMiB, CPUs: cfg.CPUs, Accel: string(cfg.Accel.Accel),
		Kernel: cfg.Kernel, Initrd: cfg.Initrd, Append: cfg.Append}
	if err := qcfg.Validate(); err != nil {
		return nil, err
	}
	m.kitModules, m.failApply = cfg.KitModules, os.Getenv(testFailApplyEnv)
	m.metrics = metrics.New(cfg.Name, m.Status, hostFigures)
	// The policy is read, compiled and checked against this VM's gates
	// before anything is created: a policy that does not parse or that
	// states a rule no gate enforces starts nothing.
	snap, err := m.prepareStartPolicy()
	if err != nil {
		return nil, err
	}
	root, err := vmdir.Root()
	if err != nil {
		return nil, err
	}
	if m.dir, err = vmdir.Acquire(root, cfg.Name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.cleanup()
		}
	}()
	qcfg.Dir = m.dir.Path
	size := int64(cfg.MemMiB) << 20
	if err := m.openHostState(size, snap); err != nil {
		return nil, err
	}
	if err := m.startNet(qcfg); err != nil {
		return nil, err
	}
	if err := m.startFiles(qcfg); err != nil {
		return nil, err
	}
	m.bootFiles.open(qcfg.Kernel, qcfg.Initrd)
	q := &qemuSide{cfg: qcfg}
	m.side.Store(q)
	if q.proc, err = qemu.Start(qcfg, m.ramFile, cfg.Log); err != nil {
		return nil, err
	}
	if err := m.writeState(q); err != nil {
		return nil, err
	}
	if err := q.connect(ctx); err != nil {
		return nil, err
	}
	if err := m.attach(ctx, q, size); err != nil {
		return nil, err
	}
	if err := m.startDebugger(q, snap); err != nil {
		return nil, err
	}
	return m, nil
}

// startDebugger runs the debugger on q's gdbstub and, with a policy, opens
// the API to the users it names.
func (m *Monitor) startDebugger(q *qemuSide, snap *policy.Snapshot) error {
	m.dbg = newDebugger(q.gdb, m.logf)
	m.dbg.trap = m.onTrap
	m.dbg.scan = m.scanStopped
	m.dbg.failClosed = m.failClosed
	m.dbg.runState = func(ctx context.Context) (string, error) {
		st, err := m.q().qmp.QueryStatus(ctx)
		return st.Status, err
	}
	go m.dbg.run()
	if snap != nil {
		return m.shareAPI()
	}
	return nil
}

// openHostState creates what the VM keeps on the host before QEMU starts:
// the guest-RAM file, the console and event logs, the audit log and the
// security server with the start policy in force.
func (m *Monitor) openHostState(size int64, snap *policy.Snapshot) error {
	ramDir, err := qemu.RAMDir(m.dir.Path)
	if err != nil {
		return err
	}
	if m.ramFile, err = qemu.CreateRAMFile(ramDir, size); err != nil {
		return err
	}
	if m.cfg.ConsoleLog != "" {
		if m.logFile, err = safefile.OpenFile(m.cfg.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
			return fmt.Errorf("console log: %w", err)
		}
	}
	if m.events, err = m.openEvents(); err != nil {
		return err
	}
	return m.openSecurity(snap)
}

// shareAPI opens the VM's directory to other local users, so that the
// policy decides their API requests (the API gate): they get what their
// roles allow, when they can reach the socket at all.
func (m *Monitor) shareAPI() error {
	m.apiShared = true
	switch err := m.dir.Share(); {
	case errors.Is(err, vmdir.ErrUnreachable):
		m.apiShared = false
		m.apiPrivate = err.Error()
		m.logf("the policy decides API requests of the owner and root only: %v", err)
	case err != nil:
		return err
	}
	return nil
}

// APISocket is where the VM's API is served: inside its 0700 (with a
// policy, 0711) runtime directory.
func (m *Monitor) APISocket() string { return m.dir.File(vmdir.APISocket) }

// APIAccess says who decides API requests: authorize is the API gate
// (with a policy in force, every request is an api event the security
// server decides; without one, only the owner and root may call), and
// shared says other local users can reach the socket at all (a VM started
// with a policy).
func (m *Monitor) APIAccess() (authorize func(ctx context.Context, c api.Caller, action string) error, shared bool) {
	return m.authorize, m.apiShared
}

// Run lets the guest run: the VM started by Start was paused with every
// channel attached and the policy in force; the caller serves the API
// (APISocket, APIAccess) before it calls Run, so that nothing the guest
// does happens unobserved. On error the VM is ended (Wait returns).
func (m *Monitor) Run(ctx context.Context) error {
	if err := m.q().qmp.Cont(ctx); err != nil {
		m.cleanup()
		close(m.done)
		return fmt.Errorf("start the guest: %w", err)
	}
	m.running()
	if m.cfg.AutoUpgrade {
		go m.watchBinary()
	}
	if m.kernelNeeded(m.pol.snap.Load()) {
		m.kg.booting.Store(true)
		go m.armAtBoot()
	}
	if m.cfg.SnapshotReady {
		go m.snapshotWhenReady()
	}
	return nil
}

// running marks the VM running and starts what watches it: supervise and
// the periodic IDS scan.
func (m *Monitor) running() {
	m.setState(api.StateRunning)
	go m.supervise()
	go m.watchGateHeads()
	if m.cfg.IDSInterval > 0 {
		m.scans.mu.Lock()
		m.scans.interval = m.cfg.IDSInterval
		m.scans.mu.Unlock()
		go m.watch(m.cfg.IDSInterval)
	}
}

// Close ends a VM that Start left paused and Run never started: QEMU is
// killed and everything Start acquired is released.
func (m *Monitor) Close() {
	m.mu.Lock()
	started := m.state != api.StateStarting
	m.mu.Unlock()
	if started {
		m.RequestStop(0)
		<-m.done
		return
	}
	m.cleanup()
	close(m.done)
}

// attach runs the console on q's serial connection and maps guest RAM
// with the layout q reports, while the guest is still paused.
func (m *Monitor) attach(ctx context.Context, q *qemuSide, size int64) error {
	var out []io.Writer
	if m.cfg.Console != nil {
		out = append(out, m.cfg.Console)
	}
	if m.logFile != nil {
		out = append(out, m.logFile)
	}
	m.console = newConsole(q.serial, out, m.cfg.ReadyMarker, m.onReady)
	if m.cfg.ConsoleInput != nil {
		go m.console.feed(m.cfg.ConsoleInput)
	}
	text, err := q.qmp.HumanMonitorCommand(ctx, "info mtree")
	if err != nil {
		return fmt.Errorf("read the guest-physical layout: %w", err)
	}
	regions, err := qemu.ParseMtree(text, qemu.RAMBackendID)
	if err != nil {
		return err
	}
	if m.ram, err = qemu.MapRAM(m.ramFile, size, regions); err != nil {
		return err
	}
	return nil
}

func (m *Monitor) setState(s string) {
	m.mu.Lock()
	m.state = s
	m.mu.Unlock()
}

func (m *Monitor) onReady() {
	m.mu.Lock()
	first := m.readyAt.IsZero()
	if first {
		m.readyAt = time.Now()
	}
	m.mu.Unlock()
	if first {
		m.logf("guest %s ready after %.2fs", m.cfg.Name, time.Since(m.started).Seconds())
		go releaseMemory()
		m.locateForVirtioFS()
	}
}

// WaitReady blocks until the guest printed its ready marker, the VM ended,
// or ctx ended.
func (m *Monitor) WaitReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		m.mu.Lock()
		ready := !m.readyAt.IsZero()
		m.mu.Unlock()
		if ready {
			return nil
		}
		select {
		case <-m.done:
			if err := m.Err(); err != nil {
				return err
			}
			return errors.New("the VM ended before the guest was ready")
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// supervise watches QMP events, QEMU's exit and stop requests until the VM is
// over, then cleans up.
func (m *Monitor) supervise() {
	defer close(m.done)
	defer m.cleanup()
	var (
		stopDeadline <-chan time.Time
		quitDeadline <-chan time.Time
		stopTimeout  time.Duration // of the pending ACPI shutdown
		events       <-chan qmp.Event
		watched      *qemuSide
	)
	for {
		// A QEMU restart replaces the side (restart.go) and wakes this
		// loop through rs.swapped: from then on the new QEMU's exit and
		// events count, and the old one's exit is expected.
		if q := m.q(); q != watched {
			watched, events = q, q.qmp.Events()
		}
		select {
		case <-m.rs.swapped:
			continue
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Name == "SHUTDOWN" {
				var d struct {
					Guest  bool   `json:"guest"`
					Reason string `json:"reason"`
				}
				_ = json.Unmarshal(ev.Data, &d)
				m.mu.Lock()
				m.shutdown = d.Reason
				m.mu.Unlock()
			}
		case timeout := <-m.stopReq:
			m.setState(api.StateStopping)
			if timeout <= 0 {
				m.setStopHow(true, "QEMU was told to quit at once (a forced stop)")
				m.quit()
				quitDeadline = time.After(5 * time.Second)
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := watched.qmp.SystemPowerdown(ctx); err != nil {
				m.logf("ACPI power-down failed (%v); quitting QEMU", err)
				m.setStopHow(true, "forced: the ACPI power button could not be pressed (%v), so QEMU was told to quit", err)
				m.quit()
				quitDeadline = time.After(5 * time.Second)
			} else {
				m.setStopHow(false, "the ACPI power button was pressed; waiting up to %v for the guest to power off", timeout)
				stopDeadline, stopTimeout = time.After(timeout), timeout
			}
			cancel()
		case <-stopDeadline:
			m.logf("the guest did not power off in time; quitting QEMU")
			m.setStopHow(true, "forced: the guest did not power off within %v of the ACPI power button, so QEMU was told to quit", stopTimeout)
			stopDeadline = nil
			m.quit()
			quitDeadline = time.After(5 * time.Second)
		case <-quitDeadline:
			m.logf("QEMU did not quit; killing it")
			m.setStopHow(true, "forced: QEMU did not quit within 5s of being told to, so it was killed")
			quitDeadline = nil
			_ = watched.proc.Kill(5 * time.Second)
		case <-watched.proc.Done():
			if m.q() != watched {
				continue // replaced by a restart
			}
			m.finish()
			return
		}
	}
}

func (m *Monitor) quit() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q := m.q()
	if err := q.qmp.Quit(ctx); err != nil {
		_ = q.proc.Kill(5 * time.Second)
	}
}

// finish classifies how the VM ended.
// Preconditions: QEMU has exited.
func (m *Monitor) finish() {
	// Drain events QEMU sent just before exiting.
	q := m.q()
	drain := time.After(200 * time.Millisecond)
	for loop := true; loop; {
		select {
		case ev, ok := <-q.qmp.Events():
			if !ok {
				loop = false
				break
			}
			if ev.Name == "SHUTDOWN" {
				var d struct {
					Reason string `json:"reason"`
				}
				_ = json.Unmarshal(ev.Data, &d)
				m.mu.Lock()
				m.shutdown = d.Reason
				m.mu.Unlock()
			}
		case <-q.qmp.Done():
			loop = false
		case <-drain:
			loop = false
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state = api.StateStopped
	if m.stopAsked && !m.forced {
		switch m.shutdown {
		case "guest-shutdown":
			m.stopHow = "the guest powered off after the ACPI power button"
		case "":
			m.stopHow = "QEMU exited before the guest powered off"
		default:
			m.stopHow = "QEMU ended (" + m.shutdown + ") before the guest powered off"
		}
	}
	procErr := q.proc.ExitError()
	switch {
	case m.failErr != nil:
		m.exitErr = fmt.Errorf("%w: %w", ErrFailedClosed, m.failErr)
	case m.shutdown == "guest-shutdown":
		m.exitErr = nil
	case m.shutdown == "guest-reset" || m.shutdown == "guest-panic":
		m.exitErr = fmt.Errorf("%w: see the console log", ErrGuestReset)
	case m.stopAsked && (m.shutdown != "" || procErr == nil):
		m.exitErr = nil
	case m.stopAsked:
		m.exitErr = nil // killed after the quit timeout, as asked
	case m.shutdown == "host-signal":
		m.exitErr = fmt.Errorf("%w: it was killed by a signal", ErrQEMUDied)
	default:
		if procErr == nil {
			procErr = errors.New("exit status 0 without a shutdown event")
		}
		m.exitErr = fmt.Errorf("%w: %v", ErrQEMUDied, procErr)
	}
}

// cleanup releases everything Start acquired; safe on a partial Start.
func (m *Monitor) cleanup() {
	m.q().close()
	m.rs.cleanup()
	m.bootFiles.close()
	if m.console != nil {
		m.console.close()
	}
	if m.ram != nil {
		m.ram.Close()
	}
	if m.ramFile != nil {
		m.ramFile.Close()
	}
	if m.logFile != nil {
		m.logFile.Close()
	}
	m.stopNet()
	m.stopFiles()
	if m.pol.sec != nil {
		m.pol.sec.Close() // the aggregated records still pending
	}
	if m.pol.log != nil {
		if err := m.pol.log.Close(); err != nil {
			m.logf("audit log: close: %v", err)
		}
	}
	if m.events != nil {
		m.events.close()
	}
	if m.dir != nil {
		m.dir.Release()
	}
}

// Done is closed when the VM is over and cleaned up.
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Err says how the VM ended; valid after Done.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exitErr
}

// Wait blocks until the VM is over and returns how it ended.
func (m *Monitor) Wait() error {
	<-m.done
	return m.Err()
}

// RequestStop begins an orderly shutdown: ACPI power button, then quit after
// timeout; timeout 0 quits at once. It returns immediately.
func (m *Monitor) RequestStop(timeout time.Duration) {
	m.mu.Lock()
	already := m.stopAsked
	m.stopAsked = true
	if m.stopHow == "" {
		m.stopHow = "a stop was requested"
	}
	m.mu.Unlock()
	if !already {
		close(m.stopCh)
	}
	if already && timeout > 0 {
		return
	}
	select {
	case m.stopReq <- timeout:
	default:
	}
}

// stopping is closed once a stop has been requested.
func (m *Monitor) stopping() <-chan struct{} { return m.stopCh }

// waitFor waits for c and reports true, or false once the VM is stopping
// or over: the loop of a background task ends there.
func waitFor[T any](m *Monitor, c <-chan T) bool {
	select {
	case <-m.done:
		return false
	case <-m.stopping():
		return false
	case <-c:
		return true
	}
}

// Status implements api.VM.
func (m *Monitor) Status(ctx context.Context) api.Status {
	m.mu.Lock()
	st := api.Status{
		Name: m.cfg.Name, State: m.state, GuestReady: !m.readyAt.IsZero(), MonitorPID: os.Getpid(),
		Accel: string(m.cfg.Accel.Accel), AccelReason: m.cfg.Accel.Reason, Machine: qemu.Machine,
		MemMiB: m.cfg.MemMiB, CPUs: m.cfg.CPUs, Kernel: m.cfg.Kernel, Initrd: m.cfg.Initrd, Append: m.cfg.Append,
		StartedAt: m.started, RuntimeDir: m.dir.Path, ConsoleLog: m.cfg.ConsoleLog,
	}
	if !m.readyAt.IsZero() {
		t := m.readyAt
		st.ReadyAt = &t
		st.BootSeconds = t.Sub(m.started).Seconds()
	}
	running := m.state == api.StateRunning
	m.mu.Unlock()
	if q := m.q(); q.proc != nil {
		st.QEMUPID = q.proc.Pid()
	}
	st.MonitorUpgrades, st.UpgradePauseMs = m.up.upgrades, m.up.pauseMs
	st.Net = m.netStatus()
	st.SyscallGate = m.syscallGateStatus()
	if m.pol.sec != nil {
		st.Policy = m.policyStatus()
		st.Gates = m.gatesStatus()
	}
	if m.pol.log != nil {
		a := m.pol.log.Stats()
		st.Audit = &api.AuditStatus{Log: m.pol.log.Path(), Head: fmt.Sprintf("%d:%s", a.Records, a.Head), Records: a.Records,
			Bytes: a.Bytes, Files: a.Files}
		if !a.LastWrite.IsZero() {
			t := a.LastWrite.UTC()
			st.Audit.LastRecordAt = &t
		}
	}
	st.IDS = m.scans.status()
	st.Responses = m.responsesStatus()
	if m.events != nil {
		st.Events = m.events.status()
	}
	m.mu.Lock()
	if m.stopAsked {
		st.Stop = &api.StopStatus{Forced: m.forced, Outcome: m.stopHow, Done: m.state == api.StateStopped}
	}
	m.mu.Unlock()
	if running {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		q := m.q().qmp
		if qs, err := q.QueryStatus(qctx); err == nil {
			st.QEMUStatus = qs.Status
		}
		cancel()
		stopped, n := q.StoppedTime()
		st.StoppedMicros, st.StopIntervals = uint64(stopped.Microseconds()), n
	}
	return st
}

// Stop implements api.VM. With req.Wait it returns once QEMU has exited.
func (m *Monitor) Stop(ctx context.Context, req api.StopRequest) error {
	timeout := DefaultStopTimeout
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	if req.Force {
		timeout = 0
	}
	m.RequestStop(timeout)
	if req.Wait {
		select {
		case <-m.done:
		case <-ctx.Done():
			return fmt.Errorf("stop: the VM is still running: %w", ctx.Err())
		}
	}
	return nil
}

func (m *Monitor) checkRunning() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != api.StateRunning {
		return api.ErrUnavailable
	}
	return nil
}

// Exec implements api.VM.
func (m *Monitor) Exec(ctx context.Context, req api.ExecRequest) (api.ExecResult, error) {
	if err := m.checkRunning(); err != nil {
		return api.ExecResult{}, err
	}
	m.mu.Lock()
	ready := !m.readyAt.IsZero()
	m.mu.Unlock()
	if !ready {
		return api.ExecResult{}, api.ErrNotReady
	}
	res, err := m.q().exec.Run(ctx, guestexec.QuoteArgv(req.Argv), time.Duration(req.TimeoutSeconds)*time.Second)
	if err != nil {
		return api.ExecResult{}, &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("exec: %v (is the guest's gatevisor-agent running?)", err)}
	}
	return api.ExecResult{ExitCode: res.ExitCode, Stdout: res.Stdout, Stderr: res.Stderr}, nil
}

// Registers implements api.VM: it pauses the VM through the gdbstub, reads
// every register of at most 64 bits of the vCPU, and lets the VM run again.
func (m *Monitor) Registers(ctx context.Context, vcpu int) (api.Registers, error) {
	if err := m.checkRunning(); err != nil {
		return api.Registers{}, err
	}
	if vcpu >= m.cfg.CPUs {
		return api.Registers{}, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("vCPU %d does not exist: the VM has %d", vcpu, m.cfg.CPUs)}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var regs map[string]uint64
	err := m.dbg.Do(ctx, func(ctx context.Context, g *gdbrsp.Client) error {
		if err := g.SetVCPU(ctx, vcpu); err != nil {
			return err
		}
		var err error
		regs, err = g.ReadRegisters(ctx)
		return err
	})
	if err != nil {
		return api.Registers{}, fmt.Errorf("read registers of vCPU %d: %w", vcpu, err)
	}
	out := api.Registers{VCPU: vcpu, Registers: make(map[string]string, len(regs))}
	for k, v := range regs {
		out.Registers[k] = "0x" + strconv.FormatUint(v, 16)
	}
	return out, nil
}

// MemoryLayout implements api.VM.
func (m *Monitor) MemoryLayout() api.MemoryLayout {
	out := api.MemoryLayout{Size: uint64(m.ram.Size())}
	for _, r := range m.ram.Regions() {
		out.Regions = append(out.Regions, api.Region{GPA: r.GPA, Offset: r.Offset, Size: r.Size})
	}
	return out
}

// ReadPhysical implements api.VM from the live mapping; the guest keeps
// running.
func (m *Monitor) ReadPhysical(_ context.Context, addr uint64, p []byte) error {
	if err := m.checkRunning(); err != nil {
		return err
	}
	if addr > 1<<62 {
		return &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("address %#x is beyond guest-physical memory", addr)}
	}
	if _, err := m.ram.ReadAt(p, int64(addr)); err != nil {
		if errors.Is(err, qemu.ErrNotRAM) {
			return &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("%v: see GET /v1/memory for the RAM layout", err)}
		}
		return err
	}
	return nil
}

// RAM returns the live guest-RAM mapping (for introspection).
func (m *Monitor) RAM() *qemu.GuestRAM { return m.ram }

// AttachConsole implements api.VM.
func (m *Monitor) AttachConsole(ctx context.Context, conn io.ReadWriteCloser, replay int) error {
	if err := m.checkRunning(); err != nil {
		return err
	}
	return m.console.attach(ctx, conn, replay, m.done)
}
