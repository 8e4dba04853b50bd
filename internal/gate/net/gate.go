package net

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// Decider is the security server as the gate sees it: it decides a batch
// of flows with one durable audit write, and may hold decisions until an
// aggregated record is written (Decision.Pending).
type Decider interface {
	DecideBatch([]secserver.Request) []secserver.Decision
}

// Query asks an Attributor who owns a flow's guest end.
type Query struct {
	Proto  string // tcp, udp, icmp
	Dir    event.Dir
	Local  netip.AddrPort // the guest's end; for ICMP echo the port is the identifier
	Remote netip.AddrPort
}

// ErrNotFound means no guest socket matches the query (yet).
var ErrNotFound = errors.New("no guest socket owns the flow")

// Attribution is an Attributor's answer to one Query.
type Attribution struct {
	Subject event.Subject
	Err     error // ErrNotFound: no socket yet (the gate asks again)
}

// Attributor finds the guest processes behind flows (the monitor
// implements it with introspection of the guest kernel's sockets and
// tasks). AttributeBatch answers every query, out[i] for qs[i], with at
// most one look at the guest: its cost must not grow with the number of
// times it is called, only with what it reads.
type Attributor interface {
	AttributeBatch(ctx context.Context, qs []Query, out []Attribution)
}

// LabelUnattributed is the label of a subject no guest socket explained;
// policies can match it with labelIs(unattributed).
const LabelUnattributed = "unattributed"

// Record describes one decision, for the event stream.
type Record struct {
	Time       time.Time     `json:"time"`
	Dir        event.Dir     `json:"dir"`
	Proto      string        `json:"proto"`
	Local      string        `json:"local"`
	Remote     string        `json:"remote"`
	Subject    event.Subject `json:"subject"`
	Verdict    string        `json:"verdict"`
	Action     string        `json:"action"` // forward, reset, drop
	Rule       string        `json:"rule,omitempty"`
	Reason     string        `json:"reason,omitempty"`
	Seq        uint64        `json:"policy_seq"`
	Cached     bool          `json:"cached,omitempty"`
	Permissive bool          `json:"permissive,omitempty"`
	// AttributeMicros is how long the look at the guest that found the
	// process took; WaitMicros how long the flow waited for its decision
	// in all (queue, attribution, retries, an aggregated audit record).
	AttributeMicros int64  `json:"attribute_us"`
	WaitMicros      int64  `json:"wait_us"`
	Attempts        int    `json:"attempts"`
	AttributeError  string `json:"attribute_error,omitempty"`
	Revoked         bool   `json:"revoked,omitempty"`   // an open flow denied after a reload
	Undecided       bool   `json:"undecided,omitempty"` // dropped before any decision (gate-overload, gate-table-full)
}

// Config configures a Gate.
type Config struct {
	Decider    Decider
	Attributor Attributor
	Limits     Limits
	// GuestMAC, when set, is the only source MAC the guest may use.
	GuestMAC [6]byte
	// Source, when set, binds the guest's IPv4 source addresses; nil
	// leaves them unchecked (the monitor always sets it).
	Source *SourceBinding
	// Logf gets notices: address bindings and the first frame dropped for
	// want of one (nil: none).
	Logf func(format string, args ...any)
	// ToNet and ToGuest receive the frames the gate lets through (and the
	// RSTs it makes). They own the slices; each is called from one
	// goroutine at a time.
	ToNet, ToGuest func([][]byte)
	// OnDecision sees every decision (nil: none), and every frame dropped
	// undecided that a pass attributed (Record.Undecided).
	OnDecision func(Record)
	// Retry is how long to wait before each new attribution attempt when
	// the flow's socket is not found; nil means 2, 5, 10 and 20 ms.
	Retry []time.Duration
	// Seq, when set, returns the sequence number of the policy in force;
	// the gate polls it and calls PolicyChanged when it moves.
	Seq func() uint64
	Now func() time.Time
}

// Stats are the gate's counters.
type Stats struct {
	Frames, Forwarded, Dropped, Refused, Resets uint64
	NewFlows, Allowed, Denied, Unattributed     uint64
	// Flow-level refusals of the gate's own (not the policy's): frames
	// dropped undecided for want of room, and flows refused because their
	// subject was over its rate or its share of the table.
	Overload, TableFull, RateLimited, FlowLimited uint64
	Evicted                                       uint64 // flows given up to make room
	Passes                                        uint64 // looks at the guest that attributed a batch
	Flows, Pending, Subjects                      int
	DropReasons, ResetReasons                     map[string]uint64
}

