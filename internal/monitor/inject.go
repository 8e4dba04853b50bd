package monitor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
)

// Kernel calls from below: the monitor makes a guest vCPU call one guest
// kernel function (send_sig_info) the way the kernel itself would, with no
// agent and no guest code of ours. The call is made only at a safe point:
// the entry of the timer interrupt handler (hrtimer_interrupt), where the
// vCPU is in hard-interrupt context — interrupts off, an RCU reader, and
// holding none of the spinlocks a signal takes (siglock, pi_lock, the run
// queue's lock are all taken with interrupts off, so the code the
// interrupt came in on cannot hold them). That is the context the kernel
// itself sends signals from (POSIX timers, the watchdog). At the first
// stop there, with the VM stopped, the caller resolves its arguments (the
// target task, found again now, so it cannot have gone since), the vCPU's
// registers are saved, a frame is built below its stack pointer whose
// return address is the safe point itself, and the vCPU is pointed at the
// function. When it returns to the safe point (the breakpoint is still
// there; its stack pointer tells the return from another interrupt), the
// result is taken from rax, every register is put back and the breakpoint
// removed: the handler then runs as if nothing had happened. See
// docs/design.md#response-from-below. On arm64 guests the same, in
// AAPCS64 (inject_aarch64.go): arguments in x0-x5, the return address in
// x30, the result in x0.

// safePoints are the functions a kernel call may be made at, best first.
var safePoints = []string{"hrtimer_interrupt"}

// callState is where an injected call is.
type callState int

const (
	callWaiting callState = iota // for a vCPU to reach the safe point
	callRunning                  // the vCPU runs the function
	callDone
)

// kernelCall is one injected call.
type kernelCall struct {
	fn, at uint64 // the function; the safe point (a breakpoint)
	abi    *callABI
	// prepare, with the VM stopped at the safe point, returns the
	// function's arguments (at most 6: rdi, rsi, rdx, rcx, r8, r9), or
	// an error that cancels the call.
	prepare func(ctx context.Context) ([]uint64, error)

	state  callState
	tid    int               // the vCPU making the call
	saved  map[string]uint64 // its registers at the safe point
	frame  uint64            // its stack pointer at the function's entry
	began  time.Time         // when the call was armed, then when it started
	waited time.Duration     // from arming to the safe point
	done   chan callResult   // receives the outcome once
}

type callResult struct {
	ret     uint64        // rax
	waited  time.Duration // from arming to the safe point
	running time.Duration // the call itself, VM stops included
	err     error
}

// injector holds the one call in progress.
type injector struct {
	serial sync.Mutex // one call at a time
	mu     sync.Mutex // guards cur
	cur    *kernelCall
}

// callABI is how a kernel call is made in the guest's calling convention.
type callABI struct {
	// args are the argument registers, in order.
	args []string
	// saved are the registers a call may change and that are put back
	// after it, the flags last.
	saved []string
	// pc, sp and ret name the program counter, the stack pointer and the
	// register of the result.
	pc, sp, ret string
	// link, when set, is the register a call leaves its return address in
	// (arm64's x30); else a call pushes it (x86-64).
	link string
}

// callX86 is the x86-64 System V convention: arguments in rdi, rsi, rdx,
// rcx, r8, r9; the caller-saved registers, the stack and instruction
// pointers and the flags are put back (the callee saves the others, and
// kernel code leaves the vector registers alone).
var callX86 = &callABI{
	args:  []string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"},
	saved: []string{"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"},
	pc:    "rip", sp: "rsp", ret: "rax",
}

// callABI returns the guest's calling convention.
func (m *Monitor) callABI() *callABI {
	if m.isARM64() {
		return callARM64
	}
	return callX86
}

// frame returns the stack pointer the function starts with, below the
// interrupted one sp, and the memory the call needs written there: as a
// call instruction leaves it (x86-64: the return address ret at a stack
// pointer 8 bytes off 16-byte alignment; arm64: 16-byte aligned, nothing
// pushed).
func (a *callABI) frame(sp, ret uint64) (frame uint64, mem []byte) {
	if a.link != "" {
		return (sp - callFrameGap) &^ 0xf, nil
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], ret)
	return ((sp - callFrameGap) &^ 0xf) - 8, b[:]
}

