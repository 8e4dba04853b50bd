package net

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// What a gate hands the gate that replaces it (a monitor upgrade): the
// decided flows with their decisions and the guest's leased address, so
// that an established connection goes on without a new decision (a TCP
// segment of a flow the table does not know is reset, see onMiss) and the
// guest's address stays bound. Flows still pending are not carried: their
// held frames are dropped and the guest's retransmission opens them again,
// to be decided by the new gate. Per-process budgets start full again.

// SavedFlow is one decided flow as it crosses to another gate.
type SavedFlow struct {
	Key       FlowKey     `json:"key"`
	Dir       event.Dir   `json:"dir"`
	Allowed   bool        `json:"allowed"`
	Drop      bool        `json:"drop,omitempty"`
	Created   time.Time   `json:"created"`
	DecidedAt time.Time   `json:"decided_at"`
	Last      time.Time   `json:"last"`
	Seen      time.Time   `json:"seen"`
	Answered  bool        `json:"answered,omitempty"`
	FinLocal  bool        `json:"fin_local,omitempty"`
	FinRemote bool        `json:"fin_remote,omitempty"`
	Closed    bool        `json:"closed,omitempty"`
	Event     event.Event `json:"event"`
	Record    Record      `json:"record"`
	FramesOut uint64      `json:"frames_out,omitempty"`
	FramesIn  uint64      `json:"frames_in,omitempty"`
	BytesOut  uint64      `json:"bytes_out,omitempty"`
	BytesIn   uint64      `json:"bytes_in,omitempty"`
}

// Saved is a gate's state as Save copies it.
type Saved struct {
	// Leased is the guest's address by DHCP (invalid: none yet).
	Leased netip.Addr `json:"leased"`
	// Flows are the decided flows, oldest first.
	Flows []SavedFlow `json:"flows"`
	// Dropped counts the pending flows left behind.
	Dropped int `json:"dropped_pending,omitempty"`
}

// Save copies the gate's decided flows and binding. Call it once no more
// frames reach the gate (the guest stopped, its NIC's pump ended).
func (g *Gate) Save() Saved {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := Saved{Leased: g.leased}
	var oldest *flow
	for f := g.newest; f != nil; f = f.older {
		oldest = f
	}
	for f := oldest; f != nil; f = f.newer {
		if f.state == statePending {
			s.Dropped++
			continue
		}
		s.Flows = append(s.Flows, SavedFlow{Key: f.key, Dir: f.dir, Allowed: f.state == stateAllowed, Drop: f.drop,
			Created: f.created, DecidedAt: f.decidedAt, Last: f.last, Seen: f.seen, Answered: f.answered,
			FinLocal: f.finLocal, FinRemote: f.finRemote, Closed: f.closed, Event: f.ev, Record: f.rec,
			FramesOut: f.framesOut, FramesIn: f.framesIn, BytesOut: f.bytesOut, BytesIn: f.bytesIn})
	}
	return s
}

// Restore fills a new gate, before any frame reaches it, with what Save
// copied from the gate it replaces. The flows keep their decisions under
// the policy sequence seq (the policy in force, which must be the one
// that decided them); an address the gate's source binding would not
// lease is refused. Restored flows expire, are evicted and re-decided on
// a policy change like the gate's own.
func (g *Gate) Restore(s Saved, seq uint64) error {
	if len(s.Flows) > g.lim.MaxFlows {
		return fmt.Errorf("network gate: %d flows to restore, the table holds %d", len(s.Flows), g.lim.MaxFlows)
	}
	if s.Leased.IsValid() && !leasable(s.Leased) {
		return fmt.Errorf("network gate: %v cannot be the guest's address", s.Leased)
	}
	for i := range s.Flows {
		if err := s.Flows[i].validate(); err != nil {
			return fmt.Errorf("network gate: restored flow %d: %w", i, err)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.flows) > 0 || g.leased.IsValid() {
		return errors.New("network gate: restore into a gate that already has flows")
	}
	if g.cfg.Source != nil {
		g.leased = s.Leased
	}
	now := g.cfg.Now()
	for _, sf := range s.Flows {
		if _, dup := g.flows[sf.Key]; dup {
			return fmt.Errorf("network gate: flow %v restored twice", sf.Key)
		}
		f := &flow{key: sf.Key, dir: sf.Dir, state: stateDenied, drop: sf.Drop, created: sf.Created, decidedAt: sf.DecidedAt,
			last: sf.Last, seen: sf.Seen, answered: sf.Answered, finLocal: sf.FinLocal, finRemote: sf.FinRemote, closed: sf.Closed,
			seq: seq, ev: sf.Event, rec: sf.Record, framesOut: sf.FramesOut, framesIn: sf.FramesIn, bytesOut: sf.BytesOut, bytesIn: sf.BytesIn}
		if sf.Allowed {
			f.state = stateAllowed
		}
		g.flows[f.key] = f
		f.older = g.newest
		if g.newest != nil {
			g.newest.newer = f
		}
		g.newest = f
		k := subjectOf(f.ev.Subject, f)
		st := g.subjects[k]
		if st == nil {
			st = &subjectState{tokens: float64(g.lim.SubjectBurst), at: now}
			g.subjects[k] = st
		}
		st.flows++
		f.subj, f.counted = k, true
		g.evict.place(f)
	}
	return nil
}

// validate checks a flow read back from a handover.
func (sf *SavedFlow) validate() error {
	k := sf.Key
	if protoNames[k.Proto] == "" {
		return fmt.Errorf("protocol %d", k.Proto)
	}
	if !k.Local.Addr().Is4() || !k.Remote.Addr().Is4() {
		return fmt.Errorf("%v: not IPv4", k)
	}
	if sf.Dir != event.DirIn && sf.Dir != event.DirOut {
		return fmt.Errorf("%v: direction %q", k, sf.Dir)
	}
	return nil
}
