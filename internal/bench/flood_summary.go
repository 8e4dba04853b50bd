package bench

import (
	"strconv"
	"strings"

	"github.com/gatevisor/gatevisor/internal/api"
)

// summarize fills in a round's window from its samples: pre (before the
// flood), end (the first sample after it), every sample between, and
// quietAt (the network gate quiet again after end; zero when not waited
// for). withNet adds the network gate's part.
func (r *FloodRound) summarize(pre, end floodSample, samples []floodSample, quietAt floodSample, withNet bool) {
	r.WindowSeconds = end.at.Sub(pre.at).Seconds()
	if k0, k1 := pre.st.SyscallGate, end.st.SyscallGate; k0 != nil && k1 != nil {
		r.Gate.Stops, r.Gate.Decided = sub(k1.Stops, k0.Stops), sub(k1.Decided, k0.Decided)
		if r.WindowSeconds > 0 {
			r.Gate.StopsPerSec = float64(r.Gate.Stops) / r.WindowSeconds
		}
		if r.Gate.Stops > 0 {
			r.Gate.HandleMicros = float64(sub(k1.HandleMicros, k0.HandleMicros)) / float64(r.Gate.Stops)
		}
	}
	if w := end.at.Sub(pre.at).Nanoseconds(); w > 0 {
		r.CPU = FloodCPU{MonitorPercent: round3(float64(end.monCPU-pre.monCPU) / float64(w) * 100),
			QEMUPercent: round3(float64(end.qemuCPU-pre.qemuCPU) / float64(w) * 100)}
	}
	r.RSS = FloodMemory{StartKiB: pre.rssKiB, PeakKiB: max(pre.rssKiB, end.rssKiB), HWMKiB: end.hwmKiB}
	for _, s := range samples {
		if !s.at.After(end.at) {
			r.RSS.PeakKiB = max(r.RSS.PeakKiB, s.rssKiB)
		}
	}
	r.Logs.AuditRecords = sub(auditHead(end.st), auditHead(pre.st))
	r.Logs.AuditBytes, r.Logs.EventsBytes = end.auditSize-pre.auditSize, end.eventsSize-pre.eventsSize
	if !withNet || pre.st.Net == nil || pre.st.Net.Gate == nil || end.st.Net == nil || end.st.Net.Gate == nil {
		return
	}
	g0, g1 := pre.st.Net.Gate, end.st.Net.Gate
	n := &FloodNet{NewFlows: sub(g1.NewFlows, g0.NewFlows), Allowed: sub(g1.Allowed, g0.Allowed), Denied: sub(g1.Denied, g0.Denied),
		Resets: sub(g1.Resets, g0.Resets), Dropped: sub(g1.Dropped, g0.Dropped), Unattributed: sub(g1.Unattributed, g0.Unattributed), FlowsEnd: g1.Flows, FlowsMax: max(g0.Flows, g1.Flows)}
	for k, v := range g1.DropReasons {
		if d := sub(v, g0.DropReasons[k]); d > 0 {
			if n.DropReasons == nil {
				n.DropReasons = map[string]uint64{}
			}
			n.DropReasons[k] = d
		}
	}
	var prev *floodSample
	for i := range samples {
		s := &samples[i]
		if s.at.Before(pre.at) || s.at.After(end.at) || s.st.Net == nil || s.st.Net.Gate == nil {
			continue
		}
		f := s.st.Net.Gate.Flows
		n.Flows = append(n.Flows, FlowsSample{Seconds: round3(s.at.Sub(pre.at).Seconds()), Flows: f})
		n.FlowsMax = max(n.FlowsMax, f)
		if prev != nil && prev.st.Net.Gate.Flows >= flowTableCapacity {
			n.FullSeconds += s.at.Sub(prev.at).Seconds()
		}
		prev = s
	}
	n.FullSeconds = round3(n.FullSeconds)
	if q := quietAt.st.Net; q != nil && q.Gate != nil && quietAt.at.After(end.at) {
		n.Backlog = sub(q.Gate.Allowed+q.Gate.Denied, g1.Allowed+g1.Denied)
		n.DrainSeconds = round3(quietAt.at.Sub(end.at).Seconds())
	}
	r.Net = n
}

// addLogs adds what the window's logs say: the audit decisions by class,
// and, on the network, the policy's decisions against the denies no
// policy rule made, and the attribution times.
func (r *FloodRound) addLogs(l floodLogs) {
	if len(l.auditDecisions) > 0 {
		r.Logs.AuditDecisions = l.auditDecisions
	}
	n := r.Net
	if n == nil {
		return
	}
	n.Decisions = n.Allowed + l.netPolicyDenies
	n.Undecided = sub(n.Denied, l.netPolicyDenies)
	if r.WindowSeconds > 0 {
		n.DecisionsPerSec = float64(n.Decisions) / r.WindowSeconds
	}
	if t := n.Decisions + n.Undecided; t > 0 {
		n.UndecidedShare = float64(n.Undecided) / float64(t)
	}
	if len(l.denyRules) > 0 {
		n.DenyRules = l.denyRules
	}
	var us []float64
	for _, a := range l.attr {
		us = append(us, float64(a.micros))
		if a.attempts > 1 {
			n.AttributeRetried++
		}
	}
	n.AttributeN = len(us)
	n.AttributeP50, n.AttributeP90 = percentile(us, 50), percentile(us, 90)
}

