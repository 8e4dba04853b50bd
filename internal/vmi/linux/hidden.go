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

// twice runs a cross-view comparison on first (or a fresh reading when
// first is nil or lacks the views), and, if it finds anything, again on a
// fresh reading, keeping the findings both had: on live memory an object
// can be caught between two views' updates (a task mid-fork or mid-exit),
// and such a finding does not survive a second look.
func twice(first *Views, read func() *Views, compare func(*Views) (map[uint64]Hidden, error)) ([]Hidden, error) {
	if first == nil {
		first = read()
	}
	a, err := compare(first)
	if err != nil || len(a) == 0 {
		return nil, err
	}
	b, err := compare(read())
	if err != nil {
		return nil, err
	}
	var out []Hidden
	for addr, h := range b {
		if _, ok := a[addr]; ok {
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

// Views are the kernel's listings of tasks and modules that the cross-view
// checks compare, each with the error of its walk. One reading serves
// every check of a scan (ReadViews); the checks read again only to confirm
// a finding.
type Views struct {
	Threads, IDR, RunQueue          []Task
	ThreadsErr, IDRErr, RunQueueErr error
	Modules, Sysfs, Scan            []Module
	ModulesErr, SysfsErr, ScanErr   error
}

// ReadViews reads every task and module view.
func (k *Kernel) ReadViews() *Views {
	v := &Views{}
	k.readTaskViews(v)
	k.readModuleViews(v)
	return v
}

func (k *Kernel) readTaskViews(v *Views) {
	v.Threads, v.ThreadsErr = k.Threads()
	v.IDR, v.IDRErr = k.PIDNamespaceTasks()
	v.RunQueue, v.RunQueueErr = k.RunQueueTasks()
}

func (k *Kernel) readModuleViews(v *Views) {
	v.Modules, v.ModulesErr = k.Modules()
	v.Sysfs, v.SysfsErr = k.ModulesFromSysfs()
	v.Scan, v.ScanErr = k.ScanModules()
}

// Leaders returns the thread-group leaders of the Threads view: the
// processes, as Tasks lists them.
func (v *Views) Leaders() []Task {
	var out []Task
	for _, t := range v.Threads {
		if t.PID == t.TGID {
			out = append(out, t)
		}
	}
	return out
}

// CrossViewProcesses reports tasks that the PID namespace's IDR or a CPU's
// run queue shows but the task list (Threads: every process's leader and
// thread group) does not. Idle tasks (pid 0) are never on the task list and
// are ignored. A run-queue or IDR layout the kernel lacks leaves that view
// out. If the task list stopped early, its error is returned, since every
// task it missed would be reported as hidden; entries it skipped (and went
// past) are left to the corrupt-object check.
func CrossViewProcesses(k *Kernel) ([]Hidden, error) { return CrossViewProcessesFrom(k, nil) }

// CrossViewProcessesFrom is CrossViewProcesses starting from views already
// read (nil: read them); a finding is confirmed by a fresh reading.
func CrossViewProcessesFrom(k *Kernel, first *Views) ([]Hidden, error) {
	return twice(first, func() *Views {
		v := &Views{}
		k.readTaskViews(v)
		return v
	}, hiddenTasks)
}

// hiddenTasks compares v's task views.
func hiddenTasks(v *Views) (map[uint64]Hidden, error) {
	toMap := func(ts []Task) map[uint64]Hidden {
		m := make(map[uint64]Hidden, len(ts))
		for _, t := range ts {
			if t.PID != 0 {
				m[t.Addr] = Hidden{Kind: "process", PID: t.PID, Name: t.Comm, Addr: t.Addr}
			}
		}
		return m
	}
	if v.ThreadsErr != nil && !partialList(v.ThreadsErr) {
		return nil, v.ThreadsErr
	}
	var set viewSet
	set.add(ViewTasks, true, toMap(v.Threads))
	var firstErr error
	if usable(v.IDRErr) == nil {
		set.add(ViewPIDIDR, true, toMap(v.IDR))
	} else {
		firstErr = v.IDRErr
	}
	if usable(v.RunQueueErr) == nil {
		set.add(ViewRunQueue, false, toMap(v.RunQueue))
	} else if firstErr == nil {
		firstErr = v.RunQueueErr
	}
	if len(set.names) == 1 {
		return nil, firstErr
	}
	return set.hidden(), nil
}

// CrossViewModules reports modules that sysfs (module_kset) or a scan of the
// module area shows but the module list does not. If the module list
// stopped early, its error is returned.
func CrossViewModules(k *Kernel) ([]Hidden, error) { return CrossViewModulesFrom(k, nil) }

// CrossViewModulesFrom is CrossViewModules starting from views already
// read (nil: read them); a finding is confirmed by a fresh reading.
func CrossViewModulesFrom(k *Kernel, first *Views) ([]Hidden, error) {
	return twice(first, func() *Views {
		v := &Views{}
		k.readModuleViews(v)
		return v
	}, hiddenModules)
}

// hiddenModules compares v's module views.
func hiddenModules(v *Views) (map[uint64]Hidden, error) {
	toMap := func(ms []Module) map[uint64]Hidden {
		m := make(map[uint64]Hidden, len(ms))
		for _, mod := range ms {
			m[mod.Addr] = Hidden{Kind: "module", Name: mod.Name, Addr: mod.Addr}
		}
		return m
	}
	if v.ModulesErr != nil && !partialList(v.ModulesErr) {
		return nil, v.ModulesErr
	}
	var set viewSet
	set.add(ViewModules, true, toMap(v.Modules))
	var firstErr error
	if usable(v.SysfsErr) == nil {
		set.add(ViewSysfs, true, toMap(v.Sysfs))
	} else {
		firstErr = v.SysfsErr
	}
	if usable(v.ScanErr) == nil {
		set.add(ViewScan, true, toMap(v.Scan))
	} else if firstErr == nil {
		firstErr = v.ScanErr
	}
	if len(set.names) == 1 {
		return nil, firstErr
	}
	return set.hidden(), nil
}
