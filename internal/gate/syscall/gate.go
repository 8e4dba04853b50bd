package gate

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Decider is the security server as the gate sees it.
type Decider interface {
	Decide(*event.Event) secserver.Decision
	// GateFailure denies an event the gate could not read, and audits it.
	GateFailure(ev *event.Event, rule, reason string, errno int32) secserver.Decision
}

// RuleReadError is the rule of fail-closed denies of unreadable events.
const RuleReadError = "syscall-gate-read-error"

const ePerm = 1

// Trap is one breakpoint: a syscall handler's address and what it means.
type Trap struct {
	Addr    uint64
	Symbol  string
	Syscall Syscall
	// Skip is the length of the no-op at the handler's entry (endbr64, a
	// 5-byte nop) that an allowed call steps over by moving rip; 0 means
	// the caller single-steps the first instruction instead.
	Skip int
	// Hook is where the trap sits. Classes are the event classes armed
	// there; a hook decides the syscall events of Members (the syscalls
	// of the open or execve family the policy names).
	Hook    Hook
	Classes classSet
	Members []Syscall
	// Compat marks the i386 entry of a syscall (arguments in bx, cx, dx,
	// si, di, bp).
	Compat bool
	// Via says whether Addr is the hook's own entry or a call (or tail
	// jump) to it in a caller, Len bytes long; Target is then the hook's
	// entry and Site names the caller's instruction ("do_dentry_open+0xf3").
	Via    Via
	Len    int
	Target uint64
	Site   string
	// Watch, for a hook trapped by a read watchpoint (Via ViaWatch), is
	// the variable watched (WatchLen bytes: 8 for a list head); Addr is
	// then the rip the vCPU stops at, just after the hook read it
	// (watch.go).
	Watch    uint64
	WatchLen int
	model    entryModel
	next     nextInsn
	own      ownTrap // Via ViaOwnEntry or ViaHeadGuard (ownentry.go)
}

// Outcome is what Handle decided and how to enforce it.
type Outcome struct {
	Event    event.Event
	Decision secserver.Decision
	// Writes are the registers to set before resuming; an allow with
	// Step set needs the first instruction single-stepped instead.
	Writes []RegWrite
	Step   bool
	// MemWrites are stored before Writes are applied.
	MemWrites []MemWrite
	// FaultIn says no verdict was reached yet: the vCPU is sent through the
	// kernel's strnlen_user to fault in the page holding the path, and
	// comes back to the same breakpoint (see faultIn).
	FaultIn bool
	// ReadErr is why part of the event could not be read (the event was
	// decided with what could).
	ReadErr error
	// Kill says the verdict kills the process (Writes and MemWrites do it).
	Kill bool
	// Skipped says the hit was not the policy's to decide (an exec's own
	// opens at a hook, a kernel thread's): resumed with no verdict asked.
	Skipped bool
	// Decided are the events decided at this hit, in order, each with its
	// decision: a hook hit may mean several (a syscall open, a file open
	// and its write); the last is the one enforced.
	Decided []Decided
}

// Decided is one event a trap hit decided.
type Decided struct {
	Event    event.Event
	Decision secserver.Decision
	ReadErr  error
}

