package ids

import (
	"fmt"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Event types emitted by continuous monitoring.
const (
	EventProcessStart = "process-start"
	EventProcessExit  = "process-exit"
	EventModuleLoad   = "module-load"
	EventModuleGone   = "module-unload"
	EventListenOpen   = "listen-open"
	EventListenClose  = "listen-close"
	EventFinding      = "finding"
	EventError        = "error"
)

// Event is one observation, written as a JSON line.
type Event struct {
	Time    time.Time     `json:"time"`
	VM      string        `json:"vm"`
	Type    string        `json:"type"`
	Process *linux.Task   `json:"process,omitempty"`
	Module  *linux.Module `json:"module,omitempty"`
	Socket  *linux.Socket `json:"socket,omitempty"`
	Finding *Finding      `json:"finding,omitempty"`
	Error   string        `json:"error,omitempty"`
}

// Snapshot is the state continuous monitoring compares between scans.
type Snapshot struct {
	Processes []linux.Task
	Modules   []linux.Module
	Listening []linux.Socket
	Report    *Report
}

// Snapshot takes one scan of the guest.
func (i *Inspector) Snapshot() (*Snapshot, error) {
	s := &Snapshot{}
	var err error
	if s.Processes, err = i.Processes(); err != nil {
		return nil, fmt.Errorf("processes: %w", err)
	}
	if s.Modules, err = i.Modules(); err != nil {
		return nil, fmt.Errorf("modules: %w", err)
	}
	socks, err := i.K.Sockets(s.Processes)
	if err != nil {
		return nil, fmt.Errorf("sockets: %w", err)
	}
	for _, so := range socks {
		if so.State == "LISTEN" || (so.Proto == "udp" && so.RemotePort == 0) {
			s.Listening = append(s.Listening, so)
		}
	}
	s.Report = i.Check()
	return s, nil
}

func taskKey(t linux.Task) string     { return fmt.Sprintf("%d@%d", t.PID, t.StartTime) }
func moduleKey(m linux.Module) string { return fmt.Sprintf("%s@%#x", m.Name, m.Base) }
func listenKey(s linux.Socket) string {
	return fmt.Sprintf("%s/%s/%s:%d/%d", s.Family, s.Proto, s.LocalAddr, s.LocalPort, s.PID)
}

// Diff returns the events that lead from prev to cur, stamped with now. With
// no prev (the first scan) only findings are reported: the rest is the
// baseline.
func Diff(vm string, prev, cur *Snapshot, now time.Time) []Event {
	var out []Event
	ev := func(typ string) Event { return Event{Time: now, VM: vm, Type: typ} }
	if prev != nil {
		out = append(out, diffSet(prev.Processes, cur.Processes, taskKey, func(t linux.Task, added bool) Event {
			e := ev(EventProcessExit)
			if added {
				e.Type = EventProcessStart
			}
			e.Process = &t
			return e
		})...)
		out = append(out, diffSet(prev.Modules, cur.Modules, moduleKey, func(m linux.Module, added bool) Event {
			e := ev(EventModuleGone)
			if added {
				e.Type = EventModuleLoad
			}
			e.Module = &m
			return e
		})...)
		out = append(out, diffSet(prev.Listening, cur.Listening, listenKey, func(s linux.Socket, added bool) Event {
			e := ev(EventListenClose)
			if added {
				e.Type = EventListenOpen
			}
			e.Socket = &s
			return e
		})...)
	}
	seen := map[string]bool{}
	if prev != nil && prev.Report != nil {
		for _, f := range prev.Report.Findings {
			seen[f.key()] = true
		}
	}
	if cur.Report != nil {
		for _, f := range cur.Report.Findings {
			if !seen[f.key()] {
				e := ev(EventFinding)
				f := f
				e.Finding = &f
				out = append(out, e)
			}
		}
		failed := map[string]bool{}
		if prev != nil && prev.Report != nil {
			for _, c := range prev.Report.Checks {
				failed[c.Name+"|"+c.Error] = !c.Ran
			}
		}
		for _, c := range cur.Report.Checks {
			// A check that keeps failing the same way is reported once.
			if !c.Ran && !failed[c.Name+"|"+c.Error] {
				e := ev(EventError)
				e.Error = fmt.Sprintf("check %s did not run: %s", c.Name, c.Error)
				out = append(out, e)
			}
		}
	}
	return out
}

// diffSet reports items of cur missing from prev (added) and of prev missing
// from cur (removed), in the order of the slices.
func diffSet[T any](prev, cur []T, key func(T) string, mk func(T, bool) Event) []Event {
	old := make(map[string]bool, len(prev))
	for _, p := range prev {
		old[key(p)] = true
	}
	now := make(map[string]bool, len(cur))
	var out []Event
	for _, c := range cur {
		k := key(c)
		now[k] = true
		if !old[k] {
			out = append(out, mk(c, true))
		}
	}
	for _, p := range prev {
		if !now[key(p)] {
			out = append(out, mk(p, false))
		}
	}
	return out
}