// FloodMedians are a scenario's medians over its rounds (of each round's
// value; the percentiles are each round's, of the rounds with a
// successful attempt).
type FloodMedians struct {
	// FloodRate is by the host's clock (FloodRound.FloodWallRate),
	// FloodGuestRate by the guest's.
	FloodRate         float64 `json:"flood_rate_per_s"`
	FloodGuestRate    float64 `json:"flood_guest_rate_per_s"`
	HostPerGuest      float64 `json:"host_s_per_guest_s"`
	DecisionsPerSec   float64 `json:"decisions_per_s"`
	UndecidedShare    float64 `json:"undecided_share"`
	AuditRecords      float64 `json:"audit_records"`
	BystanderP50      float64 `json:"bystander_p50_us"`
	BystanderP99      float64 `json:"bystander_p99_us"`
	BystanderFailed   float64 `json:"bystander_failed"`
	BystanderAttempts float64 `json:"bystander_attempts"`
	// WgetOK counts the rounds whose wget succeeded (while the flood
	// ran, if there was one) of WgetRounds; WgetSeconds is the median
	// time of every round's wget, failed ones included.
	WgetOK          int     `json:"wget_ok"`
	WgetRounds      int     `json:"wget_rounds"`
	WgetSeconds     float64 `json:"wget_seconds"`
	FlowsMax        float64 `json:"flows_max"`
	FullSeconds     float64 `json:"flows_full_seconds"`
	AttributeP50    float64 `json:"attribute_p50_us"`
	KernelStopsPerS float64 `json:"kernel_stops_per_s"`
	MonitorPerStop  float64 `json:"monitor_us_per_stop"`
	MonitorCPU      float64 `json:"monitor_cpu_percent"`
	QEMUCPU         float64 `json:"qemu_cpu_percent"`
	RSSPeakKiB      float64 `json:"monitor_rss_peak_kib"`
	EventsBytes     float64 `json:"events_bytes"`
	AuditBytes      float64 `json:"audit_bytes"`
}

// floodMedians computes a scenario's medians from its rounds; flooded
// says whether it had a flood (a wget then counts only if it ended
// within it).
func floodMedians(rounds []FloodRound, flooded bool) FloodMedians {
	var m FloodMedians
	med := func(f func(FloodRound) float64) float64 {
		v := make([]float64, len(rounds))
		for i, r := range rounds {
			v[i] = f(r)
		}
		return Median(v)
	}
	m.AuditRecords = med(func(r FloodRound) float64 { return float64(r.Logs.AuditRecords) })
	var p50, p99 []float64
	for _, r := range rounds {
		if len(r.Bystander.Latencies) > 0 {
			p50, p99 = append(p50, r.BystanderP50), append(p99, r.BystanderP99)
		}
	}
	m.BystanderP50, m.BystanderP99 = Median(p50), Median(p99)
	m.HostPerGuest = med(func(r FloodRound) float64 { return r.HostPerGuest })
	m.BystanderFailed = med(func(r FloodRound) float64 { return float64(r.Failed) })
	m.BystanderAttempts = med(func(r FloodRound) float64 { return float64(r.Bystander.Attempts) })
	m.KernelStopsPerS = med(func(r FloodRound) float64 { return r.Gate.StopsPerSec })
	m.MonitorPerStop = med(func(r FloodRound) float64 { return r.Gate.HandleMicros })
	m.MonitorCPU = med(func(r FloodRound) float64 { return r.CPU.MonitorPercent })
	m.QEMUCPU = med(func(r FloodRound) float64 { return r.CPU.QEMUPercent })
	m.RSSPeakKiB = med(func(r FloodRound) float64 { return float64(r.RSS.PeakKiB) })
	m.EventsBytes = med(func(r FloodRound) float64 { return float64(r.Logs.EventsBytes) })
	m.AuditBytes = med(func(r FloodRound) float64 { return float64(r.Logs.AuditBytes) })
	if flooded {
		m.FloodRate = med(func(r FloodRound) float64 { return r.FloodWallRate })
		m.FloodGuestRate = med(func(r FloodRound) float64 { return floodRate(r.Flood) })
	}
	var wget []float64
	var nets []FloodRound
	for _, r := range rounds {
		if w := r.Wget; w != nil {
			m.WgetRounds++
			wget = append(wget, w.Seconds)
			if w.Exit == 0 && (w.InFlood || !flooded) {
				m.WgetOK++
			}
		}
		if r.Net != nil {
			nets = append(nets, r)
		}
	}
	m.WgetSeconds = Median(wget)
	if len(nets) == len(rounds) && len(nets) > 0 {
		m.DecisionsPerSec = med(func(r FloodRound) float64 { return r.Net.DecisionsPerSec })
		m.UndecidedShare = med(func(r FloodRound) float64 { return r.Net.UndecidedShare })
		m.FlowsMax = med(func(r FloodRound) float64 { return float64(r.Net.FlowsMax) })
		m.FullSeconds = med(func(r FloodRound) float64 { return r.Net.FullSeconds })
		m.AttributeP50 = med(func(r FloodRound) float64 { return r.Net.AttributeP50 })
	}
	return m
}

func floodRate(o *FloodOutput) float64 {
	if o == nil {
		return 0
	}
	return o.Rate
}

// auditHead is the number of the audit chain's last record ("N:HASH"), 0
// if the status has none.
func auditHead(st api.Status) uint64 {
	if st.Audit == nil {
		return 0
	}
	n, _, _ := strings.Cut(st.Audit.Head, ":")
	v, _ := strconv.ParseUint(n, 10, 64)
	return v
}

// sub is a - b, 0 if b > a (a counter that went back: a restart).
func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

// round3 rounds x to three decimals, for the report's samples.
func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }
