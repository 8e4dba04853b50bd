package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/api"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/metrics"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/qemu/qmp"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/vmdir"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Monitor upgrade: the monitor process is replaced, the guest kept.
//
// Upgrade (the API's POST /v1/upgrade) stops the guest on the debugger's
// goroutine and leaves it stopped, has QEMU save its device state
// (x-ignore-shared: guest RAM stays in its file) and hands the command
// that runs the monitor a Handover. That command (the CLI) stops serving
// the API, calls HandOff, which closes the audit and event logs (their
// close records written) and makes the descriptors that must survive
// inheritable, and execs the new binary in place: same process id, same
// runtime directory, its lock held throughout. The old QEMU dies with the
// exec (its parent-death signal): the guest is stopped and its devices'
// state saved, so nothing is lost. The new process calls Resume, which
// takes the lock, the RAM file, the kernel and initramfs descriptors
// over, starts a new QEMU on the RAM file, loads the device state, reads
// the policy in force again (and refuses it unless its digest is the one
// in force before), and ResumeGuest locates the guest kernel, sets the
// kernel gate's traps with the guest still stopped, and lets it run. While
// no monitor runs, the guest is stopped: nothing it does is unguarded.

// Handover is what a monitor hands the process that replaces it.
type Handover struct {
	Config  Config      `json:"config"`
	QEMU    qemu.Config `json:"qemu"`
	Started time.Time   `json:"started"`
	ReadyAt time.Time   `json:"ready_at"`
	BootID  string      `json:"boot_id"`
	Gen     int         `json:"gen"`
	// Upgrades counts the monitor replacements of this VM so far.
	Upgrades int `json:"upgrades"`
	// PolicyPath and PolicyDigest are the policy in force ("" none).
	PolicyPath   string `json:"policy_path,omitempty"`
	PolicyDigest string `json:"policy_digest,omitempty"`
	// Binary is the executable the new process runs.
	Binary string `json:"binary"`
	// Descriptors the new process inherits (-1: none).
	LockFD, RAMFD, DevicesFD, KernelFD, InitrdFD int
	SymbolsFD                                    int
	// Stopped is when the guest was stopped, for the downtime.
	Stopped time.Time `json:"stopped"`
	// StopTimeout is run --stop-timeout, for the new process's signals.
	StopTimeout time.Duration `json:"stop_timeout"`
	// OldQEMUPID is the QEMU the exec kills (its parent-death signal):
	// still this process's child, reaped by the new monitor.
	OldQEMUPID int `json:"old_qemu_pid"`
	// Net is the network's part (nil without --net).
	Net *NetHandover `json:"net,omitempty"`
	// Frozen are the processes gatevisor keeps stopped (proc freeze).
	Frozen []FrozenProc `json:"frozen,omitempty"`
	// Caller is the state of the command around the monitor (the CLI's
	// fleet agent), carried as it gives it.
	Caller json.RawMessage `json:"caller,omitempty"`
	// Decisions are the gates' decisions so far by verdict (status and
	// the metrics count on from them): kernel, net, api.
	Decisions map[string]map[string]uint64 `json:"decisions,omitempty"`
	// GatePage is the kernel gate's own guest page (gatepage.go), 0 none:
	// its entries stay linked in the guest's lists.
	GatePage uint64 `json:"gate_page,omitempty"`
}

// FrozenProc is a frozen process as it crosses a hand-over.
type FrozenProc struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	Comm  string `json:"comm"`
}

// NetHandover is what the network gate and its backend hand over: the
// decided flows and the guest's leased address, the tap's descriptor, and
// an isolation in force. An isolated network's switch and services run in
// their own host process (cli net-host), which outlives the monitor: the
// new monitor joins it again.
type NetHandover struct {
	Gate     gatenet.Saved `json:"gate"`
	TapFD    int           `json:"tap_fd"`
	Isolated string        `json:"isolated,omitempty"`
	// MemberFD is the connection to the isolated network's host process
	// (-1: none; the new monitor joins again), MemberRest what was read
	// from it past the last whole frame (vnet.Network.Detach).
	MemberFD   int    `json:"member_fd"`
	MemberRest []byte `json:"member_rest,omitempty"`
}

