package gdbrsp

import (
	"context"
	"fmt"
	"strconv"
)

// Running reports whether the client resumed the target and has not seen
// it stop since. It cannot see resumes made elsewhere (QMP "cont"); Halt
// and WithStopped do not rely on it.
func (c *Client) Running() bool { return c.running.Load() }

// Continue resumes the target ('c') and returns without waiting for it to
// stop; use WaitStop for that and Interrupt to stop it. Stop replies queued
// from earlier stops are discarded. While the target runs, other requests
// fail with ErrRunning: QEMU would take their first byte as an interrupt.
func (c *Client) Continue(ctx context.Context) error {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	if err := c.resumeLocked(ctx, "c"); err != nil {
		return fmt.Errorf("gdbrsp: continue: %w", err)
	}
	return nil
}

// Step executes one instruction on the current vCPU ('s') and returns the
// stop reply.
func (c *Client) Step(ctx context.Context) (StopReply, error) {
	c.cmdMu.Lock()
	err := c.resumeLocked(ctx, "s")
	c.cmdMu.Unlock()
	if err != nil {
		return StopReply{}, fmt.Errorf("gdbrsp: step: %w", err)
	}
	return c.WaitStop(ctx)
}

// StepThread executes one instruction on thread tid only ("vCont;s:TID")
// and returns the stop reply; the other vCPUs stay stopped. Step ('s')
// would resume them all while tid steps (QEMU's 's' starts the whole VM),
// so on a VM with several vCPUs the reply could be another's breakpoint.
func (c *Client) StepThread(ctx context.Context, tid int) (StopReply, error) {
	if tid <= 0 {
		return StopReply{}, fmt.Errorf("gdbrsp: step thread %d: invalid thread id", tid)
	}
	c.cmdMu.Lock()
	err := c.resumeLocked(ctx, "vCont;s:"+strconv.FormatInt(int64(tid), 16))
	c.cmdMu.Unlock()
	if err != nil {
		return StopReply{}, fmt.Errorf("gdbrsp: step thread %d: %w", tid, err)
	}
	return c.WaitStop(ctx)
}

// Preconditions: c.cmdMu held.
func (c *Client) resumeLocked(ctx context.Context, req string) error {
	if err := c.Err(); err != nil {
		return err
	}
	if c.running.Load() {
		return ErrRunning
	}
	drain(c.stops)
	// Mark running before sending: a fast stop reply must not be
	// overwritten by a late Store(true).
	c.running.Store(true)
	if err := c.send(ctx, []byte(req)); err != nil {
		c.running.Store(false)
		return err
	}
	return nil
}

// Interrupt asks a running target to stop by sending the 0x03 byte. The
// stop reply arrives through WaitStop. If the target is already stopped,
// QEMU ignores the byte and no stop reply follows.
func (c *Client) Interrupt(ctx context.Context) error {
	// An owed '+' goes first: QEMU swallows any byte but '+', '-' and
	// '$' while its last packet is unacknowledged, an interrupt too.
	if err := c.cc.Write(ctx, c.withAck([]byte{0x03})); err != nil {
		return fmt.Errorf("gdbrsp: interrupt: %w", err)
	}
	return nil
}

// WaitStop waits for the next stop reply: after Continue, Step or
// Interrupt, or one QEMU sends when the VM stops for another reason (QMP
// "stop", guest shutdown). A reply with Exited() true means the target is gone.
func (c *Client) WaitStop(ctx context.Context) (StopReply, error) {
	select {
	case sr := <-c.stops:
		return sr, nil
	default:
	}
	select {
	case sr := <-c.stops:
		return sr, nil
	case <-c.cc.Done():
		return StopReply{}, fmt.Errorf("gdbrsp: wait for stop: %w", c.cc.Err())
	case <-ctx.Done():
		return StopReply{}, fmt.Errorf("gdbrsp: wait for stop: %w", ctx.Err())
	}
}

// Halt makes sure the target is stopped, whoever resumed it, and reports
// whether it was running. It sends 0x03 (ignored by a stopped QEMU) and
// then a harmless "qC" query: a running QEMU stops on the first byte and
// sends a stop reply, which the reader sees before the qC answer.
//
// Caveat: a stop reply QEMU sent for another reason just before (QEMU 7.2
// sends one for a QMP "stop") and not yet taken with WaitStop is
// indistinguishable from the one 0x03 causes, so Halt then reports
// wasRunning = true. Resume through this client rather than QMP while it
// is attached, or take that stop reply with WaitStop first.
func (c *Client) Halt(ctx context.Context) (wasRunning bool, err error) {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	seq := c.stopSeq.Load()
	if err := c.Interrupt(ctx); err != nil {
		return false, err
	}
	if c.running.Load() {
		// We resumed it: the stop reply to the interrupt is what we wait for.
		if _, err := c.WaitStop(ctx); err != nil {
			return false, fmt.Errorf("gdbrsp: halt: %w", err)
		}
		return true, nil
	}
	r, err := c.exchange(ctx, "qC")
	if err != nil {
		return false, fmt.Errorf("gdbrsp: halt: %w", err)
	}
	_ = r // "QC<tid>", or "" from stubs without qC; either proves it is stopped
	if c.stopSeq.Load() != seq {
		drain(c.stops)
		return true, nil
	}
	return false, nil
}

// WithStopped runs f with the target stopped: it halts the target if it
// was running, runs f, and resumes the target afterwards if it had been
// running. This is how to use the client on a live VM: QEMU's gdbstub is
// all-stop, so nothing can be read while vCPUs run.
func (c *Client) WithStopped(ctx context.Context, f func() error) error {
	wasRunning, err := c.Halt(ctx)
	if err != nil {
		return err
	}
	ferr := f()
	if wasRunning {
		if err := c.Continue(ctx); err != nil {
			if ferr != nil {
				return fmt.Errorf("%w (and resuming failed: %v)", ferr, err)
			}
			return err
		}
	}
	return ferr
}

// Detach ends the session with 'D' and closes the connection. QEMU resumes
// the VM on detach (even one started with -S), unlike Close.
func (c *Client) Detach(ctx context.Context) error {
	if _, err := c.Halt(ctx); err != nil {
		return fmt.Errorf("gdbrsp: detach: %w", err)
	}
	r, err := c.command(ctx, "D")
	if err == nil {
		err = expectOK(r)
	}
	c.Close()
	if err != nil {
		return fmt.Errorf("gdbrsp: detach: %w", err)
	}
	return nil
}
