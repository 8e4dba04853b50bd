package net

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// Limits bound what a guest, and one process in it, can make the gate
// hold and decide. The zero value of a field means its default.
type Limits struct {
	// MaxFlows bounds the flow table. When it is full a new flow evicts
	// the oldest denied, closed or unanswered flow; if there is none, the
	// new flow's frame is dropped (ReasonTableFull) and recorded.
	MaxFlows int
	// MaxPending bounds the flows waiting for attribution; beyond it a new
	// flow's frame is dropped (ReasonOverload) and recorded.
	MaxPending int
	// SubjectFlows bounds the table entries one subject holds; its flows
	// beyond it are refused (RuleFlowLimit).
	SubjectFlows int
	// SubjectRate and SubjectBurst are one subject's budget of new flows
	// (a token bucket); flows beyond it are refused (RuleFlowRate). The
	// subject of an inbound flow is its process and the peer's address.
	SubjectRate  float64
	SubjectBurst int
}

// Defaults of Limits.
const (
	DefaultMaxFlows     = 1 << 16
	DefaultMaxPending   = 4096
	DefaultSubjectFlows = DefaultMaxFlows / 8
	DefaultSubjectRate  = 100
	DefaultSubjectBurst = 200
)

func (l Limits) withDefaults() Limits {
	if l.MaxFlows <= 0 {
		l.MaxFlows = DefaultMaxFlows
	}
	if l.MaxPending <= 0 {
		l.MaxPending = DefaultMaxPending
	}
	if l.SubjectFlows <= 0 {
		l.SubjectFlows = min(DefaultSubjectFlows, l.MaxFlows)
	}
	if l.SubjectRate <= 0 {
		l.SubjectRate = DefaultSubjectRate
	}
	if l.SubjectBurst <= 0 {
		l.SubjectBurst = max(DefaultSubjectBurst, int(l.SubjectRate))
	}
	return l
}

// Validate checks limits a user set.
func (l Limits) Validate() error {
	switch {
	case l.MaxFlows < 0 || l.MaxFlows > 1<<22:
		return fmt.Errorf("gate: flow table of %d entries: want 1 to %d", l.MaxFlows, 1<<22)
	case l.MaxPending < 0 || l.MaxPending > 1<<16:
		return fmt.Errorf("gate: %d pending flows: want 1 to %d", l.MaxPending, 1<<16)
	case l.SubjectFlows < 0:
		return fmt.Errorf("gate: %d flows per subject: want at least 1", l.SubjectFlows)
	case l.SubjectRate < 0 || l.SubjectRate > 1e6:
		return fmt.Errorf("gate: %g new flows/s per subject: want 1 to 1000000", l.SubjectRate)
	case l.SubjectBurst < 0:
		return fmt.Errorf("gate: burst of %d flows per subject: want at least 1", l.SubjectBurst)
	}
	return nil
}

// Drop reasons of the table and the scheduler (keys of Stats.DropReasons).
const (
	ReasonOverload    = "decision queue full"
	ReasonTableFull   = "flow table full"
	ReasonDenied      = "denied flow"
	ReasonPendingFull = "pending flow queue full"
	ReasonNoFlowTCP   = "TCP segment of no known flow"
	ReasonNoFlowICMP  = "ICMP message of no known flow"
)

// Reset reasons (keys of Stats.ResetReasons): why the gate sent a RST.
const (
	ResetDenied  = "denied flow"         // the flow's first segment, or a retransmission, was denied
	ResetNoFlow  = "segment of no flow"  // the guest sent on a connection the gate does not know
	ResetRevoked = "revoked by a reload" // (counted when the first segment after the reload comes)
)

// Rules of the gate's own refusals, in audit records and the event stream.
// They are not policy decisions: permissive mode does not lift them.
const (
	RuleOverload  = "gate-overload"   // no room in the decision queue: the frame was dropped undecided
	RuleTableFull = "gate-table-full" // no room in the flow table: the frame was dropped undecided
	RuleFlowRate  = "gate-flow-rate"  // the subject opens flows faster than its budget
	RuleFlowLimit = "gate-flow-limit" // the subject holds its share of the flow table
)

// subjectKey is who a flow counts against: the guest process (pid and
// start time; pid 0 for unattributed flows) and, for inbound flows, the
// peer, so that one peer cannot spend a listener's budget for all others.
type subjectKey struct {
	pid   int32
	start uint64
	peer  netip.Addr
}

func subjectOf(s event.Subject, f *flow) subjectKey {
	k := subjectKey{pid: s.PID, start: s.Start}
	if f.dir == event.DirIn {
		k.peer = f.key.Remote.Addr()
	}
	return k
}

// subjectState is one subject's budget and share of the table.
type subjectState struct {
	tokens float64
	at     time.Time
	flows  int // table entries counted against it
}

// take spends one new flow of the subject's budget at now.
func (s *subjectState) take(now time.Time, l *Limits) bool {
	if d := now.Sub(s.at).Seconds(); d > 0 {
		s.tokens = min(float64(l.SubjectBurst), s.tokens+d*l.SubjectRate)
	}
	s.at = now
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

// idle reports whether the state can be forgotten: no flows, and a full
// budget again by now.
func (s *subjectState) idle(now time.Time, l *Limits) bool {
	return s.flows == 0 && s.tokens+now.Sub(s.at).Seconds()*l.SubjectRate >= float64(l.SubjectBurst)
}