// maxHandover bounds the handover file.
const maxHandover = 1 << 20

// upgradeState is the monitor's part in its own replacement.
type upgradeState struct {
	ch       chan *Handover // buffered (1): the handover, once Upgrade prepared it
	pauseMs  float64        // the last upgrade's pause (ResumeGuest)
	devices  *os.File       // the saved device state, inherited by the new process
	upgrades int            // replacements before this process (from the handover)
	block    string         // why this monitor cannot be replaced ("" it can)
}

// BlockUpgrade records why this monitor cannot be replaced with the guest
// running (a feature of the command around it that the hand-over does not
// carry).
func (m *Monitor) BlockUpgrade(why string) { m.up.block = why }

// UpgradeRequested delivers the handover once an upgrade was asked for and
// the guest stopped: the caller stops serving the API, calls HandOff and
// execs.
func (m *Monitor) UpgradeRequested() <-chan *Handover { return m.up.ch }

// upgradeBlocked says why this VM cannot be upgraded with its guest
// running, "" when it can.
func (m *Monitor) upgradeBlocked() string {
	switch {
	case m.up.block != "":
		return m.up.block
	case m.cfg.Net.Mode == NetUser:
		return "the VM's network is the user-mode NAT (--net user), which ends the guest's TCP connections in the monitor's own TCP/IP stack: they would be reset (use --net isolated or tap)"
	case m.cfg.Net.Mode != NetNone && m.cfg.Net.NoGate:
		return "the VM's NIC is not gated (--net-no-gate, for benchmarks)"
	case m.cfg.Net.Mode == NetIsolated && m.cfg.NetHost == nil:
		return "the VM hosts its isolated network's switch in the monitor process itself"
	case len(m.cfg.Files) > 0:
		return "the VM serves files (--files): the 9P and virtio-fs sessions live in the monitor, and the hand-over does not carry them yet"
	case m.cfg.Profile.Symbols != nil && m.cfg.Symbols == nil:
		return "the VM's kernel profile comes from a symbol table the monitor does not hold open"
	case m.cfg.Console != nil:
		return "the monitor runs in the foreground with the console on a terminal: upgrade VMs started with run --detach"
	}
	return ""
}