// Gate turns breakpoint hits into events and verdicts into register
// writes. It is safe for concurrent use.
type Gate struct {
	k           *linux.Kernel
	isa         *isa // the guest's instruction set (isa.go)
	d           Decider
	ptregs      PtRegsLayout
	doGroupExit uint64
	strnlenUser uint64 // 0: no fault-in; unreadable paths fail closed at once

	// planMu guards how hooks are trapped, worked out on first need:
	// watches are the hooks trapped by a watchpoint on their list head
	// (watch.go), sites the calls to the others, trapped instead of their
	// entries (hooks.go); nil until then.
	planMu       sync.Mutex
	sites        map[Hook][]linux.CodeRef
	watches      map[Hook]hookWatch
	maxWatch     int  // UseWatchpoints
	watchGlobals bool // UseWatchpoints
	// observers are what the gate can observe on this kernel (Observers).
	observers map[event.Class]policy.Observer
	// own is the gate's own page, under TCG (ownentry.go).
	own ownState

	mu    sync.Mutex // guards the fields below
	traps map[uint64]Trap
	skips map[uint64]int // entry no-op length by address, read once (before any int3 under KVM)
	// pending maps the kernel stack pointer of a call sent to fault in its
	// path to what the handler must get back.
	pending map[uint64]pendingCall
	// hooks are the LSM hooks this kernel has (hooks.go).
	hooks map[Hook]uint64
	// kitModules are the SHA-256s of the kit's modules (SetKitModules).
	kitModules map[string]bool
	// created are creates allowed at AtPathMknod, whose AtFileOpen hit is
	// not decided twice.
	created map[createdKey]bool

	// taskMu guards the per-stop readers below, kept between stops
	// (currentTask): the task reader's buffers and page_offset_base (set
	// at boot, never moved), and the per-CPU offset of current_task (a
	// link-time constant of this kernel's profile). Nothing the guest can
	// change afterwards is kept: every stop reads the task afresh.
	taskMu   sync.Mutex
	tasks    *linux.TaskReader // nil until the first stop
	curOff   uint64            // current_task's per-CPU offset, once found
	curOffOK bool
}

// pendingCall is a handler's state a fault-in changed: its first argument
// (the pt_regs pointer: rdi, x0) and, on arm64, its return address (x30,
// which the call to strnlen_user overwrote; x86-64 keeps it at [rsp]).
type pendingCall struct {
	arg0, lr uint64
}

// maxPending bounds calls in flight through a fault-in (one per task at
// most; a guest cannot make the table grow without bound).
const maxPending = 4096

// New prepares a gate for a located kernel.
func New(k *linux.Kernel, d Decider) (*Gate, error) {
	a := isaOf(k.Profile)
	layout := NewPtRegsLayout
	if a.arm64 {
		layout = armPtRegsLayout
	}
	l, err := layout(func(f string) (uint64, error) { return k.Profile.FieldOffset("pt_regs." + f) })
	if err != nil {
		return nil, err
	}
	dge, err := k.Addr("do_group_exit")
	if err != nil {
		return nil, fmt.Errorf("gate: the kill action needs do_group_exit: %w", err)
	}
	g := &Gate{k: k, isa: a, d: d, ptregs: l, doGroupExit: dge, traps: map[uint64]Trap{}, skips: map[uint64]int{}, pending: map[uint64]pendingCall{}}
	if a, err := k.Addr("strnlen_user"); err == nil {
		g.strnlenUser = a
	}
	g.hooks = hookAddrs(k)
	g.observers = Observers(k.Profile)
	g.created = map[createdKey]bool{}
	return g, nil
}

// UseWatchpoints lets Plan trap at most max hooks with watchpoints on
// what they read first (watch.go); 0 turns them off. On a VM with several
// vCPUs the caller must look at every vCPU at each stop: QEMU 7.2's TCG
// reports one vCPU per stop and not a watchpoint hit on another that
// happened meanwhile (measured: 25 of 200 concurrent denied opens slipped
// through when only the reported vCPU was served), and must move a vCPU
// allowed at a watched load past it (EmulateNext). Under KVM, watchpoints
// are debug registers: at most 4. Call before the first Plan.
//
// globals says whether a hook may be watched on a global variable other
// than its list head (hookDef.watchVar): under TCG a watchpoint makes every
// access to its 4 KiB page take QEMU's slow path, and modules_disabled
// shares its page with the timekeeper (tk_core), which every clock read
// and timer tick touches (measured: getpid +127 % under TCG); KVM's debug
// registers watch the 4 bytes alone.
func (g *Gate) UseWatchpoints(max int, globals bool) {
	if g.isa.arm64 {
		max = 0 // no entry model for AArch64 code (isa_aarch64.go)
	}
	g.planMu.Lock()
	defer g.planMu.Unlock()
	g.maxWatch, g.watchGlobals = max, globals
}