// returned reports whether a vCPU at the safe point with stack pointer sp
// is the call with frame returning (x86-64: ret popped the return
// address; arm64: ret leaves sp as the function found it).
func (a *callABI) returned(sp, frame uint64) bool {
	if a.link != "" {
		return sp == frame
	}
	return sp == frame+8
}

// callFrameGap is how far below the interrupted stack pointer the call's
// frame starts: clear of anything the handler's caller left there.
const callFrameGap = 512

// errNoSafePoint means no vCPU reached a safe point in time.
var errNoSafePoint = errors.New("no vCPU reached a safe point (a timer interrupt)")

// callKernel makes a vCPU call the guest kernel function fn at the next
// safe point, with the arguments prepare returns then, and returns its
// result. waitSafe bounds the wait for a safe point; the call itself is
// waited for until ctx ends (it returns in microseconds; a vCPU must not be
// left in a foreign frame).
func (m *Monitor) callKernel(ctx context.Context, fn string, waitSafe time.Duration, prepare func(ctx context.Context) ([]uint64, error)) (callResult, error) {
	insp, err := m.privateInspector(ctx)
	if err != nil {
		return callResult{}, err
	}
	fnAddr, err := insp.K.Addr(fn)
	if err != nil {
		return callResult{}, fmt.Errorf("kernel call: %s: %w", fn, err)
	}
	var at uint64
	for _, sp := range safePoints {
		if a, err := insp.K.Addr(sp); err == nil {
			at = a
			break
		}
	}
	if at == 0 {
		return callResult{}, fmt.Errorf("kernel call: the guest kernel has none of the safe points %v", safePoints)
	}
	m.inj.serial.Lock()
	defer m.inj.serial.Unlock()
	call := &kernelCall{fn: fnAddr, at: at, abi: m.callABI(), prepare: prepare, done: make(chan callResult, 1), began: time.Now()}
	m.inj.mu.Lock()
	m.inj.cur = call
	m.inj.mu.Unlock()
	clear := func() {
		m.inj.mu.Lock()
		m.inj.cur = nil
		m.inj.mu.Unlock()
	}
	if err := m.dbg.Do(ctx, func(ctx context.Context, c *gdbrsp.Client) error {
		return c.SetBreakpoint(ctx, gdbrsp.Software, at)
	}); err != nil {
		clear()
		return callResult{}, fmt.Errorf("kernel call: arm the safe point: %w", err)
	}
	timer := time.NewTimer(waitSafe)
	defer timer.Stop()
	for {
		select {
		case r := <-call.done:
			clear()
			return r, r.err
		case <-timer.C:
			// Still waiting? Then disarm, with the VM stopped so that no
			// stop can start the call meanwhile. A call already running
			// is waited for.
			var gaveUp bool
			err := m.dbg.Do(context.Background(), func(ctx context.Context, c *gdbrsp.Client) error {
				m.inj.mu.Lock()
				defer m.inj.mu.Unlock()
				if call.state != callWaiting {
					return nil
				}
				gaveUp = true
				m.inj.cur = nil
				return c.ClearBreakpoint(ctx, gdbrsp.Software, at)
			})
			if gaveUp {
				if err != nil {
					return callResult{}, fmt.Errorf("kernel call: %w in %v; and removing its breakpoint failed: %v", errNoSafePoint, waitSafe, err)
				}
				return callResult{}, fmt.Errorf("kernel call: %w in %v", errNoSafePoint, waitSafe)
			}
		case <-ctx.Done():
			// Only while waiting for a safe point: see the timer's case.
			timer.Reset(0)
			ctx = context.Background()
		}
	}
}

// onCallStop serves a stop of vCPU tid for the call in progress, if any;
// it returns whether the stop was the call's. Called with the VM stopped,
// on the debugger goroutine, for every vCPU at each stop.
func (m *Monitor) onCallStop(ctx context.Context, c *gdbrsp.Client, tid int) (bool, error) {
	m.inj.mu.Lock()
	call := m.inj.cur
	m.inj.mu.Unlock()
	if call == nil || call.state == callDone {
		return false, nil
	}
	if err := c.SetThread(ctx, tid); err != nil {
		return false, err
	}
	regs, err := c.ReadRegisters(ctx)
	if err != nil {
		return false, err
	}
	if regs[call.abi.pc] != call.at {
		return false, nil
	}
	m.inj.mu.Lock()
	defer m.inj.mu.Unlock()
	switch call.state {
	case callWaiting:
		return true, m.startCall(ctx, c, call, tid, regs)
	case callRunning:
		if tid != call.tid || !call.abi.returned(regs[call.abi.sp], call.frame) {
			// Another vCPU's timer interrupt: it goes on past the
			// breakpoint (a single step; QEMU does not stop a step at a
			// breakpoint).
			_, err := c.StepThread(ctx, tid)
			return true, err
		}
		return true, m.endCall(ctx, c, call, regs[call.abi.ret])
	}
	return false, nil
}

