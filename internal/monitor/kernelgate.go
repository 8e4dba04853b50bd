package monitor

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/metrics"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// kernelGate is the monitor's half of the kernel gate (gate/syscall): the
// gate, the traps in place, and the boot watchpoint that arms the start
// policy. Decisions come from the VM's one security server (m.pol.sec).
type kernelGate struct {
	mu    sync.Mutex // serialises trap changes; guards the fields below
	gate  *gate.Gate
	traps []gate.Trap
	text  map[uint64][]byte // kernel text at each breakpoint, read before it was set

	cur atomicGate // what the debugger goroutine uses on a hit

	// kernelUp: the kernel has been located and the gate built.
	kernelUp atomic.Bool
	// booting: the start policy's traps are not armed yet (armAtBoot);
	// policy loads wait for them (they would race the boot stop).
	booting atomic.Bool
	// bootWatch is system_state's address while the boot watchpoint is
	// set (armAtBoot), 0 otherwise.
	bootWatch atomic.Uint64
	// page is the gate's own guest page (gatepage.go), 0 none; pageErr
	// why there is none, when its allocation failed.
	page    atomic.Uint64
	pageErr atomic.Pointer[string]
	// dropPage: the guest's RAM was replaced (a rollback): the page is
	// forgotten and the traps replanned without it (gatepage.go), unless
	// the restored RAM holds the gate's entries on snapPage, the page the
	// snapshot was taken with (0: none), which the gate then takes over.
	dropPage atomic.Bool
	snapPage atomic.Uint64
	// pageTried: an allocation of the page was started (wantGatePage).
	pageTried atomic.Bool
	// ramSwap: a rollback is replacing the guest's RAM; the gated heads
	// are not read back meanwhile (watchGateHeads). Guarded by mu.
	ramSwap bool

	// regs holds the registers of the vCPU trapVCPU looks at, read into
	// the same map at every stop. Used on the debugger goroutine only.
	regs map[string]uint64

	// Counters for api.SyscallGateStatus; siblings counts calls handled
	// on a vCPU other than the one a stop reported, emulated the
	// instructions performed to move a vCPU past a watched load.
	stops, decided, skipped, faultIns, handleNanos, siblings, emulated atomic.Uint64
}

// armed reports whether any trap is in place.
func (kg *kernelGate) armed() bool {
	kg.mu.Lock()
	defer kg.mu.Unlock()
	return len(kg.traps) > 0
}

type atomicGate struct {
	mu sync.Mutex
	g  *gate.Gate
}

func (a *atomicGate) load() *gate.Gate { a.mu.Lock(); defer a.mu.Unlock(); return a.g }
func (a *atomicGate) store(g *gate.Gate) {
	a.mu.Lock()
	a.g = g
	a.mu.Unlock()
}

// textBytes is how much kernel text is kept per breakpoint to prove it is
// restored byte for byte.
const textBytes = 16

// systemRunning is SYSTEM_RUNNING in the kernel's enum system_states: set
// by kernel_init after it made kernel text read-only, right before init.
const systemRunning = 3

// syscallGateStatus returns the kernel gate's counters, nil before any
// trap was planned.
func (m *Monitor) syscallGateStatus() *api.SyscallGateStatus {
	m.kg.mu.Lock()
	built := m.kg.gate != nil
	n := 0
	for _, t := range m.kg.traps {
		if t.Shown() { // an own-entry hook once, not per site and guard
			n++
		}
	}
	m.kg.mu.Unlock()
	if !built {
		return nil
	}
	st := &api.SyscallGateStatus{Breakpoints: n, Stops: m.kg.stops.Load(), Decided: m.kg.decided.Load(),
		Skipped: m.kg.skipped.Load(), FaultIns: m.kg.faultIns.Load(), SiblingStops: m.kg.siblings.Load(), Emulated: m.kg.emulated.Load(), HandleMicros: m.kg.handleNanos.Load() / 1000}
	if va := m.gatePage(); va != 0 {
		st.GatePage = "0x" + strconv.FormatUint(va, 16)
	}
	if e := m.kg.pageErr.Load(); e != nil {
		st.GatePageError = *e
	}
	return st
}

// kernelProfile returns the guest kernel's profile, loading it once.
func (m *Monitor) kernelProfile() (*linux.Profile, error) {
	m.profileMu.Lock()
	defer m.profileMu.Unlock()
	if m.profile != nil {
		return m.profile, nil
	}
	p, err := ids.LoadKernelProfileWith(m.cfg.Kernel, m.cfg.Profile)
	if err != nil {
		return nil, err
	}
	m.profile = p
	// Loading the profile ends the monitor's start-up work (the heap's
	// free pages would otherwise stay until the runtime's forced
	// collection minutes later: bench memory, "net" at rest 41 -> 19.5
	// MiB anonymous only after it): hand them back now, with the
	// executable's pages mapped so far.
	go releaseMemory()
	return p, nil
}