// Prepare does ahead of the first Plan the slow part of it that can be
// done while the kernel boots: when hooks will not be trapped by
// watchpoints, the scan of the kernel text for their call sites (tens of
// milliseconds; direct calls are never patched at boot).
func (g *Gate) Prepare() {
	g.planMu.Lock()
	defer g.planMu.Unlock()
	if g.maxWatch == 0 {
		g.ensureSitesLocked()
	}
}

// ensureSitesLocked scans for the hooks' call sites once.
//
// Preconditions: g.planMu held.
func (g *Gate) ensureSitesLocked() {
	if g.sites == nil {
		g.sites = hookSites(g.k, g.hooks)
	}
}

// Plan works out the traps that observe what pol needs (Policy.Ops, per
// class, against the gate's Observers): syscalls at their hooks or
// handlers, file ops, execs and module loads and unloads at their hooks.
// Names the kernel has no handler for are returned in missing (Check
// refuses such a policy, so only an advisory one gets here with them).
func (g *Gate) Plan(pol *policy.Policy) (traps []Trap, missing []string) {
	obs := g.observers
	seen := map[uint64]bool{}
	add := func(t Trap) {
		if !seen[t.Addr] {
			seen[t.Addr] = true
			traps = append(traps, t)
		}
	}
	type armed struct {
		classes classSet
		members []Syscall
	}
	hooked := map[Hook]*armed{}
	arm := func(h Hook, c event.Class) *armed {
		a := hooked[h]
		if a == nil {
			a = &armed{}
			hooked[h] = a
		}
		a.classes |= setOf(c)
		return a
	}
	names, _ := pol.Ops(event.ClassSyscall, obs[event.ClassSyscall])
	named := map[string]bool{}
	for _, n := range names {
		named[n] = true
	}
	for _, n := range names {
		for _, sc := range Expand(n) {
			// A member named on its own is reported under its own name.
			if sc.Name != n && named[sc.Name] {
				continue
			}
			hs := g.hooksFor(sc.Name)
			if sc.Name == "ptrace" {
				hs = g.ptraceHooks(pol)
			}
			if len(hs) > 0 {
				for _, h := range hs {
					a := arm(h, event.ClassSyscall)
					a.members = append(a.members, sc)
				}
				continue
			}
			sym := g.isa.handler(sc.Name)
			addr, err := g.k.Addr(sym)
			if err != nil {
				if sc.Name == n {
					missing = append(missing, n)
				}
				continue
			}
			add(Trap{Addr: addr, Symbol: sym, Syscall: sc, Skip: g.skip(addr), Classes: setOf(event.ClassSyscall)})
			// The same call through int 0x80 or from a 32-bit process
			// enters the kernel at its i386 handler (an AArch32 task's at
			// its compat wrapper when it has one; else at the native
			// handler, with the arguments in the same pt_regs slots).
			for _, sym := range g.isa.compatHandlers(sc.Name) {
				if addr, err := g.k.Addr(sym); err == nil {
					add(Trap{Addr: addr, Symbol: sym, Syscall: sc, Skip: g.skip(addr), Compat: true, Classes: setOf(event.ClassSyscall)})
					break
				}
			}
		}
	}
	for _, cl := range []struct {
		class event.Class
		hooks map[string][]Hook
	}{{event.ClassFile, fileOpHooks}, {event.ClassModule, moduleOpHooks}} {
		ops, _ := pol.Ops(cl.class, obs[cl.class])
		for _, op := range ops {
			if cl.class == event.ClassModule && op == "unload" && g.capableUnload(pol) {
				arm(AtCapable, event.ClassModule)
				continue
			}
			for _, h := range cl.hooks[op] {
				if g.hooks[h] != 0 {
					arm(h, cl.class)
				}
			}
		}
	}
	if ops, all := pol.Ops(event.ClassExec, obs[event.ClassExec]); (all || len(ops) > 0) && g.hooks[AtExec] != 0 {
		arm(AtExec, event.ClassExec)
	}
	g.planMu.Lock()
	defer g.planMu.Unlock()
	if len(hooked) > 0 && g.maxWatch > 0 {
		g.ensureWatchesLocked()
	}
	// Hooks in a fixed order, so that the watchpoints a limit admits do
	// not change from one plan to the next.
	watching := 0
	for h := AtFileOpen; h < numHooks; h++ {
		a := hooked[h]
		if a == nil {
			continue
		}
		addr := g.hooks[h]
		op := ""
		for _, m := range a.members {
			if op == "" || m.Op != m.Name { // a family's name wins for calls no member made
				op = m.Op
			}
		}
		t := Trap{Addr: addr, Symbol: g.isa.hookSym(h), Syscall: Syscall{Name: h.String(), Op: op, Path: -1, Dirfd: -1, How: -1},
			Hook: h, Classes: a.classes, Members: a.members}
		if own := g.ownTraps(h, t); own != nil && watching < g.maxWatch {
			watching++
			for _, ot := range own {
				add(ot)
			}
			continue
		}
		if w, ok := g.watches[h]; ok && watching < g.maxWatch && (hookDefs[h].watchVar == "" || g.watchGlobals) {
			watching++
			t.Addr, t.Via, t.Watch, t.WatchLen, t.model, t.Target, t.next = w.model.Stop, ViaWatch, w.head, w.size, w.model, addr, w.next
			t.Site = "read of " + watchName(h)
			add(t)
			continue
		}
		g.ensureSitesLocked()
		sites := g.sitesFor(h, a.classes)
		if len(sites) == 0 {
			t.Skip = g.skip(addr)
			add(t)
			continue
		}
		for _, site := range sites {
			st := t
			st.Addr, st.Len, st.Target, st.Site = site.Addr, site.Len, addr, site.Where
			st.Via = ViaCall
			if site.Kind == linux.RefJump {
				st.Via = ViaJump
			}
			add(st)
		}
	}
	sort.Slice(traps, func(i, j int) bool { return traps[i].Addr < traps[j].Addr })
	return traps, missing
}

