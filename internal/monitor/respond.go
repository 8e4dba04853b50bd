package monitor

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// The policy's responses (policy.Response) carried out: a finding of the
// continuous scan, or a gate's verdict, that a response answers queues a
// process action on the process it names. Triggers come from places that
// must not wait (a trap handler holds the VM stopped; a response needs it
// running), so a bounded queue and one worker carry them out; a full
// queue drops the job and counts it. Each response is limited to its
// policy's rate per minute; every action is audited before it is taken
// (procAction).

// respQueue bounds the responses waiting to be carried out.
const respQueue = 64

// respJob is one response to carry out.
type respJob struct {
	resp    policy.Response
	pid     int
	start   uint64 // 0 when the trigger did not say
	trigger string // what happened, in words
}

// responder carries out responses.
type responder struct {
	once    sync.Once
	queue   chan respJob
	dropped atomic.Uint64 // jobs a full queue refused

	mu      sync.Mutex
	taken   map[string][]time.Time // by response: when it acted in the last minute
	limited map[string]bool        // by response: a notice says it is over its rate
	counts  map[string]*respCounts // by response, since the VM started
}

// respCounts are one response's counts for status.
type respCounts struct{ taken, failed, limited uint64 }

// count adds to response name's counts.
func (r *responder) count(name string, f func(*respCounts)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.counts == nil {
		r.counts = map[string]*respCounts{}
	}
	c := r.counts[name]
	if c == nil {
		c = &respCounts{}
		r.counts[name] = c
	}
	f(c)
}

// responsesStatus is the responses part of Status (nil without any).
func (m *Monitor) responsesStatus() *api.ResponsesStatus {
	snap := m.pol.snap.Load()
	if snap == nil || len(snap.Policy.Responses()) == 0 {
		return nil
	}
	st := &api.ResponsesStatus{Dropped: m.resp.dropped.Load()}
	m.resp.mu.Lock()
	defer m.resp.mu.Unlock()
	for _, r := range snap.Policy.Responses() {
		rs := api.ResponseStatus{Name: r.Name, Action: r.Action}
		if c := m.resp.counts[r.Name]; c != nil {
			rs.Taken, rs.Failed, rs.Limited = c.taken, c.failed, c.limited
		}
		st.Responses = append(st.Responses, rs)
	}
	return st
}

// respond queues job, starting the worker on first use.
func (m *Monitor) respond(job respJob) {
	r := &m.resp
	r.once.Do(func() {
		r.queue = make(chan respJob, respQueue)
		r.taken, r.limited = map[string][]time.Time{}, map[string]bool{}
		go m.respondLoop()
	})
	select {
	case r.queue <- job:
	default:
		if r.dropped.Add(1) == 1 {
			m.logf("response %s: the response queue is full: responses are being dropped", job.resp.Name)
		}
	}
}

func (m *Monitor) respondLoop() {
	for {
		select {
		case <-m.done:
			return
		case <-m.stopping():
			return
		case job := <-m.resp.queue:
			m.carryOut(job)
		}
	}
}

// allow reports whether response name may act now under its limit a
// minute, and counts it.
func (r *responder) allow(name string, limit int, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	recent := r.taken[name][:0]
	for _, t := range r.taken[name] {
		if now.Sub(t) < time.Minute {
			recent = append(recent, t)
		}
	}
	r.taken[name] = recent
	if len(recent) >= limit {
		return false
	}
	r.taken[name] = append(recent, now)
	r.limited[name] = false
	return true
}

