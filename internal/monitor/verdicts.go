package monitor

import (
	"sync/atomic"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// verdictCounts counts one gate's decisions by verdict, for status.
type verdictCounts [policy.VerdictKill + 1]atomic.Uint64

func (c *verdictCounts) add(d secserver.Decision) {
	if int(d.Verdict) < len(c) {
		c[d.Verdict].Add(1)
	}
}

// snapshot returns the non-zero counts by verdict name; nil when none.
func (c *verdictCounts) snapshot() map[string]uint64 {
	var out map[string]uint64
	for v := range c {
		if n := c[v].Load(); n > 0 {
			if out == nil {
				out = map[string]uint64{}
			}
			out[policy.Verdict(v).String()] = n
		}
	}
	return out
}

// restore adds counts by verdict name (a snapshot taken by the monitor
// this one replaced); unknown names are ignored.
func (c *verdictCounts) restore(counts map[string]uint64) {
	for name, n := range counts {
		if v, ok := policy.ParseVerdict(name); ok && int(v) < len(c) {
			c[v].Add(n)
		}
	}
}

// countingServer is the security server as one gate uses it, counting
// that gate's decisions.
type countingServer struct {
	*secserver.Server
	counts *verdictCounts
}

// Decide implements the kernel gate's Decider.
func (s countingServer) Decide(ev *event.Event) secserver.Decision {
	d := s.Server.Decide(ev)
	s.counts.add(d)
	return d
}

// GateFailure implements the kernel gate's Decider.
func (s countingServer) GateFailure(ev *event.Event, rule, reason string, errno int32) secserver.Decision {
	d := s.Server.GateFailure(ev, rule, reason, errno)
	s.counts.add(d)
	return d
}

// DecideBatch implements the network gate's Decider.
func (s countingServer) DecideBatch(reqs []secserver.Request) []secserver.Decision {
	ds := s.Server.DecideBatch(reqs)
	for _, d := range ds {
		s.counts.add(d)
	}
	return ds
}