// ensureWatchesLocked models the hooks' entries for watchpoints once.
// Modelled from the live code on first use, once the kernel runs: during
// boot ftrace has not yet turned the hooks' __fentry__ calls into no-ops.
//
// Preconditions: g.planMu held.
func (g *Gate) ensureWatchesLocked() {
	if g.watches == nil {
		g.watches = hookWatches(g.k, g.hooks)
	}
}

// HookWatchUnavailable says why this kernel's LSM hooks cannot be trapped
// by watchpoints ("" when they can). The watchpoints watch the hook's list
// head in security_hook_heads, which the hook reads before calling the
// LSMs; from Linux 6.9 on (Debian's 6.12) the hooks call the LSMs through
// static calls guarded by static keys, both patched into the hooks' code
// (static_calls_table), so no hook reads any variable a watchpoint could
// watch. Those hooks are then trapped by breakpoints, at their call sites
// when that provably catches every call, else at their entries.
func (g *Gate) HookWatchUnavailable() string {
	if g.isa.arm64 {
		return "on arm64 guests every LSM hook is trapped by a breakpoint at its first instruction: the gate has no AArch64 model of a hook's code up to its list-head load, security_hook_heads is not among the arm64 kallsyms' text symbols, and QEMU's ARM targets stop before a watched access, so each watch stop would need a step (docs/design.md, \"Kernel gate on arm64\")"
	}
	if _, err := g.k.Addr("security_hook_heads"); err == nil {
		return ""
	}
	if _, err := g.k.Addr("static_calls_table"); err == nil {
		return "this kernel calls its LSM hooks through static calls (static_calls_table, Linux 6.9+): no security_hook_heads list for a watchpoint to watch, so LSM hooks are trapped by breakpoints"
	}
	return "this kernel has no security_hook_heads: LSM hooks are trapped by breakpoints"
}

// watchable reports whether Plan would trap every hook in hs with a
// watchpoint (the limit aside: the hooks that decide instead of a handler
// come last in Plan's order, and only a VM allowed 64 watchpoints, TCG
// with one vCPU, plans more than a few).
func (g *Gate) watchable(hs ...Hook) bool {
	g.planMu.Lock()
	defer g.planMu.Unlock()
	if g.maxWatch == 0 {
		return false
	}
	g.ensureWatchesLocked()
	for _, h := range hs {
		if _, ok := g.watches[h]; !ok || g.hooks[h] == 0 || hookDefs[h].watchVar != "" && !g.watchGlobals {
			return false
		}
	}
	return true
}