// armAtBoot arms the start policy's kernel traps at the moment the guest
// kernel reaches SYSTEM_RUNNING, with the VM stopped, so that nothing init
// or any later process does escapes them. It locates the kernel while it
// boots (KASLR is known once it runs on its own page tables), builds the
// gate, and sets a write watchpoint on system_state; kernel_init's write
// of SYSTEM_RUNNING (after boot-time text patching and mark_readonly,
// right before it starts init) stops the vCPU, and the debugger goroutine
// arms every trap before it lets the vCPU run on (onBootWatch). If any of
// this fails, the monitor fails closed: the VM is stopped and ended, and
// run fails with the reason.
func (m *Monitor) armAtBoot() {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if !waitFor(m, time.After(20*time.Millisecond)) {
			return
		}
		err := m.locateForGate(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) || m.guestReady() {
			m.failClosed(fmt.Errorf("the kernel gate cannot be armed: the guest kernel was not located: %w", err))
			return
		}
	}
	k := m.kg.cur.load().Kernel()
	va, err := k.Addr("system_state")
	if err != nil {
		m.failClosed(fmt.Errorf("the kernel gate cannot be armed: %w", err))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// No reload runs meanwhile (m.kg.booting): the start snapshot is in
	// force until onBootWatch has armed it.
	err = m.dbg.Do(ctx, func(ctx context.Context, c *gdbrsp.Client) error {
		if err := c.SetWatchpoint(ctx, gdbrsp.WriteWatch, va, 4); err != nil {
			return fmt.Errorf("watch system_state: %w", err)
		}
		// Set before the read: a write between the two stops the vCPU at
		// the watchpoint, after this function returns.
		st, err := vmi.ReadU32(k.AS, va)
		if err != nil {
			_ = c.ClearWatchpoint(ctx, gdbrsp.WriteWatch, va, 4)
			return fmt.Errorf("read system_state: %w", err)
		}
		if st >= systemRunning {
			// Located after the kernel started init: arm now, stopped, but
			// init has run unguarded for a while. That cannot be undone.
			_ = c.ClearWatchpoint(ctx, gdbrsp.WriteWatch, va, 4)
			return fmt.Errorf("the guest kernel reached SYSTEM_RUNNING (state %d) before the kernel gate could be armed", st)
		}
		m.kg.bootWatch.Store(va)
		return nil
	})
	if err != nil {
		m.failClosed(fmt.Errorf("the kernel gate cannot be armed: %w", err))
		return
	}
	m.watchBootWatch(k.AS, va)
}

// bootWatchGrace is how long system_state may read SYSTEM_RUNNING while
// the boot watchpoint is still set: the stop it causes is handled within
// milliseconds.
const bootWatchGrace = 500 * time.Millisecond

// watchBootWatch fails the VM closed if the boot watchpoint's hit is
// lost: system_state reads SYSTEM_RUNNING (through the RAM mapping, the
// VM running) for longer than bootWatchGrace and no stop armed the gate.
// A request's stop arms it too (scanStopped); this catches a hit QEMU
// dropped with no request to notice it, which would let init run
// unguarded.
func (m *Monitor) watchBootWatch(mem vmi.VirtualReader, va uint64) {
	var since time.Time
	for m.kg.bootWatch.Load() == va {
		if !waitFor(m, time.After(50*time.Millisecond)) {
			return
		}
		st, err := vmi.ReadU32(mem, va)
		switch {
		case err != nil || st < systemRunning:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) > bootWatchGrace && m.kg.bootWatch.Load() == va:
			m.failClosed(fmt.Errorf("the kernel gate cannot be armed: the guest kernel reached SYSTEM_RUNNING %v ago and the boot watchpoint's stop never came (QEMU dropped it): init has run unguarded", time.Since(since).Round(time.Millisecond)))
			return
		}
	}
}

// onBootWatch handles a stop at the boot watchpoint: at SYSTEM_RUNNING the
// start policy's traps are armed before the vCPU continues.
//
// Preconditions: on the debugger goroutine, the VM stopped.
func (m *Monitor) onBootWatch(ctx context.Context, c *gdbrsp.Client, va uint64) error {
	g := m.kg.cur.load()
	st, err := vmi.ReadU32(g.Kernel().AS, va)
	if err != nil {
		return fmt.Errorf("the kernel gate cannot be armed: read system_state: %w: %w", err, errKeepStopped)
	}
	if st < systemRunning {
		return nil
	}
	if err := c.ClearWatchpoint(ctx, gdbrsp.WriteWatch, va, 4); err != nil {
		return fmt.Errorf("the kernel gate cannot be armed: %w: %w", err, errKeepStopped)
	}
	m.kg.bootWatch.Store(0)
	// Policy loads are refused while booting is set, so the snapshot in
	// force is the start policy's and nothing else changes the traps.
	defer m.kg.booting.Store(false)
	snap := m.pol.snap.Load()
	undo, res, err := m.applyKernelLocked(ctx, c, snap)
	if err != nil {
		_ = undo()
		return fmt.Errorf("the kernel gate cannot be armed at SYSTEM_RUNNING: %w: %w", err, errKeepStopped)
	}
	m.logf("kernel gate armed at SYSTEM_RUNNING, before init: %d traps (%d watchpoints) for policy %s", len(res.Breakpoints), watchpoints(res), policyLine(snap))
	why := g.HookWatchUnavailable()
	if why != "" && m.cfg.Accel.Accel != "kvm" {
		m.logf("kernel gate: %s", why)
	}
	if why == "" {
		// The guest runs on, guarded by the head model, until the gate's
		// own page is allocated and the policy re-armed on it.
		m.wantGatePage()
	}
	return nil
}

