//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
	"github.com/gatevisor/gatevisor/internal/policy"
)

func newBenchMemoryCmd() *cobra.Command {
	var (
		o       bench.MemoryOptions
		configs string
	)
	cmd := &cobra.Command{
		Use:   "memory",
		Short: "The monitor's memory (issue 19): at rest and under load, per configuration, against the goals",
		Long: `Boot the default kit in the background once per configuration and round
(a fresh VM each time, the configurations in a different order each round):

  none    no options
  ids     --ids-interval 2s (the IDS scanning)
  policy  --policy P, where P is --policy with "advisory net;" prepended, from
          a temporary file: the VM has no network, so the policy's network
          rules are accepted unenforced (every other gate is armed)
  net     --net isolated:NAME, a private network the monitor hosts (switch
          and services); no policy, so its gate denies every flow, DHCP too
  all     --net isolated:NAME --policy P --ids-interval 2s: every gate
          armed and the IDS scanning

For each, the monitor's memory is read from /proc/PID/status (PID from the
VM's status) and /proc/PID/smaps_rollup:

  at ready      VmHWM is the boot's peak; the monitor's own memory is also
                sampled every 100 ms during the boot, once its API answers
  at rest       after the guest was idle for --settle, the medians of
                samples every 500 ms over --window
  under load    VmRSS and its parts sampled every 100 ms, and VmHWM (reset
                just before, read after) over a bounded workload: --iters
                iterations of an exec+open loop in the guest; with the IDS,
                --queries pairs of 'ids ps' and 'ids check' through the API
                beside it; with a network, after both, DHCP and --lookups
                DNS lookups and HTTP GETs to the isolated network's services
                (10.0.2.2), in the guest's background

Columns: RssAnon (the monitor's heap, stacks and runtime), RssFile (the
binary), RssShmem (guest RAM pages the monitor touched through its mapping:
the guest's memory, shared with QEMU, not the monitor's). The goals count
the monitor's own memory, anon + file, in the worst round: at rest <= 30 MiB
with every gate armed and the IDS scanning, peak <= 64 MiB; what the guest's
pages add is printed beside them. Medians over --rounds. Every VM is stopped
before the command returns, Ctrl-C included.`,
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds; each boots every configuration once")
	cmd.Flags().DurationVar(&o.Settle, "settle", 20*time.Second, "how long the guest stays idle after ready before the steady state is read")
	cmd.Flags().DurationVar(&o.Window, "window", 5*time.Second, "how long the steady state is sampled (every 500 ms)")
	cmd.Flags().IntVar(&o.Iters, "iters", 200, "iterations of the in-guest exec+open loop")
	cmd.Flags().IntVar(&o.Queries, "queries", 5, "pairs of 'ids ps' and 'ids check' through the API (configurations with the IDS)")
	cmd.Flags().IntVar(&o.Lookups, "lookups", 20, "DNS lookups and HTTP GETs of the network loop (configurations with a network)")
	cmd.Flags().StringVar(&o.IDSInterval, "ids-interval", "2s", "--ids-interval of the configurations with the IDS")
	cmd.Flags().StringVar(&o.Policy, "policy", "policies/iot-default.policy", "the device policy of the policy and all configurations")
	cmd.Flags().StringVar(&configs, "configs", strings.Join(bench.MemoryConfigNames(), ","), "configurations to run, comma-separated (\"all\" is the configuration with everything)")
	cmd.Flags().StringVar(&o.Accel, "accel", "auto", "accelerator for the guests: auto, kvm or tcg")
	cmd.Flags().StringVar(&o.Mem, "mem", "256M", "memory of each guest")
	check := func() error {
		if err := checkMemoryOptions(&o, configs); err != nil {
			return err
		}
		var err error
		if o.PolicySource, err = readCapped(o.Policy, policy.MaxFileSize); err != nil {
			return benchPolicyError(err)
		}
		o.Command = "gatevisor " + strings.Join(os.Args[1:], " ")
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.MemoryReport, error) {
		rep, err := bench.Memory(ctx, env, o)
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted: the benchmark VMs stopped")
		}
		return rep, err
	})
}

// checkMemoryOptions checks the flags' ranges and parses --configs (a
// list of configurations: "all" is the one with everything) into o.
func checkMemoryOptions(o *bench.MemoryOptions, configs string) error {
	if o.Rounds < 1 || o.Rounds > 50 || o.Iters < 1 || o.Iters > 100000 || o.Queries < 0 || o.Queries > 1000 ||
		o.Lookups < 0 || o.Lookups > 1000 {
		return fmt.Errorf("--rounds 1..50, --iters 1..100000, --queries 0..1000, --lookups 0..1000")
	}
	if o.Settle < 0 || o.Settle > time.Hour || o.Window < 0 || o.Window > 10*time.Minute {
		return fmt.Errorf("--settle 0..1h, --window 0..10m")
	}
	if d, err := time.ParseDuration(o.IDSInterval); err != nil || d <= 0 {
		return fmt.Errorf("--ids-interval %q: a positive duration", o.IDSInterval)
	}
	if o.Accel != "auto" && o.Accel != "kvm" && o.Accel != "tcg" {
		return fmt.Errorf("--accel %q: auto, kvm or tcg", o.Accel)
	}
	o.Configs = nil
	known := bench.MemoryConfigNames()
	for k := range strings.SplitSeq(configs, ",") {
		k = strings.TrimSpace(k)
		switch {
		case !slices.Contains(known, k):
			return fmt.Errorf("--configs: unknown configuration %q (want some of %s)", k, strings.Join(known, ","))
		case slices.Contains(o.Configs, k):
			return fmt.Errorf("--configs: %q twice", k)
		}
		o.Configs = append(o.Configs, k)
	}
	return nil
}