// ptrace requests (uapi linux/ptrace.h; kernel ABI).
const (
	ptraceTraceme = 0
	ptraceAttach  = 16
	ptraceSeize   = 0x4206
)

// ptraceHooks returns the LSM hooks that decide the ptrace syscall for
// pol instead of its handlers, or nil to trap the handlers.
//
// Why: under TCG a handler breakpoint slows all guest code (≥ 6 %, see
// docs/benchmarks.md), a watchpoint on a hook's list head does not. The
// hooks see only the requests that ask for a tracer relation: an attach
// or seize at security_ptrace_access_check (once the kernel's own
// credential and dumpability checks have passed — an attach the kernel
// refuses anyway is not seen), PTRACE_TRACEME at security_ptrace_traceme.
// So they are used only when every statement about ptrace is about those
// requests (policy.ArgValues on the request): every other request, and
// every attach the kernel refuses itself, reaches only silent allows.
// Every other request (PEEK, POKE, CONT, ...) acts on a tracee the caller
// is already attached to, which an attach or TRACEME decided.
func (g *Gate) ptraceHooks(pol *policy.Policy) []Hook {
	vals, bounded := pol.ArgValues(event.ClassSyscall, "ptrace", 0)
	if !bounded || len(vals) == 0 {
		return nil
	}
	var access, traceme bool
	for _, v := range vals {
		switch v {
		case ptraceAttach, ptraceSeize:
			access = true
		case ptraceTraceme:
			traceme = true
		default:
			return nil
		}
	}
	var hs []Hook
	if access {
		hs = append(hs, AtPtraceAccess)
	}
	if traceme {
		hs = append(hs, AtPtraceTraceme)
	}
	if !g.watchable(hs...) {
		return nil
	}
	if access {
		// The mode argument tells an attach from a /proc read at once;
		// without it every /proc read would be decided in full.
		g.planMu.Lock()
		lost := g.watches[AtPtraceAccess].model.Args[1] == ""
		g.planMu.Unlock()
		if lost {
			return nil
		}
	}
	return hs
}

// capableUnload reports whether module unload is decided for pol at
// security_capable (AtCapable) rather than at __do_sys_delete_module.
//
// Why: __do_sys_delete_module is watched on modules_disabled, which under
// TCG shares its 4 KiB page with the timekeeper (every clock read takes
// QEMU's slow path: getpid +127 %), and trapped at its handlers by
// breakpoints otherwise (≥ 6 % each on all guest code). Its first act is
// capable(CAP_SYS_MODULE), whose list head lies on the page the file
// hooks' watchpoints already watch. The price: every capable() call in
// the guest stops the vCPU (resumed at once unless it is
// delete_module's), and a deny can carry only EPERM, which is what
// capable() failing means — so this is used only when every deny or kill
// of an unload the policy can give carries EPERM (policy.DenyErrnos).
func (g *Gate) capableUnload(pol *policy.Policy) bool {
	g.planMu.Lock()
	globals := g.watchGlobals
	g.planMu.Unlock()
	if globals || g.hooks[AtCapable] == 0 {
		return false
	}
	for _, e := range pol.DenyErrnos(event.ClassModule, "unload") {
		if e != ePerm {
			return false
		}
	}
	if !g.watchable(AtCapable) {
		return false
	}
	g.planMu.Lock()
	defer g.planMu.Unlock()
	// Every capable() call stops: telling delete_module's from the others
	// needs the capability argument where the stop finds it.
	return g.watches[AtCapable].model.Args[2] != ""
}

// watchName names what a hook's watchpoint watches.
func watchName(h Hook) string {
	if d := hookDefs[h]; d.watchVar != "" {
		return d.watchVar
	}
	return "security_hook_heads." + hookDefs[h].head
}

