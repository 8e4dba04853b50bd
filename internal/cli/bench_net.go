//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchNetCmd() *cobra.Command {
	var o bench.NetOptions
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Cost of the network gate: two guests at once, one behind the gate, one without, on the same workloads",
		Long: `Boot the default kit twice at once, each on its own isolated network: one
behind the network gate (a policy allowing the workloads' ports), one with
its NIC straight on the network (the hidden --net-no-gate). In every round
run each workload in both guests, alternating which goes first:

  bulk    --mib MiB from the guest's tmpfs to the discard service
          (10.0.2.2:9) with busybox nc, which exits once the service has
          read everything and closed (it does not idle)
  http    --requests sequential 'wget http://10.0.2.2/': each a new
          process and a new flow, attributed and decided by the gate
  echo    --echoes round trips of one line over one established
          connection to the echo service (10.0.2.2:7): the fast path

With --net user each guest has its own user-mode NAT instead, and the three
services are listeners of this process on the host's 127.0.0.1, which the
guests reach at 192.168.127.254.

Both guests get the same policy (with no syscall to trap), so that they
differ only by the network gate. Every run is timed by the guest's
/proc/uptime (10 ms resolution); the monitor's and QEMU's CPU time over each
run is read from their threads' schedstat.

Reports per workload the medians of both configurations and their ratio,
and, pairing each round's two runs (back to back, under the same load), the
median ratio and the time the gate adds per request or round trip, with a
distribution-free confidence interval for the median (order statistics; 96%
at 20 rounds). Then the goals of issue 6 (throughput >= 0.9 of no gate; <= 20
µs added per packet on the fast path, from the echo's round trips), the
attribution time of the HTTP flows (attribute_us of their events), and the
gate's counters. Records the load average and other QEMUs: the guests share
the host's CPUs with whatever else runs.`,
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 5, "rounds; each runs every workload in both guests")
	cmd.Flags().IntVar(&o.MiB, "mib", 32, "MiB per bulk transfer (from the guest's tmpfs)")
	cmd.Flags().IntVar(&o.Requests, "requests", 100, "sequential HTTP requests per run")
	cmd.Flags().IntVar(&o.Echoes, "echoes", 1000, "round trips per echo run")
	cmd.Flags().StringVar(&o.Accel, "accel", "auto", "accelerator for both guests: auto, kvm or tcg")
	cmd.Flags().StringVar(&o.Mem, "mem", "256M", "memory of each guest")
	cmd.Flags().StringVar(&o.Net, "net", "isolated", "the guests' network: isolated (to the network's services) or user (through the NAT to this process on the host's loopback)")
	check := func() error {
		if o.Rounds < 1 || o.Rounds > 100 || o.MiB < 1 || o.MiB > 64 || o.Requests < 1 || o.Requests > 10000 || o.Echoes < 10 || o.Echoes > 1000000 {
			return fmt.Errorf("--rounds 1..100, --mib 1..64, --requests 1..10000, --echoes 10..1000000")
		}
		if o.Net != "isolated" && o.Net != "user" {
			return fmt.Errorf("--net %q: isolated or user", o.Net)
		}
		o.Command = "gatevisor " + strings.Join(os.Args[1:], " ")
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.NetReport, error) {
		rep, err := bench.Net(ctx, env, o)
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted: both benchmark VMs stopped")
		}
		return rep, err
	})
}
