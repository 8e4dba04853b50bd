//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchFleetCmd() *cobra.Command {
	o := bench.FleetOptions{VMs: []int{1, 10, 50}}
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Fleet publishing: events/s and CPU per event with JetStream acks, 1 to 50 synthetic monitors against a bare publisher",
		Long: `Without QEMU: for each --vms size, that many synthetic monitors (the fleet
agent of 'run --fleet', each reading a real audit log of --events/size
records written beforehand) publish into an embedded NATS server with
JetStream on disk, in this process, until every record is acknowledged. The
peer, in the same round and alternating first, is a bare JetStream
publisher sending the same lines from memory (same window of 256, same
message ids). Reports events/s, the process's CPU per event (publishers and
server), the subjects the stream holds (one per VM: the layout stays flat)
and the bytes stored.`,
	}
	cmd.Flags().IntVar(&o.Events, "events", 20000, "audit records per configuration, split over its VMs")
	cmd.Flags().IntSliceVar(&o.VMs, "vms", o.VMs, "fleet sizes")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds per configuration")
	check := func() error {
		if o.Events < 100 || o.Events > 2_000_000 || o.Rounds < 1 || o.Rounds > 50 {
			return fmt.Errorf("--events 100..2000000 and --rounds 1..50")
		}
		for _, n := range o.VMs {
			if n < 1 || n > 500 || o.Events/n < 3 {
				return fmt.Errorf("--vms %d: 1..500, with at least 3 records per VM", n)
			}
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, _ bench.Env) (*bench.FleetReport, error) {
		return bench.Fleet(ctx, o)
	})
}
