package monitor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
)

// debugger is the single owner of the gdbstub connection's run state.
// QEMU's stub is all-stop: a byte sent while the VM runs stops it, and a
// breakpoint hit stops every vCPU. One goroutine (run) therefore does
// everything: it takes stop replies, hands breakpoint hits to the trap
// handler (the syscall gate) and resumes, and serves every other user that
// needs the VM stopped (registers, the IDS gdbstub source, control
// registers, breakpoint changes) through Do, which interrupts, runs the
// function and continues.
//
// Hits on two vCPUs at once: QEMU reports one thread per stop; the trap
// handler looks at every vCPU at each stop, and so does scan after every
// request, so a hit QEMU did not report is handled before the VM runs on.
type debugger struct {
	gdb  *gdbrsp.Client
	reqs chan *dbgReq
	done chan struct{}
	logf func(string, ...any)

	// trap handles a breakpoint or watchpoint stop; it is called on the
	// run goroutine with the VM stopped, and returns whether the stop was
	// one of its traps, and the register writes to send with the continue
	// (resume). An error wrapping errKeepStopped leaves the VM stopped:
	// the monitor fails closed and ends the VM.
	trap func(ctx context.Context, g *gdbrsp.Client, sr gdbrsp.StopReply) (bool, *resumeWrites, error)
	// scan, before the VM runs on after a request, serves every vCPU the
	// request's stop found at a trap: a trap hit that raced with the
	// interrupt is not reported on its own (Halt takes its stop reply, or
	// QEMU merges it into the interrupt's stop), and a watched load does
	// not happen again on continue. Same contract as trap.
	scan func(ctx context.Context, g *gdbrsp.Client) (*resumeWrites, error)
	// failClosed ends the VM: resume could not be sure that the vCPU
	// runs with its writes done (the monitor's failClosed).
	failClosed func(error)
	// runState returns QEMU's run state (QMP query-status): DoPaused
	// needs it.
	runState func(ctx context.Context) (string, error)

	mu     sync.Mutex // guards the counters below
	traps  uint64     // breakpoint stops handled
	others uint64     // stops the debugger did not cause and left alone
}

type dbgReq struct {
	ctx  context.Context
	f    func(context.Context, *gdbrsp.Client) error
	done chan error
	// paused: f runs with QEMU's run state "paused" (see DoPaused).
	paused bool
}

// maxTrapRetries bounds how often DoPaused serves a trap hit and stops
// the VM again before it gives up.
const maxTrapRetries = 20

// resumeWrites are register writes to the current vCPU that the debugger
// sends in the same write as its continue (gdbrsp.ContinueWithRegisters):
// an allowed vCPU moved past a watched load resumes after one write
// instead of two round trips through QEMU's main loop. Only writes whose
// failure cannot let a call through that the gate refused go here (see
// trapVCPU); a failure ends the VM.
type resumeWrites struct {
	regs []gdbrsp.RegValue
	// start is when the trap's handling began; nanos, when set, counts
	// the monitor's share of the stop, which runs until the continue is
	// written.
	start time.Time
	nanos *atomic.Uint64
}

// errKeepStopped, wrapped by a trap handler's error, says the VM must not
// run on (a gate could not be armed or enforced): the debugger leaves it
// stopped.
var errKeepStopped = errors.New("the VM is kept stopped")

// errDebuggerGone means the gdbstub connection is over.
var errDebuggerGone = errors.New("the gdbstub connection is closed")

func newDebugger(gdb *gdbrsp.Client, logf func(string, ...any)) *debugger {
	return &debugger{gdb: gdb, reqs: make(chan *dbgReq), done: make(chan struct{}), logf: logf}
}

// Do runs f with the VM stopped, on the debugger's goroutine, and lets the
// VM run again afterwards if it was running. f must not call Do.
func (d *debugger) Do(ctx context.Context, f func(context.Context, *gdbrsp.Client) error) error {
	return d.do(&dbgReq{ctx: ctx, f: f, done: make(chan error, 1)})
}

