package ids

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Names of the checks `ids check` runs.
const (
	CheckSyscallTable   = "syscall-table"
	CheckDispatch       = "syscall-dispatch"
	CheckHiddenProcess  = "hidden-process"
	CheckHiddenModule   = "hidden-module"
	CheckCommExe        = "comm-exe"
	CheckUnexpectedRoot = "unexpected-root"
	CheckCorrupt        = "corrupt-kernel-object"
)

// Severities of findings.
const (
	SeverityCritical = "critical" // a rootkit technique: hooks, hidden objects
	SeverityWarning  = "warning"  // suspicious but with innocent explanations
)

// Finding is one thing a check flagged. ID is stable while the finding
// lasts (the same object flagged by the same check): continuous monitoring
// reports a finding and its clearing under it.
type Finding struct {
	ID    string `json:"id,omitempty"`
	Check string `json:"check"`
	// Source is the check that reported it, when that is not Check (the
	// guest view reports hidden-process and hidden-socket findings).
	Source   string `json:"source,omitempty"`
	Severity string `json:"severity"`
	Summary  string `json:"summary"`
	PID      int    `json:"pid,omitempty"`
	Name     string `json:"name,omitempty"`
	Addr     uint64 `json:"addr,omitempty"`
	// Target is where a hooked site now leads, when that is not Addr: a
	// hook moved to other code is another finding.
	Target uint64 `json:"target,omitempty"`
	// TargetName names Target (module+0xoff, or a symbol): another module
	// loaded where the last one was is another finding too.
	TargetName string `json:"target_name,omitempty"`
}

// key identifies a finding across snapshots.
func (f Finding) key() string {
	return fmt.Sprintf("%s|%d|%s|%#x|%#x|%s", f.Check, f.PID, f.Name, f.Addr, f.Target, f.TargetName)
}

// findingID is a finding's stable id: a short hash of its key.
func findingID(f Finding) string {
	h := sha256.Sum256([]byte(f.key()))
	return hex.EncodeToString(h[:6])
}

// CheckStatus says whether a check ran. A check that does not apply to
// the target (the guest view of a memory dump) has Ran false and says why
// in NotApplicable; it does not make the report incomplete.
type CheckStatus struct {
	Name          string `json:"name"`
	Ran           bool   `json:"ran"`
	Findings      int    `json:"findings"`
	Error         string `json:"error,omitempty"`
	NotApplicable string `json:"not_applicable,omitempty"`
	// ElapsedMicros is the check's time, its retries included.
	ElapsedMicros int64 `json:"elapsed_us"`
}

// Report is the `ids check` answer.
type Report struct {
	Findings []Finding     `json:"findings"`
	Checks   []CheckStatus `json:"checks"`
	// ViewsMicros is the time of the one reading of the kernel's task
	// and module views the checks share (0 when a scan had read them).
	ViewsMicros int64 `json:"views_us"`
}

// Clean reports whether every check ran and found nothing.
func (r *Report) Clean() bool { return len(r.Findings) == 0 && r.Complete() }

// Complete reports whether every check ran.
func (r *Report) Complete() bool {
	for _, c := range r.Checks {
		if !c.Ran && c.NotApplicable == "" {
			return false
		}
	}
	return true
}

// checkAttempts is how often a check is tried before it counts as not run:
// live memory can be caught mid-update (a list being relinked), which a
// fresh read a moment later does not see.
const checkAttempts = 3

// Check runs every integrity check. A check that cannot run is reported in
// Checks with its error; the others still run. The guest-view check's
// question to the guest runs while the memory checks do: the guest takes
// longer to answer than the checks take.
func (i *Inspector) Check() *Report { return i.check(scanReads{}) }

// scanReads are what a continuous scan has already read, for its check to
// reuse: the kernel's views and the processes' sockets (nil when not read).
type scanReads struct {
	scan    bool // a continuous scan: the guest view runs at its own cadence
	views   *linux.Views
	sockets []linux.Socket
}