func watchpoints(res api.PolicyResult) int {
	n := 0
	for _, b := range res.Breakpoints {
		if b.Watchpoint {
			n++
		}
	}
	return n
}

// failClosed ends the VM because a gate could not be armed or enforced:
// the guest does not run on unguarded. Wait returns err.
func (m *Monitor) failClosed(err error) {
	m.kg.booting.Store(false)
	m.logf("FAIL CLOSED: %v; stopping the VM", err)
	m.mu.Lock()
	if m.failErr == nil {
		m.failErr = err
	}
	m.mu.Unlock()
	m.RequestStop(0)
}

// locateForGate locates the guest kernel and builds the gate, once.
func (m *Monitor) locateForGate(ctx context.Context) error {
	if m.kg.kernelUp.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m.intro.mu.Lock()
	insp, err := m.inspector(ctx)
	m.intro.mu.Unlock()
	if err != nil {
		return fmt.Errorf("the guest kernel cannot be located yet: %w", err)
	}
	m.kg.mu.Lock()
	defer m.kg.mu.Unlock()
	if m.kg.gate == nil {
		// A private view of the kernel: no translation cache, since guest
		// page tables change under a running guest and the IDS's cache is
		// invalidated only per query.
		k := *insp.K
		as := *k.AS
		as.Cache = nil
		k.AS = &as
		g, err := gate.New(&k, authServer{countingServer{m.pol.sec, &m.pol.kernelVerdicts}, &m.grants})
		if err != nil {
			return err
		}
		g.UseWatchpoints(m.maxWatchpoints(), m.cfg.Accel.Accel == "kvm")
		if m.kitModules != nil {
			g.SetKitModules(m.kitModules)
		}
		// The call-site scan, when hooks will not be watched, runs now,
		// while the kernel boots.
		g.Prepare()
		m.kg.gate = g
		m.kg.cur.store(g)
	}
	m.kg.kernelUp.Store(true)
	return nil
}

// maxWatchpoints is how many hooks may be trapped by watchpoints: as many
// as the hooks under TCG, on any number of vCPUs; under KVM the four debug
// registers on a 1-vCPU VM and none on more (breakpoints cost nothing
// there until hit, and concurrent debug-register hits are not tested).
//
// Several vCPUs under TCG: QEMU 7.2 reports one vCPU per stop, and a vCPU
// that hit a watchpoint while another's hit stopped the VM is not
// reported (it had 25 of 200 concurrent denied opens slip through). The
// sibling scan (onTrap) finds every vCPU stopped just after a watched load
// and decides its call in the same stop, and a vCPU resumed in place is
// moved past the next instruction (movePastLoad), so that no later stop
// finds it there again and decides the same call twice.
func (m *Monitor) maxWatchpoints() int {
	switch {
	case m.isARM64():
		return 0 // the gate has no AArch64 entry model (gate/syscall/isa_aarch64.go)
	case m.cfg.Accel.Accel == "kvm" && m.cfg.CPUs > 1:
		return 0
	case m.cfg.Accel.Accel == "kvm":
		return 4
	}
	return 64
}