// startCall points vCPU tid, at the safe point, at the call.
//
// Preconditions: m.inj.mu held; the VM stopped; tid the current thread.
func (m *Monitor) startCall(ctx context.Context, c *gdbrsp.Client, call *kernelCall, tid int, regs map[string]uint64) error {
	waited := time.Since(call.began)
	// abort ends the call before it ran: the breakpoint goes, the caller
	// gets err.
	abort := func(err error) error {
		call.state = callDone
		cerr := c.ClearBreakpoint(ctx, gdbrsp.Software, call.at)
		call.done <- callResult{waited: waited, err: errors.Join(err, cerr)}
		return cerr
	}
	args, err := call.prepare(ctx)
	if err != nil {
		return abort(err)
	}
	abi := call.abi
	if len(args) > len(abi.args) {
		return abort(fmt.Errorf("%d arguments, at most %d", len(args), len(abi.args)))
	}
	saved := make(map[string]uint64, len(abi.saved))
	for _, r := range abi.saved {
		v, ok := regs[r]
		if !ok {
			return abort(fmt.Errorf("kernel call: the gdbstub did not report %s", r))
		}
		saved[r] = v
	}
	// A frame as a call instruction leaves it, returning to the safe point.
	frame, mem := abi.frame(saved[abi.sp], call.at)
	if len(mem) > 0 {
		if err := c.WriteMemory(ctx, frame, mem); err != nil {
			return abort(fmt.Errorf("kernel call: write the return address: %w", err))
		}
	}
	writes := []gdbrsp.RegValue{{Name: abi.sp, Value: frame}, {Name: abi.pc, Value: call.fn}}
	if abi.link != "" {
		writes = append(writes, gdbrsp.RegValue{Name: abi.link, Value: call.at})
	}
	for i, a := range args {
		writes = append(writes, gdbrsp.RegValue{Name: abi.args[i], Value: a})
	}
	if err := c.WriteRegisters(ctx, writes); err != nil {
		// Some may have taken: put everything back before anything runs.
		rerr := c.WriteRegisters(ctx, abi.regValues(saved))
		cerr := abort(fmt.Errorf("kernel call: set up the call: %w", err))
		if rerr != nil {
			return fmt.Errorf("%w: vCPU %d's registers could not be put back after a failed call setup: %w", errKeepStopped, tid-1, rerr)
		}
		return cerr
	}
	call.state, call.tid, call.saved, call.frame = callRunning, tid, saved, frame
	call.began, call.waited = time.Now(), waited
	return nil
}

// endCall takes the result of the call vCPU call.tid returned from and puts
// its registers back as they were at the safe point.
//
// Preconditions: m.inj.mu held; the VM stopped; call.tid the current thread.
func (m *Monitor) endCall(ctx context.Context, c *gdbrsp.Client, call *kernelCall, ret uint64) error {
	took := time.Since(call.began)
	call.state = callDone
	if err := c.WriteRegisters(ctx, call.abi.regValues(call.saved)); err != nil {
		call.done <- callResult{ret: ret, waited: call.waited, running: took, err: err}
		return fmt.Errorf("%w: vCPU %d's registers could not be put back after a kernel call: %w", errKeepStopped, call.tid-1, err)
	}
	err := c.ClearBreakpoint(ctx, gdbrsp.Software, call.at)
	call.done <- callResult{ret: ret, waited: call.waited, running: took}
	return err
}

// regValues lists saved registers for a write, the flags last.
func (a *callABI) regValues(saved map[string]uint64) []gdbrsp.RegValue {
	out := make([]gdbrsp.RegValue, 0, len(a.saved))
	for _, r := range a.saved {
		out = append(out, gdbrsp.RegValue{Name: r, Value: saved[r]})
	}
	return out
}