// hooksFor returns the hooks that decide syscall name on this kernel, or
// none when it is decided at its handler.
func (g *Gate) hooksFor(name string) []Hook {
	var out []Hook
	for _, h := range hooksOf[name] {
		if g.hooks[h] != 0 {
			out = append(out, h)
		}
	}
	return out
}

var (
	endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}
	nop5    = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
)

// skip returns the length of the no-op at addr (0: none recognised).
func (g *Gate) skip(addr uint64) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n, ok := g.skips[addr]; ok {
		return n
	}
	var b [5]byte
	n := 0
	if _, err := g.k.AS.ReadVirtual(addr, b[:]); err == nil {
		switch {
		case g.isa.arm64:
			n = skipARM64(b[:])
		case bytes.HasPrefix(b[:], endbr64):
			n = len(endbr64)
		case bytes.Equal(b[:], nop5):
			n = len(nop5)
		}
	}
	g.skips[addr] = n
	return n
}

// SetTraps makes traps the ones Handle recognises.
func (g *Gate) SetTraps(traps []Trap) {
	m := make(map[uint64]Trap, len(traps))
	for _, t := range traps {
		m[t.Addr] = t
	}
	g.mu.Lock()
	g.traps = m
	g.mu.Unlock()
}

// TrapAt returns the trap at addr, if any.
func (g *Gate) TrapAt(addr uint64) (Trap, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.traps[addr]
	return t, ok
}

// Handle decides one breakpoint hit of a vCPU stopped at a trap's address
// and returns how to enforce the verdict. It fails only when the verdict
// cannot be enforced (the return address is unreadable); the caller then
// denies with EPERM if it can, and reports the error.
func (g *Gate) Handle(t Trap, regs Regs) (Outcome, error) {
	if t.Hook != AtHandler {
		return g.handleHook(t, regs)
	}
	saved, retried := g.takePending(regs[g.isa.sp])
	if retried {
		regs = Apply(regs, g.restorePending(saved))
	}
	ev, unmapped, readErr := g.buildEvent(t, regs)
	if unmapped != 0 && !retried && g.strnlenUser != 0 {
		if out, ok := g.faultIn(t, regs, ev, unmapped); ok {
			return out, nil
		}
	}
	out, err := g.decide(t, regs, ev, readErr)
	if retried {
		// The handler gets its pt_regs pointer back (strnlen_user clobbered
		// rdi or x0), and on arm64 its return address; a kill sets the
		// first argument again after this.
		out.Writes = append(g.restorePending(saved), out.Writes...)
	}
	return out, err
}

// restorePending returns the writes that give a handler back what its
// fault-in changed.
func (g *Gate) restorePending(p pendingCall) []RegWrite {
	w := []RegWrite{{g.isa.args[0], p.arg0}}
	if g.isa.arm64 {
		w = append(w, RegWrite{RegLR, p.lr})
	}
	return w
}

// faultIn handles a path whose user page is not mapped yet (a fresh fork
// that has not touched its binary's read-only data, for example): rather
// than fail closed, it calls the kernel's strnlen_user(path, PATH_MAX) from
// the handler's entry, with the handler's entry as the return address, so
// the kernel's own page-fault handling maps the page (or finds the pointer
// bad) and the vCPU comes back to this breakpoint with the page readable.
// The handler's entry is an ordinary C call boundary in process context:
// only rdi (the pt_regs pointer) must survive the call, and Handle puts it
// back on the second hit. Each call is sent at most once; a path still
// unreadable then fails closed.
func (g *Gate) faultIn(t Trap, regs Regs, ev event.Event, ptr uint64) (Outcome, bool) {
	rsp := regs[g.isa.sp]
	g.mu.Lock()
	if len(g.pending) >= maxPending {
		g.pending = map[uint64]pendingCall{}
	}
	g.pending[rsp] = pendingCall{arg0: g.isa.arg(regs, 0), lr: regs[RegLR]}
	g.mu.Unlock()
	if g.isa.arm64 {
		// A call from the handler's first instruction: the return address
		// goes in x30, the stack is untouched.
		return Outcome{
			Event:   ev,
			FaultIn: true,
			Writes:  []RegWrite{{RegX0, ptr}, {RegX1, MaxPath + 1}, {RegLR, t.Addr}, {RegPC, g.strnlenUser}},
		}, true
	}
	return Outcome{
		Event:     ev,
		FaultIn:   true,
		MemWrites: []MemWrite{{Addr: rsp - 8, Value: t.Addr}},
		Writes:    []RegWrite{{RegRDI, ptr}, {RegRSI, MaxPath + 1}, {RegRSP, rsp - 8}, {RegRIP, g.strnlenUser}},
	}, true
}

