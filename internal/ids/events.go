package ids

import (
	"errors"
	"fmt"
	"slices"
	"sort"
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
	EventCleared      = "finding-cleared"
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
	// Errors are what this scan could not read, by view ("processes",
	// "modules", "sockets"). A view missing entirely (Failed) is carried
	// over from the previous scan by Diff; a partial one (entries skipped,
	// Bad names them) reports no exit for the objects it could not read.
	Errors map[string]string
	Failed map[string]bool
	Bad    map[uint64]bool
}

// Snapshot takes one scan of the guest. A view that cannot be read does not
// stop the others, nor the checks: one corrupted kernel object must not
// blind the scan (it is itself a finding, corrupt-kernel-object).
func (i *Inspector) Snapshot() (*Snapshot, error) {
	s := &Snapshot{Errors: map[string]string{}, Failed: map[string]bool{}, Bad: map[uint64]bool{}}
	note := func(view string, err error) {
		if err == nil {
			return
		}
		s.Errors[view] = err.Error()
		if !errors.Is(err, linux.ErrIncomplete) {
			s.Failed[view] = true
		}
		for _, b := range linux.BadObjects(err) {
			s.Bad[b.Addr] = true
		}
	}
	// One reading of the kernel's views serves the listings and the checks.
	views := i.K.ReadViews()
	read := scanReads{scan: true, views: views}
	s.Processes = views.Leaders()
	sort.Slice(s.Processes, func(a, b int) bool { return s.Processes[a].PID < s.Processes[b].PID })
	note("processes", views.ThreadsErr)
	s.Modules = slices.Clone(views.Modules)
	sort.Slice(s.Modules, func(a, b int) bool { return s.Modules[a].Name < s.Modules[b].Name })
	note("modules", views.ModulesErr)
	if !s.Failed["processes"] {
		socks, err := i.K.Sockets(s.Processes)
		note("sockets", err)
		if err == nil {
			read.sockets = socks
		}
		for _, so := range socks {
			if so.State == "LISTEN" || (so.Proto == "udp" && so.RemotePort == 0) {
				s.Listening = append(s.Listening, so)
			}
		}
	} else {
		s.Failed["sockets"] = true
	}
	s.Report = i.check(read)
	return s, nil
}

func taskKey(t linux.Task) string     { return fmt.Sprintf("%d@%d", t.PID, t.StartTime) }
func moduleKey(m linux.Module) string { return fmt.Sprintf("%s@%#x", m.Name, m.Base) }
func listenKey(s linux.Socket) string {
	return fmt.Sprintf("%s/%s/%s:%d/%d", s.Family, s.Proto, s.LocalAddr, s.LocalPort, s.PID)
}

// Diff returns the events that lead from prev to cur, stamped with now. With
// no prev (the first scan) only findings and errors are reported: the rest
// is the baseline. A view cur could not read at all is carried over from
// prev (no events: nothing is known to have changed); objects a partial
// view skipped as unreadable are carried over too, not reported as gone.
// A finding is reported when it appears and cleared when a later scan,
// whose check ran, no longer has it; both carry the finding's stable id.
func Diff(vm string, prev, cur *Snapshot, now time.Time) []Event {
	var out []Event
	ev := func(typ string) Event { return Event{Time: now, VM: vm, Type: typ} }
	if prev != nil {
		carryOver(prev, cur)
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
	out = append(out, diffFindings(prev, cur, ev)...)
	out = append(out, diffErrors(prev, cur, ev)...)
	return out
}

// carryOver fills what cur could not read from prev: a failed view whole,
// and a partial view's unreadable objects.
func carryOver(prev, cur *Snapshot) {
	switch {
	case cur.Failed["processes"]:
		cur.Processes = prev.Processes
	case len(cur.Bad) > 0:
		for _, t := range prev.Processes {
			if cur.Bad[t.Addr] && !slices.ContainsFunc(cur.Processes, func(c linux.Task) bool { return c.Addr == t.Addr }) {
				cur.Processes = append(cur.Processes, t)
			}
		}
	}
	switch {
	case cur.Failed["modules"]:
		cur.Modules = prev.Modules
	case len(cur.Bad) > 0:
		for _, m := range prev.Modules {
			if cur.Bad[m.Addr] && !slices.ContainsFunc(cur.Modules, func(c linux.Module) bool { return c.Addr == m.Addr }) {
				cur.Modules = append(cur.Modules, m)
			}
		}
	}
	if cur.Failed["sockets"] {
		cur.Listening = prev.Listening
	}
}

// diffFindings reports cur's new findings and prev's findings that cur's
// checks (which ran) no longer have.
func diffFindings(prev, cur *Snapshot, ev func(string) Event) []Event {
	var out []Event
	seen := map[string]bool{}
	if prev != nil && prev.Report != nil {
		for _, f := range prev.Report.Findings {
			seen[f.key()] = true
		}
	}
	if cur.Report == nil {
		return nil
	}
	now := map[string]bool{}
	for _, f := range cur.Report.Findings {
		now[f.key()] = true
		if !seen[f.key()] {
			e := ev(EventFinding)
			f := f
			e.Finding = &f
			out = append(out, e)
		}
	}
	if prev == nil || prev.Report == nil {
		return out
	}
	ran := map[string]bool{}
	for _, c := range cur.Report.Checks {
		ran[c.Name] = c.Ran
	}
	for _, f := range prev.Report.Findings {
		src := f.Source
		if src == "" {
			src = f.Check
		}
		if !now[f.key()] && ran[src] {
			e := ev(EventCleared)
			f := f
			e.Finding = &f
			out = append(out, e)
		}
	}
	return out
}

// diffErrors reports checks that did not run and views that could not be
// read (whole or in part), each once while it keeps failing the same way.
func diffErrors(prev, cur *Snapshot, ev func(string) Event) []Event {
	var out []Event
	before := map[string]bool{}
	if prev != nil {
		for view, msg := range prev.Errors {
			before["view|"+view+"|"+msg] = true
		}
		if prev.Report != nil {
			for _, c := range prev.Report.Checks {
				before["check|"+c.Name+"|"+c.Error] = !c.Ran
			}
		}
	}
	views := make([]string, 0, len(cur.Errors))
	for v := range cur.Errors {
		views = append(views, v)
	}
	sort.Strings(views)
	for _, v := range views {
		if msg := cur.Errors[v]; !before["view|"+v+"|"+msg] {
			e := ev(EventError)
			e.Error = fmt.Sprintf("%s: %s", v, msg)
			out = append(out, e)
		}
	}
	if cur.Report != nil {
		for _, c := range cur.Report.Checks {
			if !c.Ran && c.NotApplicable == "" && !before["check|"+c.Name+"|"+c.Error] {
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
