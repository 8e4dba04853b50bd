//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchIDSCmd() *cobra.Command {
	var o bench.IDSOptions
	cmd := &cobra.Command{
		Use:   "ids",
		Short: "Time `ids ps` on a guest with many processes: live RAM mapping against the gdbstub memory path",
		Long: `Boot the default kit (512M) in the background, start --procs sleeping
processes in it, then run 'ids ps' --rounds times from each memory source,
alternating: the live guest-RAM mapping (the guest keeps running) and the
gdbstub (the guest pauses for the query). Times are the monitor's own
(elapsed_us), without the API round trip. Also times building a kernel
profile from the kit's image, uncached and cached; 'ids check' --rounds
times on the same guest (whole and by check; a finding on this clean guest
fails the benchmark); and the monitor's CPU over --window, idle, then on a
second guest with the same processes scanning every --scan-interval.`,
	}
	cmd.Flags().IntVar(&o.Procs, "procs", 1000, "sleeping processes to start in the guest")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 21, "queries per memory source")
	cmd.Flags().DurationVar(&o.Window, "window", 20*time.Second, "how long the monitor's CPU is measured, idle and then on a second guest scanning every --scan-interval (0 skips it)")
	cmd.Flags().DurationVar(&o.ScanInterval, "scan-interval", time.Second, "the second guest's --ids-interval")
	cmd.Flags().StringVar(&o.Kit, "kit", "", "boot this built kit (a name of 'gatevisor kit ls', such as the arm64 one) instead of the default")
	check := func() error {
		if o.Procs < 0 || o.Procs > 5000 || o.Rounds < 1 || o.Rounds > 1000 {
			return fmt.Errorf("--procs 0..5000 and --rounds 1..1000")
		}
		if o.Window < 0 || o.Window > 10*time.Minute || o.ScanInterval < 100*time.Millisecond || o.ScanInterval > time.Minute {
			return fmt.Errorf("--window 0..10m and --scan-interval 100ms..1m")
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.IDSReport, error) {
		return bench.IDS(ctx, env, o)
	})
}
