package monitor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Process actions from below (`gatevisor proc`): the guest kernel is made
// to send SIGSTOP, SIGCONT or SIGKILL to a process through its own code
// (send_sig_info, called at a safe point: inject.go), so it works on any
// process — one that makes no syscalls, blocks every signal it can, or
// runs where a rootkit hooks the kill syscall — and leaves the kernel's
// state as its own kill path would. SIGSTOP and SIGKILL cannot be blocked
// or caught. The answer waits until guest memory shows the effect.

// x86-64 Linux signal numbers.
const (
	sigKill = 9
	sigCont = 18
	sigStop = 19
)

// sendSigPriv is SEND_SIG_PRIV: a signal from the kernel itself (no
// siginfo to allocate, no permission check).
const sendSigPriv = 1

const (
	// procSafePointWait bounds the wait for a timer interrupt.
	procSafePointWait = 10 * time.Second
	// procConfirmWait bounds the wait for guest memory to show the effect.
	procConfirmWait = 10 * time.Second
	// freezeCheckEvery is how often frozen processes are checked.
	freezeCheckEvery = 100 * time.Millisecond
)

// frozenProc is a process gatevisor keeps stopped until a thaw.
type frozenProc struct {
	pid      int
	start    uint64
	comm     string
	restops  int // times it was stopped again
	lastSeen string
}

// freezer keeps frozen processes stopped.
type freezer struct {
	mu      sync.Mutex
	procs   map[int]*frozenProc // by pid
	running bool                // the watch goroutine runs
}

// procSignal is each action's signal.
func procSignal(action string) (int, string) {
	switch action {
	case "stop", "freeze":
		return sigStop, "SIGSTOP"
	case "kill":
		return sigKill, "SIGKILL"
	default: // cont, thaw
		return sigCont, "SIGCONT"
	}
}

// Proc implements api.VM.
func (m *Monitor) Proc(ctx context.Context, action string, req api.ProcRequest) (api.ProcResult, error) {
	caller, _ := api.CallerFromContext(ctx)
	return m.procAction(ctx, action, req, procRequester{
		subject: event.Subject{PID: caller.PID, UID: caller.UID, GID: caller.GID},
		rule:    "proc." + action,
		why:     fmt.Sprintf("requested by uid %d", caller.UID),
	})
}

// procRequester is who asks for a process action, for the audit log.
type procRequester struct {
	subject event.Subject // the API caller; zero for the monitor's own responses
	rule    string        // the audit record's rule: proc.ACTION, or response:NAME
	why     string        // who asked and why, in words
}

