package gdbrsp

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// WriteRegister sets a register of at most 64 bits of the current vCPU
// (Hg) with a 'P' packet; v is truncated to the register's width. QEMU 7.2
// implements 'P' for every x86-64 core register (rax..r15, rip, eflags,
// the segment selectors and bases, cr0-cr8, efer).
func (c *Client) WriteRegister(ctx context.Context, name string, v uint64) error {
	reg, ok := c.Register(name)
	if !ok {
		return fmt.Errorf("gdbrsp: write register %s: %w", name, ErrUnknownRegister)
	}
	if reg.BitSize > 64 || reg.BitSize <= 0 || reg.BitSize%8 != 0 {
		return fmt.Errorf("gdbrsp: write register %s: %w", name, ErrRegisterTooWide)
	}
	r, err := c.command(ctx, encodeP(reg.Num, reg.BitSize/8, v))
	if err == nil {
		err = expectOK(r)
	}
	if err != nil {
		return fmt.Errorf("gdbrsp: write register %s: %w", name, err)
	}
	return nil
}

// RegValue is one register write of WriteRegisters.
type RegValue struct {
	Name  string
	Value uint64
}

// maxBurst bounds the packets of one WriteRegisters burst: the replies and
// acknowledgements the reader queues for it (replyBuffer, acks).
const maxBurst = 16

// WriteRegisters sets several registers of the current vCPU, as
// WriteRegister does, with one write of every 'P' packet: the stub reads
// them in order and answers each (an acknowledgement, then "OK"), so the
// burst costs one round trip instead of one per register. A register that
// is refused, or a packet the stub rejects, is an error; the other writes
// of the burst may have taken effect.
func (c *Client) WriteRegisters(ctx context.Context, regs []RegValue) error {
	for len(regs) > 0 {
		n := min(len(regs), maxBurst)
		if err := c.writeBurst(ctx, regs[:n]); err != nil {
			return err
		}
		regs = regs[n:]
	}
	return nil
}

// encodeBurst returns the 'P' packets that write regs, back to back.
func (c *Client) encodeBurst(regs []RegValue) ([]byte, error) {
	var burst []byte
	for _, rv := range regs {
		reg, ok := c.Register(rv.Name)
		if !ok {
			return nil, fmt.Errorf("gdbrsp: write register %s: %w", rv.Name, ErrUnknownRegister)
		}
		if reg.BitSize > 64 || reg.BitSize <= 0 || reg.BitSize%8 != 0 {
			return nil, fmt.Errorf("gdbrsp: write register %s: %w", rv.Name, ErrRegisterTooWide)
		}
		burst = append(burst, encodePacket([]byte(encodeP(reg.Num, reg.BitSize/8, rv.Value)))...)
	}
	return burst, nil
}