// Upgrade implements api.VM: it prepares the monitor's replacement by
// binary ("" the running one) and stops the guest until the new monitor
// lets it run.
func (m *Monitor) Upgrade(ctx context.Context, req api.UpgradeRequest) (api.UpgradeResult, error) {
	if err := m.lifecycleReady(); err != nil {
		return api.UpgradeResult{}, err
	}
	if why := m.upgradeBlocked(); why != "" {
		return api.UpgradeResult{}, apiErr(api.CodeConflict, "upgrade: not done: %s", why)
	}
	binary := req.Binary
	if binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return api.UpgradeResult{}, fmt.Errorf("upgrade: %w", err)
		}
		binary = exe
	}
	if err := m.checkBinary(ctx, "upgrade --binary", binary); err != nil {
		return api.UpgradeResult{}, err
	}
	h := &Handover{Config: m.cfg, QEMU: *m.q().cfg, Started: m.started, BootID: m.bootID, Binary: binary, Upgrades: m.up.upgrades + 1,
		OldQEMUPID: m.q().proc.Pid(), GatePage: m.gatePage()}
	h.QEMU.ExtraFiles = nil
	m.mu.Lock()
	h.ReadyAt = m.readyAt
	m.mu.Unlock()
	// Held until the exec: no policy load between the policy the
	// handover names and the new monitor reading it (on an error the
	// monitor runs on, and they are released).
	m.pol.mu.Lock()
	keep := false
	defer func() {
		if !keep {
			m.pol.mu.Unlock()
		}
	}()
	if snap := m.pol.snap.Load(); snap != nil {
		p := m.pol.path.Load()
		if p == nil || *p == "" {
			return api.UpgradeResult{}, apiErr(api.CodeConflict, "upgrade: not done: the policy in force was loaded from source over the API, not from a file the new monitor can read again; load it from a file first")
		}
		again, err := policy.LoadFile(*p)
		if err != nil || again.Digest != snap.Digest {
			return api.UpgradeResult{}, apiErr(api.CodeConflict, "upgrade: not done: the policy in force (%s, %s) no longer reads the same from %s (%v): restore its files, or load it again", snap.Name, snap.Digest, *p, err)
		}
		h.PolicyPath, h.PolicyDigest = *p, snap.Digest
	}
	if m.bootFiles.kernel == nil || (h.QEMU.Initrd != "" && m.bootFiles.initrd == nil) {
		return api.UpgradeResult{}, errors.New("upgrade: the guest's kernel or initramfs could not be opened when the VM started")
	}
	if err := m.recordLifecycle(ctx, "vm.upgrade", "monitor upgrade to "+binary+" with the guest kept running"); err != nil {
		return api.UpgradeResult{}, err
	}
	// Also held until the exec: no restart, snapshot or rollback meanwhile.
	m.rs.mu.Lock()
	devs, err := m.tempStateFile()
	if err != nil {
		m.rs.mu.Unlock()
		return api.UpgradeResult{}, err
	}
	errStayStopped := fmt.Errorf("%w: a monitor upgrade", errKeepStopped)
	err = m.dbg.DoPaused(ctx, func(ctx context.Context, _ *gdbrsp.Client) error {
		h.Stopped = time.Now()
		if _, err := saveDevices(ctx, m.q(), devs, true); err != nil {
			return err
		}
		return errStayStopped
	})
	if !errors.Is(err, errStayStopped) {
		devs.Close()
		m.rs.mu.Unlock()
		// The guest was stopped and is resumed by serve unless saving
		// kept it stopped.
		m.recordLifecycleOutcome(ctx, "vm.upgrade", fmt.Sprintf("monitor upgrade failed, the monitor runs on: %v", err))
		return api.UpgradeResult{}, fmt.Errorf("upgrade: QEMU did not save the device state: %w (the guest runs on)", err)
	}
	m.rs.gen++
	h.Gen = m.rs.gen
	m.up.devices = devs
	keep = true
	m.recordLifecycleOutcome(ctx, "vm.upgrade", "guest stopped and its device state saved; the monitor execs "+binary)
	m.logf("upgrade: the guest is stopped; this monitor (pid %d) execs %s", os.Getpid(), binary)
	m.up.ch <- h
	return api.UpgradeResult{Binary: binary, MonitorPID: os.Getpid(), Upgrades: h.Upgrades}, nil
}