// procAction does action to the process req names, on behalf of by.
func (m *Monitor) procAction(ctx context.Context, action string, req api.ProcRequest, by procRequester) (api.ProcResult, error) {
	if !slices.Contains(api.ProcActions, action) {
		return api.ProcResult{}, apiErr(api.CodeBadRequest, "unknown process action %q: use one of %v", action, api.ProcActions)
	}
	if why := noProcActions(m.cfg.Arch); why != "" {
		return api.ProcResult{}, apiErr(api.CodeUnavailable, "%s", why)
	}
	if err := m.checkRunning(); err != nil {
		return api.ProcResult{}, err
	}
	began := time.Now()
	insp, err := m.privateInspector(ctx)
	if err != nil {
		return api.ProcResult{}, err
	}
	k := insp.K
	t, err := findProcess(k, req.PID, req.Start)
	if err != nil {
		return api.ProcResult{}, err
	}
	if t.State == "Z" || t.State == "X" || t.State == "exiting" {
		return api.ProcResult{}, apiErr(api.CodeConflict, "pid %d (%s) has exited: a zombie waiting for its parent (pid %d) to reap it; there is nothing left to %s", t.PID, t.Comm, t.PPID, action)
	}
	if t.PID == 1 && action != "cont" && action != "thaw" {
		return api.ProcResult{}, apiErr(api.CodeBadRequest, "pid 1 is the guest's init: stopping or killing it hangs or panics the guest kernel (stop the VM instead: 'gatevisor stop')")
	}
	sig, sigName := procSignal(action)
	res := api.ProcResult{Action: action, PID: t.PID, Start: t.StartTime, Comm: t.Comm, Exe: t.Exe, Signal: sigName, StateBefore: t.State}
	ev := event.Event{Class: event.ClassAPI, Op: "proc." + action, Subject: by.subject,
		Path: t.Exe, Args: []int64{int64(t.PID), int64(t.StartTime)}, Time: time.Now().UTC()}
	target := fmt.Sprintf("pid %d (%s, %s, start %d ns)", t.PID, t.Comm, t.Exe, t.StartTime)
	// The record comes first: an action that cannot be recorded is not taken.
	if err := m.pol.sec.Record(&ev, secserver.Decision{Verdict: secserver.Allow, Rule: by.rule,
		Reason: fmt.Sprintf("%s to %s %s: sending", sigName, target, by.why)}); err != nil {
		return api.ProcResult{}, fmt.Errorf("proc %s: not done: the audit log cannot record it: %w", action, err)
	}
	if action == "thaw" {
		m.frozen.mu.Lock()
		delete(m.frozen.procs, t.PID)
		m.frozen.mu.Unlock()
	}
	cr, err := m.signalProcess(ctx, t.PID, t.StartTime, sig)
	res.SafePointMillis, res.CallMicros = float64(cr.waited.Microseconds())/1000, float64(cr.running.Nanoseconds())/1000
	if err != nil {
		m.recordOutcome(&ev, by.rule, fmt.Sprintf("%s to %s failed: %v", sigName, target, err))
		return res, fmt.Errorf("proc %s %d: %w", action, t.PID, err)
	}
	state, cerr := m.confirm(ctx, k, t, action)
	res.StateAfter = state
	res.TookMillis = float64(time.Since(began).Microseconds()) / 1000
	if action == "freeze" && cerr == nil {
		m.freeze(t)
		res.Frozen = true
	}
	if cerr != nil {
		res.Outcome = fmt.Sprintf("the guest kernel sent %s to %s, but %v", sigName, target, cerr)
		m.recordOutcome(&ev, by.rule, res.Outcome)
		return res, fmt.Errorf("proc %s %d: %s", action, t.PID, res.Outcome)
	}
	res.Outcome = fmt.Sprintf("the guest kernel sent %s to %s at a timer interrupt (after %.1f ms); its state went %s -> %s in %.1f ms",
		sigName, target, res.SafePointMillis, t.State, state, res.TookMillis)
	if res.Frozen {
		res.Outcome += "; gatevisor stops it again whenever it is resumed, until 'proc thaw'"
	}
	m.recordOutcome(&ev, by.rule, res.Outcome)
	m.publishNotice(monitoring.ProcNotice, fmt.Sprintf("proc %s (%s): %s", action, by.why, res.Outcome))
	return res, nil
}