func (c *Client) writeBurst(ctx context.Context, regs []RegValue) error {
	burst, err := c.encodeBurst(regs)
	if err != nil {
		return err
	}
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	if c.running.Load() {
		return ErrRunning
	}
	if err := c.Err(); err != nil {
		return err
	}
	drain(c.replies)
	drain(c.acks)
	c.wantAcks.Store(true) // a burst counts its acknowledgements
	if err := c.cc.Write(ctx, c.withAck(burst)); err != nil {
		return err
	}
	// Every packet is answered, even after one is refused: the answers
	// are all taken here, so that the next request reads its own.
	var first error
	for _, rv := range regs {
		if !c.noAck.Load() {
			select {
			case a := <-c.acks:
				if a != '+' {
					// The stub asks for a resend it will never get in a
					// burst: no answer follows, and the stream is out of
					// step. Fail the connection's user loudly.
					return fmt.Errorf("gdbrsp: write register %s: %w: packet rejected in a burst", rv.Name, ErrProtocol)
				}
			case <-c.cc.Done():
				return c.cc.Err()
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case r := <-c.replies:
			if err := okReply(r); err != nil && first == nil {
				first = fmt.Errorf("gdbrsp: write register %s: %w", rv.Name, err)
			}
		case <-c.cc.Done():
			return c.cc.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return first
}

// ContinueWithRegisters sets registers of the current vCPU and resumes
// the target ('c') with one write of every packet: P, ..., P, c. The stub
// takes them in order, so the target runs after one write instead of two
// round trips (the writes' answers, then the continue's acknowledgement).
// resumed is when the packets were written (zero if they were not).
//
// The answers to the writes arrive once the target may already run, and
// QEMU stops a running VM on any byte it receives (gdb_read_byte), an
// acknowledgement too: the client therefore does not acknowledge them
// (QEMU forgets its last packet when the next one starts and retransmits
// only on '-', so nothing is owed). They are read before this returns:
// a refused write, a packet the stub rejects or a lost connection is an
// error wrapping [ErrResumed] — the target may be running with only some
// of the writes done, and the caller must stop it. Errors from before the
// write (unknown register, target running) leave the target as it was.
func (c *Client) ContinueWithRegisters(ctx context.Context, regs []RegValue) (resumed time.Time, err error) {
	if len(regs) > maxBurst {
		return time.Time{}, fmt.Errorf("gdbrsp: continue with %d register writes: more than %d", len(regs), maxBurst)
	}
	burst, err := c.encodeBurst(regs)
	if err != nil {
		return time.Time{}, err
	}
	burst = append(burst, encodePacket([]byte("c"))...)
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	if err := c.Err(); err != nil {
		return time.Time{}, fmt.Errorf("gdbrsp: continue: %w", err)
	}
	if c.running.Load() {
		return time.Time{}, fmt.Errorf("gdbrsp: continue: %w", ErrRunning)
	}
	drain(c.replies)
	drain(c.acks)
	c.wantAcks.Store(true) // a burst counts its acknowledgements
	drain(c.stops)
	noAck := c.noAck.Load()
	if !noAck {
		c.quiet.Store(int32(len(regs)))
	}
	// Running before the write: a fast stop reply must not be overwritten.
	c.running.Store(true)
	if err := c.cc.Write(ctx, c.withAck(burst)); err != nil {
		c.quiet.Store(0)
		return time.Time{}, fmt.Errorf("gdbrsp: continue with registers: %w: %w", ErrResumed, err)
	}
	resumed = time.Now()
	fail := func(err error) (time.Time, error) {
		c.quiet.Store(0)
		return resumed, fmt.Errorf("gdbrsp: continue with registers: %w: %w", ErrResumed, err)
	}
	var first error
	for i := range len(regs) + 1 {
		if !noAck {
			select {
			case a := <-c.acks:
				if a != '+' {
					if i == len(regs) {
						// QEMU dropped the continue: the target stays
						// stopped (the writes before it were taken).
						c.running.Store(false)
					}
					return fail(fmt.Errorf("%w: packet %d of %d rejected in a burst", ErrProtocol, i+1, len(regs)+1))
				}
			case <-c.cc.Done():
				return fail(c.cc.Err())
			case <-ctx.Done():
				return fail(ctx.Err())
			}
		}
		if i == len(regs) {
			break // 'c' has no answer
		}
		select {
		case r := <-c.replies:
			if err := okReply(r); err != nil && first == nil {
				first = fmt.Errorf("write register %s: %w", regs[i].Name, err)
			}
		case <-c.cc.Done():
			return fail(c.cc.Err())
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	if first != nil {
		return fail(first)
	}
	return resumed, nil
}

// encodeP builds "P<num>=<value in target byte order>". Pure.
func encodeP(num, size int, v uint64) string {
	var b [8]byte
	for i := range size {
		b[i] = byte(v >> (8 * i))
	}
	return "P" + strconv.FormatInt(int64(num), 16) + "=" + hex.EncodeToString(b[:size])
}

// StopReplies returns the channel on which stop replies arrive. It is for
// a single owner that drives the target itself (the monitor's debugger
// loop): it may select on it instead of calling WaitStop, and must then be
// the only caller of WaitStop, Halt and WithStopped.
func (c *Client) StopReplies() <-chan StopReply { return c.stops }
