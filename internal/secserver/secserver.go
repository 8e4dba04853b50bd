// Package secserver is gatevisor's security server: gates ask it for a
// verdict on every event and enforce what it says; it decides from one
// compiled policy (package policy), keeps a decision cache, reloads policies
// atomically, and records denies and alerts in the audit log before it
// answers.
//
//	gate ── Decide(event) ──► cache (keyed by event attributes, policy seq
//	                            │    and, for Flow, state)
//	gate ◄──── Decision ◄───────┤ hit on an allow that needs no audit record
//	                            │ anything else, under a recover guard:
//	                            ▼
//	              validate ─► hit, or policy.Evaluate ─► audit.Append (fsync)
//	gate ◄──────────── Decision ◄────────────────────────────┘
//
// Fail closed: an invalid event, no policy, a panic while deciding, or a
// failed audit write all produce a deny, also in permissive mode. The
// unguarded hit path runs no policy or sink code and cannot panic for a
// non-nil event; see Decide.
//
// Gates only call Decide and enforce the Decision; they never decide
// themselves.
package secserver

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
)

// Verdicts, re-exported so that gates need not import policy.
type Verdict = policy.Verdict

const (
	Allow = policy.VerdictAllow
	Alert = policy.VerdictAlert
	Deny  = policy.VerdictDeny
	Kill  = policy.VerdictKill
)

// ErrNoPolicy is the reason for denies before a policy is loaded.
var ErrNoPolicy = errors.New("secserver: no policy loaded")

// Rule names of fail-closed decisions.
const (
	RuleInvalidEvent = "invalid-event"
	RuleInternal     = "internal-error"
	RuleAuditFailure = "audit-failure"
	RuleNoPolicy     = "no-policy"
)

// Decision is the security server's answer to a gate.
type Decision struct {
	Verdict    Verdict
	Errno      int32 // for Deny and Kill: the errno the guest should see
	Rule       string
	Reason     string
	Seq        uint64 // sequence number of the policy that decided
	Cached     bool
	Permissive bool // the policy said deny or kill; permissive mode allowed it
	Audited    bool // an audit record of this decision was written
	// Pending, from DecideBatch only: the decision's record joined an
	// aggregated record not yet written; the decision must not take
	// effect before Pending.Wait returns (and is void if it fails).
	Pending *Pending
}

// Allows reports whether the gate should let the event proceed.
func (d Decision) Allows() bool { return d.Verdict.Allows() }

// Sink receives audit records; *audit.Log is one. Append must return only
// once the record is durable.
type Sink interface {
	Append(*audit.Record) error
}

// Config configures a Server.
type Config struct {
	Audit      Sink // nil: nothing is audited (tests only)
	CacheSize  int  // decision cache slots, rounded up to a power of two; 0 means 16384, <0 disables
	MaxProcs   int  // processes with Flow state; 0 means 65536
	Permissive bool
	AuditAllow bool // audit every allow too, not only those a rule marks `audit`
	// Aggregate, when set, lets DecideBatch aggregate the records of
	// floods (see Aggregation); nil writes every record. Close stops it.
	Aggregate *Aggregation
	Now       func() time.Time
}

type loaded struct {
	pol     *policy.Policy
	seq     uint64
	usesPID bool // pol.UsesPID()
	source  string
	at      time.Time
}

// Server decides events. It is safe for concurrent use.
type Server struct {
	cur        atomic.Pointer[loaded]
	permissive atomic.Bool
	cache      *cache
	flows      *flowTable
	sink       Sink
	agg        *aggregator // nil: DecideBatch writes every record
	auditAllow bool
	now        func() time.Time

	reloadMu sync.Mutex // serializes reloads
	seq      uint64     // guarded by reloadMu

	decisions, denies, auditErrors, internalErrors, reloads, failedReloads atomic.Uint64
}

