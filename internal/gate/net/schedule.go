package net

import (
	"errors"
	"fmt"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// The decision loop. One goroutine takes every flow that waits for a
// decision, attributes the whole batch with one look at the guest
// (Attributor.AttributeBatch), checks each subject's budget and share of
// the table, and has the security server decide the batch with one
// durable audit write. A pass costs one walk of the guest's sockets
// however many flows it carries, so a flood makes passes bigger, not more
// numerous, and a bystander's flow waits at most for the pass in progress
// and its own.
//
// Frames the gate drops undecided (no room in the decision queue or the
// table) are sampled (maxShedSample per pass), attributed in the next pass
// with the same look, and recorded as refusals of the gate's own, so the
// audit log names who flooded.

// maxShedSample bounds the undecided drops one pass attributes and records;
// the rest are counted (Stats, and the last record's reason).
const maxShedSample = 1024

// shedFrame is a flow start dropped undecided.
type shedFrame struct {
	key  FlowKey
	dir  event.Dir
	rule string // RuleOverload, RuleTableFull
	at   time.Time
}

// shedFrame notes a flow start dropped undecided for the next pass.
// Preconditions: g.mu held.
func (g *Gate) shedFrame(k FlowKey, dir event.Dir, rule string, now time.Time) {
	if len(g.shed) < maxShedSample {
		g.shed = append(g.shed, shedFrame{key: k, dir: dir, rule: rule, at: now})
		return
	}
	g.shedMore++
}

// run is the decision loop.
func (g *Gate) run() {
	defer g.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batch, shed, more, wait := g.take()
		if len(batch) > 0 || len(shed) > 0 {
			g.pass(batch, shed, more)
			continue
		}
		if wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-g.stop:
			return
		case <-g.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// take returns the flows due for an attribution attempt, the undecided
// drops to record, and how long until the next retry is due (0: none).
func (g *Gate) take() (batch []*flow, shed []shedFrame, more int, wait time.Duration) {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	keep := g.queue[:0]
	for _, f := range g.queue {
		switch {
		case f.gone:
			g.done(f)
		case !f.nextTry.After(now):
			batch = append(batch, f)
		default:
			keep = append(keep, f)
			if d := f.nextTry.Sub(now); wait == 0 || d < wait {
				wait = d
			}
		}
	}
	clear(g.queue[len(keep):])
	g.queue = keep
	shed, more = g.shed, g.shedMore
	g.shed, g.shedMore = nil, 0
	return batch, shed, more, wait
}

// done takes f out of the count of flows waiting for a decision.
// Preconditions: g.mu held.
func (g *Gate) done(f *flow) {
	if f.waiting {
		f.waiting = false
		g.waiting--
	}
}

func queryOf(k FlowKey, dir event.Dir) Query {
	return Query{Proto: protoNames[k.Proto], Dir: dir, Local: k.Local, Remote: k.Remote}
}

// pass attributes and decides one batch.
func (g *Gate) pass(batch []*flow, shed []shedFrame, more int) {
	g.passes.Add(1)
	qs := make([]Query, 0, len(batch)+len(shed))
	for _, f := range batch {
		qs = append(qs, queryOf(f.key, f.dir))
	}
	for _, s := range shed {
		qs = append(qs, queryOf(s.key, s.dir))
	}
	res := make([]Attribution, len(qs))
	ctx, cancel := attributionContext()
	start := time.Now()
	g.cfg.Attributor.AttributeBatch(ctx, qs, res)
	cancel()
	took := time.Since(start).Microseconds()
	now := g.cfg.Now()

	var reqs []secserver.Request
	var who []*flow // nil for an undecided drop
	var recs []Record
	g.mu.Lock()
	for i, f := range batch {
		f.attempts++
		r := res[i]
		if f.gone {
			g.done(f)
			continue
		}
		if errors.Is(r.Err, ErrNotFound) && f.attempts <= len(g.cfg.Retry) {
			f.nextTry = now.Add(g.cfg.Retry[f.attempts-1])
			g.queue = append(g.queue, f)
			continue
		}
		g.done(f)
		if r.Err != nil {
			g.unattributed.Add(1)
		}
		ev, rec := eventOf(f.key, f.dir, r, now)
		rec.AttributeMicros, rec.Attempts = took, f.attempts
		f.ev, f.rec = ev, rec // the record until decided overwrites it (Flows)
		reqs = append(reqs, secserver.Request{Event: &ev, Refuse: g.admit(f, now)})
		who, recs = append(who, f), append(recs, rec)
	}
	for i, s := range shed {
		ev, rec := eventOf(s.key, s.dir, res[len(batch)+i], s.at)
		rec.AttributeMicros, rec.Attempts, rec.Undecided = took, 1, true
		reason := "no room in the decision queue: the flow's first frame was dropped before any decision (TCP retransmits it)"
		if s.rule == RuleTableFull {
			reason = "no room in the flow table (nothing evictable): the flow's first frame was dropped before any decision (TCP retransmits it)"
		}
		if i == len(shed)-1 && more > 0 {
			reason += fmt.Sprintf("; %d more such frames in this pass were not attributed", more)
		}
		reqs = append(reqs, secserver.Request{Event: &ev, Refuse: &secserver.Refusal{Rule: s.rule, Reason: reason}})
		who, recs = append(who, nil), append(recs, rec)
	}
	g.mu.Unlock()
	if len(reqs) == 0 {
		return
	}
	g.apply(g.cfg.Decider.DecideBatch(reqs), who, recs)
}

// apply enforces a pass's decisions; those whose aggregated audit record
// is not written yet wait for it, grouped by record.
func (g *Gate) apply(ds []secserver.Decision, who []*flow, recs []Record) {
	groups := map[*secserver.Pending][]int{}
	for i, d := range ds {
		switch {
		case who[i] == nil:
			g.undecided(recs[i], d)
		case d.Pending != nil:
			groups[d.Pending] = append(groups[d.Pending], i)
		default:
			g.decided(who[i], d, recs[i])
		}
	}
	for p, idx := range groups {
		g.wg.Add(1)
		go g.await(p, idx, ds, who, recs)
	}
}

// await applies decisions once their aggregated record is durable (or
// applies Failed if it could not be written).
func (g *Gate) await(p *secserver.Pending, idx []int, ds []secserver.Decision, who []*flow, recs []Record) {
	defer g.wg.Done()
	select {
	case <-p.Done():
	case <-g.stop:
		return
	}
	err := p.Wait()
	for _, i := range idx {
		d := ds[i]
		if err != nil {
			d = secserver.Failed(d, err)
		}
		d.Pending = nil
		g.decided(who[i], d, recs[i])
	}
}

// undecided reports an undecided drop's record.
func (g *Gate) undecided(rec Record, d secserver.Decision) {
	if g.cfg.OnDecision == nil {
		return
	}
	rec.Time, rec.Verdict, rec.Action, rec.Rule, rec.Reason, rec.Seq = g.cfg.Now(), d.Verdict.String(), "drop", d.Rule, d.Reason, d.Seq
	g.cfg.OnDecision(rec)
}

// eventOf is the event and the record of a flow attributed as r.
func eventOf(k FlowKey, dir event.Dir, r Attribution, now time.Time) (event.Event, Record) {
	proto := protoNames[k.Proto]
	rec := Record{Dir: dir, Proto: proto, Local: k.Local.String(), Remote: k.Remote.String()}
	subj := r.Subject
	if r.Err != nil {
		rec.AttributeError = r.Err.Error()
		subj = event.Subject{Labels: []string{LabelUnattributed}}
	}
	rec.Subject = subj
	ev := event.Event{Class: event.ClassNet, Op: opOf(k.Proto, dir), Subject: subj, Dir: dir, Proto: proto,
		Addr: k.Remote.Addr(), Port: k.Remote.Port(), LocalPort: k.Local.Port(), Time: now}
	if k.Proto == ProtoICMP {
		ev.Port, ev.LocalPort = 0, 0
	}
	return ev, rec
}

// admit counts a newly attributed flow against its subject and returns
// the gate's refusal if the subject is over its share of the table or
// its rate (nil: the policy decides).
// Preconditions: g.mu held.
func (g *Gate) admit(f *flow, now time.Time) *secserver.Refusal {
	k := subjectOf(f.ev.Subject, f)
	st := g.subjects[k]
	if st == nil {
		st = &subjectState{tokens: float64(g.lim.SubjectBurst), at: now}
		g.subjects[k] = st
	}
	var ref *secserver.Refusal
	switch {
	case st.flows >= g.lim.SubjectFlows:
		g.flowLimited.Add(1)
		ref = &secserver.Refusal{Rule: RuleFlowLimit, Errno: 111,
			Reason: fmt.Sprintf("the process holds %d flows, its share of the network gate's table", st.flows)}
	case !st.take(now, &g.lim):
		g.rateLimited.Add(1)
		ref = &secserver.Refusal{Rule: RuleFlowRate, Errno: 111,
			Reason: fmt.Sprintf("the process opens new flows faster than its budget of %g/s (burst %d)", g.lim.SubjectRate, g.lim.SubjectBurst)}
	}
	st.flows++
	f.subj, f.counted = k, true
	return ref
}
