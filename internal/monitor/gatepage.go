package monitor

import (
	"context"
	"errors"
	"fmt"
	"time"

	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
)

// The kernel gate's own guest page (gate/syscall/ownentry.go): under TCG
// the gated LSM hooks are trapped by read watchpoints on entries of the
// gate's own, linked first into their lists, on a page nobody else in the
// guest knows. The page is allocated once per guest boot, by the guest
// kernel itself, through a kernel call from below (inject.go:
// get_zeroed_page at the timer interrupt, hard-irq context, so
// GFP_ATOMIC), right after the boot arming at SYSTEM_RUNNING, which armed
// the head model meanwhile. It is never freed. Its address stays with the
// monitor across QEMU restarts keeping RAM and monitor upgrades (the
// handover); a rollback replaces the guest's RAM, and a new page is
// allocated then.

// gfpAtomic is the gfp mask the page is allocated with: __GFP_HIGH (0x20)
// | __GFP_KSWAPD_RECLAIM (0x800), which is GFP_ATOMIC from Linux 6.3 on and
// GFP_ATOMIC without __GFP_ATOMIC (0x200) before: no __GFP_DIRECT_RECLAIM,
// so the allocation never sleeps (safe in the timer interrupt), it only
// does not dip into the atomic reserves before 6.3. These values hold for
// the gfp bit layout in which __GFP_ZERO is 0x100 (older kernels had
// __GFP_ZERO at 0x8000 and __GFP_KSWAPD_RECLAIM higher up): checked on the
// guest itself before the call, from the constant its get_zeroed_page ORs
// into the mask (gate.GFPZeroIn; Debian's 6.1.0-57: `or $0x100,%edi`), and
// kernels outside 5.0-6.12 are refused (kernelInGFPRange).
const gfpAtomic = 0x820

// gfpZero is __GFP_ZERO in the layout gfpAtomic assumes.
const gfpZero = 0x100

// gatePageWait bounds the wait for a timer interrupt to allocate the page.
const gatePageWait = 10 * time.Second

// gatePage returns the virtual address (direct map) of the kernel gate's
// own guest page, 0 when there is none: the gate's LSM entries
// (struct security_hook_list, one per hook trapped by the own-entry model)
// and the "gatevisor" string they name as their LSM lie on it. The IDS's
// hook-list check accepts list entries on this page as the gate's.
func (m *Monitor) gatePage() uint64 { return m.kg.page.Load() }

// ownEntryWanted reports whether this VM traps hooks on a page of the
// gate's own: TCG on x86-64 (under KVM, debug registers cost nothing
// until hit and there are four: the head model stays).
func (m *Monitor) ownEntryWanted() bool {
	return m.cfg.Accel.Accel != "kvm" && !m.isARM64() && m.maxWatchpoints() > 0
}

// kernelInGFPRange reports whether the guest's kernel release is one
// gfpAtomic is used on (5.0 through 6.12).
func kernelInGFPRange(release string) error {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return fmt.Errorf("the kernel release %q is not a version", release)
	}
	v := major*1000 + minor
	if v < 5000 || v > 6012 {
		return fmt.Errorf("kernel %s: the gfp mask of the gate's page is used on Linux 5.0 to 6.12 only", release)
	}
	return nil
}

// wantGatePage starts the allocation of the gate's page, once per guest
// boot (a rollback may start another), when this VM traps hooks on one,
// the kernel gate has traps in place, and the kernel has the hook lists.
func (m *Monitor) wantGatePage() {
	g := m.kg.cur.load()
	if !m.ownEntryWanted() || g == nil || m.gatePage() != 0 || !m.kg.armed() || g.HookWatchUnavailable() != "" {
		return
	}
	if m.kg.pageTried.CompareAndSwap(false, true) {
		go m.setupGatePage()
	}
}

// setupGatePage allocates the gate's page in the guest and re-arms the
// policy in force on it. Run once the boot arming is done (the guest
// runs). A failure keeps the head model (correct, slower): it is logged
// and status shows it.
func (m *Monitor) setupGatePage() {
	if err := m.allocGatePage(); err != nil {
		msg := err.Error()
		m.kg.pageErr.Store(&msg)
		m.logf("kernel gate: no page of its own (the hooks stay on the list-head model): %v", err)
	}
}