// New returns a server enforcing pol (which may be nil: then everything is
// denied until Reload).
func New(pol *policy.Policy, cfg Config) *Server {
	s := &Server{
		cache:      newCache(cfg.CacheSize),
		flows:      newFlowTable(cfg.MaxProcs),
		sink:       cfg.Audit,
		auditAllow: cfg.AuditAllow,
		now:        cfg.Now,
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.permissive.Store(cfg.Permissive)
	if cfg.Aggregate != nil {
		s.agg = newAggregator(*cfg.Aggregate, cfg.Audit, s.now)
	}
	if pol != nil {
		s.Reload(pol, "initial")
	}
	return s
}

// Reload atomically replaces the policy and returns its sequence number.
// Decisions of earlier policies are never served from the cache afterwards,
// and Flow state starts over from each flow's initial state.
func (s *Server) Reload(pol *policy.Policy, source string) uint64 {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.seq++
	s.cur.Store(&loaded{pol: pol, seq: s.seq, usesPID: pol != nil && pol.UsesPID(), source: source, at: s.now()})
	s.reloads.Add(1)
	return s.seq
}

// ReloadSource parses, compiles and installs a policy. If any step fails,
// the policy in force stays in force; the error says why and which
// sequence number is still active.
func (s *Server) ReloadSource(name string, src []byte, resolve policy.Resolver) (uint64, error) {
	spec, err := policy.Load(name, src, resolve)
	if err == nil {
		var pol *policy.Policy
		if pol, err = policy.Compile(spec); err == nil {
			return s.Reload(pol, name), nil
		}
	}
	s.failedReloads.Add(1)
	return s.Seq(), fmt.Errorf("secserver: reload rejected, policy %d stays in force: %w", s.Seq(), err)
}

// Seq returns the sequence number of the policy in force (0: none).
func (s *Server) Seq() uint64 {
	if l := s.cur.Load(); l != nil {
		return l.seq
	}
	return 0
}

// Policy returns the policy in force and its sequence number.
func (s *Server) Policy() (*policy.Policy, uint64) {
	if l := s.cur.Load(); l != nil {
		return l.pol, l.seq
	}
	return nil, 0
}

// SetPermissive turns permissive mode on or off: the policy is evaluated
// and its denies audited, but the event is allowed.
func (s *Server) SetPermissive(on bool) { s.permissive.Store(on) }

// Permissive reports whether permissive mode is on.
func (s *Server) Permissive() bool { return s.permissive.Load() }

// ProcessExit forgets the Flow state of a process; gates call it when a
// guest process exits so that a reused PID starts from the initial state.
func (s *Server) ProcessExit(pid int32, start uint64) { s.flows.forget(procKey{pid, start}) }

// Stats are the server's counters.
type Stats struct {
	Seq            uint64 `json:"seq"`
	Decisions      uint64 `json:"decisions"`
	Denies         uint64 `json:"denies"`
	CacheHits      uint64 `json:"cache_hits"`
	CacheMisses    uint64 `json:"cache_misses"`
	CacheEvictions uint64 `json:"cache_evictions"`
	AuditErrors    uint64 `json:"audit_errors"`
	InternalErrors uint64 `json:"internal_errors"`
	Reloads        uint64 `json:"reloads"`
	FailedReloads  uint64 `json:"failed_reloads"`
	FlowProcs      int    `json:"flow_procs"`
	// Aggregated records written (DecideBatch under a flood) and the
	// decisions they stand for.
	AggregatedRecords   uint64 `json:"aggregated_records"`
	AggregatedDecisions uint64 `json:"aggregated_decisions"`
	Permissive          bool   `json:"permissive"`
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	var aggRecs, aggDecs uint64
	if s.agg != nil {
		s.agg.mu.Lock()
		aggRecs, aggDecs = s.agg.flushed, s.agg.covered
		s.agg.mu.Unlock()
	}
	return Stats{
		AggregatedRecords:   aggRecs,
		AggregatedDecisions: aggDecs,
		Seq:                 s.Seq(),
		Decisions:           s.decisions.Load() + s.cache.fastHits.load(),
		Denies:              s.denies.Load(),
		CacheHits:           s.cache.hits.Load() + s.cache.fastHits.load(),
		CacheMisses:         s.cache.misses.Load(),
		CacheEvictions:      s.cache.evictions.Load(),
		AuditErrors:         s.auditErrors.Load(),
		InternalErrors:      s.internalErrors.Load(),
		Reloads:             s.reloads.Load(),
		FailedReloads:       s.failedReloads.Load(),
		FlowProcs:           s.flows.len(),
		Permissive:          s.permissive.Load(),
	}
}

// Decide returns the verdict on ev. It never panics: any internal failure is
// a Deny. Decide does not keep ev.
//
// A cache hit on an allow that needs no audit record is answered here,
// outside the recover guard of decide: nothing on this path can panic for
// a non-nil event (no policy code, no sink; the hash and the key
// comparison only read ev), so keep it that way. Such a hit needs no
// Validate either: the key holds every field that Validate checks, so an
// event equal to a cached one is as valid as it was (TestCacheKey checks
// this). Everything else goes to reject or decide.
func (s *Server) Decide(ev *event.Event) Decision {
	l := s.cur.Load()
	if l == nil || ev == nil {
		return s.reject(l, ev, nil)
	}
	h := s.cache.hash(ev, l.usesPID, "")
	e := s.cache.lookup(h, ev, l.seq, l.usesPID, "")
	if e != nil && e.quiet {
		s.cache.fastHits.add(h)
		return e.dec
	}
	if err := ev.Validate(); err != nil {
		return s.reject(l, ev, err)
	}
	return s.decide(l, ev, h, e)
}

// recoverDeny, deferred, turns a panic into a fail-closed deny in *d.
func (s *Server) recoverDeny(ev *event.Event, d *Decision) {
	if r := recover(); r != nil {
		s.internalErrors.Add(1)
		*d = s.failClosed(ev, RuleInternal, fmt.Sprintf("internal error while deciding: %v", r))
	}
}

// reject denies an event Decide cannot look up: before a policy is
// loaded, a nil event, or one that failed validation with err.
func (s *Server) reject(l *loaded, ev *event.Event, err error) (d Decision) {
	s.decisions.Add(1)
	defer s.recoverDeny(ev, &d)
	switch {
	case l == nil:
		return s.failClosed(ev, RuleNoPolicy, ErrNoPolicy.Error())
	case ev == nil:
		s.internalErrors.Add(1)
		return s.failClosed(nil, RuleInternal, "internal error while deciding: nil event")
	}
	return s.failClosed(ev, RuleInvalidEvent, err.Error())
}

// decide decides a valid event that is not a quiet cache hit. h is its
// hash without flow states and e its cache entry under l, nil if none.
func (s *Server) decide(l *loaded, ev *event.Event, h uint64, e *entry) (d Decision) {
	s.decisions.Add(1)
	defer s.recoverDeny(ev, &d)
	// An entry decided without Flow state under l means that ev's class and
	// op are not Flow-relevant under l: they are part of the key.
	if e != nil && !e.flow {
		s.cache.hits.Add(1)
		return s.finish(ev, e.dec, e.audit)
	}
	if l.pol.FlowRelevant(ev.Class, ev.Op) {
		return s.decideFlow(l, ev)
	}
	s.cache.misses.Add(1)
	res := l.pol.Evaluate(ev, nil)
	d = decision(&res, l.seq)
	s.remember(l, ev, h, "", false, d, &res)
	return s.finish(ev, d, res.Audit)
}

// decideFlow decides an event that Flow state can change or constrain.
// The subject's state is part of the cache key, and the state transition is
// applied only if the event is allowed, under the process's lock so that
// concurrent events of one process are serialized.
func (s *Server) decideFlow(l *loaded, ev *event.Event) Decision {
	k := procKey{ev.Subject.PID, ev.Subject.Start}
	sh := s.flows.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	states := sh.get(k, l.seq)
	skey := string(states)
	h := s.cache.hash(ev, l.usesPID, skey)
	var (
		d     Decision
		audit bool
		next  []uint8
	)
	if e := s.cache.lookup(h, ev, l.seq, l.usesPID, skey); e != nil && e.flow {
		s.cache.hits.Add(1)
		d, audit, next = e.dec, e.audit, e.next
	} else {
		s.cache.misses.Add(1)
		res := l.pol.Evaluate(ev, states)
		d, audit, next = decision(&res, l.seq), res.Audit, res.Next
		s.remember(l, ev, h, skey, true, d, &res)
	}
	d = s.finish(ev, d, audit)
	if d.Allows() && next != nil {
		s.flows.set(sh, k, l.seq, next)
	}
	return d
}

// decision is the undecorated decision of policy seq's result res.
func decision(res *policy.Result, seq uint64) Decision {
	return Decision{Verdict: res.Verdict, Errno: res.Errno, Rule: res.Rule, Reason: res.Reason, Seq: seq}
}

// remember caches decision d of res for ev under policy l, hashed h; flow
// says that it was decided with the subject's Flow states.
func (s *Server) remember(l *loaded, ev *event.Event, h uint64, states string, flow bool, d Decision, res *policy.Result) {
	if !s.cache.enabled() {
		return
	}
	e := &entry{hash: h, seq: l.seq, flow: flow, audit: res.Audit, states: states, dec: d}
	e.dec.Cached = true
	e.quiet = !flow && d.Verdict == Allow && !res.Audit && !s.auditAllow
	if res.Next != nil {
		e.next = slices.Clone(res.Next)
	}
	s.cache.put(e, ev, l.usesPID)
}

// finish audits d if the verdict or the rule (audit) asks for it and
// applies permissive mode.
func (s *Server) finish(ev *event.Event, d Decision, audit bool) Decision {
	denied := !d.Verdict.Allows()
	if denied {
		s.denies.Add(1)
	}
	if denied || d.Verdict == Alert || audit || s.auditAllow {
		if err := s.record(ev, &d); err != nil {
			return s.auditFailed(ev, d, err)
		}
		d.Audited = s.sink != nil
	}
	if denied && s.permissive.Load() {
		d.Permissive = true
		d.Verdict, d.Errno = Allow, 0
	}
	return d
}

// record writes the audit record for d. In permissive mode the record
// carries the policy's verdict and says that it was not enforced.
func (s *Server) record(ev *event.Event, d *Decision) error {
	if s.sink == nil {
		return nil
	}
	r := s.newRecord(ev, d, !d.Verdict.Allows() && s.permissive.Load())
	return s.sink.Append(&r)
}

// newRecord is the audit record of decision d on ev; permissive says that
// permissive mode lifts it.
func (s *Server) newRecord(ev *event.Event, d *Decision, permissive bool) audit.Record {
	r := audit.Record{
		Time:       s.now(),
		Verdict:    d.Verdict.String(),
		Permissive: permissive,
		Errno:      d.Errno,
		Rule:       d.Rule,
		Reason:     d.Reason,
		PolicySeq:  d.Seq,
		Cached:     d.Cached,
		Event:      *ev,
	}
	if !ev.Time.IsZero() {
		r.Time = ev.Time
	}
	return r
}

func (s *Server) auditFailed(ev *event.Event, d Decision, err error) Decision {
	s.auditErrors.Add(1)
	if d.Allows() {
		s.denies.Add(1)
	}
	return Decision{Verdict: Deny, Errno: 13, Rule: RuleAuditFailure, Seq: d.Seq,
		Reason: fmt.Sprintf("audit write failed, denying (policy said %s by %s): %v", d.Verdict, d.Rule, err)}
}

// failClosed denies, and tries to audit the deny. Permissive mode does not
// apply: these are failures of the security server, not policy denies.
func (s *Server) failClosed(ev *event.Event, rule, reason string) Decision {
	return s.failClosedErrno(ev, rule, reason, 13)
}

// GateFailure is how a gate that could not build an event completely
// denies it: a deny with errno, audited like the server's own fail-closed
// denies. The gate still never decides an allow.
func (s *Server) GateFailure(ev *event.Event, rule, reason string, errno int32) Decision {
	return s.failClosedErrno(ev, rule, reason, errno)
}

// Record writes an audit record of an action the monitor takes (a
// response, an operator's command on a guest process) with d's verdict,
// rule and reason, durably, before the action takes effect: an error means
// the action must not be taken.
func (s *Server) Record(ev *event.Event, d Decision) error {
	if ev == nil {
		return errors.New("secserver: record: no event")
	}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("secserver: record: %w", err)
	}
	if d.Seq == 0 {
		d.Seq = s.Seq()
	}
	if err := s.recordNoPanic(ev, &d); err != nil {
		s.auditErrors.Add(1)
		return fmt.Errorf("secserver: record: %w", err)
	}
	return nil
}

func (s *Server) failClosedErrno(ev *event.Event, rule, reason string, errno int32) Decision {
	s.denies.Add(1)
	d := Decision{Verdict: Deny, Errno: errno, Rule: rule, Reason: reason, Seq: s.Seq()}
	if ev != nil && s.sink != nil {
		// An invalid event may be too large to log whole; keep what identifies it.
		e := event.Event{Class: ev.Class, Subject: event.Subject{PID: ev.Subject.PID, PPID: ev.Subject.PPID, UID: ev.Subject.UID, GID: ev.Subject.GID}}
		if ev.Validate() == nil {
			e = *ev
		}
		if err := s.recordNoPanic(&e, &d); err != nil {
			s.auditErrors.Add(1)
		} else {
			d.Audited = true
		}
	}
	return d
}

// recordNoPanic is record for the fail-closed path, which runs inside
// recoverDeny: a sink that panics there (the panic may have been the
// sink's to begin with) is an audit failure, and the deny stands.
func (s *Server) recordNoPanic(ev *event.Event, d *Decision) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("audit sink panicked: %v", r)
		}
	}()
	return s.record(ev, d)
}
