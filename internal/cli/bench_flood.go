//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchFloodCmd() *cobra.Command {
	var o bench.FloodOptions
	var scenarios string
	cmd := &cobra.Command{
		Use:   "flood",
		Short: "Gates under attack (issue 21): a flooding guest process against a bystander's allowed work",
		Long: `Boot the default kit on an isolated network with a policy like
policies/net-gate.policy, plus a file rule that denies (and audits) opens of
/etc/flood-denied, and run, in every round, each scenario once: a flood from
one guest process in the background for --seconds, and a bystander in
another, whose work the policy allows:

  net-idle        no flood; the network bystander
  tcp             non-blocking TCP connects to 10.0.2.2:1024-65535 (all
                  denied and audited), at most 256 sockets open at once,
                  each closed after 20 ms if it has not resolved (the
                  issue's attacker: thousands of connects a second)
  tcp-held        the same, each socket held until its connect resolves
                  (at most 1 s): the flood is paced by the gate's answers
  udp             UDP datagrams to 10.0.2.2:1024-65535 from one socket
  pin             the flow-table pinning pattern: UDP datagrams cycling
                  over 120,000 (address, port) pairs of 198.18.0.0/15
  open-idle       no flood; the syscall bystander
  open            open(/etc/flood-denied) in a tight loop (denied, audited)
  open-idle-2cpu  open-2cpu: the same on a VM with 2 vCPUs ('run --cpus 2')

The attacker and the bystanders are one program,
internal/bench/benchdata/flood.c, built static with the host's gcc and
added to the guest. The network bystander makes a blocking connect to
10.0.2.2:80 every --interval ms (5 s timeout each), each timed, while a
third process runs 'timeout 20 wget -qO- http://10.0.2.2/'; the syscall
bystander times an open+close of /etc/hostname (trapped by the kernel gate,
allowed) every --interval ms.

Every 500 ms the monitor's status is sampled: the network gate's counters
and flow table, the kernel gate's stops, the audit chain's head, the
monitor's RSS and the size of events.jsonl and audit.jsonl. Reports, per
scenario and round, the gate's policy decisions per second and the denies
no policy rule made (gate-overload: refused without a decision), from the
counters and the audit log; the denies by rule and the attribution time
of each decision, from the event log; the bystander's latency p50/p99 and
failures; the wget's outcome; the flow table over time; the backlog the
gate decided after the flood; the kernel gate's stops; the monitor's peak
RSS and how much its logs grew. Medians over --rounds.`,
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds; each runs every scenario once")
	cmd.Flags().IntVar(&o.Seconds, "seconds", 20, "each flood's duration in seconds (the bystander runs within it)")
	cmd.Flags().IntVar(&o.IntervalMillis, "interval", 250, "ms between a bystander's attempts")
	cmd.Flags().StringVar(&scenarios, "scenarios", "all", "scenarios to run, comma-separated: "+strings.Join(bench.FloodScenarioNames(), ","))
	cmd.Flags().StringVar(&o.Accel, "accel", "auto", "accelerator for the guests: auto, kvm or tcg")
	cmd.Flags().StringVar(&o.Mem, "mem", "256M", "memory of each guest")
	check := func() error {
		var err error
		if o.Scenarios, err = parseFloodScenarios(scenarios); err != nil {
			return err
		}
		if err := checkFloodOptions(o); err != nil {
			return err
		}
		o.Command = "gatevisor " + strings.Join(os.Args[1:], " ")
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.FloodReport, error) {
		rep, err := bench.Flood(ctx, env, o)
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted: the benchmark VMs stopped")
		}
		return rep, err
	})
}

// checkFloodOptions checks the numeric flags' ranges: the flood program
// takes at most 60 s, and a bystander needs room for a few attempts.
func checkFloodOptions(o bench.FloodOptions) error {
	if o.Rounds < 1 || o.Rounds > 50 || o.Seconds < 5 || o.Seconds > 60 || o.IntervalMillis < 10 || o.IntervalMillis > 5000 {
		return fmt.Errorf("--rounds 1..50, --seconds 5..60, --interval 10..5000")
	}
	if o.Accel != "auto" && o.Accel != "kvm" && o.Accel != "tcg" {
		return fmt.Errorf("--accel %q: auto, kvm or tcg", o.Accel)
	}
	return nil
}

// parseFloodScenarios parses --scenarios: "all" (nil) or a comma-separated
// list of known scenarios, each once.
func parseFloodScenarios(s string) ([]string, error) {
	if s == "all" {
		return nil, nil
	}
	known := bench.FloodScenarioNames()
	var out []string
	for k := range strings.SplitSeq(s, ",") {
		k = strings.TrimSpace(k)
		switch {
		case !slices.Contains(known, k):
			return nil, fmt.Errorf("--scenarios: unknown scenario %q (want all or some of %s)", k, strings.Join(known, ","))
		case slices.Contains(out, k):
			return nil, fmt.Errorf("--scenarios: %q twice", k)
		}
		out = append(out, k)
	}
	return out, nil
}