func (m *Monitor) allocGatePage() error {
	g := m.kg.cur.load()
	if g == nil {
		return errors.New("the kernel gate is not built")
	}
	k := g.Kernel()
	if err := kernelInGFPRange(k.Profile.Release); err != nil {
		return err
	}
	fn, err := k.Addr("get_zeroed_page")
	if err != nil {
		return err
	}
	code := make([]byte, 64)
	if _, err := k.AS.ReadVirtual(fn, code); err != nil {
		return fmt.Errorf("read get_zeroed_page: %w", err)
	}
	if zero, ok := gate.GFPZeroIn(code); !ok || zero != gfpZero {
		return fmt.Errorf("this kernel's get_zeroed_page does not OR __GFP_ZERO as %#x (found %#x, %v): its gfp bits are laid out otherwise, and %#x would not mean GFP_ATOMIC", gfpZero, zero, ok, gfpAtomic)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cr, err := m.callKernel(ctx, "get_zeroed_page", gatePageWait, func(context.Context) ([]uint64, error) {
		return []uint64{gfpAtomic}, nil
	})
	if err != nil {
		return fmt.Errorf("allocate it: %w", err)
	}
	if cr.ret == 0 {
		return errors.New("allocate it: get_zeroed_page(GFP_ATOMIC) returned no page")
	}
	return m.useGatePage(ctx, cr.ret)
}

// useGatePage gives the gate the page at va and re-arms the policy in
// force with it, in one move of the traps with the VM stopped.
func (m *Monitor) useGatePage(ctx context.Context, va uint64) error {
	g := m.kg.cur.load()
	if err := g.SetOwnPage(va, m.ram); err != nil {
		return err
	}
	m.kg.page.Store(va)
	m.kg.pageErr.Store(nil)
	for h, why := range g.OwnEntryUnavailable() {
		m.logf("kernel gate: %s stays on the list-head model: %s", h, why)
	}
	m.pol.mu.Lock()
	defer m.pol.mu.Unlock()
	snap := m.pol.snap.Load()
	var n int
	err := m.dbg.Do(ctx, func(ctx context.Context, c *gdbrsp.Client) error {
		_, res, err := m.applyKernelLocked(ctx, c, snap)
		n = len(res.Breakpoints)
		return err
	})
	if errors.Is(err, errKeepStopped) {
		m.failClosed(err)
	}
	if err != nil {
		return fmt.Errorf("re-arm the policy on the page at %#x: %w", va, err)
	}
	m.logf("kernel gate: its own page at %#x; policy re-armed: %d traps", va, n)
	return nil
}

// restoreGatePage gives a gate built after a monitor upgrade the page the
// old monitor used (the handover's), before the policy is armed.
func (m *Monitor) restoreGatePage() error {
	va := m.kg.page.Load()
	if va == 0 {
		return nil
	}
	g := m.kg.cur.load()
	if g == nil {
		return errors.New("the kernel gate is not built")
	}
	if err := g.SetOwnPage(va, m.ram); err != nil {
		m.kg.page.Store(0)
		return fmt.Errorf("the gate's page %#x from the handover: %w", va, err)
	}
	return nil
}

// headCheckInterval is how often the gated list heads are read back while
// the guest runs (watchGateHeads).
const headCheckInterval = 20 * time.Millisecond

// watchGateHeads reads every gated hook's list head back through the RAM
// mapping every headCheckInterval, and fails the VM closed when one no
// longer starts at the gate's entry. The heads' write watchpoints see
// writes through the kernel image's address only (a watchpoint watches a
// virtual address): a guest that writes a head through another mapping of
// its page (the direct map's alias of the kernel image, or one it made)
// unlinks the gate's entry unseen, and the gated calls would then run
// unguarded. This bounds that to one interval. Runs until the monitor
// ends; it reads nothing while the gate has no page of its own.
func (m *Monitor) watchGateHeads() {
	for waitFor(m, time.After(headCheckInterval)) {
		head, symbol, err := m.gateHeadChanged()
		if err != nil {
			_ = m.onHeadWrite(head, symbol, 0, err)
			return
		}
		if head != 0 {
			_ = m.onHeadWrite(head, symbol, 0, errUnseenWrite)
			return
		}
	}
}

// errUnseenWrite says a head changed without a stop at its watchpoint.
var errUnseenWrite = errors.New("written through a mapping the write watchpoint does not watch, found by the monitor's read-back")

// gateHeadChanged returns the first gated head that no longer starts at
// the gate's entry (0: none), with its hook's wrapper, or an error when a
// head cannot be read. Heads are not read while the guest's RAM is being
// replaced (a rollback, kg.ramSwap).
func (m *Monitor) gateHeadChanged() (head uint64, symbol string, err error) {
	m.kg.mu.Lock()
	defer m.kg.mu.Unlock()
	g := m.kg.gate
	if g == nil || m.kg.page.Load() == 0 || m.kg.ramSwap {
		return 0, "", nil
	}
	for _, t := range m.kg.traps {
		if !t.IsGuard() {
			continue
		}
		changed, err := g.HeadChanged(t)
		if changed || err != nil {
			_, h := t.OwnEntry()
			return h, t.Symbol, err
		}
	}
	return 0, "", nil
}

// onHeadWrite handles a stop at a gated head's write watchpoint that
// changed the head (gate.HeadChanged): nothing writes security_hook_heads
// once the kernel runs (__ro_after_init), so the guest is tampering with
// the gate's hook lists. The VM is ended (fail
// closed) with the reason, and a critical finding goes to the events.
func (m *Monitor) onHeadWrite(head uint64, symbol string, rip uint64, readErr error) error {
	err := fmt.Errorf("the guest wrote the list head of %s at %#x (rip %#x), which the kernel gate guards: tampering with the gate's LSM hook list", symbol, head, rip)
	if errors.Is(readErr, errUnseenWrite) {
		err = fmt.Errorf("the list head of %s at %#x no longer starts at the kernel gate's entry (%w): tampering with the gate's LSM hook list", symbol, head, readErr)
		readErr = nil
	}
	if readErr != nil {
		err = fmt.Errorf("%w (the head could not be read back: %w)", err, readErr)
	}
	if m.events != nil {
		m.events.publish(monitoring.Point{Time: time.Now().UTC(), VM: m.cfg.Name, Kind: monitoring.Finding,
			Finding: &ids.Finding{Check: "kernel-gate", Severity: ids.SeverityCritical, Summary: err.Error(), Name: symbol, Addr: head, Target: rip}})
	}
	err = fmt.Errorf("%w: %w", err, errKeepStopped)
	m.failClosed(err)
	return err
}

// replanWithoutPageLocked, after a rollback, keeps the gate's page when
// the restored RAM has every gated list starting at the gate's entry (a
// snapshot taken under the traps in force); else it takes over the page
// the snapshot was taken with (adoptSnapshotPageLocked), which that RAM
// holds with the gate's entries linked; else it forgets the page and
// replans the policy in force without it (the list-head model), nothing
// written to the guest: the restored lists are as the snapshot had them,
// with entries of the gate's linked in them (harmless: each calls the
// kernel's no-op, on a page allocated in that RAM) or not. The traps are
// then set on the new QEMU as planned, and a new page is allocated once
// the guest runs.
//
// Preconditions: m.kg.mu held; the VM stopped.
func (m *Monitor) replanWithoutPageLocked() {
	g := m.kg.gate
	if g == nil {
		m.kg.page.Store(0)
		return
	}
	// A snapshot taken under the traps in force has every gated list
	// start at the gate's entry: its page is allocated in that RAM too,
	// and stays the gate's.
	guards, linked := linkedGuards(g, m.kg.traps)
	snapPage := m.kg.snapPage.Swap(0)
	if len(guards) > 0 && linked == len(guards) {
		m.kg.dropPage.Store(false)
		return
	}
	m.kg.page.Store(0)
	_ = g.SetOwnPage(0, nil)
	snap := m.pol.snap.Load()
	if snap == nil {
		return
	}
	if snapPage != 0 {
		err := m.adoptSnapshotPageLocked(g, snap, snapPage)
		if err == nil {
			m.kg.dropPage.Store(false)
			return
		}
		m.logf("kernel gate: the snapshot's page at %#x is not taken over (a new one is allocated; entries the snapshot's RAM links on it stay, calling the kernel's no-op): %v", snapPage, err)
		m.kg.page.Store(0)
		_ = g.SetOwnPage(0, nil)
	}
	traps, _ := g.Plan(snap.Policy)
	m.kg.traps = traps
	g.SetTraps(traps)
}

// adoptSnapshotPageLocked makes va, the gate's page when the snapshot
// just restored was taken, the gate's page again: the restored RAM holds
// it, with the gate's entries linked first in the lists the snapshot's
// policy gated. Without this the gate would allocate another page, and
// those entries would stay linked off the gate's page, where the IDS's
// lsm-hook check rightly reports them. Only a page that still reads as
// the gate's (its LSM name first, and at least one gated list starting
// at its entry) is taken: nothing is written to a page the manifest
// merely names. Hooks the policy in force gates that the snapshot's did
// not are linked now.
//
// Preconditions: m.kg.mu held; the VM stopped.
func (m *Monitor) adoptSnapshotPageLocked(g *gate.Gate, snap *policy.Snapshot, va uint64) error {
	if err := g.CheckOwnName(va, m.ram); err != nil {
		return err
	}
	if err := g.SetOwnPage(va, m.ram); err != nil {
		return err
	}
	traps, _ := g.Plan(snap.Policy)
	guards, linked := linkedGuards(g, traps)
	if linked == 0 {
		return errors.New("no gated list starts at an entry on it")
	}
	for _, t := range guards {
		if err := g.LinkOwn(t); err != nil {
			return err
		}
	}
	m.kg.page.Store(va)
	m.kg.traps = traps
	g.SetTraps(traps)
	m.logf("kernel gate: its page at %#x again, as the snapshot had it (%d of %d gated lists linked there already)", va, linked, len(guards))
	return nil
}

// linkedGuards returns the head guards among traps, and how many of their
// lists start at the gate's entry in guest memory now.
func linkedGuards(g *gate.Gate, traps []gate.Trap) (guards []gate.Trap, linked int) {
	for _, t := range traps {
		if !t.IsGuard() {
			continue
		}
		guards = append(guards, t)
		if changed, err := g.HeadChanged(t); err == nil && !changed {
			linked++
		}
	}
	return guards, linked
}

// setRAMSwap marks the guest's RAM as being replaced (on) or done (off):
// the gated heads are not read back meanwhile. Taken under kg.mu, so that
// a read-back in progress finishes on the RAM it began on.
func (m *Monitor) setRAMSwap(on bool) {
	m.kg.mu.Lock()
	m.kg.ramSwap = on
	m.kg.mu.Unlock()
}