// applyKernelLocked moves the kernel gate's traps to those snap needs, and
// returns how to undo the move. The kernel text under every removed
// breakpoint is compared with the bytes read before it was set.
//
// Preconditions: the VM stopped, on the debugger goroutine; m.pol.mu held,
// or (at boot) m.kg.booting set, which keeps every reload out.
func (m *Monitor) applyKernelLocked(ctx context.Context, c *gdbrsp.Client, snap *policy.Snapshot) (undo func() error, res api.PolicyResult, err error) {
	noUndo := func() error { return nil }
	kg := &m.kg
	kg.mu.Lock()
	defer kg.mu.Unlock()
	var traps []gate.Trap
	switch {
	case snap != nil && kg.gate != nil:
		traps, res.Missing = kg.gate.Plan(snap.Policy)
	case snap != nil && m.kernelNeeded(snap):
		return noUndo, res, errors.New("the kernel gate is not built (the guest kernel was not located)")
	}
	if kg.gate != nil && len(traps) > 0 {
		for _, name := range kg.gate.ExtraRegs() {
			if _, ok := c.Register(name); !ok {
				return noUndo, res, fmt.Errorf("the gdbstub's target description names no %s, which the kernel gate reads at each trap on this guest (current task): nothing armed", name)
			}
		}
	}
	ch := &trapChange{kg: kg, c: c, old: kg.traps, next: traps, restored: true}
	err = ch.applyLocked(ctx)
	if err == nil {
		err = m.failInjected(gateKernel)
	}
	if err != nil {
		if uerr := ch.undoLocked(ctx); uerr != nil {
			return noUndo, res, fmt.Errorf("%w; undo: %v: %w", err, uerr, errKeepStopped)
		}
		return noUndo, res, err
	}
	ch.commitLocked()
	m.describeTraps(&res, traps, snap)
	res.Removed = len(ch.removed)
	if res.Removed > 0 {
		res.TextRestored = &ch.restored
	}
	return func() error {
		kg.mu.Lock()
		defer kg.mu.Unlock()
		return ch.undoLocked(ctx)
	}, res, nil
}

// trapChange is one move of the kernel gate's traps from old to next, and
// what it did, so that it can be undone.
type trapChange struct {
	kg             *kernelGate
	c              trapSetter
	old, next      []gate.Trap
	added, removed []gate.Trap
	// linked are the traps applyLocked linked an own entry for (head
	// guards; gate.LinkOwn does nothing for the others).
	linked []gate.Trap
	// restored says the kernel text under every removed breakpoint reads
	// back as it did before the breakpoint was set.
	restored bool
}

// applyLocked clears the traps old has and next has not, then sets the
// new ones, recording each step; it stops at the first failure.
//
// Preconditions: ch.kg.mu held; the VM stopped.
func (ch *trapChange) applyLocked(ctx context.Context) error {
	kg, g := ch.kg, ch.kg.gate
	if kg.text == nil {
		kg.text = map[uint64][]byte{}
	}
	want := map[uint64]bool{}
	for _, t := range ch.next {
		want[t.Addr] = true
	}
	have := map[uint64]bool{}
	for _, t := range ch.old {
		if want[t.Addr] {
			have[t.Addr] = true
			continue
		}
		if err := clearTrap(ctx, ch.c, t); err != nil {
			return err
		}
		ch.removed = append(ch.removed, t)
		if g != nil {
			// A gated head's guard gone: its entry leaves the list.
			if err := g.UnlinkOwn(t); err != nil {
				return err
			}
		}
		if orig, ok := kg.text[t.Addr]; ok && g != nil {
			now := make([]byte, len(orig))
			if _, err := g.Kernel().AS.ReadVirtual(t.Addr, now); err != nil || !bytes.Equal(now, orig) {
				ch.restored = false
			}
		}
	}
	for _, t := range ch.next {
		if have[t.Addr] {
			continue
		}
		if g != nil && t.Watch == 0 {
			orig := make([]byte, textBytes)
			if _, err := g.Kernel().AS.ReadVirtual(t.Addr, orig); err == nil {
				kg.text[t.Addr] = orig
			}
		}
		if g != nil {
			// A gated head's guard: its entry goes first into the list
			// (written with the VM stopped), then the watchpoints.
			if err := g.LinkOwn(t); err != nil {
				return err
			}
			ch.linked = append(ch.linked, t)
		}
		if err := setTrap(ctx, ch.c, t); err != nil {
			return err
		}
		ch.added = append(ch.added, t)
	}
	return nil
}

// commitLocked makes next the traps the gate recognises.
//
// Preconditions: ch.kg.mu held.
func (ch *trapChange) commitLocked() {
	for _, t := range ch.removed {
		delete(ch.kg.text, t.Addr)
	}
	ch.kg.traps = ch.next
	if ch.kg.gate != nil {
		ch.kg.gate.SetTraps(ch.next)
	}
}

