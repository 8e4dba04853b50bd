package bench

import (
	"github.com/gatevisor/gatevisor/internal/api"
)

// The network benchmark's goals (issue 6): throughput at least
// throughputGoal of no gate, and at most perPacketGoalMicros added per
// packet on the fast path.
const (
	throughputGoal      = 0.9
	perPacketGoalMicros = 20
)

// summarize fills in the report from a finished run: each case's
// statistics, the goals, the attribution times, and the gate's drop
// reasons from its final counters.
func (rep *NetReport) summarize(run *netRun, final api.NetGateStats) {
	for i, l := range run.loads {
		run.cases[i].summarize(l, rep.MiB, rep.Rounds)
	}
	rep.Cases = run.cases
	rep.judge()
	rep.attribution(run.attr)
	rep.DropReasons = final.DropReasons
}

// summarize computes the case's medians and paired intervals from its runs
// of workload l (mib is the bulk transfer's size, rounds the runs of each
// configuration).
func (c *NetCase) summarize(l netWorkload, mib, rounds int) {
	// Per-run values in the case's unit.
	conv := func(secs float64) float64 {
		switch {
		case l.ops == 0:
			return float64(mib) / secs
		case l.unit == "ms/request":
			return secs / l.ops * 1e3
		}
		return secs / l.ops * 1e6
	}
	g, n := mapf(c.GateSeconds, conv), mapf(c.NoGateSeconds, conv)
	c.MedianGate, c.MedianNoGate = Median(g), Median(n)
	c.MinGate, c.MaxGate = minMax(g)
	c.MinNoGate, c.MaxNoGate = minMax(n)
	c.Ratio = c.MedianGate / c.MedianNoGate
	ratios := make([]float64, len(g))
	for r := range g {
		ratios[r] = g[r] / n[r]
	}
	c.PairedRatio = MedianCI(ratios)
	if l.ops > 0 {
		added := make([]float64, len(g))
		for r := range g {
			added[r] = (c.GateSeconds[r] - c.NoGateSeconds[r]) / l.ops * 1e6
		}
		ci := MedianCI(added)
		c.PairedAddedMicros = &ci
		c.FramesPerOp = float64(c.Frames) / (l.ops * float64(rounds))
	}
	c.summarizeCPU(l.ops)
}

// summarizeCPU computes the gate's host CPU per frame and, for ops > 0
// operations a run, per operation, paired by round.
func (c *NetCase) summarizeCPU(ops float64) {
	n := len(c.GateSeconds)
	perFrame, perOp := make([]float64, n), make([]float64, n)
	for r := range n {
		d := (c.MonitorCPUGate[r] - c.MonitorCPUNoGate[r]) * 1e3 // µs
		perFrame[r] = d / float64(max(c.frames[r], 1))
		perOp[r] = d / max(ops, 1)
	}
	c.GateCPUPerFrame = MedianCI(perFrame)
	if ops > 0 {
		ci := MedianCI(perOp)
		c.GateCPUPerOp = &ci
	}
}

// judge fills in the goals from the cases: throughput from the bulk
// case's paired ratio, the per-packet goal from the echo case's added
// time per round trip over its two gate crossings, and from the monitor's
// CPU per frame in both.
func (rep *NetReport) judge() {
	bulk, echo := rep.Cases[netBulk], rep.Cases[netEcho]
	pp := *echo.PairedAddedMicros
	rep.AddedPerPacketMicros = MedianInterval{Median: pp.Median / 2, Lo: pp.Lo / 2, Hi: pp.Hi / 2, Confidence: pp.Confidence}
	conf := bulk.PairedRatio.Confidence
	rep.ThroughputGoal = goal(conf, bulk.PairedRatio.Lo >= throughputGoal, bulk.PairedRatio.Hi < throughputGoal)
	rep.PerPacketGoal = goal(conf, rep.AddedPerPacketMicros.Hi <= perPacketGoalMicros, rep.AddedPerPacketMicros.Lo > perPacketGoalMicros)
	rep.PerPacketCPUMicros = max(bulk.GateCPUPerFrame.Hi, echo.GateCPUPerFrame.Hi)
	rep.PerPacketCPUGoal = goal(conf, rep.PerPacketCPUMicros <= perPacketGoalMicros, max(bulk.GateCPUPerFrame.Lo, echo.GateCPUPerFrame.Lo) > perPacketGoalMicros)
}

// attribution fills in the attribution times of the HTTP flows.
func (rep *NetReport) attribution(attr map[string]attrSample) {
	var us []float64
	for _, s := range attr {
		us = append(us, float64(s.micros))
		if s.attempts > 1 {
			rep.AttributeRetried++
		}
	}
	rep.AttributeN = len(us)
	if len(us) > 0 {
		rep.AttributeMedianUS = Median(us)
		rep.AttributeP90US = percentile(us, 90)
	}
}
