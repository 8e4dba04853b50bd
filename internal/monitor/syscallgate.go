package monitor

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// EventSyscall is the event-stream type of syscall-gate decisions.
const EventSyscall = "syscall"

// SyscallEvent is one audited syscall-gate decision on the event stream.
type SyscallEvent struct {
	Time    time.Time `json:"time"`
	VM      string    `json:"vm"`
	Type    string    `json:"type"`
	PID     int32     `json:"pid"`
	Comm    string    `json:"comm"`
	Exe     string    `json:"exe"`
	UID     uint32    `json:"uid"`
	Syscall string    `json:"syscall"`
	Args    []int64   `json:"args,omitempty"`
	Path    string    `json:"path,omitempty"`
	Verdict string    `json:"verdict"`
	Errno   int32     `json:"errno,omitempty"`
	Rule    string    `json:"rule"`
	Reason  string    `json:"reason,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// syscallGate is the monitor's half of the syscall gate: the gate and the
// breakpoints in place. Decisions come from the VM's one security server
// (m.sec, netgate.go's security()).
type syscallGate struct {
	mu    sync.Mutex // serialises trap changes; guards the fields below
	gate  *gate.Gate
	traps []gate.Trap
	text  map[uint64][]byte // kernel text at each breakpoint, read before it was set

	cur atomicGate // what the debugger goroutine uses on a hit

	kernelUp atomic.Bool // the kernel has been located: breakpoints can be placed

	// Counters for api.SyscallGateStatus.
	stops, decided, skipped, faultIns, handleNanos atomic.Uint64
}

// syscallGateStatus returns the gate's counters, nil before any syscall
// policy was loaded.
func (m *Monitor) syscallGateStatus() *api.SyscallGateStatus {
	m.sg.mu.Lock()
	armed := m.sg.gate != nil
	n := len(m.sg.traps)
	m.sg.mu.Unlock()
	if !armed {
		return nil
	}
	return &api.SyscallGateStatus{Breakpoints: n, Stops: m.sg.stops.Load(), Decided: m.sg.decided.Load(),
		Skipped: m.sg.skipped.Load(), FaultIns: m.sg.faultIns.Load(), HandleMicros: m.sg.handleNanos.Load() / 1000}
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

// parseSpec parses a policy (with includes from its directory) for the
// syscalls it names; the security server compiles it separately.
func parseSpec(path string, src []byte) (*policy.Spec, error) {
	dir := filepath.Dir(path)
	if !filepath.IsAbs(dir) {
		dir, _ = filepath.Abs(dir)
	}
	return policy.Load(filepath.Base(path), src, policy.FSResolver(os.DirFS(dir)))
}

// armGate installs the start policy's breakpoints as early as is safe: the
// kernel must be located (KASLR; once it runs with its own page tables) and
// done patching its own text (alternatives, jump labels, then read-only
// text), which it is when system_state reaches SYSTEM_RUNNING, just before
// it starts init. Before that, recorded text would go stale and, under KVM,
// an int3 could be overwritten by the kernel's patching. The state is polled
// through the RAM mapping every few milliseconds, without pausing the guest,
// so the breakpoints are in place before init's first system calls. It gives
// up with a notice if the kernel still cannot be located when the guest is
// ready.
func (m *Monitor) armGate() {
	if m.cfg.PolicyFile == "" {
		return
	}
	var k *linux.Kernel
	for k == nil {
		select {
		case <-m.done:
			return
		case <-m.stopping():
			return
		case <-time.After(100 * time.Millisecond):
		}
		wasReady := m.guestReady()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m.intro.mu.Lock()
		insp, err := m.inspector(ctx)
		m.intro.mu.Unlock()
		cancel()
		if m.sg.kernelUp.Load() {
			return // a policy load got there first; its policy is in force
		}
		if err == nil {
			k = insp.K
			break
		}
		if wasReady {
			m.logf("syscall gate: %v; the policy's syscall rules are NOT enforced", err)
			return
		}
	}
	m.prepareGate()
	if va, err := k.Addr("system_state"); err == nil {
		// A private address space: the IDS's translation cache is not for
		// concurrent use.
		as := vmi.NewAddressSpace(k.Mem, k.AS.CR3, 0)
		as.LA57 = k.AS.LA57
		for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); {
			if st, err := vmi.ReadU32(as, va); err == nil && st >= systemRunning {
				break
			}
			select {
			case <-m.done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	m.sg.kernelUp.Store(true)
	src, err := os.ReadFile(m.cfg.PolicyFile)
	if err == nil {
		err = m.retrap(m.cfg.PolicyFile, src)
	}
	if err != nil {
		m.logf("syscall gate: %v; the policy's syscall rules are NOT enforced", err)
	}
}

// prepareGate builds the gate while the kernel boots, when the start
// policy has syscall rules, and lets it scan the kernel text for the
// hooks' call sites if it will need them (tens of milliseconds), which must
// not delay the breakpoints once the kernel reaches SYSTEM_RUNNING. A
// failure here is reported when the breakpoints are placed.
func (m *Monitor) prepareGate() {
	src, err := os.ReadFile(m.cfg.PolicyFile)
	if err != nil {
		return
	}
	spec, err := parseSpec(m.cfg.PolicyFile, src)
	if err != nil || len(gate.Names(spec)) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m.sg.mu.Lock()
	defer m.sg.mu.Unlock()
	if g, err := m.ensureGate(ctx); err == nil {
		g.Prepare()
	}
}

// systemRunning is SYSTEM_RUNNING in the kernel's enum system_states: set
// by kernel_init after it made kernel text read-only, right before init.
const systemRunning = 3

// retrap moves the breakpoints to those the policy names. ReloadPolicy
// calls it after the security server took the policy.
func (m *Monitor) retrap(path string, src []byte) error {
	_, err := m.retrapResult(path, src)
	return err
}

func (m *Monitor) retrapResult(path string, src []byte) (api.PolicyResult, error) {
	if !m.sg.kernelUp.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m.intro.mu.Lock()
		_, err := m.inspector(ctx)
		m.intro.mu.Unlock()
		cancel()
		if err != nil {
			if m.cfg.PolicyFile != "" && !m.guestReady() {
				return api.PolicyResult{}, nil // armGate places them once the kernel is located
			}
			return api.PolicyResult{}, fmt.Errorf("syscall gate: the guest kernel cannot be located yet: %w", err)
		}
		m.sg.kernelUp.Store(true)
	}
	spec, err := parseSpec(path, src)
	if err != nil {
		return api.PolicyResult{}, err
	}
	m.sg.mu.Lock()
	defer m.sg.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := m.applyTrapsLocked(ctx, spec)
	if err == nil {
		m.logf("syscall gate: %d breakpoints for %v", len(res.Breakpoints), res.Syscalls)
	}
	return res, err
}

// ensureGate builds the gate on first use.
//
// Preconditions: m.sg.mu held.
func (m *Monitor) ensureGate(ctx context.Context) (*gate.Gate, error) {
	if m.sg.gate != nil {
		return m.sg.gate, nil
	}
	m.intro.mu.Lock()
	insp, err := m.inspector(ctx)
	m.intro.mu.Unlock()
	if err != nil {
		return nil, err
	}
	// A private view of the kernel: no translation cache, since guest
	// page tables change under a running guest and the IDS's cache is
	// invalidated only per query.
	k := *insp.K
	as := *k.AS
	as.Cache = nil
	k.AS = &as
	srv, err := m.netSecServer()
	if err != nil {
		return nil, err
	}
	g, err := gate.New(&k, srv)
	if err != nil {
		return nil, err
	}
	// Watchpoints cost other guest code almost nothing, but QEMU loses
	// concurrent hits across vCPUs (gate.UseWatchpoints).
	g.UseWatchpoints(m.cfg.CPUs <= 1)
	m.sg.gate = g
	return g, nil
}

// applyTrapsLocked moves the breakpoints to those spec needs, with the VM
// stopped, and proves the kernel text under removed ones unchanged.
//
// Preconditions: m.sg.mu held.
func (m *Monitor) applyTrapsLocked(ctx context.Context, spec *policy.Spec) (api.PolicyResult, error) {
	var res api.PolicyResult
	names := gate.Names(spec)
	var (
		g     *gate.Gate
		traps []gate.Trap
	)
	if m.sg.text == nil {
		m.sg.text = map[uint64][]byte{}
	}
	if len(names) > 0 || len(m.sg.traps) > 0 {
		var err error
		if g, err = m.ensureGate(ctx); err != nil {
			return res, fmt.Errorf("syscall gate: %w", err)
		}
		traps, res.Missing = g.Plan(spec)
	}
	want := map[uint64]gate.Trap{}
	for _, t := range traps {
		want[t.Addr] = t
	}
	restored := true
	err := m.dbg.Do(ctx, func(ctx context.Context, c *gdbrsp.Client) error {
		var errs []error
		kept := m.sg.traps[:0:0]
		for _, t := range m.sg.traps {
			if _, ok := want[t.Addr]; ok {
				kept = append(kept, t)
				continue
			}
			if err := clearTrap(ctx, c, t); err != nil {
				errs = append(errs, err)
				kept = append(kept, t)
				continue
			}
			res.Removed++
			if orig, ok := m.sg.text[t.Addr]; ok {
				now := make([]byte, len(orig))
				if _, err := g.Kernel().AS.ReadVirtual(t.Addr, now); err != nil || !bytes.Equal(now, orig) {
					restored = false
				}
				delete(m.sg.text, t.Addr)
			}
		}
		have := map[uint64]bool{}
		for _, t := range kept {
			have[t.Addr] = true
		}
		for _, t := range traps {
			if have[t.Addr] {
				continue
			}
			orig := make([]byte, textBytes)
			if _, err := g.Kernel().AS.ReadVirtual(t.Addr, orig); err == nil && t.Watch == 0 {
				m.sg.text[t.Addr] = orig
			}
			if err := setTrap(ctx, c, t); err != nil {
				errs = append(errs, err)
				continue
			}
			kept = append(kept, t)
		}
		m.sg.traps = kept
		if g != nil {
			g.SetTraps(kept)
			m.sg.cur.store(g)
		}
		return errors.Join(errs...)
	})
	res.Syscalls = names
	for _, t := range m.sg.traps {
		addr := t.Addr
		if t.Watch != 0 {
			addr = t.Watch
		}
		bp := api.Breakpoint{Symbol: t.Symbol, Site: t.Site, Watchpoint: t.Watch != 0, Syscall: t.Syscall.Op, Addr: "0x" + strconv.FormatUint(addr, 16)}
		if g != nil {
			if pa, _, err := g.Kernel().AS.Translate(addr); err == nil {
				bp.PhysAddr = "0x" + strconv.FormatUint(pa, 16)
			}
		}
		res.Breakpoints = append(res.Breakpoints, bp)
	}
	if res.Removed > 0 {
		res.TextRestored = &restored
	}
	return res, err
}

// setTrap places a trap: a watchpoint on the list head of a hook trapped
// by one (read or write: KVM's debug registers cannot watch reads alone,
// and nothing writes the head once the kernel runs), else a software
// breakpoint.
func setTrap(ctx context.Context, c *gdbrsp.Client, t gate.Trap) error {
	if t.Watch != 0 {
		return c.SetWatchpoint(ctx, gdbrsp.AccessWatch, t.Watch, 8)
	}
	return c.SetBreakpoint(ctx, gdbrsp.Software, t.Addr)
}

// clearTrap removes what setTrap placed.
func clearTrap(ctx context.Context, c *gdbrsp.Client, t gate.Trap) error {
	if t.Watch != 0 {
		return c.ClearWatchpoint(ctx, gdbrsp.AccessWatch, t.Watch, 8)
	}
	return c.ClearBreakpoint(ctx, gdbrsp.Software, t.Addr)
}

// LoadPolicy implements api.VM: the security server takes the policy
// (ReloadPolicy, which also moves the breakpoints). A policy that does not
// compile changes nothing.
func (m *Monitor) LoadPolicy(ctx context.Context, req api.PolicyRequest) (api.PolicyResult, error) {
	if err := m.checkRunning(); err != nil {
		return api.PolicyResult{}, err
	}
	srv, err := m.netSecServer()
	if err != nil {
		return api.PolicyResult{}, err
	}
	if _, err := parseSpec(req.Path, []byte(req.Source)); err != nil {
		return api.PolicyResult{}, &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("policy rejected, the policy in force stays: %v", err)}
	}
	dir, base := filepath.Split(req.Path)
	seq, err := srv.ReloadSource(base, []byte(req.Source), policy.FSResolver(os.DirFS(dir)))
	if err != nil {
		return api.PolicyResult{Seq: seq}, &api.Error{Code: api.CodeBadRequest, Message: err.Error()}
	}
	res, err := m.retrapResult(req.Path, []byte(req.Source))
	res.Seq, res.Path = seq, req.Path
	return res, err
}

func (m *Monitor) guestReady() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.readyAt.IsZero()
}

// onTrap handles a breakpoint stop of thread on the debugger goroutine.
func (m *Monitor) onTrap(ctx context.Context, c *gdbrsp.Client, thread int) (bool, error) {
	g := m.sg.cur.load()
	if g == nil {
		return false, nil
	}
	if err := c.SetThread(ctx, thread); err != nil {
		return false, err
	}
	regs, err := c.ReadRegisters(ctx)
	if err != nil {
		return false, err
	}
	t, ok := g.TrapAt(regs[gate.RegRIP])
	if !ok {
		return false, nil
	}
	start := time.Now()
	defer func() { m.sg.handleNanos.Add(uint64(time.Since(start))) }()
	m.sg.stops.Add(1)
	out, herr := g.Handle(t, gate.Regs(regs))
	switch {
	case out.FaultIn:
		m.sg.faultIns.Add(1)
	case out.Skipped:
		m.sg.skipped.Add(1)
	default:
		m.sg.decided.Add(1)
	}
	if herr != nil {
		// The deny cannot be emulated without the return address: kill.
		out.Writes, out.Step = gate.KillWrites(g.DoGroupExit()), false
		if srv, err := m.netSecServer(); err == nil {
			out.Decision = srv.GateFailure(&out.Event, gate.RuleReadError, herr.Error(), 1)
		}
		out.Decision.Verdict = secserver.Kill
	}
	for _, w := range out.MemWrites {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], w.Value)
		if err := c.WriteMemory(ctx, w.Addr, b[:]); err != nil {
			return true, fmt.Errorf("enforce %s on %s: store at %#x: %w", out.Decision.Verdict, out.Event.Op, w.Addr, err)
		}
	}
	for _, w := range out.Writes {
		if err := c.WriteRegister(ctx, w.Reg, w.Value); err != nil {
			return true, fmt.Errorf("enforce %s on %s: %w", out.Decision.Verdict, out.Event.Op, err)
		}
	}
	if out.FaultIn {
		return true, nil // no verdict yet: the call comes back to this trap
	}
	if out.Step {
		if _, err := c.Step(ctx); err != nil {
			return true, err
		}
	}
	d := out.Decision
	if d.Audited || !d.Allows() || d.Verdict == secserver.Alert {
		ev := SyscallEvent{Time: out.Event.Time, VM: m.cfg.Name, Type: EventSyscall, PID: out.Event.Subject.PID,
			Comm: out.Event.Subject.Comm, Exe: out.Event.Subject.Exe, UID: out.Event.Subject.UID, Syscall: out.Event.Op,
			Args: out.Event.Args, Path: out.Event.Path, Verdict: d.Verdict.String(), Errno: d.Errno, Rule: d.Rule, Reason: d.Reason}
		if out.ReadErr != nil {
			ev.Error = out.ReadErr.Error()
		}
		m.events.publishAny(ev)
	}
	return true, nil
}

// publishAny records any JSON-encodable event on the bus.
func (b *eventBus) publishAny(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		return
	}
	b.publishLine(append(line, '\n'))
}
