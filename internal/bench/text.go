package bench

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The reports as text for a person. The layouts are relied on by
// docs/benchmarks.md, which quotes them; programs read the JSON.

// textWriter formats lines to w and keeps the first error.
type textWriter struct {
	w   io.Writer
	err error
}

func (t *textWriter) printf(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

// WriteText writes the report for a person.
func (rep *BootReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("boot to ready marker, %d rounds alternating, accel %s, %dM:\n", rep.Rounds, rep.Accel, rep.Mem)
	t.printf("  gatevisor run   median %.3fs\n  plain QEMU      median %.3fs\n  ratio           %.3f (goal <= 1.05)\n", rep.MedianGatevisor, rep.MedianQEMU, rep.Ratio)
	t.printf("  monitor peak RSS median %.1f MiB, max %.1f MiB (goal <= 30 MiB)\n", float64(rep.MedianPeakRSSKiB)/1024, float64(rep.MaxPeakRSSKiB)/1024)
	t.printf("  plain command: %s\n", rep.PlainCommand)
	return t.err
}

// WriteText writes the report for a person.
func (rep *IDSReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("ids ps over %d guest processes, %d rounds each, alternating:\n", rep.Processes, rep.Rounds)
	t.printf("  live RAM mapping  median %8.0f µs (goal <= 2000)\n  gdbstub           median %8.0f µs\n  ratio             %.1fx\n", rep.MedianRAMMicros, rep.MedianGDBMicros, rep.Ratio)
	t.printf("kernel profile from the kit's image: build %.2fs, load from cache %.3fs\n", rep.ProfileBuildSecs, rep.ProfileLoadSecs)
	if c := rep.Check; c != nil {
		t.printf("ids check on the same guest, %d rounds: median %.1f ms, of which guest memory %.1f ms (goal <= 50 ms for 1,000 processes):\n", c.Rounds, c.MedianMicros/1000, c.MemoryMicros/1000)
		t.printf("  %-22s %8.2f ms (shared by the checks)\n", "reading the views", c.ViewsMicros/1000)
		for _, n := range c.sortedChecks() {
			t.printf("  %-22s %8.2f ms\n", n, c.ByCheck[n]/1000)
		}
		if len(c.NotRun) > 0 {
			t.printf("  not run or not applicable: %s\n", strings.Join(c.NotRun, ", "))
		}
		if c.Window != "" {
			t.printf("monitor CPU over %s: idle %.2f%%, scanning every %s %.2f%% of one core (goal: scanning at 1 Hz <= 2%%)\n",
				c.Window, c.MonitorCPUIdle, c.ScanInterval, c.MonitorCPUScanning)
		}
	}
	return t.err
}

// WriteText writes the report for a person: each policy's traps, the
// policy load, and a table of the cases.
func (rep *SyscallsReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("kernel gate, %s, %d vCPU, %d rounds alternating, medians:\n", rep.Accel, max(rep.CPUs, 1), rep.Rounds)
	for _, p := range SyscallPolicyNames() {
		t.printf("  policy %-7s %2d traps %s\n", p, len(rep.Breakpoints[p]), strings.Join(rep.Breakpoints[p], " "))
	}
	if l := rep.PolicyLoad; l != nil {
		t.printf("  policy load of a %d-rule policy (compile, check, plan, apply; through the API): median %.1f ms [%.1f, %.1f] over %d loads; compile alone %.1f ms\n",
			l.Rules, l.MedianMillis, l.MinMillis, l.MaxMillis, l.Loads, l.CompileMillis)
	}
	t.printf("  (times are the guest's clock plus the time the VM was stopped at the loop's stops, which the guest's clock does not see;\n")
	t.printf("   µs/stop in all, and in parentheses the part the guest's clock sees; monitor µs: the monitor's share of a stop)\n")
	const row = "  %-24s %-7s %8s %10s %8s %-24s %10s %13s %11s\n"
	t.printf(row, "case", "policy", "iters", "µs/iter", "vs off", "paired: median [min, max]", "stops/iter", "µs/stop", "monitor µs")
	for _, r := range rep.Results {
		diff, paired, trap, handle := "", "", "", ""
		if len(r.PairedDiff) == 3 {
			paired = fmt.Sprintf("%+.1f%% [%+.1f, %+.1f]", r.PairedDiff[0], r.PairedDiff[1], r.PairedDiff[2])
		}
		if r.Base != "" {
			diff = fmt.Sprintf("%+.1f%%", r.DiffPercent)
			if r.StopsPerIter >= 0.5 {
				trap = fmt.Sprintf("%.0f (%.0f)", r.PerTrapMicros, r.GuestPerTrapMicros)
			}
		}
		if r.StopsPerIter > 0 {
			handle = fmt.Sprintf("%.0f", r.HandleMicros)
		}
		t.printf("  %-24s %-7s %8d %10.3f %8s %-24s %10.2f %13s %11s\n", r.Name, r.Policy, r.Iters, r.PerIterMicros, diff, paired, r.StopsPerIter, trap, handle)
	}
	return t.err
}

// WriteText writes the report for a person: the workloads' medians and
// paired intervals, the host CPU, the goals, the attribution times and the
// gate's counters.
func (rep *NetReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("network gate, --net %s: %d rounds, each workload in both guests, alternating which goes first; %s, host %d CPUs\n", rep.Net, rep.Rounds, rep.Accel, rep.HostCPUs)
	t.printf("load average before: %s; after: %s; other QEMU processes at start: %d\n", rep.LoadAvg[0], rep.LoadAvg[1], rep.OtherQEMUs)
	rep.writeMedians(t)
	rep.writeCPU(t)
	rep.writeGoals(t)
	t.printf("attributing a new flow (attribute_us of %d HTTP flows): median %.0f µs, p90 %.0f µs; %d needed more than one walk\n",
		rep.AttributeN, rep.AttributeMedianUS, rep.AttributeP90US, rep.AttributeRetried)
	rep.writeCounters(t)
	return t.err
}

// writeMedians writes the table of the workloads' medians, ranges and
// paired intervals.
func (rep *NetReport) writeMedians(t *textWriter) {
	conf := 0.0
	if len(rep.Cases) > 0 {
		conf = rep.Cases[0].PairedRatio.Confidence * 100
	}
	const head = "  %-32s %-13s %15s %15s %6s  %-21s  %s\n"
	t.printf(head, "workload", "unit", "gate median", "no gate median", "ratio", "paired ratio", "paired added per op")
	t.printf(head, "", "", "(min-max)", "(min-max)", "", fmt.Sprintf("[%.0f%% CI]", conf), fmt.Sprintf("[%.0f%% CI]", conf))
	for _, c := range rep.Cases {
		added := ""
		if a := c.PairedAddedMicros; a != nil {
			added = fmt.Sprintf("%+.0f µs [%+.0f, %+.0f]", a.Median, a.Lo, a.Hi)
		}
		t.printf("  %-32s %-13s %15s %15s %6.3f  %-21s  %s\n", c.Name, c.Unit, fmtNum(c.MedianGate), fmtNum(c.MedianNoGate), c.Ratio,
			fmt.Sprintf("%.3f [%.3f, %.3f]", c.PairedRatio.Median, c.PairedRatio.Lo, c.PairedRatio.Hi), added)
		t.printf("  %-32s %-13s %15s %15s\n", "", "", "("+fmtNum(c.MinGate)+"-"+fmtNum(c.MaxGate)+")", "("+fmtNum(c.MinNoGate)+"-"+fmtNum(c.MaxNoGate)+")")
	}
}

// writeCPU writes each workload's host CPU per run and the gate's share.
func (rep *NetReport) writeCPU(t *textWriter) {
	t.printf("host CPU per run, medians in ms: monitor with/without the gate, QEMU with/without; monitor with less without, per frame and per op (paired;\n")
	t.printf("it also counts the monitor's wake-ups and batching, which differ with the guests' pace, so it can come out negative):\n")
	for _, c := range rep.Cases {
		op := ""
		if c.GateCPUPerOp != nil {
			op = fmt.Sprintf("  %+.1f µs/op [%+.1f, %+.1f]", c.GateCPUPerOp.Median, c.GateCPUPerOp.Lo, c.GateCPUPerOp.Hi)
		}
		t.printf("  %-32s monitor %7.0f %7.0f  QEMU %7.0f %7.0f  %+.2f µs/frame [%+.2f, %+.2f]%s\n", c.Name,
			Median(c.MonitorCPUGate), Median(c.MonitorCPUNoGate), Median(c.QEMUCPUGate), Median(c.QEMUCPUNoGate),
			c.GateCPUPerFrame.Median, c.GateCPUPerFrame.Lo, c.GateCPUPerFrame.Hi, op)
	}
}

// writeGoals writes the verdicts on the goals with their intervals.
func (rep *NetReport) writeGoals(t *textWriter) {
	if len(rep.Cases) == 0 {
		return
	}
	pp, b := rep.AddedPerPacketMicros, rep.Cases[netBulk]
	t.printf("goals: throughput >= 0.9 of no gate: %s (paired ratio %.3f [%.3f, %.3f])\n", rep.ThroughputGoal, b.PairedRatio.Median, b.PairedRatio.Lo, b.PairedRatio.Hi)
	t.printf("       <= 20 µs added per packet on the fast path, by the guests' clocks: %s (the echo's added time per round trip over its 2 gate crossings: %+.1f µs [%+.1f, %+.1f])\n",
		rep.PerPacketGoal, pp.Median, pp.Lo, pp.Hi)
	t.printf("       <= 20 µs added per packet on the fast path, by the monitor's CPU per frame: %s (at most %+.2f µs: the higher upper bound of bulk and echo)\n",
		rep.PerPacketCPUGoal, rep.PerPacketCPUMicros)
}

// writeCounters writes the gate's counters of each workload.
func (rep *NetReport) writeCounters(t *textWriter) {
	t.printf("gate counters over the measured runs:\n")
	for _, c := range rep.Cases {
		per := ""
		if c.FramesPerOp > 0 {
			per = fmt.Sprintf(" (%.1f per op)", c.FramesPerOp)
		}
		t.printf("  %-32s %9d frames%s, %d new flows, %d dropped\n", c.Name, c.Frames, per, c.NewFlows, c.Dropped)
	}
	if len(rep.DropReasons) > 0 {
		t.printf("  drop reasons since boot: %v\n", rep.DropReasons)
	}
}

// fmtNum formats a median: whole numbers from 100 up, else two decimals.
func fmtNum(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
