package bench

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// mib formats KiB as MiB with one decimal.
func mib(kib int64) string { return strconv.FormatFloat(float64(kib)/1024, 'f', 1, 64) + " MiB" }

// WriteText writes the report for a person: the steady state's columns,
// the peaks, the goals and what each load did.
func (rep *MemoryReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("monitor memory (issue 19): %d rounds, each configuration booted fresh, the order rotated each round; %s, %s guests, host %d CPUs\n",
		rep.Rounds, rep.Accel, rep.Mem, rep.HostCPUs)
	t.printf("started %s; load average before: %s, after: %s; other QEMU processes at the start: %d\n",
		rep.Started, rep.LoadAvg[0], rep.LoadAvg[1], rep.OtherQEMUs)
	t.printf("steady state: the guest idle %s after ready, then /proc/PID/status every 500 ms over %s (medians); load: VmRSS every 100 ms\n",
		rep.Settle, rep.Window)
	t.printf("own = RssAnon (heap, stacks, runtime) + RssFile (the binary, libc); shmem = RssShmem, guest RAM pages the monitor touched\n")
	t.printf("through its mapping (the guest's memory, shared with QEMU, not the monitor's allocation)\n")
	for _, c := range rep.Configurations {
		t.printf("  %-6s gatevisor run %s\n", c.Key, strings.Join(c.Args, " "))
	}
	if rep.PolicyNote != "" {
		t.printf("  (%s)\n", rep.PolicyNote)
	}
	t.printf("\nsteady state, MiB, medians over the rounds:\n")
	const srow = "  %-6s %7s %7s %7s   %7s   %7s %7s %7s %7s\n"
	t.printf(srow, "", "anon", "file", "own", "shmem", "VmRSS", "PSS", "PSS", "threads")
	t.printf(srow, "", "", "", "", "(guest)", "", "", "shmem", "")
	for _, c := range rep.Configurations {
		m := c.Median
		t.printf(srow, c.Key, mibNum(m.Steady.RssAnon), mibNum(m.Steady.RssFile), mibNum(m.SteadyOwn), mibNum(m.Steady.RssShmem),
			mibNum(m.Steady.VmRSS), mibNum(m.SteadyPss), mibNum(m.SteadyPssShmem), strconv.FormatInt(m.Steady.Threads, 10))
	}
	t.printf("\npeaks, MiB, medians over the rounds. Up to rest: from when the API first answers to the load (boot, settle, window),\n")
	t.printf("own sampled every 100 ms, VmHWM at ready and just before the load (since start). Load: own, shmem and VmRSS sampled\n")
	t.printf("every 100 ms, VmHWM reset just before the load and read after it (its exact peak of VmRSS)\n")
	const prow = "  %-6s %8s %9s %9s   %8s %7s %7s %8s   %s\n"
	t.printf(prow, "", "own", "HWM at", "HWM at", "own", "shmem", "VmRSS", "VmHWM", "guest loop,")
	t.printf(prow, "", "to rest", "ready", "rest", "load", "load", "load", "load", "whole load")
	for _, c := range rep.Configurations {
		m := c.Median
		t.printf(prow, c.Key, mibNum(m.RestPeakOwn), mibNum(m.ReadyHWM), mibNum(m.RestHWM), mibNum(m.LoadPeakOwn), mibNum(m.LoadPeakShmem),
			mibNum(m.LoadPeakRSS), mibNum(m.LoadHWM), fmt.Sprintf("%.1fs, %.1fs", m.LoopSeconds, m.LoadSeconds))
	}
	t.printf("\ngoals, on the monitor's own memory (anon + file), worst round: at rest <= %s with every gate armed and the IDS scanning\n",
		mib(rep.SteadyGoalKiB))
	t.printf("(the all configuration), peak <= %s (the larger of the sampled peaks up to rest and under the load)\n", mib(rep.PeakGoalKiB))
	for _, c := range rep.Configurations {
		m := c.Median
		t.printf("  %-6s at rest %9s %-6s  peak %9s %-6s  guest RAM pages add %s at rest, %s at the load's peak\n", c.Key,
			mib(c.WorstSteadyOwn), verdict(c.SteadyMet), mib(c.WorstPeakOwn), verdict(c.PeakMet), mib(m.Steady.RssShmem), mib(m.LoadPeakShmem))
	}
	t.printf("\nloads:\n")
	for _, c := range rep.Configurations {
		t.printf("  %-6s %s\n", c.Key, c.Workload)
		if len(c.Runs) > 0 {
			l := c.Runs[len(c.Runs)-1].Load
			t.printf("         last round: kernel-gate stops %d, ids queries %d", l.GateStops, l.IDSQueries)
			if l.Lease != nil {
				t.printf(", DHCP lease %v, network gate: %d new flows, %d allowed, %d denied", *l.Lease, l.NewFlows, l.Allowed, l.Denied)
			}
			if l.HWMSinceBoot {
				t.printf(" (VmHWM could not be reset: since boot)")
			}
			t.printf("\n")
		}
	}
	if rep.Command != "" {
		t.printf("reproduce: %s\n", rep.Command)
	}
	return t.err
}

// mibNum formats KiB as MiB with one decimal, no unit.
func mibNum(kib int64) string { return strconv.FormatFloat(float64(kib)/1024, 'f', 1, 64) }

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}