// takePending returns and forgets what was saved for the call whose
// kernel stack pointer is rsp.
func (g *Gate) takePending(rsp uint64) (pendingCall, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	v, ok := g.pending[rsp]
	if ok {
		delete(g.pending, rsp)
	}
	return v, ok
}

// decide asks the security server about ev and turns the verdict into
// register writes.
func (g *Gate) decide(t Trap, regs Regs, ev event.Event, readErr error) (Outcome, error) {
	d := g.d.Decide(&ev)
	if readErr != nil && d.Allows() {
		// Fail closed: an event the gate could not read is not allowed.
		d = g.d.GateFailure(&ev, RuleReadError, fmt.Sprintf("the syscall gate could not read the event: %v", readErr), ePerm)
	}
	out := Outcome{Event: ev, Decision: d, ReadErr: readErr}
	switch {
	case d.Allows():
		out.resume(t, regs, g.isa)
	case d.Verdict == secserver.Kill && t.Hook == AtHandler:
		out.Kill = true
		out.Writes = g.isa.killWrites(g.doGroupExit)
	default:
		// A deny, or a kill at a hook: the hook fails with the errno
		// (EPERM for a kill) and handleHook queues the SIGKILL.
		errno := d.Errno
		if errno <= 0 || errno > 4095 || d.Verdict == secserver.Kill {
			errno = ePerm
		}
		out.Kill = d.Verdict == secserver.Kill
		if t.Via == ViaCall {
			// The call is skipped as if the hook had returned -errno.
			out.Writes = []RegWrite{{RegRAX, uint64(-int64(errno))}, {RegRIP, t.Addr + uint64(t.Len)}}
			break
		}
		if t.Via == ViaOwnEntry {
			out.Writes = ownDeny(t, errno)
			break
		}
		if t.Via == ViaWatch {
			w, err := watchDenyWrites(g.k.AS, t, regs, errno)
			if err != nil {
				return out, err
			}
			out.Writes = w
			break
		}
		if g.isa.arm64 {
			w, err := denyARM64(regs, errno)
			if err != nil {
				return out, err
			}
			out.Writes = w
			break
		}
		ret, err := vmi.ReadU64(g.k.AS, regs[RegRSP])
		if err != nil {
			return out, fmt.Errorf("gate: read the return address at rsp %#x: %w", regs[RegRSP], err)
		}
		out.Writes = DenyWrites(regs, ret, errno)
	}
	return out, nil
}

// resume sets o to go on with the trapped instruction as if there were no
// trap.
func (o *Outcome) resume(t Trap, regs Regs, a *isa) {
	switch {
	case t.Via == ViaOwnEntry:
		o.Writes = append(o.Writes, ownResume(t)...)
	case t.Via == ViaWatch:
		// The vCPU stopped inside the hook, after the load: it goes on.
	case t.Via == ViaCall:
		// Do what the call does: push the return address, enter the hook.
		sp := regs[RegRSP] - 8
		o.MemWrites = append(o.MemWrites, MemWrite{Addr: sp, Value: t.Addr + uint64(t.Len)})
		o.Writes = append(o.Writes, RegWrite{RegRSP, sp}, RegWrite{RegRIP, t.Target})
	case t.Via == ViaJump:
		o.Writes = append(o.Writes, RegWrite{RegRIP, t.Target})
	case t.Skip > 0:
		o.Writes = append(o.Writes, RegWrite{a.pc, t.Addr + uint64(t.Skip)})
	default:
		o.Step = true
	}
}