// apiErr is an API error with code and a message of its own.
func apiErr(code, format string, a ...any) error {
	return &api.Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// recordOutcome records how an action ended (after it: the action was
// recorded before it was taken, so a failure here loses only the outcome,
// which the monitor's log keeps).
func (m *Monitor) recordOutcome(ev *event.Event, rule, outcome string) {
	e := *ev
	e.Time = time.Now().UTC()
	if err := m.pol.sec.Record(&e, secserver.Decision{Verdict: secserver.Allow, Rule: rule, Reason: outcome}); err != nil {
		m.logf("%s: the outcome could not be recorded in the audit log (%v): %s", rule, err, outcome)
	}
}

// signalProcess makes the guest kernel send sig to the process pid that
// started at start, found again with the VM stopped at the safe point.
func (m *Monitor) signalProcess(ctx context.Context, pid int, start uint64, sig int) (callResult, error) {
	cr, err := m.callKernel(ctx, "send_sig_info", procSafePointWait, func(ctx context.Context) ([]uint64, error) {
		insp, err := m.privateInspector(ctx)
		if err != nil {
			return nil, err
		}
		t, err := findProcess(insp.K, pid, start)
		if err != nil {
			return nil, err
		}
		return []uint64{uint64(sig), sendSigPriv, t.Addr}, nil
	})
	if err != nil {
		return cr, err
	}
	if rc := int32(cr.ret); rc != 0 {
		return cr, fmt.Errorf("send_sig_info returned %d (-3 is ESRCH: the process is exiting)", rc)
	}
	return cr, nil
}

// findProcess returns the thread-group leader pid, which must have started
// at start when start is not 0. A process a rootkit unlinked from the task
// list is found in the pid namespace's table, as the IDS finds it.
func findProcess(k *linux.Kernel, pid int, start uint64) (linux.Task, error) {
	k.AS.Cache.Invalidate()
	tasks, err := k.Tasks()
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return linux.Task{}, fmt.Errorf("read the guest's task list: %w", err)
	}
	if t, ok := taskByPID(tasks, pid); ok {
		return checkProcess(t, pid, start)
	}
	if ns, nerr := k.PIDNamespaceTasks(); nerr == nil || errors.Is(nerr, linux.ErrIncomplete) {
		if t, ok := taskByPID(ns, pid); ok {
			return checkProcess(t, pid, start)
		}
	}
	if err != nil {
		return linux.Task{}, apiErr(api.CodeNotFound, "no process %d in the guest's task list, which could not be read in full: %v", pid, err)
	}
	return linux.Task{}, apiErr(api.CodeNotFound, "no process %d in the guest (see 'gatevisor ids ps')", pid)
}

func taskByPID(tasks []linux.Task, pid int) (linux.Task, bool) {
	for _, t := range tasks {
		if t.PID == pid {
			return t, true
		}
	}
	return linux.Task{}, false
}

// checkProcess refuses what findProcess found for pid if it is not a
// process that may take the signal.
func checkProcess(t linux.Task, pid int, start uint64) (linux.Task, error) {
	switch {
	case t.TGID != t.PID:
		return linux.Task{}, apiErr(api.CodeBadRequest, "%d is a thread of process %d: give the process's id", pid, t.TGID)
	case start != 0 && t.StartTime != start:
		return linux.Task{}, apiErr(api.CodeNotFound, "pid %d is now another process (%s, start %d ns, not %d)", pid, t.Comm, t.StartTime, start)
	case t.State == "Z" || t.State == "X":
		// Exited, not reaped yet: the caller decides (it has no mm, so it
		// would look like a kernel thread below).
	case t.KernelThread && start != 0:
		// A process we knew that lost its mm: it is exiting.
		t.State = "exiting"
	case t.KernelThread:
		return linux.Task{}, apiErr(api.CodeBadRequest, "pid %d is a kernel thread (%s): it takes no signals from outside", pid, t.Comm)
	}
	return t, nil
}

