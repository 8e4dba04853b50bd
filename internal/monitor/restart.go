package monitor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/qemu/qmp"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// QEMU restarts with the guest kept in RAM.
//
// Guest RAM is a file the monitor created and holds (qemu.CreateRAMFile),
// shared with QEMU. A restart starts a second QEMU on the same file,
// waiting for an incoming migration (-incoming defer), while the first one
// still runs the guest. Then, with the VM stopped on the debugger's
// goroutine (so that no trapped call can slip through), the old QEMU saves
// its device state with the x-ignore-shared capability (guest RAM, a
// shared file, is left out: the stream is the devices' registers, queues
// and the firmware's private RAM, a few hundred KiB whatever the guest's
// size), the new QEMU loads it, the monitor attaches the new gdbstub and
// sets every trap of the kernel gate on it, moves the console, the exec
// channel and the NIC to the new QEMU's connections, kills the old QEMU,
// and lets the guest run on the new one. The guest sees a pause, not a
// reboot: its clock, processes, sockets and page cache are where they were.
//
// Until the switch, a failure leaves the old QEMU in charge (it continues
// from where it stopped; the new one is killed). After it (the new QEMU
// has the guest), a failure to re-arm a gate fails closed: the VM stays
// stopped and is ended.

// restartState is the monitor's part in restarts, snapshots and rollbacks.
type restartState struct {
	mu sync.Mutex // serialises restarts, snapshots and rollbacks; guards the fields below

	gen      int       // QEMU generation: 0 the first, +1 per restart or rollback
	dirs     []string  // socket directories of generations after the first
	restarts int       // restarts and rollbacks done
	last     time.Time // when the last one ended

	swapped chan struct{} // buffered (1): wakes supervise after a swap
}

// bootFiles are the guest kernel and initramfs, open from Start on for
// restarts (nil when not given, or not readable: a restart then fails).
type bootFiles struct {
	kernel, initrd *os.File

	digestOnce sync.Once // kernelDigest
	digest     string
	digestErr  error
}

// open opens the kernel and initramfs the VM boots.
func (b *bootFiles) open(kernel, initrd string) {
	if kernel != "" {
		b.kernel, _ = os.Open(kernel)
	}
	if initrd != "" {
		b.initrd, _ = os.Open(initrd)
	}
}

func (b *bootFiles) close() {
	for _, f := range []*os.File{b.kernel, b.initrd} {
		if f != nil {
			f.Close()
		}
	}
}

// cleanup removes the socket directories restarts created.
func (rs *restartState) cleanup() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, d := range rs.dirs {
		_ = os.RemoveAll(d)
	}
	rs.dirs = nil
}

// nextQEMU starts the QEMU that is to take the guest over: the same
// machine on the same RAM file, waiting for an incoming migration, its
// sockets in a directory of its own beside the VM's, QMP, the console and
// the exec channel attached, x-ignore-shared on. binary "" keeps the
// current QEMU binary. The caller kills it (close) unless it swaps it in.
//
// Preconditions: m.rs.mu held.
func (m *Monitor) nextQEMU(ctx context.Context, binary string, ignoreShared bool) (_ *qemuSide, _ *nicPending, err error) {
	m.rs.gen++
	cfg, err := m.incomingConfig(*m.q().cfg, m.rs.gen)
	if err != nil {
		return nil, nil, fmt.Errorf("restart: %w", err)
	}
	if binary != "" {
		cfg.Binary = binary
	}
	next := &qemuSide{cfg: cfg}
	nic, err := m.listenNIC()
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			next.discard(nic)
		}
	}()
	if next.proc, err = qemu.Start(cfg, m.ramFile, m.cfg.Log); err != nil {
		return nil, nil, fmt.Errorf("restart: %w", err)
	}
	if err := next.connectChannels(ctx); err != nil {
		return nil, nil, fmt.Errorf("restart: the new QEMU: %w", err)
	}
	if err := next.qmp.SetMigrationCapability(ctx, qmp.CapIgnoreShared, ignoreShared); err != nil {
		return nil, nil, fmt.Errorf("restart: the new QEMU: %w", err)
	}
	return next, nic, nil
}