// undoLocked puts the old traps back: clears what it added, sets what it
// removed.
//
// Preconditions: ch.kg.mu held; the VM stopped.
func (ch *trapChange) undoLocked(ctx context.Context) error {
	var errs []error
	g := ch.kg.gate
	for _, t := range ch.added {
		if err := clearTrap(ctx, ch.c, t); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range ch.linked {
		if err := g.UnlinkOwn(t); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range ch.removed {
		if g != nil {
			if err := g.LinkOwn(t); err != nil {
				errs = append(errs, err)
			}
		}
		if err := setTrap(ctx, ch.c, t); err != nil {
			errs = append(errs, err)
		}
	}
	ch.added, ch.removed, ch.linked = nil, nil, nil
	ch.kg.traps = ch.old
	if ch.kg.gate != nil {
		ch.kg.gate.SetTraps(ch.old)
	}
	return errors.Join(errs...)
}

// describeTraps fills the result's view of the traps in place and the
// syscalls the policy names.
func (m *Monitor) describeTraps(res *api.PolicyResult, traps []gate.Trap, snap *policy.Snapshot) {
	g := m.kg.gate
	for _, t := range traps {
		if !t.Shown() {
			continue // a hook's other wrapper sites and its head's guard
		}
		addr := t.Addr
		if t.Watch != 0 {
			addr = t.Watch
		}
		if head := t.Head(); head != 0 {
			addr = head
		}
		bp := m.trapView(t, snap)
		for _, cl := range []event.Class{event.ClassSyscall, event.ClassFile, event.ClassExec, event.ClassModule} {
			if t.Classes.Has(cl) {
				bp.Classes = append(bp.Classes, cl.String())
			}
		}
		if pa, _, err := g.Kernel().AS.Translate(addr); err == nil {
			bp.PhysAddr = "0x" + strconv.FormatUint(pa, 16)
		}
		res.Breakpoints = append(res.Breakpoints, bp)
	}
	if cov := m.pol.cov.Load(); snap != nil && cov != nil {
		if ops, _ := snap.Policy.Ops(event.ClassSyscall, cov.Observers[event.ClassSyscall]); len(ops) > 0 {
			res.Syscalls = ops
		}
	}
}

// trapView is trap t as the API shows it: for a watchpoint, the watched
// address; for an execution breakpoint, the rules of snap that need it
// and its cost.
func (m *Monitor) trapView(t gate.Trap, snap *policy.Snapshot) api.Breakpoint {
	addr := t.Addr
	if t.Watch != 0 {
		addr = t.Watch
	}
	bp := api.Breakpoint{Symbol: t.Symbol, Site: t.Site, Watchpoint: t.Watch != 0, Syscall: t.Syscall.Op, Addr: "0x" + strconv.FormatUint(addr, 16), Model: t.Model()}
	if entry, head := t.OwnEntry(); entry != 0 {
		// The hook's list head (write-watched) is Addr; the gate's own
		// entry in its list carries the read watchpoint.
		bp.Addr, bp.Entry = "0x"+strconv.FormatUint(head, 16), "0x"+strconv.FormatUint(t.Watch, 16)
	}
	if t.Via == gate.ViaWatch && t.Hook != gate.AtHandler && m.gatePage() != 0 {
		if g := m.kg.cur.load(); g != nil {
			if why, ok := g.OwnEntryUnavailable()[t.Symbol]; ok {
				bp.Cost = "a read watchpoint on the list head, not on the gate's own entry (" + why + "): every read of a hook head on its page takes QEMU's slow path (read() +10 %, kill() +8 %, docs/benchmarks.md \"The watched page\")"
			}
		}
	}
	if t.Watch == 0 {
		bp.Cost = m.breakpointCost()
		if t.Hook != gate.AtHandler && m.cfg.Accel.Accel != "kvm" {
			if g := m.kg.cur.load(); g != nil {
				if why := g.HookWatchUnavailable(); why != "" {
					bp.Cost = strings.TrimSuffix(bp.Cost, "; a watchpoint would not") + "; " + why
				}
			}
		}
		if snap != nil {
			bp.Rules = rulesNeeding(snap.Policy, t)
		}
	}
	return bp
}

// rulesNeeding names the statements of pol that need trap t: those about
// an op of a class the trap decides.
func rulesNeeding(pol *policy.Policy, t gate.Trap) []string {
	var out []string
	seen := map[string]bool{}
	for _, n := range pol.Needs() {
		ops := t.Ops(n.Class)
		if n.Grant || ops == nil {
			continue
		}
		hit := n.Op == "" || ops[0] == ""
		for _, op := range ops {
			hit = hit || op == n.Op || n.Prefix && strings.HasPrefix(op, n.Op)
		}
		if s := fmt.Sprintf("%s (%s)", n.What, n.Pos); hit && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// breakpointCost says what an execution breakpoint costs guest code that
// never reaches it, on this VM's accelerator.
func (m *Monitor) breakpointCost() string {
	if m.cfg.Accel.Accel == "kvm" {
		return "under KVM, nothing until it is hit (an int3 in guest memory)"
	}
	return "under TCG, every guest instruction stream pays for it: QEMU compares each breakpoint at every translation-block lookup (all guest code ~6-30 % slower per breakpoint, docs/benchmarks.md \"Syscall gate\"); a watchpoint would not"
}

// trapSetter is the part of the gdbstub client that sets and clears traps
// (a fake in the tests of the transaction).
type trapSetter interface {
	SetBreakpoint(ctx context.Context, kind gdbrsp.BreakpointKind, addr uint64) error
	ClearBreakpoint(ctx context.Context, kind gdbrsp.BreakpointKind, addr uint64) error
	SetWatchpoint(ctx context.Context, kind gdbrsp.BreakpointKind, addr uint64, n int) error
	ClearWatchpoint(ctx context.Context, kind gdbrsp.BreakpointKind, addr uint64, n int) error
}

// setTrap places a trap: a watchpoint on what a hook trapped by one reads
// first (read or write: KVM's debug registers cannot watch reads alone,
// and nothing writes a list head once the kernel runs), else a software
// breakpoint.
//
// The own-entry model (gate/syscall/ownentry.go) sets a read watchpoint
// on the gate's entry's hook field (its hook's first wrapper site; the
// others set nothing) and a write watchpoint on the list head (its guard):
// a read watchpoint's whole page takes QEMU's slow path for reads, a write
// watchpoint's only for writes.
func setTrap(ctx context.Context, c trapSetter, t gate.Trap) error {
	if t.Watch != 0 {
		return c.SetWatchpoint(ctx, watchKind(t), t.Watch, t.WatchLen)
	}
	if t.Via == gate.ViaOwnEntry {
		return nil
	}
	return c.SetBreakpoint(ctx, gdbrsp.Software, t.Addr)
}

// clearTrap removes what setTrap placed.
func clearTrap(ctx context.Context, c trapSetter, t gate.Trap) error {
	if t.Watch != 0 {
		return c.ClearWatchpoint(ctx, watchKind(t), t.Watch, t.WatchLen)
	}
	if t.Via == gate.ViaOwnEntry {
		return nil
	}
	return c.ClearBreakpoint(ctx, gdbrsp.Software, t.Addr)
}

func watchKind(t gate.Trap) gdbrsp.BreakpointKind {
	switch t.WatchKind() {
	case "write":
		return gdbrsp.WriteWatch
	case "read":
		return gdbrsp.ReadWatch
	}
	return gdbrsp.AccessWatch
}

func (m *Monitor) guestReady() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.readyAt.IsZero()
}

// onTrap handles a breakpoint or watchpoint stop on the debugger goroutine:
// the vCPU QEMU reports and, on a VM with several vCPUs, every other vCPU
// stopped at one of the gate's traps. QEMU reports one vCPU per stop even
// when several hit a breakpoint; without this, a vCPU looping through
// trapped calls could be reported again and again while another waits at
// its breakpoint. Here a trapped call waits at most for the stop in
// progress and its own.
func (m *Monitor) onTrap(ctx context.Context, c *gdbrsp.Client, sr gdbrsp.StopReply) (ours bool, rw *resumeWrites, err error) {
	start := time.Now()
	defer func() {
		if ours && m.metrics != nil {
			metrics.Observe(m.metrics.TrapSeconds, time.Since(start))
		}
	}()
	if va := m.kg.bootWatch.Load(); va != 0 && sr.Reason == "watch" && sr.Addr == va {
		if m.isARM64() {
			// Stopped before the store (kernelgate_aarch64.go).
			if err := m.stepOverWatch(ctx, c, sr.Thread, va); err != nil {
				err = fmt.Errorf("the kernel gate cannot be armed: %w: %w", err, errKeepStopped)
				m.failClosed(err)
				return true, nil, err
			}
		}
		err := m.onBootWatch(ctx, c, va)
		if errors.Is(err, errKeepStopped) {
			m.failClosed(err)
		}
		return true, nil, err
	}
	// A kernel call's stop (inject.go); the other vCPUs are still looked
	// at below: a watched load another vCPU made meanwhile is not
	// reported again.
	callStop, err := m.onCallStop(ctx, c, sr.Thread)
	if err != nil {
		if errors.Is(err, errKeepStopped) {
			// A vCPU left in a foreign frame must not run: the VM ends,
			// with the reason, rather than stay stopped in silence.
			m.failClosed(err)
		}
		return true, nil, err
	}
	g := m.kg.cur.load()
	if g == nil {
		return callStop, nil, nil
	}
	if sr.Reason == "watch" {
		if t, ok := g.TrapAt(sr.Addr); ok && t.IsGuard() {
			if changed, err := g.HeadChanged(t); changed || err != nil {
				var rip uint64
				if regs, err := c.ReadRegisters(ctx); err == nil {
					rip = regs[g.PCReg()]
				}
				return true, nil, m.onHeadWrite(sr.Addr, t.Symbol, rip, err)
			}
			// The head still starts at the gate's entry: QEMU 7.2 reports
			// a vCPU's last watchpoint hit again at its next stop (a hit
			// served on a sibling vCPU, or one of a watchpoint removed
			// since, whose memory the guard's reused), or the guest wrote
			// the value the head holds. Nothing changed: resumed.
		}
	}
	// On one vCPU nothing follows the reported vCPU's handling: its
	// registers may go with the continue.
	ours, rw, err = m.trapVCPU(ctx, c, g, sr.Thread, true, m.cfg.CPUs < 2)
	ours = ours || callStop
	if err != nil || m.cfg.CPUs < 2 {
		return ours, rw, err
	}
	for tid := 1; tid <= m.cfg.CPUs; tid++ {
		if tid == sr.Thread {
			continue
		}
		if err := c.SetThread(ctx, tid); err != nil {
			return ours, nil, err
		}
		pc, err := c.ReadRegister(ctx, g.PCReg())
		if err != nil {
			return ours, nil, err
		}
		if _, ok := g.TrapAt(pc); !ok && !g.MaybeLateOwn(pc) {
			continue
		}
		hit, _, err := m.trapVCPU(ctx, c, g, tid, false, false)
		if err != nil {
			return true, nil, err
		}
		if hit {
			m.kg.siblings.Add(1)
			ours = true
		}
	}
	return ours, nil, nil
}

// scanStopped serves, with the VM stopped by a request (debugger.serve),
// what a trap stop that raced with the request's interrupt would have:
// the boot watchpoint (system_state already SYSTEM_RUNNING: the gate is
// armed now, before init runs on) and every vCPU at one of the gate's
// traps.
func (m *Monitor) scanStopped(ctx context.Context, c *gdbrsp.Client) (*resumeWrites, error) {
	if va := m.kg.bootWatch.Load(); va != 0 {
		if err := m.onBootWatch(ctx, c, va); err != nil {
			if errors.Is(err, errKeepStopped) {
				m.failClosed(err)
			}
			return nil, err
		}
	}
	g := m.kg.cur.load()
	if g == nil {
		return nil, nil
	}
	if m.cfg.CPUs < 2 {
		_, rw, err := m.trapVCPU(ctx, c, g, 1, false, true)
		return rw, err
	}
	for tid := 1; tid <= m.cfg.CPUs; tid++ {
		if _, _, err := m.trapVCPU(ctx, c, g, tid, false, false); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// trapVCPU handles vCPU thread tid if it is at one of g's traps: decides
// its call and enforces the decision in its registers (and memory).
// reported says tid is the thread of the stop reply, which QEMU's gdbstub
// has already made the current one for register and memory packets
// (gdb_set_stop_cpu sets both its c_cpu and g_cpu): one round trip fewer
// per stop. last says nothing uses the gdbstub between this and the
// debugger's continue: the register writes that move an allowed vCPU past
// a watched load are then returned, for the continue to carry
// (debugger.resume), rather than written here.
func (m *Monitor) trapVCPU(ctx context.Context, c *gdbrsp.Client, g *gate.Gate, tid int, reported, last bool) (bool, *resumeWrites, error) {
	if !reported || m.cfg.CPUs > 1 {
		if err := c.SetThread(ctx, tid); err != nil {
			return false, nil, err
		}
	}
	// (A request may have selected another vCPU since the stop; a scan
	// selects each. On one vCPU every selection is thread 1.) Nothing
	// keeps regs past this call: the gate copies what it changes.
	if m.kg.regs == nil {
		m.kg.regs = make(map[string]uint64, 80)
	}
	regs := m.kg.regs
	if err := c.ReadRegistersInto(ctx, regs); err != nil {
		return false, nil, err
	}
	t, ok := g.TrapAt(regs[g.PCReg()])
	if !ok {
		// A gated call made from the gate's own entry without a stop at
		// its site (gate.LateOwnTrap): decided at the call's target.
		t, ok = g.LateOwnTrap(gate.Regs(regs))
	}
	if !ok {
		return false, nil, nil
	}
	for _, name := range g.ExtraRegs() {
		// arm64: current is in SP_EL0, a system register the 'g' packet
		// does not carry. Unread, it is left out: the gate cannot tell
		// whose call it is and fails closed (a deny, audited with why),
		// rather than leave the vCPU at its breakpoint.
		if v, err := c.ReadRegister(ctx, name); err == nil {
			regs[name] = v
		} else {
			m.logf("kernel gate: read %s at a trap: %v", name, err)
		}
	}
	start := time.Now()
	var rw *resumeWrites
	defer func() {
		if rw == nil { // else counted up to the continue (debugger.resume)
			m.kg.handleNanos.Add(uint64(time.Since(start)))
		}
	}()
	m.kg.stops.Add(1)
	out, herr := g.Handle(t, gate.Regs(regs))
	switch {
	case out.FaultIn:
		m.kg.faultIns.Add(1)
	case out.Skipped:
		m.kg.skipped.Add(1)
	default:
		m.kg.decided.Add(1)
	}
	if herr != nil {
		// The deny cannot be emulated without the return address: kill.
		out.Writes, out.Step = g.KillWrites(), false
		out.Decision = m.pol.sec.GateFailure(&out.Event, gate.RuleReadError, herr.Error(), 1)
		out.Decision.Verdict = secserver.Kill
		out.Decided = append(out.Decided, gate.Decided{Event: out.Event, Decision: out.Decision, ReadErr: herr})
	}
	if last && t.Via == gate.ViaOwnEntry && out.Decision.Allows() && herr == nil && len(out.MemWrites) == 0 && !out.Step &&
		len(out.Writes) > 0 && len(out.Writes) <= maxResumeWrites {
		// An allow at the gate's own entry (rax = 0, rip past the call)
		// goes with the continue: a write lost once the vCPU runs would
		// make it call the entry's no-op, which allows too.
		rw = &resumeWrites{regs: regValues(out.Writes), start: start, nanos: &m.kg.handleNanos}
		out.Writes = nil
	}
	if err := enforce(ctx, c, &out); err != nil {
		return true, nil, err
	}
	if out.FaultIn {
		return true, nil, nil // no verdict yet: the call comes back to this trap
	}
	if out.Step {
		if _, err := c.StepThread(ctx, tid); err != nil {
			return true, nil, err
		}
	}
	if t.Via == gate.ViaWatch && len(out.Writes) == 0 && !out.Step {
		// Resumed in place, just after the watched load: it is moved
		// past the next instruction now. Left there, the next stop (a
		// request's, or another vCPU's) could come before it runs again,
		// find it at the trap and decide the same call twice. The gate
		// performs that instruction (a test, push or move) when it can;
		// else one step (which costs QEMU a flush of its translated
		// code). Its register writes go with the continue when this is
		// the stop's last use of the gdbstub: the call is allowed, so
		// a write that fails once the vCPU runs lets nothing through the
		// gate refused, and the VM is ended (debugger.resume).
		moved, err := m.movePastLoad(ctx, c, t, regs, tid, last)
		if err != nil {
			return true, nil, err
		}
		if len(moved) > 0 {
			rw = &resumeWrites{regs: moved, start: start, nanos: &m.kg.handleNanos}
		}
	}
	decided := out.Decided
	if len(decided) == 0 && !out.Skipped {
		decided = []gate.Decided{{Event: out.Event, Decision: out.Decision, ReadErr: out.ReadErr}}
	}
	for _, d := range decided {
		if d.Decision.Audited || !d.Decision.Allows() || d.Decision.Verdict == secserver.Alert {
			m.publishDecision(d)
		}
		m.respondToVerdict(&d.Event, d.Decision.Verdict, d.Decision.Rule)
	}
	return true, rw, nil
}

// movePastLoad moves vCPU tid, stopped just after t's watched load and
// allowed, past the next instruction: performed by the gate
// (gate.EmulateNext) or stepped. A debug exception QEMU still holds for
// the load then stops the VM at an address that is no trap, and is
// resumed. With deferRegs, the instruction's memory store (a push) is
// done here and its register writes are returned for the continue to
// carry; else they are written too and nothing is returned.
func (m *Monitor) movePastLoad(ctx context.Context, c *gdbrsp.Client, t gate.Trap, regs map[string]uint64, tid int, deferRegs bool) ([]gdbrsp.RegValue, error) {
	if writes, mem, ok := gate.EmulateNext(t, gate.Regs(regs)); ok {
		m.kg.emulated.Add(1)
		out := gate.Outcome{Writes: writes, MemWrites: mem}
		if deferRegs && len(writes) <= maxResumeWrites {
			out.Writes = nil
		}
		if err := enforce(ctx, c, &out); err != nil {
			return nil, fmt.Errorf("move vCPU %d past the watched load: %w", tid-1, err)
		}
		if out.Writes != nil {
			return nil, nil
		}
		return regValues(writes), nil
	}
	if _, err := c.StepThread(ctx, tid); err != nil {
		return nil, fmt.Errorf("step vCPU %d past the watched load: %w", tid-1, err)
	}
	return nil, nil
}

// maxResumeWrites bounds the register writes a continue carries
// (gdbrsp.ContinueWithRegisters takes up to 16; EmulateNext makes 1-2).
const maxResumeWrites = 4

func regValues(ws []gate.RegWrite) []gdbrsp.RegValue {
	out := make([]gdbrsp.RegValue, len(ws))
	for i, w := range ws {
		out[i] = gdbrsp.RegValue{Name: w.Reg, Value: w.Value}
	}
	return out
}

// enforce writes an outcome's memory and registers into the current vCPU.
func enforce(ctx context.Context, c *gdbrsp.Client, out *gate.Outcome) error {
	for _, w := range out.MemWrites {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], w.Value)
		if err := c.WriteMemory(ctx, w.Addr, b[:]); err != nil {
			return fmt.Errorf("enforce %s on %s: store at %#x: %w", out.Decision.Verdict, out.Event.Op, w.Addr, err)
		}
	}
	if len(out.Writes) == 0 {
		return nil
	}
	// One burst of 'P' packets: a deny writes rax, the registers the hook
	// saved, rip and rsp, and each round trip is ~50 µs of the stop.
	if err := c.WriteRegisters(ctx, regValues(out.Writes)); err != nil {
		return fmt.Errorf("enforce %s on %s: %w", out.Decision.Verdict, out.Event.Op, err)
	}
	return nil
}