// buildEvent reads what the event needs. It always returns an event; the
// error says what could not be read. unmapped is the path pointer when the
// path was the only thing unreadable and only because its page is not
// mapped in the task's page tables.
func (g *Gate) buildEvent(t Trap, regs Regs) (ev event.Event, unmapped uint64, err error) {
	sc := t.Syscall
	ev = event.Event{Class: event.ClassSyscall, Op: sc.Op, Time: time.Now().UTC()}
	var errs []error
	var raw [6]uint64
	pr := make([]byte, g.ptregs.Size)
	if _, err := g.k.AS.ReadVirtual(g.isa.arg(regs, 0), pr); err != nil {
		errs = append(errs, fmt.Errorf("read pt_regs at %#x: %w", g.isa.arg(regs, 0), err))
	} else if p, err := g.ptregs.Decode(pr); err == nil {
		raw = p.ArgsFor(t.Compat)
	}
	taskAddr, task, err := g.currentTask(regs)
	if err != nil {
		errs = append(errs, fmt.Errorf("current task: %w", err))
	} else {
		ev.Subject = subjectOf(task)
	}
	// Arguments in the family's signature.
	ev.Args = g.eventArgs(sc, raw, task, regs)
	if sc.Path >= 0 {
		p, err := ReadUserPath(g.userSpace(task, regs), raw[sc.Path])
		if err != nil {
			if len(errs) == 0 && errors.Is(err, vmi.ErrNotMapped) {
				unmapped = raw[sc.Path]
			}
			errs = append(errs, err)
			ev.Path = "" // unreadable: decided as a path that matches no file rule
		} else {
			// A relative path is relative to the working directory, or to
			// the directory open as dirfd: resolve both, so that a process
			// cannot slip past a path rule by opening the directory first.
			base := ""
			if len(p) > 0 && p[0] != '/' && taskAddr != 0 {
				dirfd := int64(atFDCWD)
				if sc.Dirfd >= 0 {
					dirfd = int64(int32(raw[sc.Dirfd]))
				}
				var berr error
				if dirfd == atFDCWD {
					base, berr = g.k.Cwd(taskAddr)
				} else {
					base, berr = g.k.FDPath(taskAddr, int(dirfd))
				}
				if berr != nil {
					// Undecidable: the kernel will resolve it against a
					// directory the gate cannot name. Fail closed.
					errs = append(errs, fmt.Errorf("resolve %q against dirfd %d: %w", p, dirfd, berr))
				}
			}
			ev.Path = Absolute(p, base, atFDCWD, false)
		}
	}
	return ev, unmapped, errors.Join(errs...)
}

// userSpace is the trapped task's address space: its mm->pgd, or the
// vCPU's CR3 (the same tables at syscall entry) when the task is unknown.
func (g *Gate) userSpace(task linux.Task, regs Regs) *vmi.AddressSpace {
	if g.isa.arm64 {
		return g.userSpaceARM64(task)
	}
	cr3 := task.PGD
	if cr3 == 0 {
		cr3 = regs[RegCR3]
	}
	return vmi.NewAddressSpace(g.k.Mem, cr3, regs[RegCR4])
}

// Kernel returns the kernel view the gate reads through.
func (g *Gate) Kernel() *linux.Kernel { return g.k }

// DoGroupExit returns the address the kill action redirects to.
func (g *Gate) DoGroupExit() uint64 { return g.doGroupExit }

// KillWrites makes the vCPU stopped at a handler call do_group_exit(SIGKILL)
// instead, in the guest's registers.
func (g *Gate) KillWrites() []RegWrite { return g.isa.killWrites(g.doGroupExit) }

// PCReg names the guest's program counter as the gdbstub does.
func (g *Gate) PCReg() string { return g.isa.pc }

// ExtraRegs are the registers a stop at one of the gate's traps needs
// beyond the gdbstub's general registers ('g' packet): SP_EL0 (current) on
// arm64; none on x86-64.
func (g *Gate) ExtraRegs() []string {
	if g.isa.arm64 {
		return []string{RegSPEL0}
	}
	return nil
}
