//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchRejuvenateCmd() *cobra.Command {
	o := bench.RejuvenateOptions{SizesMiB: []int{256, 1024, 2048}}
	cmd := &cobra.Command{
		Use:   "rejuvenate",
		Short: "Guest-visible downtime of a QEMU restart keeping RAM, a snapshot, a rollback, a monitor upgrade and a full migration, against a cold reboot, per RAM size",
		Long: `For each --mem size, boot the default kit with procgap added (timed: the cold
boot), fill --fill-mib of the guest's tmpfs with random data, start procgap's
ticker (a line on the console every --tick), attach to the console through
the API and, --rounds times: restart QEMU keeping guest RAM (x-ignore-shared),
take a snapshot, roll back to it, upgrade the monitor (exec in place); then,
--rounds times, restart QEMU with a full migration of RAM to a file and back
(last: its load leaves all of guest RAM allocated in the RAM file). Each is
timed by the longest gap between ticker lines that reached the host around
it (less one period: the pause the guest's output shows from outside; not
for the upgrade, which ends the console stream), by the monitor's own
figure and by the command's round trip. Then a forced stop and a boot to
ready: the cold reboot they are compared with.`,
	}
	cmd.Flags().IntSliceVar(&o.SizesMiB, "mem", o.SizesMiB, "guest RAM sizes in MiB, one VM each")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds of the four operations per size")
	cmd.Flags().IntVar(&o.FillMiB, "fill-mib", 128, "random data written to the guest's tmpfs first")
	cmd.Flags().DurationVar(&o.TickPeriod, "tick", 5*time.Millisecond, "the guest's ticker period")
	cmd.Flags().StringVar(&o.Net, "net", "", "give each VM a network (run --net; isolated: one of its own), handed over by restarts and upgrades")
	check := func() error {
		if o.Rounds < 1 || o.Rounds > 50 || o.FillMiB < 0 || o.TickPeriod < time.Millisecond || o.TickPeriod > time.Second {
			return fmt.Errorf("--rounds 1..50, --fill-mib >= 0, --tick 1ms..1s")
		}
		for _, m := range o.SizesMiB {
			if m < 128 || m > 16384 || o.FillMiB > m/2 {
				return fmt.Errorf("--mem %d: 128..16384 MiB, at least twice --fill-mib", m)
			}
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.RejuvenateReport, error) {
		return bench.Rejuvenate(ctx, env, o)
	})
}
