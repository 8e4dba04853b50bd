package bench

import (
	"fmt"
	"io"
)

// WriteText writes the report for a person: each action's timings, both
// sides', and the gap windows.
func (rep *ProcReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("process actions from below (issue 13): %s, %d vCPU, %d rounds alternating which side goes first; host %d CPUs\n",
		rep.Accel, max(rep.CPUs, 1), rep.Rounds, rep.HostCPUs)
	t.printf("load average before: %s; after: %s; other QEMU processes at the start: %d\n", rep.LoadAvg[0], rep.LoadAvg[1], rep.OtherQEMUs)
	t.printf("target: %s\nthe new state is seen by %s\n", rep.Target, rep.Observation)
	const row = "  %-34s %9.2f %9.2f %9.2f\n"
	t.printf("  %-34s %9s %9s %9s\n", "", "p50", "p90", "max")
	for _, a := range []struct {
		name, state, sig string
		times            *ProcActionTimes
	}{{"stop", "T", "-STOP", &rep.Stop}, {"cont", "running", "-CONT", &rep.Cont}} {
		p := a.times
		t.printf("gatevisor proc %s\n", a.name)
		t.printf(row, "command round trip, ms", p.CommandMillis.P50, p.CommandMillis.P90, p.CommandMillis.Max)
		t.printf(row, "  safe point (answer), ms", p.SafePointMillis.P50, p.SafePointMillis.P90, p.SafePointMillis.Max)
		t.printf(row, "  kernel call (answer), µs", p.CallMicros.P50, p.CallMicros.P90, p.CallMicros.Max)
		t.printf(row, "  took (answer), ms", p.TookMillis.P50, p.TookMillis.P90, p.TookMillis.Max)
		t.printf(row, "to "+a.state+" seen by ids ps, ms", p.SeenMillis.P50, p.SeenMillis.P90, p.SeenMillis.Max)
		t.printf("in-guest kill %s through exec\n", a.sig)
		t.printf(row, "exec round trip, ms", p.PeerExecMillis.P50, p.PeerExecMillis.P90, p.PeerExecMillis.Max)
		t.printf(row, "to "+a.state+" seen by ids ps, ms", p.PeerSeenMillis.P50, p.PeerSeenMillis.P90, p.PeerSeenMillis.Max)
		t.printf("gatevisor / in-guest, medians to %s seen: %.2f\n", a.state, p.Ratio)
	}
	k := 0
	if len(rep.Gaps) > 0 {
		k = rep.Gaps[0].TopK
	}
	t.printf("guest-visible pause: procgap reads CLOCK_MONOTONIC in a loop; an interruption is a gap over %.0f µs between two reads;\n", rep.GapThresholdMicros)
	t.printf("each load over %d windows, the loads taking turns; operations %s apart on %s;\n", rep.GapCycles, rep.GapSpacing, rep.GapTarget)
	t.printf("gaps in µs: all interruptions, and the %d longest of each load (one per operation, if each makes the longest gap)\n", k)
	const grow = "  %-14s %4s %8s %7s %8s %8s %8s %8s %8s %8s %9s %10s\n"
	t.printf(grow, "", "", "op ms", "", "interr-", "gaps", "", "", "longest", "", "", "")
	t.printf(grow, "load", "ops", "p50", "seconds", "uptions", "p50", "p90", "max", "p50", "max", "stolen ms", "excess/op")
	for _, g := range rep.Gaps {
		excess := ""
		if g.Operations > 0 {
			excess = fmt.Sprintf("%+.1f ms", g.ExcessPerOpMillis)
		}
		name := g.Name
		if g.Truncated {
			name += "*"
		}
		op := ""
		if g.OpMillis.N > 0 {
			op = fmt.Sprintf("%.1f", g.OpMillis.P50)
		}
		t.printf("  %-14s %4d %8s %7.2f %8d %8.0f %8.0f %8.0f %8.0f %8.0f %9.1f %10s\n", name, g.Operations, op, g.WindowSeconds, g.Interruptions,
			g.GapMicros.P50, g.GapMicros.P90, g.GapMicros.Max, g.TopMicros.P50, g.TopMicros.Max, g.StolenMillis, excess)
	}
	for _, g := range rep.Gaps {
		t.printf("  %-14s %s\n", g.Name+":", g.Load)
		if g.Truncated {
			t.printf("  %-14s (* procgap kept only the first %d of its gaps: raise --gap-threshold)\n", "", maxGapLines)
		}
	}
	return t.err
}
