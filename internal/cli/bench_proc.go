//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchProcCmd() *cobra.Command {
	var o bench.ProcOptions
	cmd := &cobra.Command{
		Use:   "proc",
		Short: "Process actions from below: proc stop/cont against in-guest kill, and the pause the guest sees",
		Long: `Boot the default kit in the background with procgap added
(internal/bench/benchdata/procgap.c, built static with the host's gcc) and,
on that one guest:

  1. time 'proc stop' and 'proc cont' through the API on a busy loop that
     makes no system call (procgap spin), --rounds times: the command's
     round trip (its answer waits until guest memory shows the new state)
     and the answer's safe_point_ms, call_us and took_ms;
  2. time the peer the same way, alternating which side goes first each
     round: in-guest 'kill -STOP PID' and 'kill -CONT PID' through the
     exec channel. For both sides the end is the first 'ids ps' from the
     live RAM mapping (polled every 10 ms, as the monitor's own
     confirmation polls) that shows the state; after each stop the
     guest's own /proc/PID/stat must say T;
  3. measure the pause the guest sees: procgap reads CLOCK_MONOTONIC in a
     loop and records every gap between two reads over --gap-threshold,
     over four windows of 2 x --rounds operations --spacing apart on a
     sleeping process: idle, proc stop/cont, in-guest kill -STOP/-CONT,
     and 'ids ps --source gdbstub' (a VM pause with no kernel call).

Reports p50/p90/max of each time, the ratio gatevisor / in-guest of the
medians, and per window the gaps' p50/p90/max, the longest gaps (as many as
operations), the time they add up to and the excess over idle per
operation.`,
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 20, "stop/cont pairs timed per side; each pause window has twice as many operations")
	cmd.Flags().IntVar(&o.CPUs, "cpus", 1, "the VM's vCPUs")
	cmd.Flags().DurationVar(&o.GapThreshold, "gap-threshold", 20*time.Microsecond, "the shortest gap between two reads of the guest's clock that counts as an interruption")
	cmd.Flags().DurationVar(&o.Spacing, "spacing", 300*time.Millisecond, "from one operation's start to the next in a pause window")
	check := func() error {
		if o.Rounds < 1 || o.Rounds > 500 || o.CPUs < 1 || o.CPUs > 8 {
			return fmt.Errorf("--rounds 1..500 and --cpus 1..8")
		}
		if o.GapThreshold < 5*time.Microsecond || o.GapThreshold > time.Second || o.Spacing < 50*time.Millisecond || o.Spacing > 10*time.Second {
			return fmt.Errorf("--gap-threshold 5µs..1s and --spacing 50ms..10s")
		}
		if w := time.Duration(2*o.Rounds) * o.Spacing; w > 9*time.Minute {
			return fmt.Errorf("a pause window of 2 x --rounds x --spacing = %v: at most 9m", w)
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.ProcReport, error) {
		return bench.Proc(ctx, env, o)
	})
}
