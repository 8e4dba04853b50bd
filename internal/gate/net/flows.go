package net

import (
	"fmt"
	"slices"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// States of a flow as Flows reports them.
const (
	FlowPending = "pending" // waiting for attribution or a decision
	FlowAllowed = "allowed"
	FlowDenied  = "denied"
)

// FlowInfo is one flow of the table, copied out of it by Flows.
type FlowInfo struct {
	Key   FlowKey
	Dir   event.Dir // out: the guest opened it; in: a peer did
	State string    // FlowPending, FlowAllowed, FlowDenied
	// Closed: a TCP flow saw a RST, or a FIN both ways. Answered: a frame
	// came from the side that did not open it.
	Closed, Answered bool
	// Decision is the decision's record (zero while pending): verdict,
	// action, rule, reason, policy sequence, revoked by a reload.
	Decision Record
	// Attributed says Subject is the guest process that owns the flow's
	// socket; when it is not, NoSubject says why.
	Attributed bool
	Subject    event.Subject
	NoSubject  string
	// Attempts at attribution so far.
	Attempts int
	// Created is the flow's first frame, Decided its decision (zero while
	// pending), Last its last frame.
	Created, Decided, Last time.Time
	// Frames and bytes seen from the guest (Out) and for it (In), the
	// frames the gate dropped or held on the flow included.
	FramesOut, FramesIn, BytesOut, BytesIn uint64
}

// Flows returns up to limit flows of the table, newest first (in the order
// the gate created them), and how many the table holds. limit <= 0 asks for
// none (only the count).
//
// It holds the gate's lock while it copies the newest limit flows, which it
// finds without a walk of the table: the table keeps its flows in order
// of creation (linked when a flow is created, unlinked when it is
// removed, both off the fast path).
func (g *Gate) Flows(limit int) ([]FlowInfo, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	total := len(g.flows)
	out := make([]FlowInfo, 0, min(max(limit, 0), total))
	for f := g.newest; f != nil && len(out) < limit; f = f.older {
		out = append(out, f.info())
	}
	return out, total
}

// info copies what Flows reports of f.
// Preconditions: Gate.mu held.
func (f *flow) info() FlowInfo {
	fi := FlowInfo{Key: f.key, Dir: f.dir, Closed: f.closed, Answered: f.answered, Attempts: f.attempts,
		Created: f.created, Last: f.seen, FramesOut: f.framesOut, FramesIn: f.framesIn, BytesOut: f.bytesOut, BytesIn: f.bytesIn}
	switch f.state {
	case stateAllowed:
		fi.State = FlowAllowed
	case stateDenied:
		fi.State = FlowDenied
	default:
		fi.State = FlowPending
	}
	if f.state != statePending {
		fi.Decision, fi.Decided = f.rec, f.decidedAt
		fi.Decision.Subject = event.Subject{} // in Subject
	}
	switch {
	case f.ev.Class != event.ClassNet && f.attempts == 0:
		fi.NoSubject = "waiting for attribution"
	case f.ev.Class != event.ClassNet:
		fi.NoSubject = fmt.Sprintf("not attributed yet: no guest socket owned it in %d looks at the guest", f.attempts)
	case f.rec.AttributeError != "":
		fi.NoSubject = f.rec.AttributeError
	default:
		fi.Attributed = true
		fi.Subject = f.ev.Subject
		fi.Subject.Labels = slices.Clone(fi.Subject.Labels)
	}
	fi.Decision.AttributeError = ""
	return fi
}

// ProtoName is the key's protocol: tcp, udp or icmp.
func (k FlowKey) ProtoName() string { return protoNames[k.Proto] }
