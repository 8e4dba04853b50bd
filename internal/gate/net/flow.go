package net

import (
	"net/netip"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// maxHeld bounds the frames a pending flow holds (retransmissions beyond
// it are dropped; TCP sends them again).
const maxHeld = 8

// Timeouts after which the reaper forgets a flow.
var (
	TimeoutTCPEstablished = 30 * time.Minute
	TimeoutTCPClosing     = 30 * time.Second // after FIN both ways or RST
	TimeoutUDP            = 2 * time.Minute
	TimeoutICMP           = 30 * time.Second
	TimeoutPending        = 30 * time.Second // from the flow's first frame
	// TimeoutDenied runs from the decision and is not renewed by the
	// flow's frames: retransmitted SYNs get the same answer meanwhile, and
	// a guest cannot keep a denied entry alive by sending to it.
	TimeoutDenied = 10 * time.Second
	// TimeoutUnanswered runs from the decision for an allowed flow the
	// other side has not answered yet, and is not renewed by the
	// initiator's frames.
	TimeoutUnanswered = 30 * time.Second
)

// FlowKey identifies a flow by its 5-tuple, guest side first.
type FlowKey struct {
	Proto  uint8
	Local  netip.AddrPort // the guest's end
	Remote netip.AddrPort
}

type flowState uint8

const (
	statePending flowState = iota // waiting for attribution or a decision
	stateAllowed
	stateDenied
)

// flow is one entry of the table.
// Preconditions: every field is guarded by Gate.mu, except key and dir,
// which never change.
type flow struct {
	key       FlowKey
	dir       event.Dir
	state     flowState
	drop      bool // denied silently (no RST)
	held      [][]byte
	heldFrom  []bool // per held frame: true if it came from the guest
	created   time.Time
	decidedAt time.Time
	last      time.Time // the last frame of an answered flow
	seen      time.Time // the last frame of any kind (Flows)
	answered  bool      // a frame came from the side that did not open it
	finLocal  bool
	finRemote bool
	closed    bool   // RST seen, or FIN both ways
	gone      bool   // no longer in the table (reaped, evicted, forgotten)
	seq       uint64 // policy sequence that decided
	ev        event.Event
	rec       Record
	// Frames and bytes seen on the flow (Flows), from the guest and to
	// it, whatever became of them: two additions on the fast path, under
	// the lock it already holds.
	framesOut, framesIn uint64
	bytesOut, bytesIn   uint64

	// Scheduling: attempts at attribution so far and when the next is due;
	// waiting while it counts in Gate.waiting (until it is decided).
	attempts int
	nextTry  time.Time
	waiting  bool
	// The subject the flow counts against, once attributed.
	subj    subjectKey
	counted bool

	// The eviction list the flow is on (nil: none) and its neighbours.
	evl          *evictList
	evPrev, evNx *flow
	// Its neighbours in the table's order of creation (Gate.newest):
	// older is the flow created before it.
	older, newer *flow
}

// count notes a frame of the flow.
// Preconditions: Gate.mu held.
func (f *flow) count(n int, fromGuest bool, now time.Time) {
	if fromGuest {
		f.framesOut++
		f.bytesOut += uint64(n)
	} else {
		f.framesIn++
		f.bytesIn += uint64(n)
	}
	f.seen = now
}

// expired reports whether the reaper forgets f at now.
func (f *flow) expired(now time.Time) bool {
	switch {
	case f.state == statePending:
		return now.Sub(f.created) > TimeoutPending
	case f.state == stateDenied:
		return now.Sub(f.decidedAt) > TimeoutDenied
	case !f.answered:
		return now.Sub(f.decidedAt) > TimeoutUnanswered
	case f.key.Proto == ProtoTCP && f.closed:
		return now.Sub(f.last) > TimeoutTCPClosing
	case f.key.Proto == ProtoTCP:
		return now.Sub(f.last) > TimeoutTCPEstablished
	case f.key.Proto == ProtoUDP:
		return now.Sub(f.last) > TimeoutUDP
	}
	return now.Sub(f.last) > TimeoutICMP
}

// fromResponder reports whether a frame in the given direction comes from
// the side that did not open the flow.
func (f *flow) fromResponder(fromGuest bool) bool {
	return fromGuest == (f.dir == event.DirIn)
}
