package monitor

import (
	"context"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/eventbus"
	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/metrics"
	"github.com/gatevisor/gatevisor/internal/monitoring"
)

// eventBus is the VM's event stream (package eventbus: sequence numbers,
// flood aggregation, per-category history, the rotating events.jsonl and
// paging back through it).
type eventBus struct{ *eventbus.Bus }

// openEvents opens the VM's event stream; its notices (a file that fails)
// also go to the monitor's log.
func (m *Monitor) openEvents() (*eventBus, error) {
	b, err := eventbus.Open(eventbus.Options{VM: m.cfg.Name, Path: m.cfg.EventsLog, MaxSize: m.cfg.EventsMaxSize,
		Keep: m.cfg.EventsKeep, Logf: m.logf})
	if err != nil {
		return nil, err
	}
	return &eventBus{b}, nil
}

func (b *eventBus) publish(p monitoring.Point) { b.Publish(p) }

func (b *eventBus) close() { b.Close() }

// status is the stream's part of the VM's status.
func (b *eventBus) status() *api.EventsStatus {
	st := b.Stats()
	return &api.EventsStatus{Log: st.Log, MaxSize: st.MaxSize, Keep: st.Keep, Seq: st.Seq, Aggregated: st.Aggregated,
		Aggregates: st.Aggregates, Rotations: st.Rotations, WriteErrors: st.WriteErrors, LastError: st.LastError,
		Oversized: st.Oversized, DroppedFollowers: st.DroppedFollowers}
}

// watch scans the guest every interval once it is ready, and publishes
// what changed, until the VM ends.
func (m *Monitor) watch(interval time.Duration) {
	if err := m.WaitReady(context.Background()); err != nil {
		return
	}
	var prev *ids.Snapshot
	hog := &ids.HogDetector{Threshold: m.cfg.CPUHog.Threshold, Window: m.cfg.CPUHog.Window}
	for {
		began := time.Now()
		cur, err := m.snapshot()
		now := time.Now().UTC()
		if err == nil && cur.Report != nil && !cur.Failed["processes"] {
			found, st := hog.Observe(now, cur.Processes)
			cur.Report.Findings = append(cur.Report.Findings, found...)
			cur.Report.Checks = append(cur.Report.Checks, st)
		}
		m.scans.record(cur, err, now, now.Sub(began))
		if err == nil {
			metrics.Observe(m.metrics.ScanSeconds, now.Sub(began))
		}
		if err != nil {
			m.events.publish(monitoring.Point{Time: now, VM: m.cfg.Name, Kind: monitoring.ScanError, Error: err.Error()})
		} else {
			evs := ids.Diff(m.cfg.Name, prev, cur, now)
			for _, ev := range evs {
				m.events.publish(monitoring.FromIDS(ev))
			}
			m.respondToFindings(evs, cur.Processes)
			prev = cur
		}
		// The interval runs from the end of a scan, so a slow scan (the
		// first one profiles the kernel) is not followed by a burst.
		if !waitFor(m, time.After(interval)) {
			return
		}
	}
}

func (m *Monitor) snapshot() (*ids.Snapshot, error) {
	m.intro.mu.Lock()
	defer m.intro.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	insp, err := m.inspector(ctx)
	if err != nil {
		return nil, err
	}
	insp.K.AS.Cache.Invalidate()
	return insp.Snapshot()
}

// Events implements api.VM.
func (m *Monitor) Events(ctx context.Context, w io.Writer, q api.EventsQuery, flush func()) error {
	return m.events.Stream(ctx, w, eventbus.Query{Follow: q.Follow, Before: q.Before, After: q.After, HasAfter: q.HasAfter,
		Limit: q.Limit}, flush)
}

// publishNotice records a monitor notice of kind k.
func (m *Monitor) publishNotice(k monitoring.Kind, detail string) {
	if m.events != nil {
		m.events.publish(monitoring.Notice(m.cfg.Name, k, detail))
	}
}

// publishDecision records a kernel-gate decision on the event stream.
func (m *Monitor) publishDecision(d gate.Decided) {
	m.events.publish(monitoring.FromDecision(m.cfg.Name, &d.Event, d.Decision.Verdict.String(), d.Decision.Errno, d.Decision.Rule, d.Decision.Reason, d.ReadErr))
}

// scanState is what status shows of the periodic IDS scan.
type scanState struct {
	mu       sync.Mutex
	interval time.Duration
	st       api.IDSStatus // without IntervalSeconds
}

// record notes a scan that ended at end after took, with its snapshot or
// why it could not run.
func (s *scanState) record(cur *ids.Snapshot, err error, end time.Time, took time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := end
	s.st.LastScanAt, s.st.LastScanMillis = &at, float64(took.Microseconds())/1000
	s.st.Findings, s.st.NotChecked, s.st.Unread = nil, nil, nil
	if err != nil {
		s.st.ScanErrors++
		s.st.LastError = err.Error()
		return
	}
	s.st.Scans++
	s.st.LastError = ""
	if r := cur.Report; r != nil {
		for _, f := range r.Findings {
			if s.st.Findings == nil {
				s.st.Findings = map[string]int{}
			}
			s.st.Findings[f.Severity]++
		}
		for _, c := range r.Checks {
			if !c.Ran && c.NotApplicable == "" {
				why := c.Error
				if why == "" {
					why = "did not run"
				}
				s.st.NotChecked = append(s.st.NotChecked, c.Name+": "+why)
			}
		}
	}
	for view, why := range cur.Errors {
		if s.st.Unread == nil {
			s.st.Unread = map[string]string{}
		}
		s.st.Unread[view] = why
	}
}

// status returns the scan's state.
func (s *scanState) status() *api.IDSStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.IntervalSeconds = s.interval.Seconds()
	st.Findings = maps.Clone(s.st.Findings)
	st.NotChecked = slices.Clone(s.st.NotChecked)
	st.Unread = maps.Clone(s.st.Unread)
	return &st
}