// DoPaused is Do for f that saves the device state for another QEMU (a
// restart, a snapshot, an upgrade): f runs with QEMU's run state
// "paused", never "debug". The interrupt that stops the VM can race with
// a trap hit, and a VM stopped by a trap is in run state "debug", which
// the device state carries even with migration.store-global-state=off
// (QEMU sends its run state whenever it is neither running nor paused);
// a QEMU loading that state aborts ("invalid runstate transition:
// 'inmigrate' -> 'debug'"). So a stop at a trap is served, the VM
// resumed and interrupted again, at most maxTrapRetries times; f does
// not run if the VM keeps stopping at traps, and the VM runs on. A trap
// stop QEMU reported before the interrupt, still waiting behind this
// request in the run loop, is served the same way; a VM held at a trap
// on purpose (a gate failed closed) is refused.
func (d *debugger) DoPaused(ctx context.Context, f func(context.Context, *gdbrsp.Client) error) error {
	return d.do(&dbgReq{ctx: ctx, f: f, done: make(chan error, 1), paused: true})
}

func (d *debugger) do(req *dbgReq) error {
	ctx := req.ctx
	select {
	case d.reqs <- req:
	case <-d.done:
		return errDebuggerGone
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-d.done:
		return errDebuggerGone
	}
}

// run serves stops and requests until the connection ends.
func (d *debugger) run() {
	defer close(d.done)
	for {
		select {
		case sr := <-d.gdb.StopReplies():
			if sr.Exited() {
				return
			}
			d.onStop(sr)
		case req := <-d.reqs:
			req.done <- d.serve(req)
		case <-d.gdb.Done():
			return
		}
	}
}

// onStop handles a stop the debugger did not ask for, and reports
// whether it resumed the VM.
func (d *debugger) onStop(sr gdbrsp.StopReply) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if sr.Signal != 5 || d.trap == nil {
		// QMP stop, dump-guest-memory, shutdown: not ours to resume.
		d.mu.Lock()
		d.others++
		d.mu.Unlock()
		return false
	}
	if sr.Thread <= 0 {
		sr.Thread = 1
	}
	_, rw, err := d.trap(ctx, d.gdb, sr)
	if err != nil {
		d.logf("kernel gate: vCPU %d: %v", sr.Thread-1, err)
	}
	d.mu.Lock()
	d.traps++
	d.mu.Unlock()
	if errors.Is(err, errKeepStopped) {
		return false
	}
	// A T05 that is not at one of our breakpoints (a single-step's end,
	// a breakpoint removed meanwhile) resumes too.
	if err := d.resume(ctx, rw); err != nil {
		if errors.Is(err, gdbrsp.ErrRunning) {
			return true
		}
		d.logf("syscall gate: resume: %v", err)
		return false
	}
	return true
}

// resume continues the VM, with rw's register writes in the same write
// when there are any. If those may not all have been done (a refused
// write, a lost connection: gdbrsp.ErrResumed; or the continue was
// refused before anything was sent, leaving the vCPU where the writes
// were to move it from), the VM is stopped and ended: a vCPU may have run
// on with part of them, or would be found at its trap again by the next
// stop and its call decided twice.
func (d *debugger) resume(ctx context.Context, rw *resumeWrites) error {
	if rw == nil || len(rw.regs) == 0 {
		return d.gdb.Continue(ctx)
	}
	at, err := d.gdb.ContinueWithRegisters(ctx, rw.regs)
	if !at.IsZero() && rw.nanos != nil {
		rw.nanos.Add(uint64(at.Sub(rw.start)))
	}
	if err == nil {
		return nil
	}
	if _, herr := d.gdb.Halt(ctx); herr != nil {
		err = fmt.Errorf("%w (and stopping the VM: %v)", err, herr)
	}
	err = fmt.Errorf("resume an allowed vCPU with its registers moved past the trap: %w: %w", err, errKeepStopped)
	if d.failClosed != nil {
		d.failClosed(err)
	}
	return err
}

