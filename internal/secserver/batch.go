package secserver

import (
	"fmt"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
)

// Request is one decision a gate asks for in DecideBatch: an event for
// the policy to decide, or, with Refuse set, a refusal the gate makes for
// want of resources (a subject over its rate or its share of a table),
// which the server records like a deny of its own.
type Request struct {
	Event  *event.Event
	Refuse *Refusal
}

// Refusal is a gate's refusal of an event for want of resources. It is not
// a policy decision: permissive mode does not lift it.
type Refusal struct {
	Rule   string
	Reason string
	Errno  int32
}

// BatchSink is a Sink that can make several records durable at once
// (*audit.Log is one); DecideBatch uses it when the sink has it.
type BatchSink interface {
	AppendBatch([]*audit.Record) error
}

// Aggregation bounds what floods cost the audit log. Within each Window,
// the first PerKey records of one key (subject, class, op, verdict, rule)
// and the first Total records over all keys are written one by one; the
// rest of the window's decisions of a key become one aggregated record
// (audit.Repeat: a count, the first and last event), written when the
// window ends. Only DecideBatch aggregates; Decide writes every record.
type Aggregation struct {
	Window time.Duration // 0 means 1 s
	PerKey int           // 0 means 20
	Total  int           // 0 means 500
}

// Pending is the audit record, not yet durable, of a decision that
// DecideBatch aggregated. The decision must not take effect before Wait
// returns; if Wait returns an error, the record was lost and the decision
// is void: the gate denies (DecideBatch's caller applies Failed).
type Pending struct {
	done chan struct{}
	err  error
}

// Done is closed once the aggregated record is written or has failed.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait waits for the aggregated record and returns why it failed, if it did.
func (p *Pending) Wait() error {
	<-p.done
	return p.err
}

// Failed is the decision to enforce instead of d when d's record could not
// be written: a deny stays (with its errno), anything else becomes an
// audit-failure deny.
func Failed(d Decision, err error) Decision {
	if !d.Verdict.Allows() && !d.Permissive {
		d.Pending, d.Audited = nil, false
		return d
	}
	return Decision{Verdict: Deny, Errno: 13, Rule: RuleAuditFailure, Seq: d.Seq,
		Reason: fmt.Sprintf("audit write failed, denying (policy said %s by %s): %v", d.Verdict, d.Rule, err)}
}

// aggKey is what makes decisions alike for aggregation.
type aggKey struct {
	pid        int32
	start      uint64
	labels     string // an unattributed subject has no pid: its labels
	class      event.Class
	op         string
	verdict    string
	rule       string
	permissive bool
}

func keyOf(r *audit.Record) aggKey {
	ev := &r.Event
	k := aggKey{pid: ev.Subject.PID, start: ev.Subject.Start, class: ev.Class, op: ev.Op, verdict: r.Verdict, rule: r.Rule, permissive: r.Permissive}
	if k.pid == 0 {
		k.labels = fmt.Sprint(ev.Subject.Labels)
	}
	return k
}

// aggregate is one key's aggregated record in the current window.
type aggregate struct {
	rec audit.Record // the first decision; Repeat counts the rest
	p   *Pending
}

// aggregator counts records per window and holds the aggregated ones.
type aggregator struct {
	cfg  Aggregation
	sink Sink
	now  func() time.Time

	mu      sync.Mutex // guards the fields below
	counts  map[aggKey]int
	total   int
	pending map[aggKey]*aggregate
	order   []aggKey // pending keys in the order they started
	closed  bool

	stop, done chan struct{}
	flushed    uint64 // aggregated records written
	covered    uint64 // decisions they stand for
}

func newAggregator(cfg Aggregation, sink Sink, now func() time.Time) *aggregator {
	if cfg.Window <= 0 {
		cfg.Window = time.Second
	}
	if cfg.PerKey <= 0 {
		cfg.PerKey = 20
	}
	if cfg.Total <= 0 {
		cfg.Total = 500
	}
	a := &aggregator{cfg: cfg, sink: sink, now: now, counts: map[aggKey]int{}, pending: map[aggKey]*aggregate{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go a.run()
	return a
}

// admit says whether r may be written on its own now; if not, it joins its
// key's aggregate and admit returns the aggregate's Pending.
func (a *aggregator) admit(r *audit.Record) *Pending {
	k := keyOf(r)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	if ag := a.pending[k]; ag != nil {
		ag.rec.Repeat.Count++
		ag.rec.Repeat.Until, ag.rec.Repeat.Last = r.Time, r.Event
		return ag.p
	}
	if a.counts[k] < a.cfg.PerKey && a.total < a.cfg.Total {
		a.counts[k]++
		a.total++
		return nil
	}
	ag := &aggregate{rec: *r, p: &Pending{done: make(chan struct{})}}
	ag.rec.Repeat = &audit.Repeat{Count: 1, Until: r.Time, Last: r.Event}
	a.pending[k] = ag
	a.order = append(a.order, k)
	return ag.p
}

func (a *aggregator) run() {
	defer close(a.done)
	t := time.NewTicker(a.cfg.Window)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			a.flush(true)
			return
		case <-t.C:
			a.flush(false)
		}
	}
}

