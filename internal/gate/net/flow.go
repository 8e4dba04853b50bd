package net

import (
	"net/netip"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// MaxFlows bounds the flow table; new flows beyond it are denied.
const MaxFlows = 1 << 16

// maxHeld bounds the frames a pending flow holds (retransmissions beyond
// it are dropped; TCP sends them again).
const maxHeld = 8

// Timeouts after which the reaper forgets a flow.
var (
	TimeoutTCPEstablished = 30 * time.Minute
	TimeoutTCPClosing     = 30 * time.Second // after FIN both ways or RST
	TimeoutUDP            = 2 * time.Minute
	TimeoutICMP           = 30 * time.Second
	TimeoutPending        = 30 * time.Second
	TimeoutDenied         = 10 * time.Second // retransmitted SYNs get the same answer
)

// FlowKey identifies a flow by its 5-tuple, guest side first.
type FlowKey struct {
	Proto  uint8
	Local  netip.AddrPort // the guest's end
	Remote netip.AddrPort
}

type flowState uint8

const (
	statePending flowState = iota
	stateAllowed
	stateDenied
)

// flow is one entry of the table.
// Preconditions: every field is guarded by Gate.mu.
type flow struct {
	key       FlowKey
	dir       event.Dir
	state     flowState
	drop      bool // denied silently (no RST)
	held      [][]byte
	heldFrom  []bool // per held frame: true if it came from the guest
	last      time.Time
	finLocal  bool
	finRemote bool
	closed    bool   // RST seen, or FIN both ways
	seq       uint64 // policy sequence that decided
	ev        event.Event
	rec       Record
}

func (f *flow) timeout() time.Duration {
	switch {
	case f.state == statePending:
		return TimeoutPending
	case f.state == stateDenied:
		return TimeoutDenied
	case f.key.Proto == ProtoTCP && f.closed:
		return TimeoutTCPClosing
	case f.key.Proto == ProtoTCP:
		return TimeoutTCPEstablished
	case f.key.Proto == ProtoUDP:
		return TimeoutUDP
	}
	return TimeoutICMP
}