func (m *Monitor) carryOut(job respJob) {
	if !m.resp.allow(job.resp.Name, job.resp.Limit, time.Now()) {
		m.resp.count(job.resp.Name, func(c *respCounts) { c.limited++ })
		m.resp.mu.Lock()
		first := !m.resp.limited[job.resp.Name]
		m.resp.limited[job.resp.Name] = true
		m.resp.mu.Unlock()
		if first {
			m.publishNotice(monitoring.ProcNotice, fmt.Sprintf("response %s: over its limit of %d a minute: not acting on %s until the rate falls", job.resp.Name, job.resp.Limit, job.trigger))
		}
		return
	}
	if job.resp.Action == policy.RespRollback {
		ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), actorKey{}, actor{"response:" + job.resp.Name, "by response " + job.resp.Name}), 10*time.Minute)
		defer cancel()
		res, err := m.Rollback(ctx, ReadySnapshot)
		if err != nil {
			m.resp.count(job.resp.Name, func(c *respCounts) { c.failed++ })
			m.publishNotice(monitoring.LifecycleNotice, fmt.Sprintf("response %s on %s: rollback not done: %v", job.resp.Name, job.trigger, err))
			return
		}
		m.resp.count(job.resp.Name, func(c *respCounts) { c.taken++ })
		m.logf("response %s on %s: rolled back to snapshot %s (guest paused %.1f ms)", job.resp.Name, job.trigger, res.Tag, res.DowntimeSeconds*1000)
		return
	}
	if job.resp.Action == policy.RespIsolate {
		res, err := m.netIsolate(procRequester{rule: "response:" + job.resp.Name,
			why: fmt.Sprintf("by response %s (%s) on %s", job.resp.Name, job.resp.Pos, job.trigger)})
		if err != nil {
			m.resp.count(job.resp.Name, func(c *respCounts) { c.failed++ })
			m.publishNotice(monitoring.ProcNotice, fmt.Sprintf("response %s on %s: not done: %v", job.resp.Name, job.trigger, err))
		} else {
			m.resp.count(job.resp.Name, func(c *respCounts) { c.taken++ })
			m.logf("response %s: network isolated (%s)", job.resp.Name, res.Reason)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := m.procAction(ctx, job.resp.Action, api.ProcRequest{PID: job.pid, Start: job.start}, procRequester{
		rule: "response:" + job.resp.Name,
		why:  fmt.Sprintf("by response %s (%s) on %s", job.resp.Name, job.resp.Pos, job.trigger),
	})
	if err != nil {
		m.resp.count(job.resp.Name, func(c *respCounts) { c.failed++ })
		m.publishNotice(monitoring.ProcNotice, fmt.Sprintf("response %s on %s: not done: %v", job.resp.Name, job.trigger, err))
		return
	}
	m.resp.count(job.resp.Name, func(c *respCounts) { c.taken++ })
	m.logf("response %s: %s", job.resp.Name, res.Outcome)
}

// respondToFindings queues the responses that answer the new findings
// among evs (a scan's events), on the process each names.
func (m *Monitor) respondToFindings(evs []ids.Event, procs []linux.Task) {
	snap := m.pol.snap.Load()
	if snap == nil || len(snap.Policy.Responses()) == 0 {
		return
	}
	for _, ev := range evs {
		f := ev.Finding
		if ev.Type != ids.EventFinding || f == nil {
			continue
		}
		var start uint64
		for _, p := range procs {
			if p.PID == f.PID {
				start = p.StartTime
			}
		}
		for _, r := range snap.Policy.Responses() {
			if r.OnFinding(f.Check) && (f.PID > 0 || policy.VMWide(r.Action)) {
				m.respond(respJob{resp: r, pid: f.PID, start: start, trigger: fmt.Sprintf("finding %s: %s", f.Check, f.Summary)})
			}
		}
	}
}

// respondToVerdict queues the responses that answer verdict v on ev, on
// ev's subject.
func (m *Monitor) respondToVerdict(ev *event.Event, v policy.Verdict, rule string) {
	snap := m.pol.snap.Load()
	if snap == nil {
		return
	}
	for _, r := range snap.Policy.Responses() {
		if r.OnVerdict(v, ev.Class) && (ev.Subject.PID > 0 || policy.VMWide(r.Action)) {
			what := ev.Op
			if ev.Path != "" {
				what += " " + ev.Path
			}
			m.respond(respJob{resp: r, pid: int(ev.Subject.PID), start: ev.Subject.Start,
				trigger: fmt.Sprintf("verdict %s by rule %s on %s %s of pid %d (%s)", v, rule, ev.Class, what, ev.Subject.PID, ev.Subject.Comm)})
		}
	}
}