// Gate filters one guest's frames. Create with New, feed with Egress and
// Ingress, stop with Close.
type Gate struct {
	cfg  Config
	lim  Limits
	stop chan struct{}
	wake chan struct{} // a flow was queued
	wg   sync.WaitGroup
	// netMu and guestMu serialize the ToNet and the ToGuest calls, each
	// on its own: a write to a guest that is slow to read must not hold
	// up the frames it sends (and the other way round).
	netMu, guestMu sync.Mutex

	mu            sync.Mutex // guards the fields up to the counters
	flows         map[FlowKey]*flow
	newest        *flow // the table's flows in order of creation, newest first (Flows)
	evict         evictable
	queue         []*flow // flows waiting for (another) attribution attempt
	waiting       int     // flows created and not yet decided
	shed          []shedFrame
	shedMore      int // frames shed beyond the sample in shed
	subjects      map[subjectKey]*subjectState
	reasons       map[string]uint64
	resetReasons  map[string]uint64
	leased        netip.Addr // the guest's address by DHCP (SourceBinding)
	warnedUnbound bool       // the first ReasonUnbound drop was noted
	notes         []string   // for Logf, once the lock is released

	frames, forwarded, dropped, refused, resets   atomic.Uint64
	newFlows, allowed, denied, unattributed       atomic.Uint64
	overload, tableFull, rateLimited, flowLimited atomic.Uint64
	evicted, passes                               atomic.Uint64
}