// flush ends the window: it writes the aggregated records, completes their
// Pendings and starts counting afresh. last closes the aggregator.
func (a *aggregator) flush(last bool) {
	a.mu.Lock()
	pending, order := a.pending, a.order
	a.pending, a.order, a.counts, a.total = map[aggKey]*aggregate{}, nil, map[aggKey]int{}, 0
	a.closed = a.closed || last
	a.mu.Unlock()
	if len(order) == 0 {
		return
	}
	recs := make([]*audit.Record, len(order))
	var covered uint64
	for i, k := range order {
		recs[i] = &pending[k].rec
		covered += recs[i].Repeat.Count
	}
	err := appendAll(a.sink, recs)
	a.mu.Lock()
	if err == nil {
		a.flushed += uint64(len(recs))
		a.covered += covered
	}
	a.mu.Unlock()
	for _, k := range order {
		p := pending[k].p
		p.err = err
		close(p.done)
	}
}

// close flushes what is pending and stops the window timer.
func (a *aggregator) close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	close(a.stop)
	<-a.done
}

// appendAll makes recs durable, in one write if the sink can.
func appendAll(sink Sink, recs []*audit.Record) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("audit sink panicked: %v", r)
		}
	}()
	if sink == nil || len(recs) == 0 {
		return nil
	}
	if b, ok := sink.(BatchSink); ok {
		return b.AppendBatch(recs)
	}
	for _, r := range recs {
		if err := sink.Append(r); err != nil {
			return err
		}
	}
	return nil
}

// DecideBatch decides several events, as Decide does each, and writes
// their audit records with one durable write. Under a flood it aggregates
// records (Config.Aggregate): a decision whose record joined an aggregate
// comes back with Pending set, and must not take effect before the
// aggregate is written. Events that Flow state can change are decided one
// by one through Decide.
func (s *Server) DecideBatch(reqs []Request) []Decision {
	out := make([]Decision, len(reqs))
	var recs []*audit.Record
	var at []int // out index of each record in recs
	l := s.cur.Load()
	for i, rq := range reqs {
		d, rec := s.prepare(l, rq)
		out[i] = d
		if rec == nil {
			continue
		}
		if s.agg != nil {
			if p := s.agg.admit(rec); p != nil {
				out[i].Pending, out[i].Audited = p, s.sink != nil
				continue
			}
		}
		recs = append(recs, rec)
		at = append(at, i)
	}
	if err := appendAll(s.sink, recs); err != nil {
		for _, i := range at {
			out[i] = s.auditFailed(reqs[i].Event, out[i], err)
		}
	} else {
		for _, i := range at {
			out[i].Audited = s.sink != nil
		}
	}
	for i := range out {
		if out[i].Permissive {
			out[i].Verdict, out[i].Errno = Allow, 0
		}
	}
	return out
}

// prepare decides one request of a batch: the decision and, if it needs
// one, its audit record (not yet written). A decision that permissive mode
// lifts comes back with its policy verdict and Permissive set; the caller
// lifts it once the record is written.
func (s *Server) prepare(l *loaded, rq Request) (d Decision, rec *audit.Record) {
	ev := rq.Event
	if rq.Refuse != nil {
		s.decisions.Add(1)
		s.denies.Add(1)
		d = Decision{Verdict: Deny, Errno: rq.Refuse.Errno, Rule: rq.Refuse.Rule, Reason: rq.Refuse.Reason, Seq: s.Seq()}
		if ev == nil || ev.Validate() != nil {
			return s.failClosed(ev, rq.Refuse.Rule, rq.Refuse.Reason), nil
		}
		r := s.newRecord(ev, &d, false)
		return d, &r
	}
	if l == nil || ev == nil {
		return s.reject(l, ev, nil), nil
	}
	h := s.cache.hash(ev, l.usesPID, "")
	e := s.cache.lookup(h, ev, l.seq, l.usesPID, "")
	if e != nil && e.quiet {
		s.cache.fastHits.add(h)
		return e.dec, nil
	}
	if err := ev.Validate(); err != nil {
		return s.reject(l, ev, err), nil
	}
	if (e == nil || e.flow) && l.pol.FlowRelevant(ev.Class, ev.Op) {
		return s.decide(l, ev, h, e), nil
	}
	d, audit, ok := s.evaluate(l, ev, h, e)
	if !ok {
		return d, nil // a fail-closed deny, audited already
	}
	denied := !d.Verdict.Allows()
	if denied {
		s.denies.Add(1)
	}
	if !(denied || d.Verdict == Alert || audit || s.auditAllow) {
		return d, nil
	}
	permissive := denied && s.permissive.Load()
	r := s.newRecord(ev, &d, permissive)
	d.Permissive = permissive
	return d, &r
}

// evaluate decides ev, not Flow-relevant under l, from the cache entry e
// or the policy, without auditing it. ok is false when deciding failed:
// d is then the fail-closed deny, audited.
func (s *Server) evaluate(l *loaded, ev *event.Event, h uint64, e *entry) (d Decision, audit, ok bool) {
	s.decisions.Add(1)
	ok = true
	defer func() {
		if r := recover(); r != nil {
			s.internalErrors.Add(1)
			d, audit, ok = s.failClosed(ev, RuleInternal, fmt.Sprintf("internal error while deciding: %v", r)), false, false
		}
	}()
	if e != nil && !e.flow {
		s.cache.hits.Add(1)
		return e.dec, e.audit, true
	}
	s.cache.misses.Add(1)
	res := l.pol.Evaluate(ev, nil)
	d = decision(&res, l.seq)
	s.remember(l, ev, h, "", false, d, &res)
	return d, res.Audit, true
}

// Close writes the aggregated records still pending. Decisions after it
// are audited one by one.
func (s *Server) Close() {
	if s.agg != nil {
		s.agg.close()
	}
}
