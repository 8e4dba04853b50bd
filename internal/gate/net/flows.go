package net

import (
	"container/heap"
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

// Flows returns up to max flows of the table, newest first (by their
// first frame; flows created at the same instant by key), and how many
// the table holds. max <= 0 asks for none (only the count).
//
// It holds the gate's lock for one walk of the table, keeping only the
// newest max (a heap), and copies only those: the data path waits for
// about a map iteration (a millisecond at the default 65,536 entries).
func (g *Gate) Flows(max int) ([]FlowInfo, int) {
	h := &flowHeap{}
	g.mu.Lock()
	total := len(g.flows)
	if max > 0 {
		for _, f := range g.flows {
			switch {
			case h.Len() < max:
				heap.Push(h, f)
			case newer(f, (*h)[0]):
				(*h)[0] = f
				heap.Fix(h, 0)
			}
		}
	}
	out := make([]FlowInfo, 0, h.Len())
	for _, f := range *h {
		out = append(out, f.info())
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b FlowInfo) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return compareKeys(a.Key, b.Key)
	})
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

// newer reports whether a was created after b (ties broken by key, so
// that the flows kept do not depend on the map's order).
func newer(a, b *flow) bool {
	if c := a.created.Compare(b.created); c != 0 {
		return c > 0
	}
	return compareKeys(a.key, b.key) < 0
}

// compareKeys orders flow keys by protocol, guest end, remote end.
func compareKeys(a, b FlowKey) int {
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	if c := a.Local.Compare(b.Local); c != 0 {
		return c
	}
	return a.Remote.Compare(b.Remote)
}

// flowHeap is a min-heap of flows, oldest at the top: the one to drop
// when a newer flow comes.
type flowHeap []*flow

func (h flowHeap) Len() int           { return len(h) }
func (h flowHeap) Less(i, j int) bool { return newer(h[j], h[i]) }
func (h flowHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *flowHeap) Push(x any)        { *h = append(*h, x.(*flow)) }
func (h *flowHeap) Pop() any {
	old := *h
	f := old[len(old)-1]
	*h = old[:len(old)-1]
	return f
}
