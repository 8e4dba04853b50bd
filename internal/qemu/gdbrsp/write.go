package gdbrsp

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"
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