// incomingConfig is the command line of a QEMU that takes the guest of
// base over (generation gen): the same machine, waiting for an incoming
// migration, its sockets in a directory of its own (created), the kernel
// and initramfs read from the descriptors the monitor opened at start (a
// path may be gone by now: run --add's temporary initramfs is removed once
// QEMU has read it; or hold another build).
func (m *Monitor) incomingConfig(base qemu.Config, gen int) (*qemu.Config, error) {
	if m.bootFiles.kernel == nil || (base.Initrd != "" && m.bootFiles.initrd == nil) {
		return nil, errors.New("the guest's kernel or initramfs could not be opened when the VM started")
	}
	cfg := base
	cfg.ExtraArgs = append([]string(nil), base.ExtraArgs...)
	cfg.Incoming = "defer"
	cfg.ExtraFiles = []*os.File{m.bootFiles.kernel}
	cfg.Kernel = qemu.FDPath(0)
	if m.bootFiles.initrd != nil {
		cfg.ExtraFiles = append(cfg.ExtraFiles, m.bootFiles.initrd)
		cfg.Initrd = qemu.FDPath(1)
	}
	cfg.Dir = filepath.Join(m.dir.Path, "qemu."+strconv.Itoa(gen))
	if err := os.Mkdir(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	m.rs.dirs = append(m.rs.dirs, cfg.Dir)
	return &cfg, nil
}

// discard kills a QEMU that did not take the guest over, with its
// channels and its pending NIC connection.
func (q *qemuSide) discard(nic *nicPending) {
	q.close()
	if q.serial != nil {
		q.serial.Close()
	}
	nic.close()
}

// switchTo hands the guest, whose device state next has loaded, to next:
// it attaches next's gdbstub, sets the kernel gate's traps on it, swaps
// next in for the old QEMU (supervise, console, exec channel, NIC), kills
// the old QEMU and points the debugger at next, which serve then resumes.
//
// Preconditions: on the debugger goroutine with the VM stopped (inside
// dbg.Do); m.rs.mu held.
func (m *Monitor) switchTo(ctx context.Context, old, next *qemuSide, nic *nicPending, pt *phases) error {
	if err := next.connectGDB(ctx); err != nil {
		return err
	}
	pt.mark("attach the new gdbstub")
	if err := m.rearm(ctx, next.gdb); err != nil {
		return fmt.Errorf("set the kernel gate's traps on the new QEMU: %w", err)
	}
	pt.mark("set the kernel gate's traps")
	var nicConn net.Conn
	if nic != nil {
		var err error
		if nicConn, err = nic.take(5 * time.Second); err != nil {
			return err
		}
	}
	// The point of no return: from here on the guest is next's.
	m.side.Store(next)
	select {
	case m.rs.swapped <- struct{}{}:
	default:
	}
	_ = old.proc.Kill(5 * time.Second)
	old.close()
	m.console.reattach(next.serial, 2*time.Second)
	if nic != nil {
		m.reattachNIC(nicConn)
	}
	m.dbg.gdb = next.gdb
	if err := m.writeState(next); err != nil {
		m.logf("restart: runtime state: %v", err)
	}
	pt.mark("kill the old QEMU, move console, exec channel and NIC")
	return nil
}

// phases times the steps of a restart or rollback.
type phases struct {
	last time.Time
	list []api.Phase
}

func newPhases() *phases { return &phases{last: time.Now()} }

// mark ends the step name, begun at the previous mark.
func (p *phases) mark(name string) {
	now := time.Now()
	p.list = append(p.list, api.Phase{Name: name, Ms: float64(now.Sub(p.last).Microseconds()) / 1000})
	p.last = now
}

// rearm sets every trap of the kernel gate on c (a new QEMU's gdbstub:
// breakpoints and watchpoints are the gdbstub's, not the guest's, and a
// migration does not carry them).
func (m *Monitor) rearm(ctx context.Context, c *gdbrsp.Client) error {
	m.kg.mu.Lock()
	defer m.kg.mu.Unlock()
	if m.kg.dropPage.Load() {
		m.replanWithoutPageLocked()
	}
	for _, t := range m.kg.traps {
		if err := setTrap(ctx, c, t); err != nil {
			return err
		}
	}
	if va := m.kg.bootWatch.Load(); va != 0 {
		return errors.New("the kernel gate is arming at boot")
	}
	return nil
}

// saveDevices makes q save the guest's device state into f, with the VM
// stopped: not its RAM (ignoreShared), or all of it (a full migration).
func saveDevices(ctx context.Context, q *qemuSide, f *os.File, ignoreShared bool) (qmp.MigrationInfo, error) {
	if err := q.qmp.SetMigrationCapability(ctx, qmp.CapIgnoreShared, ignoreShared); err != nil {
		return qmp.MigrationInfo{}, err
	}
	if err := q.qmp.SetMaxBandwidth(ctx, qmp.UnlimitedBandwidth); err != nil {
		return qmp.MigrationInfo{}, err
	}
	if err := q.qmp.MigrateToFD(ctx, f); err != nil {
		return qmp.MigrationInfo{}, err
	}
	return q.qmp.WaitMigration(ctx)
}

// loadDevices makes next, waiting for an incoming migration, load the
// device state in f (read from its start).
func loadDevices(ctx context.Context, next *qemuSide, f *os.File) error {
	in, err := reopenRead(f)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := next.qmp.MigrateIncomingFD(ctx, in); err != nil {
		return err
	}
	if _, err := next.qmp.WaitMigration(ctx); err != nil {
		return fmt.Errorf("the new QEMU did not load the device state: %w", err)
	}
	return nil
}

// reopenRead opens f again for reading from offset 0 (a new open file
// description), through /proc/self/fd so that an unlinked file works too.
func reopenRead(f *os.File) (*os.File, error) {
	in, err := os.Open("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		return nil, fmt.Errorf("reopen %s: %w", f.Name(), err)
	}
	return in, nil
}

// tempStateFile is an unlinked file for device state, on the RAM file's
// tmpfs.
func (m *Monitor) tempStateFile() (*os.File, error) {
	dir, err := qemu.RAMDir(m.dir.Path)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "devstate-*")
	if err != nil {
		return nil, fmt.Errorf("device state file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("device state file: %w", err)
	}
	return f, nil
}

// Restart implements api.VM: QEMU is replaced under the running guest
// (KeepGuest), from the same binary or another.
func (m *Monitor) Restart(ctx context.Context, req api.RestartRequest) (api.RestartResult, error) {
	if !req.KeepGuest {
		return api.RestartResult{}, apiErr(api.CodeBadRequest, "restart: only --keep-guest is supported: the guest keeps running on a new QEMU; to reboot the guest, stop the VM and run it again")
	}
	if err := m.lifecycleReady(); err != nil {
		return api.RestartResult{}, err
	}
	if len(m.cfg.Files) > 0 {
		return api.RestartResult{}, apiErr(api.CodeConflict, "restart: not done: the VM serves files (--files), whose sessions (9P or virtio-fs) belong to the QEMU connection: the guest's mounts would fail after a restart")
	}
	if req.QEMUBinary != "" {
		if err := m.checkBinary(ctx, "restart --qemu", req.QEMUBinary); err != nil {
			return api.RestartResult{}, err
		}
	}
	if err := m.recordLifecycle(ctx, "vm.restart", "QEMU restart with the guest kept in RAM requested"); err != nil {
		return api.RestartResult{}, err
	}
	m.rs.mu.Lock()
	defer m.rs.mu.Unlock()
	start := time.Now()
	old := m.q()
	res := api.RestartResult{OldQEMUPID: old.proc.Pid(), Mode: "x-ignore-shared"}
	if req.CopyRAM {
		res.Mode = "full"
	}
	next, nic, err := m.nextQEMU(ctx, req.QEMUBinary, !req.CopyRAM)
	if err != nil {
		m.recordLifecycleOutcome(ctx, "vm.restart", fmt.Sprintf("QEMU restart failed, the guest runs on in QEMU pid %d: %v", old.proc.Pid(), err))
		return res, fmt.Errorf("%w (the guest runs on in the old QEMU)", err)
	}
	res.PrepareSeconds = time.Since(start).Seconds()
	state, err := m.tempStateFile()
	if err != nil {
		next.discard(nic)
		return res, err
	}
	defer state.Close()
	switched := false
	var stopped time.Time
	var pt *phases
	err = m.dbg.DoPaused(ctx, func(ctx context.Context, _ *gdbrsp.Client) error {
		stopped = time.Now()
		pt = newPhases()
		if _, err := saveDevices(ctx, old, state, !req.CopyRAM); err != nil {
			return fmt.Errorf("the old QEMU did not save the device state: %w", err)
		}
		pt.mark("save the device state (old QEMU)")
		if err := loadDevices(ctx, next, state); err != nil {
			return err
		}
		pt.mark("load the device state (new QEMU)")
		if err := m.switchTo(ctx, old, next, nic, pt); err != nil {
			return err
		}
		switched = true
		return nil
	})
	res.DowntimeSeconds = time.Since(stopped).Seconds()
	if pt != nil {
		pt.mark("resume the guest")
		res.Phases = pt.list
	}
	if !switched {
		next.discard(nic)
		m.recordLifecycleOutcome(ctx, "vm.restart", fmt.Sprintf("QEMU restart failed, the guest runs on in QEMU pid %d: %v", old.proc.Pid(), err))
		return res, fmt.Errorf("restart: %w (the guest runs on in the old QEMU)", err)
	}
	if fi, err := state.Stat(); err == nil {
		res.DeviceStateBytes = fi.Size()
	}
	res.NewQEMUPID = next.proc.Pid()
	res.TotalSeconds = time.Since(start).Seconds()
	m.rs.restarts++
	m.rs.last = time.Now()
	if err != nil {
		// Switched, but resuming the new QEMU failed: the guest is stopped.
		m.failClosed(fmt.Errorf("after the QEMU restart: %w", err))
		return res, err
	}
	msg := fmt.Sprintf("QEMU restarted with the guest kept in RAM: pid %d -> %d, guest paused %.1f ms, device state %d bytes", res.OldQEMUPID, res.NewQEMUPID, res.DowntimeSeconds*1000, res.DeviceStateBytes)
	m.recordLifecycleOutcome(ctx, "vm.restart", msg)
	m.publishNotice(monitoring.LifecycleNotice, msg)
	m.logf("%s", msg)
	return res, nil
}

// lifecycleReady refuses a restart, snapshot or rollback before the guest
// is up and its gates armed, and while the VM stops.
func (m *Monitor) lifecycleReady() error {
	if err := m.checkRunning(); err != nil {
		return err
	}
	if !m.guestReady() || m.kg.booting.Load() {
		return apiErr(api.CodeConflict, "the guest is still booting (its gates are armed when it is ready): try again once it is ready")
	}
	return nil
}

// checkBinary accepts another executable the monitor would run (a QEMU
// for restart --qemu, a gatevisor for upgrade --binary: flag names it)
// only from the monitor's own user or root, and only a regular executable
// file that neither the group nor others can write.
func (m *Monitor) checkBinary(ctx context.Context, flag, path string) error {
	if c, ok := api.CallerFromContext(ctx); ok && c.UID != 0 && c.UID != uint32(os.Geteuid()) {
		return apiErr(api.CodeForbidden, "%s: only the VM's owner or root may choose the binary the monitor runs", flag)
	}
	if !filepath.IsAbs(path) {
		return apiErr(api.CodeBadRequest, "%s %q: give an absolute path", flag, path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return apiErr(api.CodeBadRequest, "%s: %v", flag, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 || fi.Mode()&0o022 != 0 {
		return apiErr(api.CodeBadRequest, "%s %s: not a regular executable file writable only by its owner (mode %v)", flag, path, fi.Mode())
	}
	return nil
}

// recordLifecycle audits a restart, snapshot or rollback before it is
// done: one the audit log cannot record is not done.
func (m *Monitor) recordLifecycle(ctx context.Context, op, reason string) error {
	if m.pol.sec == nil {
		return nil
	}
	caller, _ := api.CallerFromContext(ctx)
	ev := event.Event{Class: event.ClassAPI, Op: op, Subject: event.Subject{PID: caller.PID, UID: caller.UID, GID: caller.GID}, Time: time.Now().UTC()}
	rule, by := op, fmt.Sprintf("by uid %d", caller.UID)
	if a, ok := ctx.Value(actorKey{}).(actor); ok {
		rule, by = a.rule, a.by
	}
	if err := m.pol.sec.Record(&ev, secserver.Decision{Verdict: secserver.Allow, Rule: rule, Reason: reason + " " + by}); err != nil {
		return fmt.Errorf("%s: not done: the audit log cannot record it: %w", op, err)
	}
	return nil
}

// recordLifecycleOutcome audits how a restart, snapshot or rollback ended.
func (m *Monitor) recordLifecycleOutcome(ctx context.Context, op, outcome string) {
	if m.pol.sec == nil {
		return
	}
	caller, _ := api.CallerFromContext(ctx)
	ev := event.Event{Class: event.ClassAPI, Op: op, Subject: event.Subject{PID: caller.PID, UID: caller.UID, GID: caller.GID}}
	rule := op
	if a, ok := ctx.Value(actorKey{}).(actor); ok {
		rule = a.rule
	}
	m.recordOutcome(&ev, rule, outcome)
}

// actorKey marks a context whose lifecycle operation the monitor itself
// carries out (a policy's response, run --auto-upgrade), with no API
// caller: the audit records name the actor instead.
type actorKey struct{}

// actor is the audit rule and the "by ..." of such an operation.
type actor struct{ rule, by string }
