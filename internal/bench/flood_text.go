package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// WriteText writes the report for a person: a table of the scenarios'
// medians, then each scenario's rounds in detail.
func (rep *FloodReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("gates under attack (issue 21): %d rounds, floods of %d s, bystander attempts every %d ms; %s, host %d CPUs\n",
		rep.Rounds, rep.Seconds, rep.IntervalMillis, rep.Accel, rep.HostCPUs)
	t.printf("load average before: %s; after: %s; other QEMU processes at start: %d\n", rep.LoadAvg[0], rep.LoadAvg[1], rep.OtherQEMUs)
	t.printf("medians over the rounds (bystander: each round's percentiles of its successful attempts):\n")
	const row = "  %-31s %5s %8s %5s %9s %9s %7s %-21s %7s %-11s %9s %8s %7s %8s %9s %9s\n"
	t.printf(row, "scenario", "vCPUs", "flood/s", "clock", "decided/s", "gate's own", "audit", "bystander p50 / p99", "failed", "wget ok", "flows max",
		"stops/s", "mon CPU", "RSS MiB", "events", "audit log")
	for _, s := range rep.Scenarios {
		m := s.Median
		flood, decided, undecided, wget, flows := "-", "-", "-", "-", "-"
		if s.Flood != "" {
			flood = strconv.FormatFloat(m.FloodRate, 'f', 0, 64)
		}
		if m.WgetRounds > 0 {
			decided = strconv.FormatFloat(m.DecisionsPerSec, 'f', 1, 64)
			undecided = fmt.Sprintf("%.1f%%", m.UndecidedShare*100)
			wget = fmt.Sprintf("%d/%d %.2fs", m.WgetOK, m.WgetRounds, m.WgetSeconds)
			flows = strconv.FormatFloat(m.FlowsMax, 'f', 0, 64)
		}
		lat := "-"
		if m.BystanderFailed < m.BystanderAttempts || m.BystanderP50 > 0 {
			lat = fmtMicros(m.BystanderP50) + " / " + fmtMicros(m.BystanderP99)
		}
		t.printf(row, s.Name, strconv.Itoa(s.CPUs), flood, fmt.Sprintf("%.2f", m.HostPerGuest), decided, undecided,
			strconv.FormatFloat(m.AuditRecords, 'f', 0, 64), lat, fmt.Sprintf("%.0f/%.0f", m.BystanderFailed, m.BystanderAttempts),
			wget, flows, strconv.FormatFloat(m.KernelStopsPerS, 'f', 1, 64), fmt.Sprintf("%.0f%%", m.MonitorCPU), fmt.Sprintf("%.1f", m.RSSPeakKiB/1024),
			fmtBytes(m.EventsBytes), fmtBytes(m.AuditBytes))
	}
	t.printf("columns: flood attempts/s (host clock); host seconds per guest second (the guest's clock stops while a trap holds the VM: its own\n")
	t.printf("timings leave that out); the network gate's policy decisions/s and the share of its denies no policy rule made (the gate's own:\n")
	t.printf("gate-overload, unrecorded, before issue 21; gate-flow-rate, gate-flow-limit, gate-table-full, recorded, after); audit records\n")
	t.printf("written; the bystander's latency (guest clock) and failed/attempted; wget successes (within the flood) and median time; the flow\n")
	t.printf("table's largest sampled size; the kernel gate's stops/s; the monitor's CPU (per cent of one) and peak RSS; events.jsonl and\n")
	t.printf("audit.jsonl growth\n")
	for _, s := range rep.Scenarios {
		rep.writeScenario(t, s)
	}
	return t.err
}