func (i *Inspector) check(read scanReads) *Report {
	r := &Report{Findings: []Finding{}}
	views := read.views
	if views == nil {
		start := time.Now()
		views = i.K.ReadViews()
		r.ViewsMicros = time.Since(start).Microseconds()
	}
	// A check's first try uses the views read once for all; a retry reads
	// afresh.
	fresh := false
	viewsFor := func() *linux.Views {
		if fresh {
			return nil
		}
		fresh = true
		return views
	}
	run := func(name string, f func() ([]Finding, error)) {
		if why := i.notCheckedHere(name); why != "" {
			r.add(name, nil, fmt.Errorf("%w: %s", ErrNotApplicable, why), 0)
			return
		}
		start := time.Now()
		var found []Finding
		err := i.retry(func() error {
			var err error
			found, err = f()
			return err
		})
		r.add(name, found, err, time.Since(start))
	}
	// The processes: the views' thread-group leaders. Bad entries the walk
	// went past are checkCorrupt's; the rest are checked.
	tasks, tasksErr := views.Leaders(), views.ThreadsErr
	if errors.Is(tasksErr, linux.ErrIncomplete) && !linux.StoppedEarly(tasksErr) {
		tasksErr = nil
	}
	withTasks := func(f func([]linux.Task) []Finding) func() ([]Finding, error) {
		return func() ([]Finding, error) {
			if tasksErr != nil {
				return nil, tasksErr
			}
			return f(tasks), nil
		}
	}
	var guest *guestQuestion
	due := !read.scan || i.guestViewDue()
	if i.Guest != nil && tasksErr == nil && due {
		guest = i.askGuestView(tasks, read.sockets)
	}
	run(CheckSyscallTable, i.checkSyscallTable)
	run(CheckDispatch, i.checkDispatch)
	fresh = false
	run(CheckHiddenProcess, func() ([]Finding, error) { return hiddenFindings(linux.CrossViewProcessesFrom(i.K, viewsFor())) })
	fresh = false
	run(CheckHiddenModule, func() ([]Finding, error) { return hiddenFindings(linux.CrossViewModulesFrom(i.K, viewsFor())) })
	run(CheckCommExe, withTasks(i.checkCommExe))
	run(CheckUnexpectedRoot, withTasks(i.checkUnexpectedRoot))
	run(CheckCredentials, func() ([]Finding, error) {
		if tasksErr != nil {
			return nil, tasksErr
		}
		return i.checkCredentials(tasks)
	})
	run(CheckFtrace, i.checkFtrace)
	run(CheckKprobe, i.checkKprobes)
	run(CheckLSM, i.checkLSM)
	run(CheckInline, i.checkInline)
	run(CheckIDT, i.checkIDT)
	run(CheckOpsTables, i.checkOpsTables)
	run(CheckTaskFlags, func() ([]Finding, error) { return i.checkTaskFlags(views) })
	run(CheckCorrupt, func() ([]Finding, error) { return i.checkCorrupt(views) })
	switch {
	case i.notCheckedHere(CheckGuestView) != "":
		r.Checks = append(r.Checks, CheckStatus{Name: CheckGuestView, NotApplicable: i.notCheckedHere(CheckGuestView)})
	case i.Guest == nil:
		r.Checks = append(r.Checks, CheckStatus{Name: CheckGuestView, NotApplicable: "no guest userland to ask (a memory dump, or a VM paused for the gdbstub)"})
	case tasksErr != nil:
		r.add(CheckGuestView, nil, tasksErr, 0)
	case guest == nil:
		i.lastGuestView(r) // a scan between two of the guest view's turns
	default:
		found, err := guest.finish()
		r.add(CheckGuestView, found, err, guest.elapsed())
		i.keepGuestView(r)
	}
	for k := range r.Findings {
		r.Findings[k].ID = findingID(r.Findings[k])
	}
	sort.SliceStable(r.Findings, func(a, b int) bool {
		if r.Findings[a].Severity != r.Findings[b].Severity {
			return r.Findings[a].Severity == SeverityCritical
		}
		return false
	})
	return r
}

// add records one check's outcome.
func (r *Report) add(name string, found []Finding, err error, took time.Duration) {
	st := CheckStatus{Name: name, Ran: err == nil, Findings: len(found), ElapsedMicros: took.Microseconds()}
	switch {
	case errors.Is(err, ErrNotApplicable):
		st.NotApplicable = err.Error()
	case err != nil:
		st.Error = err.Error()
	}
	for k := range found {
		found[k].Source = name
	}
	r.Checks = append(r.Checks, st)
	r.Findings = append(r.Findings, found...)
}

func (i *Inspector) checkSyscallTable() ([]Finding, error) {
	entries, err := i.K.SyscallTable()
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, e := range entries {
		if !e.Hooked {
			continue
		}
		target := e.Symbol
		switch {
		case e.Owner != "":
			target = e.Owner
		case target == "":
			target = "an address outside every known symbol and module"
		}
		out = append(out, Finding{Check: CheckSyscallTable, Severity: SeverityCritical, Name: e.Name, Addr: e.Addr,
			Summary: fmt.Sprintf("syscall %d (%s) is hooked: its table entry points to %#x (%s): %s", e.Nr, e.Name, e.Addr, target, e.Reason)})
	}
	return out, nil
}

func (i *Inspector) checkDispatch() ([]Finding, error) {
	found, err := i.K.CheckDispatchMemo(&i.code)
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, d := range found {
		out = append(out, Finding{Check: CheckDispatch, Severity: SeverityCritical, Name: d.Function, Addr: d.Addr, Target: d.Target, TargetName: d.TargetName(),
			Summary: fmt.Sprintf("syscall dispatch code %s at %#x jumps to %#x (%s): %s", d.Function, d.Addr, d.Target, d.TargetName(), d.Reason)})
	}
	return out, nil
}