// HandOff readies this process to be replaced by h: it closes the audit
// and event logs (their close records written), stops QEMU's channels,
// makes the descriptors the new process takes over inheritable, and
// returns the handover file's descriptor to pass it. After it, the caller
// must exec (or exit: the guest then ends with this process).
func (m *Monitor) HandOff(h *Handover) (fd int, err error) {
	// The network first, while the security server, the audit log and
	// the event stream still take the gate's last decisions.
	if m.net != nil {
		h.Net = m.handOffNet()
	}
	if m.pol.sec != nil {
		m.pol.sec.Close()
	}
	if m.pol.log != nil {
		if err := m.pol.log.Close(); err != nil {
			m.logf("audit log: close: %v", err)
		}
	}
	if m.events != nil {
		m.events.close()
	}
	q := m.q()
	q.closeChannels()
	h.Decisions = map[string]map[string]uint64{"kernel": m.pol.kernelVerdicts.snapshot(), "net": m.pol.netVerdicts.snapshot(),
		"api": m.pol.apiVerdicts.snapshot()}
	m.frozen.mu.Lock()
	for _, p := range m.frozen.procs {
		h.Frozen = append(h.Frozen, FrozenProc{PID: p.pid, Start: p.start, Comm: p.comm})
	}
	m.frozen.mu.Unlock()
	h.LockFD = int(m.dir.LockFD())
	h.RAMFD = int(m.ramFile.Fd())
	h.DevicesFD = int(m.up.devices.Fd())
	h.KernelFD, h.InitrdFD = -1, -1
	if m.bootFiles.kernel != nil {
		h.KernelFD = int(m.bootFiles.kernel.Fd())
	}
	if m.bootFiles.initrd != nil {
		h.InitrdFD = int(m.bootFiles.initrd.Fd())
	}
	h.SymbolsFD = -1
	if m.cfg.Symbols != nil {
		h.SymbolsFD = int(m.cfg.Symbols.Fd())
	}
	b, err := json.Marshal(h)
	if err != nil {
		return -1, err
	}
	hf, err := unix.MemfdCreate("gatevisor-handover", 0)
	if err != nil {
		return -1, fmt.Errorf("upgrade: handover: %w", err)
	}
	if _, err := unix.Write(hf, b); err != nil {
		return -1, fmt.Errorf("upgrade: handover: %w", err)
	}
	keep := []int{h.LockFD, h.RAMFD, h.DevicesFD, h.KernelFD, h.InitrdFD, h.SymbolsFD, hf}
	if h.Net != nil {
		keep = append(keep, h.Net.TapFD, h.Net.MemberFD)
	}
	for _, fd := range keep {
		if fd < 0 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return -1, fmt.Errorf("upgrade: keep descriptor %d across exec: %w", fd, err)
		}
	}
	return hf, nil
}

// ReadHandover reads the handover an upgraded monitor passed as fd.
func ReadHandover(fd int) (*Handover, error) {
	f := os.NewFile(uintptr(fd), "handover")
	defer f.Close()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("handover: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxHandover+1))
	if err != nil || len(b) > maxHandover {
		return nil, fmt.Errorf("handover: unreadable or larger than %d bytes (%v)", maxHandover, err)
	}
	var h Handover
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("handover: %w", err)
	}
	if h.Config.Name == "" || h.Gen < 1 || h.LockFD < 3 || h.RAMFD < 3 || h.DevicesFD < 3 {
		return nil, errors.New("handover: incomplete")
	}
	return &h, nil
}

// closeChannels closes the monitor's connections to this QEMU (not the
// process: it dies with the exec).
func (q *qemuSide) closeChannels() {
	for _, c := range []io.Closer{q.qmp, q.gdb, q.exec, q.serial} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
}

func isNilCloser(c io.Closer) bool {
	switch v := c.(type) {
	case *qmp.Client:
		return v == nil
	case *gdbrsp.Client:
		return v == nil
	}
	return false
}

