package net

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// Decider is the security server as the gate sees it.
type Decider interface {
	Decide(*event.Event) secserver.Decision
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

// Attributor finds the guest process behind a flow (the monitor implements
// it with introspection of the guest kernel's sockets and tasks).
type Attributor interface {
	Attribute(ctx context.Context, q Query) (event.Subject, error)
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
	// AttributeMicros is how long finding the process took.
	AttributeMicros int64  `json:"attribute_us"`
	Attempts        int    `json:"attempts"`
	AttributeError  string `json:"attribute_error,omitempty"`
	Revoked         bool   `json:"revoked,omitempty"` // an open flow denied after a reload
}

// Config configures a Gate.
type Config struct {
	Decider    Decider
	Attributor Attributor
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
	// OnDecision sees every decision (nil: none).
	OnDecision func(Record)
	// Retry is how long to wait before each new attribution attempt when
	// the flow's socket is not found; nil means 2, 5, 10 and 20 ms.
	Retry   []time.Duration
	Workers int // decision workers; 0 means 2
	// Seq, when set, returns the sequence number of the policy in force;
	// the gate polls it and calls PolicyChanged when it moves.
	Seq func() uint64
	Now func() time.Time
}

// Stats are the gate's counters.
type Stats struct {
	Frames, Forwarded, Dropped, Refused, Resets uint64
	NewFlows, Allowed, Denied, Unattributed     uint64
	Flows                                       int
	DropReasons                                 map[string]uint64
}

// Gate filters one guest's frames. Create with New, feed with Egress and
// Ingress, stop with Close.
type Gate struct {
	cfg  Config
	work chan *flow
	stop chan struct{}
	wg   sync.WaitGroup
	// netMu and guestMu serialize the ToNet and the ToGuest calls, each
	// on its own: a write to a guest that is slow to read must not hold
	// up the frames it sends (and the other way round).
	netMu, guestMu sync.Mutex

	mu            sync.Mutex // guards the fields up to the counters
	flows         map[FlowKey]*flow
	reasons       map[string]uint64
	leased        netip.Addr // the guest's address by DHCP (SourceBinding)
	warnedUnbound bool       // the first ReasonUnbound drop was noted
	notes         []string   // for Logf, once the lock is released

	frames, forwarded, dropped, refused, resets atomic.Uint64
	newFlows, allowed, denied, unattributed     atomic.Uint64
}

// New returns a running gate.
func New(cfg Config) *Gate {
	if cfg.Retry == nil {
		cfg.Retry = []time.Duration{2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond}
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Source != nil {
		src := *cfg.Source
		src.Static = slices.Clone(src.Static)
		cfg.Source = &src
	}
	g := &Gate{cfg: cfg, work: make(chan *flow, 1024), stop: make(chan struct{}), flows: map[FlowKey]*flow{}, reasons: map[string]uint64{}}
	for range cfg.Workers {
		g.wg.Add(1)
		go g.worker()
	}
	var seq uint64
	if cfg.Seq != nil {
		seq = cfg.Seq()
	}
	g.wg.Add(1)
	go g.reaper(seq)
	return g
}

// Close stops the workers; frames held for pending flows are dropped.
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
	var start []*flow
	var p Packet
	now := g.cfg.Now()
	g.frames.Add(uint64(len(frames)))
	g.mu.Lock()
	for _, fr := range frames {
		v, reason, f := g.classify(fr, &p, fromGuest, now)
		switch v {
		case vAccept:
			pass = append(pass, fr)
		case vDrop:
			g.dropped.Add(1)
			g.reasons[reason]++
		case vReject:
			g.resets.Add(1)
			back = append(back, BuildRST(fr, &p))
		case vHold:
			if f != nil {
				start = append(start, f)
			}
		}
	}
	notes := g.notes
	g.notes = nil
	g.mu.Unlock()
	if g.cfg.Logf != nil {
		for _, n := range notes {
			g.cfg.Logf("%s", n)
		}
	}
	g.forwarded.Add(uint64(len(pass)))
	g.emit(pass, back, fromGuest)
	for _, f := range start {
		select {
		case g.work <- f:
		default:
			g.decided(f, secserver.Decision{Verdict: secserver.Deny, Rule: "gate-overload", Reason: "too many flows waiting for a decision"}, Record{})
		}
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

// classify decides one frame on the fast path.
// Preconditions: g.mu held.
func (g *Gate) classify(fr []byte, p *Packet, fromGuest bool, now time.Time) (int, string, *flow) {
	if err := Parse(fr, p); err != nil {
		g.refused.Add(1)
		return vDrop, err.Error(), nil
	}
	if fromGuest && g.cfg.GuestMAC != ([6]byte{}) && p.SrcMAC != g.cfg.GuestMAC {
		return vDrop, ReasonSpoofedMAC, nil
	}
	if p.Kind == KindARP {
		// The sender addresses are what peers learn: a guest may not claim
		// another's MAC or IPv4 address in them, even from its own
		// Ethernet source.
		if fromGuest && g.cfg.GuestMAC != ([6]byte{}) && p.ARPSender != g.cfg.GuestMAC {
			return vDrop, ReasonSpoofedARP, nil
		}
		if fromGuest && g.cfg.Source != nil {
			if reason := g.checkSource(p); reason != "" {
				return vDrop, reason, nil
			}
		}
		return vAccept, "", nil
	}
	if g.cfg.Source != nil {
		if fromGuest {
			if reason := g.checkSource(p); reason != "" {
				return vDrop, reason, nil
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
		delete(g.flows, k)
		f = nil
	}
	if f != nil {
		f.last = now
		switch f.state {
		case stateAllowed:
			if p.Proto == ProtoTCP {
				g.track(f, p, fromGuest)
			}
			return vAccept, "", nil
		case stateDenied:
			if p.Proto == ProtoTCP && !f.drop && p.TCPFlags&tcpRST == 0 {
				return vReject, "", nil
			}
			return vDrop, "denied flow", nil
		default:
			if len(f.held) < maxHeld {
				f.held = append(f.held, fr)
				f.heldFrom = append(f.heldFrom, fromGuest)
				return vHold, "", nil
			}
			return vDrop, "pending flow queue full", nil
		}
	}
	// A miss: only a flow start opens a flow.
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
				return vReject, "", nil
			}
			return vDrop, "TCP segment of no known flow", nil
		}
	case ProtoICMP:
		if p.ICMPType != 8 { // echo request
			return vDrop, "ICMP message of no known flow", nil
		}
	}
	if err := VerifyTransport(p); err != nil {
		g.refused.Add(1)
		return vDrop, err.Error(), nil
	}
	if len(g.flows) >= MaxFlows {
		if p.Proto == ProtoTCP {
			return vReject, "", nil
		}
		return vDrop, "flow table full", nil
	}
	f = &flow{key: k, dir: dir, state: statePending, last: now, held: [][]byte{fr}, heldFrom: []bool{fromGuest}}
	g.flows[k] = f
	g.newFlows.Add(1)
	return vHold, "", f
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

func (g *Gate) worker() {
	defer g.wg.Done()
	for {
		select {
		case <-g.stop:
			return
		case f := <-g.work:
			g.decide(f)
		}
	}
}

// decide attributes and decides a pending flow. Called without g.mu; the
// flow's key and dir do not change after creation.
func (g *Gate) decide(f *flow) {
	proto := protoNames[f.key.Proto]
	q := Query{Proto: proto, Dir: f.dir, Local: f.key.Local, Remote: f.key.Remote}
	rec := Record{Dir: f.dir, Proto: proto, Local: f.key.Local.String(), Remote: f.key.Remote.String()}
	start := time.Now()
	var subj event.Subject
	var err error
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	for attempt := 0; ; attempt++ {
		rec.Attempts = attempt + 1
		subj, err = g.cfg.Attributor.Attribute(ctx, q)
		if err == nil || !errors.Is(err, ErrNotFound) || attempt >= len(g.cfg.Retry) {
			break
		}
		select {
		case <-time.After(g.cfg.Retry[attempt]):
		case <-g.stop:
		}
	}
	cancel()
	rec.AttributeMicros = time.Since(start).Microseconds()
	if err != nil {
		g.unattributed.Add(1)
		rec.AttributeError = err.Error()
		subj = event.Subject{Labels: []string{LabelUnattributed}}
	}
	ev := event.Event{Class: event.ClassNet, Op: opOf(f.key.Proto, f.dir), Subject: subj, Dir: f.dir, Proto: proto,
		Addr: f.key.Remote.Addr(), Port: f.key.Remote.Port(), LocalPort: f.key.Local.Port(), Time: g.cfg.Now()}
	if f.key.Proto == ProtoICMP {
		ev.Port, ev.LocalPort = 0, 0
	}
	d := g.cfg.Decider.Decide(&ev)
	g.mu.Lock()
	f.ev = ev
	g.mu.Unlock()
	g.decided(f, d, rec)
}

// silent reports whether a deny asks for a silent drop: deny(ETIMEDOUT)
// makes the guest's connect time out instead of being refused.
func silent(d secserver.Decision) bool { return d.Errno == 110 }

// decided applies d to f and releases its held frames.
func (g *Gate) decided(f *flow, d secserver.Decision, rec Record) {
	var toNet, toGuest, rstNet, rstGuest [][]byte
	var p Packet
	g.mu.Lock()
	if d.Allows() {
		f.state = stateAllowed
		g.allowed.Add(1)
	} else {
		f.state = stateDenied
		f.drop = silent(d) || f.key.Proto != ProtoTCP
		g.denied.Add(1)
	}
	f.seq = d.Seq
	for i, fr := range f.held {
		from := f.heldFrom[i]
		switch {
		case f.state == stateAllowed:
			if Parse(fr, &p) == nil && p.Proto == ProtoTCP {
				g.track(f, &p, from)
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
		}
	}
	f.held, f.heldFrom = nil, nil
	g.mu.Unlock()
	g.forwarded.Add(uint64(len(toNet) + len(toGuest)))
	g.resets.Add(uint64(len(rstNet) + len(rstGuest)))
	g.emit(append(toNet, rstNet...), nil, true)
	g.emit(append(toGuest, rstGuest...), nil, false)
	action := "forward"
	switch {
	case !d.Allows() && f.drop:
		action = "drop"
	case !d.Allows():
		action = "reset"
	}
	rec.Time, rec.Verdict, rec.Action, rec.Rule, rec.Reason, rec.Seq, rec.Cached, rec.Permissive =
		g.cfg.Now(), d.Verdict.String(), action, d.Rule, d.Reason, d.Seq, d.Cached, d.Permissive
	g.mu.Lock()
	rec.Subject = f.ev.Subject
	g.mu.Unlock()
	if rec.Proto == "" {
		rec.Proto, rec.Dir, rec.Local, rec.Remote = protoNames[f.key.Proto], f.dir, f.key.Local.String(), f.key.Remote.String()
	}
	g.mu.Lock()
	f.rec = rec
	g.mu.Unlock()
	if g.cfg.OnDecision != nil {
		g.cfg.OnDecision(rec)
	}
}

// PolicyChanged forgets denied flows (so the new policy decides them
// afresh) and re-decides every allowed flow with its recorded subject;
// flows the new policy denies are reset both ways.
func (g *Gate) PolicyChanged() {
	type redo struct {
		f  *flow
		ev event.Event
	}
	var todo []redo
	g.mu.Lock()
	for k, f := range g.flows {
		switch f.state {
		case stateDenied:
			delete(g.flows, k)
		case stateAllowed:
			if !f.closed && f.ev.Class == event.ClassNet {
				todo = append(todo, redo{f, f.ev})
			}
		}
	}
	g.mu.Unlock()
	for _, r := range todo {
		d := g.cfg.Decider.Decide(&r.ev)
		if d.Allows() {
			continue
		}
		g.mu.Lock()
		r.f.state, r.f.drop = stateDenied, r.f.key.Proto != ProtoTCP || silent(d)
		rec := r.f.rec
		g.mu.Unlock()
		g.denied.Add(1)
		rec.Time, rec.Verdict, rec.Rule, rec.Reason, rec.Seq, rec.Revoked = g.cfg.Now(), d.Verdict.String(), d.Rule, d.Reason, d.Seq, true
		rec.Action = "drop"
		if !r.f.drop {
			rec.Action = "reset"
		}
		if g.cfg.OnDecision != nil {
			g.cfg.OnDecision(rec)
		}
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
		for k, f := range g.flows {
			if now.Sub(f.last) > f.timeout() {
				delete(g.flows, k)
			}
		}
		g.mu.Unlock()
	}
}

// Stats returns the counters.
func (g *Gate) Stats() Stats {
	g.mu.Lock()
	n := len(g.flows)
	reasons := make(map[string]uint64, len(g.reasons))
	for k, v := range g.reasons {
		reasons[k] = v
	}
	g.mu.Unlock()
	return Stats{Frames: g.frames.Load(), Forwarded: g.forwarded.Load(), Dropped: g.dropped.Load(), Refused: g.refused.Load(),
		Resets: g.resets.Load(), NewFlows: g.newFlows.Load(), Allowed: g.allowed.Load(), Denied: g.denied.Load(),
		Unattributed: g.unattributed.Load(), Flows: n, DropReasons: reasons}
}

// String renders a flow key for logs.
func (k FlowKey) String() string {
	return fmt.Sprintf("%s %s-%s", protoNames[k.Proto], k.Local, k.Remote)
}