func hiddenFindings(hidden []linux.Hidden, err error) ([]Finding, error) {
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, h := range hidden {
		f := Finding{Severity: SeverityCritical, PID: h.PID, Name: h.Name, Addr: h.Addr}
		switch h.Kind {
		case "module":
			f.Check = CheckHiddenModule
			f.Summary = fmt.Sprintf("module %q at %#x is hidden: seen in %s, missing from %s", h.Name, h.Addr, strings.Join(h.SeenIn, ", "), strings.Join(h.MissingFrom, ", "))
		default:
			f.Check = CheckHiddenProcess
			f.Summary = fmt.Sprintf("process %d (%s) is hidden: seen in %s, missing from %s", h.PID, h.Name, strings.Join(h.SeenIn, ", "), strings.Join(h.MissingFrom, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

// taskCommLen is TASK_COMM_LEN - 1: the kernel truncates comm to it.
const taskCommLen = 15

func (i *Inspector) checkCommExe(tasks []linux.Task) []Finding {
	var out []Finding
	for _, t := range tasks {
		if t.KernelThread || t.Exe == "" {
			continue
		}
		base := baseName(t.Exe)
		if slices.Contains(i.Opts.MultiCall, base) {
			continue
		}
		want := base
		if len(want) > taskCommLen {
			want = want[:taskCommLen]
		}
		if t.Comm == want {
			continue
		}
		out = append(out, Finding{Check: CheckCommExe, Severity: SeverityWarning, PID: t.PID, Name: t.Comm, Addr: t.Addr,
			Summary: fmt.Sprintf("process %d calls itself %q but runs %s", t.PID, t.Comm, t.Exe)})
	}
	return out
}

func (i *Inspector) checkUnexpectedRoot(tasks []linux.Task) []Finding {
	byPID := make(map[int]linux.Task, len(tasks))
	for _, t := range tasks {
		byPID[t.PID] = t
	}
	var out []Finding
	for _, t := range tasks {
		if t.KernelThread || t.EUID != 0 {
			continue
		}
		allowed := slices.Contains(i.Opts.SetUID, baseName(t.Exe))
		switch {
		case t.UID != 0 && !allowed:
			out = append(out, Finding{Check: CheckUnexpectedRoot, Severity: SeverityCritical, PID: t.PID, Name: t.Comm, Addr: t.Addr,
				Summary: fmt.Sprintf("process %d (%s, %s) runs with effective uid 0 for uid %d", t.PID, t.Comm, t.Exe, t.UID)})
		case t.UID == 0 && !allowed:
			p, ok := byPID[t.PPID]
			if ok && !p.KernelThread && p.UID != 0 && p.EUID != 0 {
				out = append(out, Finding{Check: CheckUnexpectedRoot, Severity: SeverityCritical, PID: t.PID, Name: t.Comm, Addr: t.Addr,
					Summary: fmt.Sprintf("process %d (%s) runs as root but its parent %d (%s) runs as uid %d", t.PID, t.Comm, p.PID, p.Comm, p.UID)})
			}
		}
	}
	return out
}

// checkCorrupt reports kernel objects that the kernel's own lists point
// to but that do not read as what they must be (a task_struct whose pid is
// out of range, a module whose name is not a string, a thread whose tgid
// is not its leader's): what a rootkit's corruption, or a forged object,
// leaves behind. An object is reported only if two listings a moment apart
// both find it bad: a task freed mid-walk reads as garbage once.
func (i *Inspector) checkCorrupt(views *linux.Views) ([]Finding, error) {
	collect := func(v *linux.Views) map[uint64]linux.BadObject {
		bad := map[uint64]linux.BadObject{}
		for _, err := range []error{v.ThreadsErr, v.IDRErr, v.ModulesErr, v.SysfsErr} {
			for _, b := range linux.BadObjects(err) {
				if _, dup := bad[b.Addr]; !dup {
					bad[b.Addr] = b
				}
			}
		}
		return bad
	}
	first := collect(views)
	if len(first) == 0 {
		return nil, nil
	}
	if i.K.AS != nil && i.K.AS.Cache != nil {
		i.K.AS.Cache.Invalidate()
	}
	second := collect(i.K.ReadViews())
	var out []Finding
	for addr, b := range second {
		if _, ok := first[addr]; !ok {
			continue
		}
		out = append(out, Finding{Check: CheckCorrupt, Severity: SeverityCritical, Addr: addr, Name: b.View,
			Summary: fmt.Sprintf("a kernel object on the %s listing at %#x does not read as valid: %s", b.View, addr, b.Reason)})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Addr < out[b].Addr })
	return out, nil
}

// retry runs f up to checkAttempts times while it fails, with a fresh
// translation cache each time.
func (i *Inspector) retry(f func() error) error {
	err := f()
	for n := 1; err != nil && n < checkAttempts; n++ {
		if i.K.AS != nil && i.K.AS.Cache != nil {
			i.K.AS.Cache.Invalidate()
		}
		err = f()
	}
	return err
}