// Resume builds the monitor of a VM whose previous monitor process handed
// it over (h): the guest stopped, its device state saved, this process
// holding the VM's lock and RAM. The new QEMU is started and loaded; the
// caller serves the API and calls ResumeGuest. cfg is h.Config with this
// process's writers.
func Resume(ctx context.Context, cfg Config, h *Handover) (_ *Monitor, err error) {
	m := &Monitor{cfg: cfg, started: h.Started, state: api.StateStarting, done: make(chan struct{}), stopCh: make(chan struct{}),
		stopReq: make(chan time.Duration, 1), bootID: h.BootID, readyAt: h.ReadyAt}
	m.rs.swapped = make(chan struct{}, 1)
	m.rs.gen = h.Gen
	m.kg.page.Store(h.GatePage)
	if h.OldQEMUPID > 0 {
		// The old QEMU is this process's child (the same process, before
		// the exec): reap it, or it stays a zombie as long as the VM runs.
		go func(pid int) {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, 0, nil)
		}(h.OldQEMUPID)
	}
	m.up.ch = make(chan *Handover, 1)
	m.up.upgrades = h.Upgrades
	m.pol.kernelVerdicts.restore(h.Decisions["kernel"])
	m.pol.netVerdicts.restore(h.Decisions["net"])
	m.pol.apiVerdicts.restore(h.Decisions["api"])
	m.kitModules = cfg.KitModules
	m.metrics = metrics.New(cfg.Name, m.Status, hostFigures)
	root, err := vmdir.Root()
	if err != nil {
		return nil, err
	}
	if m.dir, err = vmdir.Adopt(root, cfg.Name, os.NewFile(uintptr(h.LockFD), "lock")); err != nil {
		return nil, err
	}
	m.ramFile = os.NewFile(uintptr(h.RAMFD), "guest RAM")
	devs := os.NewFile(uintptr(h.DevicesFD), "device state")
	defer devs.Close()
	if h.KernelFD >= 0 {
		m.bootFiles.kernel = os.NewFile(uintptr(h.KernelFD), "kernel")
	}
	if h.InitrdFD >= 0 {
		m.bootFiles.initrd = os.NewFile(uintptr(h.InitrdFD), "initramfs")
	}
	defer func() {
		if err != nil {
			m.cleanup()
		}
	}()
	m.cfg.PolicyFile = h.PolicyPath
	snap, err := m.prepareStartPolicy()
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	if digest := snapDigest(snap); digest != h.PolicyDigest {
		return nil, fmt.Errorf("resume: the policy at %s reads as %s, the one in force was %s: the new monitor does not run another policy than the old one's", h.PolicyPath, digest, h.PolicyDigest)
	}
	// Stale runtime files of the old process: its API socket (the API is
	// served again) and its QEMUs' sockets.
	for _, n := range []string{vmdir.APISocket, qemu.QMPSocket, qemu.GDBSocket, qemu.SerialSocket, qemu.ExecSocket, NetSocket} {
		_ = os.Remove(m.dir.File(n))
	}
	if m.cfg.ConsoleLog != "" {
		if m.logFile, err = safefile.OpenFile(m.cfg.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
			return nil, fmt.Errorf("console log: %w", err)
		}
	}
	if m.events, err = m.openEvents(); err != nil {
		return nil, err
	}
	if err := m.openSecurity(snap); err != nil {
		return nil, err
	}
	if m.cfg.Net.Mode != NetNone {
		if h.Net == nil {
			return nil, errors.New("resume: the VM has a network and the handover carries none of it")
		}
		if h.Net.Isolated != "" {
			why := h.Net.Isolated
			m.netIso.why.Store(&why)
		}
		if err := m.prepareNet(h.Net); err != nil {
			return nil, err
		}
	}
	qcfg, err := m.incomingConfig(h.QEMU, h.Gen)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	q := &qemuSide{cfg: qcfg}
	m.side.Store(q)
	if q.proc, err = qemu.Start(qcfg, m.ramFile, cfg.Log); err != nil {
		return nil, err
	}
	if err := q.connectChannels(ctx); err != nil {
		return nil, err
	}
	if err := q.qmp.SetMigrationCapability(ctx, qmp.CapIgnoreShared, true); err != nil {
		return nil, err
	}
	if err := m.attach(ctx, q, int64(cfg.MemMiB)<<20); err != nil {
		return nil, err
	}
	if err := loadDevices(ctx, q, devs); err != nil {
		return nil, err
	}
	if err := q.connectGDB(ctx); err != nil {
		return nil, err
	}
	if err := m.writeState(q); err != nil {
		return nil, err
	}
	if err := m.startDebugger(q, snap); err != nil {
		return nil, err
	}
	return m, nil
}