// serve runs one request with the VM stopped.
func (d *debugger) serve(req *dbgReq) error {
	ctx := req.ctx
	if err := ctx.Err(); err != nil {
		return err
	}
	wasRunning, err := d.gdb.Halt(ctx)
	if err != nil {
		return fmt.Errorf("stop the VM: %w", err)
	}
	var ferr error
	if req.paused {
		var ran bool
		ran, ferr = d.leaveTrap(ctx, wasRunning)
		wasRunning = wasRunning || ran
	}
	if ferr == nil {
		ferr = req.f(ctx, d.gdb)
	}
	var rw *resumeWrites
	if wasRunning && !errors.Is(ferr, errKeepStopped) && d.scan != nil {
		// A trap hit that raced with the interrupt is served now.
		var err error
		if rw, err = d.scan(ctx, d.gdb); err != nil {
			d.logf("kernel gate: after a request: %v", err)
			if errors.Is(err, errKeepStopped) {
				return errors.Join(ferr, err)
			}
		}
	}
	if wasRunning && !errors.Is(ferr, errKeepStopped) {
		if err := d.resume(ctx, rw); err != nil {
			if ferr != nil {
				return fmt.Errorf("%w (and resuming failed: %v)", ferr, err)
			}
			return err
		}
	}
	return ferr
}

// servePendingStop handles a stop reply that came before a request's
// interrupt and is still waiting for the run loop, and reports whether
// that resumed the VM (false: no such reply, or one that left the VM
// stopped). A reply saying the target exited is errDebuggerGone.
func (d *debugger) servePendingStop() (bool, error) {
	select {
	case sr := <-d.gdb.StopReplies():
		if sr.Exited() {
			return false, errDebuggerGone
		}
		return d.onStop(sr), nil
	default:
		return false, nil
	}
}

// leaveTrap makes a VM that Halt stopped at a trap (QEMU's run state
// "debug") stopped by an interrupt instead (run state "paused"): the
// trap hit is served, the VM resumed and stopped again. It reports
// whether it resumed the VM (which is then stopped again unless the
// error says it was kept stopped).
func (d *debugger) leaveTrap(ctx context.Context, wasRunning bool) (resumed bool, err error) {
	if d.runState == nil {
		return false, errors.New("QEMU's run state is not known here")
	}
	for i := 0; ; i++ {
		st, err := d.runState(ctx)
		if err != nil {
			return resumed, fmt.Errorf("QEMU's run state: %w", err)
		}
		if st != "debug" {
			if resumed {
				d.logf("kernel gate: the VM stopped at a trap, not at the interrupt, before its device state was saved: served, resumed and stopped again (%d times)", i)
			}
			return resumed, nil
		}
		if !wasRunning && !resumed {
			// Stopped before the request's interrupt: at a trap whose
			// stop reply waits behind this request (the run loop took
			// the request first), which is served now like any trap
			// stop; else held at a trap on purpose (a gate failed
			// closed), which nothing here may resume.
			served, err := d.servePendingStop()
			if err != nil {
				return false, err
			}
			if !served {
				return false, errors.New("the VM is held at a trap (run state debug): its device state cannot be saved for another QEMU")
			}
			resumed = true
			if _, err := d.gdb.Halt(ctx); err != nil {
				return resumed, fmt.Errorf("stop the VM: %w", err)
			}
			continue
		}
		if i == maxTrapRetries {
			return resumed, fmt.Errorf("the VM stopped at a kernel gate's trap %d times in a row instead of at the interrupt: try again when the guest is less busy", i+1)
		}
		var rw *resumeWrites
		if d.scan != nil {
			if rw, err = d.scan(ctx, d.gdb); err != nil {
				return resumed, err
			}
		}
		if err := d.resume(ctx, rw); err != nil {
			return resumed, err
		}
		resumed = true
		if _, err := d.gdb.Halt(ctx); err != nil {
			return resumed, fmt.Errorf("stop the VM: %w", err)
		}
	}
}
