package monitor

import (
	"context"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
)

// stepOverWatch moves vCPU tid, stopped by the write watchpoint at va, past
// the store that hit it, and sets the watchpoint again.
//
// Why: QEMU's ARM targets stop before the access (CPUClass
// gdb_stop_before_watchpoint, as AArch64 debug watchpoints do), so a
// resumed vCPU executes the store again and stops again, forever
// (measured on qemu-system-aarch64 7.2: the boot watchpoint on
// system_state reported the same store without end). gdb steps over
// such a watchpoint the same way: remove, single-step, re-insert. The
// x86 targets stop after the access and need none of this.
//
// Preconditions: on the debugger goroutine, the VM stopped.
func (m *Monitor) stepOverWatch(ctx context.Context, c *gdbrsp.Client, tid int, va uint64) error {
	if err := c.ClearWatchpoint(ctx, gdbrsp.WriteWatch, va, 4); err != nil {
		return fmt.Errorf("step over the watchpoint at %#x: %w", va, err)
	}
	if _, err := c.StepThread(ctx, tid); err != nil {
		return fmt.Errorf("step over the watchpoint at %#x: %w", va, err)
	}
	if err := c.SetWatchpoint(ctx, gdbrsp.WriteWatch, va, 4); err != nil {
		return fmt.Errorf("step over the watchpoint at %#x: set it again: %w", va, err)
	}
	return nil
}