// confirm waits until guest memory shows action's effect on t and returns
// the state seen ("gone" once reaped).
func (m *Monitor) confirm(ctx context.Context, k *linux.Kernel, t linux.Task, action string) (string, error) {
	deadline := time.Now().Add(procConfirmWait)
	state := t.State
	for {
		cur, err := findProcess(k, t.PID, t.StartTime)
		switch {
		case api.IsCode(err, api.CodeNotFound):
			state = "gone"
		case err != nil:
			return state, err
		default:
			state = cur.State
		}
		if procDone(action, state) {
			return state, nil
		}
		if time.Now().After(deadline) {
			return state, fmt.Errorf("its state is still %s after %v", state, procConfirmWait)
		}
		select {
		case <-ctx.Done():
			return state, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// procDone reports whether state is what action leads to.
func procDone(action, state string) bool {
	switch action {
	case "stop", "freeze":
		return state == "T" || state == "t"
	case "kill":
		return state == "gone" || state == "Z" || state == "X"
	default:
		return state != "T" && state != "t"
	}
}

// freeze keeps t stopped until a thaw.
func (m *Monitor) freeze(t linux.Task) {
	m.frozen.mu.Lock()
	defer m.frozen.mu.Unlock()
	if m.frozen.procs == nil {
		m.frozen.procs = map[int]*frozenProc{}
	}
	m.frozen.procs[t.PID] = &frozenProc{pid: t.PID, start: t.StartTime, comm: t.Comm, lastSeen: "T"}
	if !m.frozen.running {
		m.frozen.running = true
		go m.watchFrozen()
	}
}

// watchFrozen stops a frozen process again whenever something in the guest
// (a SIGCONT from root, a rootkit) resumes it, until it is thawed or gone.
func (m *Monitor) watchFrozen() {
	t := time.NewTicker(freezeCheckEvery)
	defer t.Stop()
	for waitFor(m, t.C) {
		m.frozen.mu.Lock()
		procs := make([]frozenProc, 0, len(m.frozen.procs))
		for _, p := range m.frozen.procs {
			procs = append(procs, *p)
		}
		m.frozen.mu.Unlock()
		if len(procs) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		m.checkFrozen(ctx, procs)
		cancel()
	}
}

func (m *Monitor) checkFrozen(ctx context.Context, procs []frozenProc) {
	insp, err := m.privateInspector(ctx)
	if err != nil {
		return
	}
	for _, p := range procs {
		cur, err := findProcess(insp.K, p.pid, p.start)
		if api.IsCode(err, api.CodeNotFound) {
			m.unfreeze(p.pid, p.start)
			m.publishNotice(monitoring.ProcNotice, fmt.Sprintf("proc freeze: pid %d (%s) is gone; no longer frozen", p.pid, p.comm))
			continue
		}
		if err != nil || procDone("freeze", cur.State) || cur.State == "exiting" {
			continue
		}
		// Resumed: stopped again, and recorded.
		ev := event.Event{Class: event.ClassAPI, Op: "proc.freeze", Path: cur.Exe, Args: []int64{int64(cur.PID), int64(cur.StartTime)}, Time: time.Now().UTC()}
		m.frozen.mu.Lock()
		if fp := m.frozen.procs[p.pid]; fp != nil && fp.start == p.start {
			fp.restops++
			fp.lastSeen = cur.State
		} else {
			m.frozen.mu.Unlock()
			continue // thawed meanwhile
		}
		m.frozen.mu.Unlock()
		_, serr := m.signalProcess(ctx, p.pid, p.start, sigStop)
		outcome := fmt.Sprintf("frozen pid %d (%s) was resumed in the guest (state %s): stopped again", p.pid, p.comm, cur.State)
		if serr != nil {
			outcome = fmt.Sprintf("frozen pid %d (%s) was resumed in the guest (state %s), and stopping it again failed: %v", p.pid, p.comm, cur.State, serr)
		}
		m.recordOutcome(&ev, "proc.freeze", outcome)
		m.publishNotice(monitoring.ProcNotice, "proc freeze: "+outcome)
	}
}

// frozenPIDs lists the frozen processes, sorted.
func (m *Monitor) frozenPIDs() []int {
	m.frozen.mu.Lock()
	defer m.frozen.mu.Unlock()
	var out []int
	for pid := range m.frozen.procs {
		out = append(out, pid)
	}
	slices.Sort(out)
	return out
}

// unfreeze forgets a frozen process (thawed or gone).
func (m *Monitor) unfreeze(pid int, start uint64) {
	m.frozen.mu.Lock()
	defer m.frozen.mu.Unlock()
	if p := m.frozen.procs[pid]; p != nil && p.start == start {
		delete(m.frozen.procs, pid)
	}
}

// noProcActions says why a guest of arch cannot be acted on from below
// ("" it can).
func noProcActions(arch string) string {
	if arch != "" && arch != qemu.ArchAMD64 && arch != qemu.ArchARM64 {
		return fmt.Sprintf("process actions from below are not implemented for %s guests: the kernel call at the timer interrupt (inject.go) knows the x86-64 and AAPCS64 calling conventions only", arch)
	}
	return ""
}