// New returns a running gate.
func New(cfg Config) *Gate {
	if cfg.Retry == nil {
		cfg.Retry = []time.Duration{2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Source != nil {
		src := *cfg.Source
		src.Static = slices.Clone(src.Static)
		cfg.Source = &src
	}
	g := &Gate{cfg: cfg, lim: cfg.Limits.withDefaults(), stop: make(chan struct{}), wake: make(chan struct{}, 1),
		flows: map[FlowKey]*flow{}, subjects: map[subjectKey]*subjectState{},
		reasons: map[string]uint64{}, resetReasons: map[string]uint64{}}
	var seq uint64
	if cfg.Seq != nil {
		seq = cfg.Seq()
	}
	g.wg.Add(2)
	go g.run()
	go g.reaper(seq)
	return g
}

// Close stops the gate; frames held for pending flows are dropped.
func (g *Gate) Close() {
	select {
	case <-g.stop:
		return
	default:
	}
	close(g.stop)
	g.wg.Wait()
}

// Egress filters frames the guest sent. It takes ownership of frames,
// the slice included (the frames let through are compacted into it).
func (g *Gate) Egress(frames [][]byte) { g.filter(frames, true) }

// Ingress filters frames for the guest, like Egress.
func (g *Gate) Ingress(frames [][]byte) { g.filter(frames, false) }

// verdict of one frame in a batch.
const (
	vAccept = iota
	vDrop
	vReject
	vHold
)

func (g *Gate) filter(frames [][]byte, fromGuest bool) {
	pass := frames[:0] // in place: no allocation on the fast path
	var back [][]byte
	var p Packet
	queued := false
	now := g.cfg.Now()
	g.frames.Add(uint64(len(frames)))
	g.mu.Lock()
	for _, fr := range frames {
		v, reason := g.classify(fr, &p, fromGuest, now, &queued)
		switch v {
		case vAccept:
			pass = append(pass, fr)
		case vDrop:
			g.dropped.Add(1)
			g.reasons[reason]++
		case vReject:
			g.resets.Add(1)
			g.resetReasons[reason]++
			back = append(back, BuildRST(fr, &p))
		}
	}
	notes := g.notes
	g.notes = nil
	g.mu.Unlock()
	if queued {
		g.signal()
	}
	if g.cfg.Logf != nil {
		for _, n := range notes {
			g.cfg.Logf("%s", n)
		}
	}
	g.forwarded.Add(uint64(len(pass)))
	g.emit(pass, back, fromGuest)
}

// signal wakes the decision loop.
func (g *Gate) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// emit sends pass the way it was going and back the other way.
func (g *Gate) emit(pass, back [][]byte, fromGuest bool) {
	if len(pass) == 0 && len(back) == 0 {
		return
	}
	toNet, toGuest := g.toNet, g.toGuest
	if !fromGuest {
		toNet, toGuest = toGuest, toNet
	}
	if len(pass) > 0 {
		toNet(pass)
	}
	if len(back) > 0 {
		toGuest(back)
	}
}

func (g *Gate) toNet(b [][]byte) {
	g.netMu.Lock()
	defer g.netMu.Unlock()
	g.cfg.ToNet(b)
}

func (g *Gate) toGuest(b [][]byte) {
	g.guestMu.Lock()
	defer g.guestMu.Unlock()
	g.cfg.ToGuest(b)
}

// classify decides one frame on the fast path; for a vDrop or vReject it
// returns the reason. A flow start is queued for a decision (queued set).
// Preconditions: g.mu held.
func (g *Gate) classify(fr []byte, p *Packet, fromGuest bool, now time.Time, queued *bool) (int, string) {
	if err := Parse(fr, p); err != nil {
		g.refused.Add(1)
		return vDrop, err.Error()
	}
	if fromGuest && g.cfg.GuestMAC != ([6]byte{}) && p.SrcMAC != g.cfg.GuestMAC {
		return vDrop, ReasonSpoofedMAC
	}
	if p.Kind == KindARP {
		// The sender addresses are what peers learn: a guest may not claim
		// another's MAC or IPv4 address in them, even from its own
		// Ethernet source.
		if fromGuest && g.cfg.GuestMAC != ([6]byte{}) && p.ARPSender != g.cfg.GuestMAC {
			return vDrop, ReasonSpoofedARP
		}
		if fromGuest && g.cfg.Source != nil {
			if reason := g.checkSource(p); reason != "" {
				return vDrop, reason
			}
		}
		return vAccept, ""
	}
	if g.cfg.Source != nil {
		if fromGuest {
			if reason := g.checkSource(p); reason != "" {
				return vDrop, reason
			}
		} else if p.Proto == ProtoUDP && p.SrcPort == dhcpServerPort && p.DstPort == dhcpClientPort {
			g.snoopDHCP(p)
		}
	}
	k := FlowKey{Proto: p.Proto, Local: netip.AddrPortFrom(p.Src, p.SrcPort), Remote: netip.AddrPortFrom(p.Dst, p.DstPort)}
	if !fromGuest {
		k.Local, k.Remote = k.Remote, k.Local
	}
	f := g.flows[k]
	if f != nil && f.closed && p.Proto == ProtoTCP && p.TCPFlags&(tcpSYN|tcpACK|tcpRST) == tcpSYN {
		// A new connection on the 5-tuple of a closed one: another
		// process may have bound the port since, so it is attributed and
		// decided afresh.
		g.remove(f)
		f = nil
	}
	if f != nil {
		return g.onFlow(f, fr, p, fromGuest, now)
	}
	return g.onMiss(k, fr, p, fromGuest, now, queued)
}

// onFlow classifies a frame of a flow in the table.
// Preconditions: g.mu held.
func (g *Gate) onFlow(f *flow, fr []byte, p *Packet, fromGuest bool, now time.Time) (int, string) {
	f.count(len(fr), fromGuest, now)
	switch f.state {
	case stateAllowed:
		f.last = now
		changed := false
		if !f.answered && f.fromResponder(fromGuest) {
			f.answered, changed = true, true
		}
		if p.Proto == ProtoTCP {
			closed := f.closed
			g.track(f, p, fromGuest)
			changed = changed || closed != f.closed
		}
		if changed {
			g.evict.place(f)
		}
		return vAccept, ""
	case stateDenied:
		// Not renewed by its frames: the entry ends TimeoutDenied after
		// the decision whatever the guest sends.
		if p.Proto == ProtoTCP && !f.drop && p.TCPFlags&tcpRST == 0 {
			if f.rec.Revoked {
				return vReject, ResetRevoked
			}
			return vReject, ResetDenied
		}
		return vDrop, ReasonDenied
	}
	if len(f.held) < maxHeld {
		f.held = append(f.held, fr)
		f.heldFrom = append(f.heldFrom, fromGuest)
		return vHold, ""
	}
	return vDrop, ReasonPendingFull
}

// onMiss classifies a frame of no flow in the table: only a flow start
// opens one.
// Preconditions: g.mu held.
func (g *Gate) onMiss(k FlowKey, fr []byte, p *Packet, fromGuest bool, now time.Time, queued *bool) (int, string) {
	dir := event.DirOut
	if !fromGuest {
		dir = event.DirIn
	}
	switch p.Proto {
	case ProtoTCP:
		if p.TCPFlags&(tcpSYN|tcpACK|tcpRST) != tcpSYN {
			if p.TCPFlags&tcpRST == 0 && fromGuest {
				// The guest talks on a flow we do not know (e.g. one the
				// reaper forgot): reset it rather than leave it hanging.
				return vReject, ResetNoFlow
			}
			return vDrop, ReasonNoFlowTCP
		}
	case ProtoICMP:
		if p.ICMPType != 8 { // echo request
			return vDrop, ReasonNoFlowICMP
		}
	}
	if err := VerifyTransport(p); err != nil {
		g.refused.Add(1)
		return vDrop, err.Error()
	}
	if g.waiting >= g.lim.MaxPending {
		g.overload.Add(1)
		g.shedFrame(k, dir, RuleOverload, now)
		*queued = true // the next pass records it
		return vDrop, ReasonOverload
	}
	if len(g.flows) >= g.lim.MaxFlows {
		v := g.evict.victim()
		if v == nil {
			g.tableFull.Add(1)
			g.shedFrame(k, dir, RuleTableFull, now)
			*queued = true
			return vDrop, ReasonTableFull
		}
		g.evicted.Add(1)
		g.remove(v)
	}
	f := &flow{key: k, dir: dir, state: statePending, created: now, last: now, nextTry: now, waiting: true,
		held: [][]byte{fr}, heldFrom: []bool{fromGuest}}
	f.count(len(fr), fromGuest, now)
	g.flows[k] = f
	f.older = g.newest
	if g.newest != nil {
		g.newest.newer = f
	}
	g.newest = f
	g.queue = append(g.queue, f)
	g.waiting++
	*queued = true
	g.newFlows.Add(1)
	return vHold, ""
}

// remove takes f out of the table and its accounting.
// Preconditions: g.mu held.
func (g *Gate) remove(f *flow) {
	if f.gone {
		return
	}
	f.gone = true
	if g.flows[f.key] == f {
		delete(g.flows, f.key)
	}
	if f.newer != nil {
		f.newer.older = f.older
	} else if g.newest == f {
		g.newest = f.older
	}
	if f.older != nil {
		f.older.newer = f.newer
	}
	f.older, f.newer = nil, nil
	unlist(f)
	// A flow still waiting stays counted in g.waiting until the decision
	// loop, which holds it in its queue or its pass, sees it gone.
	if f.counted {
		f.counted = false
		if st := g.subjects[f.subj]; st != nil {
			st.flows--
		}
	}
}

// track follows TCP teardown.
// Preconditions: g.mu held.
func (g *Gate) track(f *flow, p *Packet, fromGuest bool) {
	if p.TCPFlags&tcpRST != 0 {
		f.closed = true
		return
	}
	if p.TCPFlags&tcpFIN != 0 {
		if fromGuest {
			f.finLocal = true
		} else {
			f.finRemote = true
		}
		f.closed = f.finLocal && f.finRemote
	}
}

var protoNames = map[uint8]string{ProtoTCP: "tcp", ProtoUDP: "udp", ProtoICMP: "icmp"}

func opOf(proto uint8, dir event.Dir) string {
	switch {
	case proto == ProtoTCP && dir == event.DirOut:
		return "connect"
	case proto == ProtoTCP:
		return "accept"
	case dir == event.DirOut:
		return "send"
	}
	return "recv"
}

// silent reports whether a deny asks for a silent drop: deny(ETIMEDOUT)
// makes the guest's connect time out instead of being refused.
func silent(d secserver.Decision) bool { return d.Errno == 110 }

// decided applies d to f and releases its held frames.
func (g *Gate) decided(f *flow, d secserver.Decision, rec Record) {
	var toNet, toGuest, rstNet, rstGuest [][]byte
	var p Packet
	now := g.cfg.Now()
	g.mu.Lock()
	if d.Allows() {
		f.state = stateAllowed
		g.allowed.Add(1)
	} else {
		f.state = stateDenied
		f.drop = silent(d) || f.key.Proto != ProtoTCP
		g.denied.Add(1)
	}
	f.seq, f.decidedAt = d.Seq, now
	for i, fr := range f.held {
		from := f.heldFrom[i]
		switch {
		case f.gone:
			// Reaped or evicted while it waited: its frames go nowhere.
		case f.state == stateAllowed:
			if Parse(fr, &p) == nil && p.Proto == ProtoTCP {
				g.track(f, &p, from)
			}
			if f.fromResponder(from) {
				f.answered = true
			}
			if from {
				toNet = append(toNet, fr)
			} else {
				toGuest = append(toGuest, fr)
			}
		case !f.drop && i == 0 && Parse(fr, &p) == nil:
			// Answer the flow's first segment with a RST to its sender.
			if from {
				rstGuest = append(rstGuest, BuildRST(fr, &p))
			} else {
				rstNet = append(rstNet, BuildRST(fr, &p))
			}
			g.resetReasons[ResetDenied]++
		}
	}
	f.held, f.heldFrom = nil, nil
	g.evict.place(f)
	action := "forward"
	switch {
	case !d.Allows() && f.drop:
		action = "drop"
	case !d.Allows():
		action = "reset"
	}
	rec.Time, rec.Verdict, rec.Action, rec.Rule, rec.Reason, rec.Seq, rec.Cached, rec.Permissive =
		now, d.Verdict.String(), action, d.Rule, d.Reason, d.Seq, d.Cached, d.Permissive
	rec.WaitMicros = now.Sub(f.created).Microseconds()
	rec.Subject = f.ev.Subject
	f.rec = rec
	g.mu.Unlock()
	g.forwarded.Add(uint64(len(toNet) + len(toGuest)))
	g.resets.Add(uint64(len(rstNet) + len(rstGuest)))
	g.emit(append(toNet, rstNet...), nil, true)
	g.emit(append(toGuest, rstGuest...), nil, false)
	if g.cfg.OnDecision != nil {
		g.cfg.OnDecision(rec)
	}
}

// PolicyChanged forgets denied flows (so the new policy decides them
// afresh) and re-decides every allowed flow with its recorded subject;
// flows the new policy denies are reset both ways.
func (g *Gate) PolicyChanged() {
	var todo []*flow
	var reqs []secserver.Request
	g.mu.Lock()
	for _, f := range g.flows {
		switch f.state {
		case stateDenied:
			g.remove(f)
		case stateAllowed:
			if !f.closed && f.ev.Class == event.ClassNet {
				ev := f.ev
				todo = append(todo, f)
				reqs = append(reqs, secserver.Request{Event: &ev})
			}
		}
	}
	g.mu.Unlock()
	if len(reqs) == 0 {
		return
	}
	for i, d := range g.cfg.Decider.DecideBatch(reqs) {
		if d.Pending != nil {
			select {
			case <-d.Pending.Done():
			case <-g.stop:
				return
			}
			if err := d.Pending.Wait(); err != nil {
				d = secserver.Failed(d, err)
			}
		}
		if d.Allows() {
			continue
		}
		g.revoke(todo[i], d)
	}
}

// revoke denies an allowed flow after a reload.
func (g *Gate) revoke(f *flow, d secserver.Decision) {
	g.mu.Lock()
	f.state, f.drop, f.decidedAt = stateDenied, f.key.Proto != ProtoTCP || silent(d), g.cfg.Now()
	g.evict.place(f)
	rec := f.rec
	rec.Time, rec.Verdict, rec.Rule, rec.Reason, rec.Seq, rec.Revoked = g.cfg.Now(), d.Verdict.String(), d.Rule, d.Reason, d.Seq, true
	rec.Action = "drop"
	if !f.drop {
		rec.Action = "reset"
	}
	f.rec = rec
	g.mu.Unlock()
	g.denied.Add(1)
	if g.cfg.OnDecision != nil {
		g.cfg.OnDecision(rec)
	}
}

func (g *Gate) reaper(seq uint64) {
	defer g.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		if g.cfg.Seq != nil {
			if s := g.cfg.Seq(); s != seq {
				seq = s
				g.PolicyChanged()
			}
		}
		now := g.cfg.Now()
		g.mu.Lock()
		for _, f := range g.flows {
			if f.expired(now) {
				g.remove(f)
			}
		}
		for k, st := range g.subjects {
			if st.idle(now, &g.lim) {
				delete(g.subjects, k)
			}
		}
		g.mu.Unlock()
	}
}

// Stats returns the counters.
func (g *Gate) Stats() Stats {
	g.mu.Lock()
	n, pending, subjects := len(g.flows), g.waiting, len(g.subjects)
	reasons, resets := maps.Clone(g.reasons), maps.Clone(g.resetReasons)
	g.mu.Unlock()
	return Stats{Frames: g.frames.Load(), Forwarded: g.forwarded.Load(), Dropped: g.dropped.Load(), Refused: g.refused.Load(),
		Resets: g.resets.Load(), NewFlows: g.newFlows.Load(), Allowed: g.allowed.Load(), Denied: g.denied.Load(),
		Unattributed: g.unattributed.Load(), Overload: g.overload.Load(), TableFull: g.tableFull.Load(),
		RateLimited: g.rateLimited.Load(), FlowLimited: g.flowLimited.Load(), Evicted: g.evicted.Load(), Passes: g.passes.Load(),
		Flows: n, Pending: pending, Subjects: subjects, DropReasons: reasons, ResetReasons: resets}
}

// String renders a flow key for logs.
func (k FlowKey) String() string {
	return fmt.Sprintf("%s %s-%s", protoNames[k.Proto], k.Local, k.Remote)
}

// ctxTimeout bounds one look at the guest.
const ctxTimeout = 5 * time.Second

func attributionContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), ctxTimeout)
}