func snapDigest(s *policy.Snapshot) string {
	if s == nil {
		return ""
	}
	return s.Digest
}

// ResumeGuest arms the kernel gate for the policy in force on the new
// QEMU, with the guest still stopped, watches the frozen processes again,
// and lets the guest run; on error the VM is ended (fail closed). stopped
// is when the old monitor stopped it.
func (m *Monitor) ResumeGuest(ctx context.Context, stopped time.Time, frozen []FrozenProc) error {
	fail := func(err error) error {
		m.cleanup()
		close(m.done)
		return err
	}
	snap := m.pol.snap.Load()
	if m.kernelNeeded(snap) {
		if err := m.locateForGate(ctx); err != nil {
			return fail(fmt.Errorf("resume: %w", err))
		}
		if err := m.restoreGatePage(); err != nil {
			return fail(fmt.Errorf("resume: %w", err))
		}
		m.pol.mu.Lock()
		err := m.dbg.Do(ctx, func(ctx context.Context, c *gdbrsp.Client) error {
			_, _, err := m.applyKernelLocked(ctx, c, snap)
			return err
		})
		m.pol.mu.Unlock()
		if err != nil {
			return fail(fmt.Errorf("resume: arm the kernel gate: %w", err))
		}
	}
	// Frozen processes stay frozen: still stopped in the guest, which has
	// not run since, and watched again from here on.
	for _, p := range frozen {
		m.freeze(linux.Task{PID: p.PID, StartTime: p.Start, Comm: p.Comm})
	}
	if err := m.dbg.Do(ctx, func(ctx context.Context, c *gdbrsp.Client) error { return c.Continue(ctx) }); err != nil {
		return fail(fmt.Errorf("resume: start the guest: %w", err))
	}
	m.running()
	m.wantGatePage() // none handed over: allocated now
	if m.cfg.AutoUpgrade {
		go m.watchBinary()
	}
	m.up.pauseMs = float64(time.Since(stopped).Microseconds()) / 1000
	msg := fmt.Sprintf("monitor upgraded in place (pid %d, upgrade %d): guest stopped %.1f ms", os.Getpid(), m.up.upgrades, m.up.pauseMs)
	m.recordLifecycleOutcome(ctx, "vm.upgrade", msg)
	m.logf("%s", msg)
	return nil
}

// binaryPoll is how often run --auto-upgrade looks at the binary, and
// binarySettle how long a new one must stay unchanged before it is run (a
// build or a package install writes it over some time).
const (
	binaryPoll   = 2 * time.Second
	binarySettle = 2 * time.Second
)

// watchBinary upgrades the monitor when a new binary is installed at the
// path this one was started from: another file there (a new inode, as
// go build, install(1) and dpkg write it) that has not changed for
// binarySettle. A refused upgrade (a network, ...) is logged once per
// binary and the watch goes on.
func (m *Monitor) watchBinary() {
	self, err := os.Executable()
	if err != nil {
		m.logf("--auto-upgrade: %v: not watching", err)
		return
	}
	var running unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &running); err != nil {
		m.logf("--auto-upgrade: %v: not watching", err)
		return
	}
	var refused uint64
	for waitFor(m, time.After(binaryPoll)) {
		var st unix.Stat_t
		if err := unix.Stat(self, &st); err != nil || st.Ino == running.Ino && st.Dev == running.Dev || st.Ino == refused {
			continue
		}
		if time.Since(time.Unix(st.Mtim.Unix())) < binarySettle {
			continue
		}
		m.logf("--auto-upgrade: a new binary at %s: upgrading the monitor", self)
		ctx := context.WithValue(context.Background(), actorKey{}, actor{"auto-upgrade", "by run --auto-upgrade: a new binary at " + self})
		if _, err := m.Upgrade(ctx, api.UpgradeRequest{Binary: self}); err != nil {
			m.logf("--auto-upgrade: %v", err)
			refused = st.Ino
			continue
		}
		return
	}
}
