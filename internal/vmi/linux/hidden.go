package linux

import (
	"errors"
	"sort"
)

// Hidden is an object that one view of the kernel shows and another does
// not: what a rootkit that unlinks a task or module leaves behind.
type Hidden struct {
	// Kind is "process" or "module".
	Kind string `json:"kind"`
	// PID is the task's pid (processes only).
	PID  int    `json:"pid,omitempty"`
	Name string `json:"name"`
	// Addr is the task_struct or struct module address.
	Addr uint64 `json:"addr"`
	// SeenIn and MissingFrom name views: for processes "tasks" (the task
	// list and thread groups), "pid_idr" and "runqueue"; for modules
	// "modules", "sysfs" and "scan".
	SeenIn      []string `json:"seen_in"`
	MissingFrom []string `json:"missing_from"`
}

// View names.
const (
	ViewTasks    = "tasks"
	ViewPIDIDR   = "pid_idr"
	ViewRunQueue = "runqueue"
	ViewModules  = "modules"
	ViewSysfs    = "sysfs"
	ViewScan     = "scan"
)

// viewSet holds views of one kind of object keyed by address. The
// first view is the reference (the one a rootkit edits); an object in any
// other view but not in the reference is reported. complete lists the views
// that should hold every object, so that an object missing from them is
// named in MissingFrom (a run queue holds only runnable tasks, so it is
// never "missing" anything).
type viewSet struct {
	names    []string
	complete map[string]bool
	objs     []map[uint64]Hidden
}

func (v *viewSet) add(name string, complete bool, objs map[uint64]Hidden) {
	v.names = append(v.names, name)
	if v.complete == nil {
		v.complete = map[string]bool{}
	}
	v.complete[name] = complete
	v.objs = append(v.objs, objs)
}

func (v *viewSet) hidden() map[uint64]Hidden {
	out := map[uint64]Hidden{}
	for i := 1; i < len(v.objs); i++ {
		for addr, h := range v.objs[i] {
			if _, ok := v.objs[0][addr]; ok {
				continue
			}
			if _, done := out[addr]; done {
				continue
			}
			h.SeenIn, h.MissingFrom = nil, nil
			for j, name := range v.names {
				if _, ok := v.objs[j][addr]; ok {
					h.SeenIn = append(h.SeenIn, name)
				} else if v.complete[name] {
					h.MissingFrom = append(h.MissingFrom, name)
				}
			}
			out[addr] = h
		}
	}
	return out
}

// twice runs a cross-view check twice and keeps the findings of the second
// pass that the first also had: on live memory an object can be caught
// between two views' updates (a task mid-fork or mid-exit), and such a
// finding does not survive a second look.
func twice(check func() (map[uint64]Hidden, error)) ([]Hidden, error) {
	first, err := check()
	if err != nil || len(first) == 0 {
		return nil, err
	}
	second, err := check()
	if err != nil {
		return nil, err
	}
	var out []Hidden
	for addr, h := range second {
		if _, ok := first[addr]; ok {
			out = append(out, h)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].PID != out[j].PID {
			return out[i].PID < out[j].PID
		}
		return out[i].Addr < out[j].Addr
	})
	return out, nil
}

// usable returns err unless it only says the listing is partial.
func usable(err error) error {
	if err == nil || errors.Is(err, ErrIncomplete) {
		return nil
	}
	return err
}

// partialList reports whether a reference listing's error still leaves it
// usable: entries were skipped but the walk went on to the end. The
// skipped objects are unreadable in every view, so they are not reported
// as hidden (the IDS reports them as corrupt); a walk that stopped early
// would make every object after the stop look hidden, so it is not usable.
func partialList(err error) bool {
	return errors.Is(err, ErrIncomplete) && !StoppedEarly(err)
}

// CrossViewProcesses reports tasks that the PID namespace's IDR or a CPU's
// run queue shows but the task list (Threads: every process's leader and
// thread group) does not. Idle tasks (pid 0) are never on the task list and
// are ignored. A run-queue or IDR layout the kernel lacks leaves that view
// out. If the task list stopped early, its error is returned, since every
// task it missed would be reported as hidden; entries it skipped (and went
// past) are left to the corrupt-object check.
func CrossViewProcesses(k *Kernel) ([]Hidden, error) {
	return twice(func() (map[uint64]Hidden, error) {
		toMap := func(ts []Task) map[uint64]Hidden {
			m := make(map[uint64]Hidden, len(ts))
			for _, t := range ts {
				if t.PID != 0 {
					m[t.Addr] = Hidden{Kind: "process", PID: t.PID, Name: t.Comm, Addr: t.Addr}
				}
			}
			return m
		}
		list, err := k.Threads()
		if err != nil && !partialList(err) {
			return nil, err
		}
		var v viewSet
		v.add(ViewTasks, true, toMap(list))
		var firstErr error
		if idr, err := k.PIDNamespaceTasks(); usable(err) == nil {
			v.add(ViewPIDIDR, true, toMap(idr))
		} else {
			firstErr = err
		}
		if rq, err := k.RunQueueTasks(); usable(err) == nil {
			v.add(ViewRunQueue, false, toMap(rq))
		} else if firstErr == nil {
			firstErr = err
		}
		if len(v.names) == 1 {
			return nil, firstErr
		}
		return v.hidden(), nil
	})
}

// CrossViewModules reports modules that sysfs (module_kset) or a scan of the
// module area shows but the module list does not. If the module list
// stopped early, its error is returned.
func CrossViewModules(k *Kernel) ([]Hidden, error) {
	return twice(func() (map[uint64]Hidden, error) {
		toMap := func(ms []Module) map[uint64]Hidden {
			m := make(map[uint64]Hidden, len(ms))
			for _, mod := range ms {
				m[mod.Addr] = Hidden{Kind: "module", Name: mod.Name, Addr: mod.Addr}
			}
			return m
		}
		list, err := k.Modules()
		if err != nil && !partialList(err) {
			return nil, err
		}
		var v viewSet
		v.add(ViewModules, true, toMap(list))
		var firstErr error
		if sys, err := k.ModulesFromSysfs(); usable(err) == nil {
			v.add(ViewSysfs, true, toMap(sys))
		} else {
			firstErr = err
		}
		if scan, err := k.ScanModules(); usable(err) == nil {
			v.add(ViewScan, true, toMap(scan))
		} else if firstErr == nil {
			firstErr = err
		}
		if len(v.names) == 1 {
			return nil, firstErr
		}
		return v.hidden(), nil
	})
}