// writeScenario writes one scenario's rounds.
func (rep *FloodReport) writeScenario(t *textWriter, s FloodScenarioResult) {
	t.printf("%s, %d vCPU (%s):\n", s.Name, s.CPUs, s.Key)
	if s.Flood != "" {
		t.printf("  flood:     %s\n", s.Flood)
	}
	t.printf("  bystander: %s\n", s.Bystander)
	for i, r := range s.Rounds {
		t.printf("  round %d, %.1f s window, %.2f host s per guest s:\n", i+1, r.WindowSeconds, r.HostPerGuest)
		if f := r.Flood; f != nil {
			t.printf("    flood %.0f/s (%.0f/s by the guest's clock): %d attempts in %.1f guest s, ok %d, refused %d, timeouts %d, errors %d (last errno %d), blocked %d%s\n",
				r.FloodWallRate, f.Rate, f.Attempts, f.Seconds, f.OK, f.Refused, f.Timeouts, f.Errors, f.LastErrno, f.Blocked, pinText(f))
		}
		b := r.Bystander
		t.printf("    bystander: %d of %d ok (%d skipped)", b.Attempts-r.Failed, b.Attempts, b.Skipped)
		if len(b.Latencies) > 0 {
			t.printf(", p50 %s, p99 %s, max %s", fmtMicros(r.BystanderP50), fmtMicros(r.BystanderP99), fmtMicros(r.BystanderMax))
		}
		if w := r.Wget; w != nil {
			t.printf("; wget exit %d in %.2f s%s", w.Exit, w.Seconds, map[bool]string{true: " (within the flood)", false: ""}[w.InFlood])
		}
		t.printf("\n")
		if n := r.Net; n != nil {
			writeFloodNet(t, n, r.Socks)
		}
		t.printf("    kernel gate: %d stops (%.1f/s, %d decided), monitor %.0f µs/stop; host CPU: monitor %.0f%%, QEMU %.0f%% (of one CPU)\n",
			r.Gate.Stops, r.Gate.StopsPerSec, r.Gate.Decided, r.Gate.HandleMicros, r.CPU.MonitorPercent, r.CPU.QEMUPercent)
		t.printf("    monitor RSS %.1f -> peak %.1f MiB (VmHWM %.1f); events.jsonl +%s, audit.jsonl +%s, %d audit records, decisions by class %s\n",
			float64(r.RSS.StartKiB)/1024, float64(r.RSS.PeakKiB)/1024, float64(r.RSS.HWMKiB)/1024, fmtBytes(float64(r.Logs.EventsBytes)),
			fmtBytes(float64(r.Logs.AuditBytes)), r.Logs.AuditRecords, fmtCounts(r.Logs.AuditDecisions))
	}
}

// writeFloodNet writes a round's network gate.
func writeFloodNet(t *textWriter, n *FloodNet, socks *FloodSockets) {
	t.printf("    network gate: %d new flows, %d decisions (%.1f/s: %d allowed, %d unattributed), %d denies of the gate's own (%.1f%%), %d resets, %d dropped\n",
		n.NewFlows, n.Decisions, n.DecisionsPerSec, n.Allowed, n.Unattributed, n.Undecided, n.UndecidedShare*100, n.Resets, n.Dropped)
	t.printf("      denies by rule %s; drops %s\n", fmtCounts(n.DenyRules), fmtCounts(n.DropReasons))
	t.printf("      attribution of %d decisions: p50 %s, p90 %s, %d needed more than one walk", n.AttributeN, fmtMicros(n.AttributeP50),
		fmtMicros(n.AttributeP90), n.AttributeRetried)
	if socks != nil {
		t.printf("; mid-flood the guest had %d sockets (one walk %s)", socks.Count, fmtMicros(float64(socks.ElapsedMicros)))
	}
	t.printf("\n      after the flood: %d decisions of its backlog in %.1f s\n", n.Backlog, n.DrainSeconds)
	t.printf("      flow table: max %d, at the end %d, %.1f s at %d or more; by time:", n.FlowsMax, n.FlowsEnd, n.FullSeconds, flowTableCapacity)
	last := -1.0
	for _, f := range n.Flows {
		if f.Seconds-last >= 0.95 { // about one a second
			t.printf(" %.0fs:%d", f.Seconds, f.Flows)
			last = f.Seconds
		}
	}
	t.printf("\n")
}

// pinText is the pinning pattern's part of a flood line.
func pinText(f *FloodOutput) string {
	if f.Cycles == 0 {
		return ""
	}
	return fmt.Sprintf("; %d destinations, %.2f cycles, one every %.2f s", f.Distinct, f.Cycles, f.CycleSeconds)
}

// fmtMicros formats a time given in µs: µs below 1 ms, ms below 1 s.
func fmtMicros(us float64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%.0f µs", us)
	case us < 1e6:
		return fmt.Sprintf("%.1f ms", us/1000)
	}
	return fmt.Sprintf("%.2f s", us/1e6)
}

// fmtBytes formats a size: KiB below 1 MiB, else MiB.
func fmtBytes(b float64) string {
	if b < 1<<20 {
		return fmt.Sprintf("%.0f KiB", b/1024)
	}
	return fmt.Sprintf("%.1f MiB", b/(1<<20))
}

// fmtCounts formats counts by name, sorted by name; "none" for none. The
// names are rules and drop reasons: the gate's and the policy's, not the
// guest's.
func fmtCounts(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
