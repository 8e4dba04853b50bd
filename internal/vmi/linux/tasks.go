package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// Task is one process or thread as the guest kernel records it.
type Task struct {
	// Addr is the task_struct's kernel virtual address.
	Addr uint64 `json:"addr"`
	PID  int    `json:"pid"`
	TGID int    `json:"tgid"`
	// PPID is the real parent's thread-group id, as ps shows it.
	PPID int `json:"ppid"`
	// UID and GID are the real ids, EUID the effective uid, from task->cred.
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	EUID uint32 `json:"euid"`
	// State is ps's letter: R, S, D, T, t, X, Z, P or I.
	State string `json:"state"`
	Comm  string `json:"comm"`
	// Exe is the path of mm->exe_file from the global root, "" for kernel
	// threads and zombies.
	Exe string `json:"exe"`
	// StartTime is start_time, in nanoseconds since boot (CLOCK_MONOTONIC).
	StartTime uint64 `json:"start_ns"`
	// Threads is signal->nr_threads.
	Threads int `json:"threads"`
	// KernelThread is set for PF_KTHREAD tasks and for live tasks with no mm
	// (a zombie has no mm either, but is not a kernel thread).
	KernelThread bool `json:"kernel_thread"`
	// PGD is mm->pgd as a physical address: the process's CR3 (0 for kernel threads).
	PGD uint64 `json:"pgd"`

	// CPU is the CPU the task last ran on (-1 when the kernel does not say).
	CPU int `json:"cpu"`
	// UTime and STime are the CPU time this task (thread) has spent in user
	// and kernel mode, in nanoseconds, as the kernel samples them (see
	// usage.go for how /proc's figures differ).
	UTime uint64 `json:"utime_ns"`
	STime uint64 `json:"stime_ns"`
	// Runtime is the CPU time the scheduler measured for this task
	// (se.sum_exec_runtime), in nanoseconds: what /proc/PID/stat's utime
	// and stime add up to, and ps's TIME.
	Runtime uint64 `json:"runtime_ns"`
	// GroupUTime, GroupSTime and GroupRuntime are the same for the whole
	// thread group: every live thread's plus what exited threads left in
	// signal_struct, as /proc/PID/stat sums them. Set by the process
	// listing (Tasks) and, for every thread, by Threads; 0 from other reads.
	GroupUTime   uint64 `json:"group_utime_ns"`
	GroupSTime   uint64 `json:"group_stime_ns"`
	GroupRuntime uint64 `json:"group_runtime_ns"`
	// VSZ is the size of the address space (mm->total_vm) and RSS the
	// resident memory (file, anon and shmem pages), in bytes, as
	// /proc/PID/status's VmSize and VmRSS; 0 without an mm.
	VSZ uint64 `json:"vsz_bytes"`
	RSS uint64 `json:"rss_bytes"`
}

// Bounds on guest-controlled structures. Every walk stops at these, so a
// hostile or corrupt guest costs bounded time and memory.
const (
	// MaxTasks bounds every task listing.
	MaxTasks = 1 << 16
	// MaxModules bounds every module listing.
	MaxModules = 1 << 12
	// MaxPathLen bounds an executable path (PATH_MAX).
	MaxPathLen = 4096

	taskCommLen  = 16      // TASK_COMM_LEN
	maxPID       = 1 << 22 // PID_MAX_LIMIT on 64-bit
	maxNameLen   = 255     // NAME_MAX: one path component
	maxPathSteps = 512     // dentries plus mount crossings in one path
	maxIDRNodes  = 1 << 16
	maxIDRDepth  = 12 // 64-bit indices at 6 bits per level need 11
	maxRBDepth   = 64 // a red-black tree of 2^31 nodes is at most 62 deep
	maxCPUs      = 8192
	maxPIDHlist  = 64 // tasks attached to one struct pid as PIDTYPE_PID
)

// Task flags and states (include/linux/sched.h). They are macros, so BTF
// does not carry them; they have been stable since Linux 4.14 (TASK_IDLE
// reporting) and 5.15 (TASK_RTLOCK_WAIT).
const (
	pfKthread = 0x00200000

	taskReport      = 0x7f // RUNNING..PARKED, EXIT_DEAD and EXIT_ZOMBIE
	taskReportIdle  = taskReport + 1
	taskIdle        = 0x0402 // TASK_UNINTERRUPTIBLE | TASK_NOLOAD
	taskRTLockWait  = 0x1000
	taskUninterrupt = 0x0002
)

// taskStates is fs/proc/array.c's task_state_array, indexed by fls(state).
const taskStates = "RSDTtXZPI"

var (
	// ErrIncomplete means a listing skipped entries or stopped early; the
	// entries returned with it are valid. See IncompleteError.
	ErrIncomplete = errors.New("linux: listing incomplete")
	// ErrInconsistent means a guest object failed validation: a value out of
	// range, or pointers that disagree. On live memory it is usually an
	// object caught mid-update.
	ErrInconsistent = errors.New("linux: inconsistent guest object")
	// ErrNotImplemented is returned by listings not implemented yet.
	ErrNotImplemented = errors.New("linux: not implemented")
)

// IncompleteError is returned with a partial listing: some entries were
// unreadable or inconsistent and were skipped, or the walk stopped early
// (Err says why). The listing returned alongside it holds every entry that
// validated; callers that can use partial results test errors.Is(err,
// ErrIncomplete).
type IncompleteError struct {
	// View names the listing: "tasks", "threads", "pid_idr", "runqueue",
	// "modules", "sysfs" or "scan".
	View string
	// Skipped counts the entries left out as unreadable or inconsistent.
	Skipped int
	// Stopped reports that the walk stopped early (Err says why): entries
	// after the stop were not seen at all. Otherwise the walk went past
	// every skipped entry and only those are missing.
	Stopped bool
	// Bad names the skipped objects whose address is known, at most
	// MaxBadObjects of them: a kernel object a listing cannot read is
	// itself evidence (a corrupted or forged structure).
	Bad []BadObject
	// Err is why the walk stopped early, or else the first skipped entry's error.
	Err error
}

// BadObject is one kernel object a listing skipped: its address and why.
type BadObject struct {
	View   string `json:"view"`
	Addr   uint64 `json:"addr"`
	Reason string `json:"reason"`
}

// MaxBadObjects bounds the skipped objects one listing names.
const MaxBadObjects = 32

func (e *IncompleteError) Error() string {
	how := "entries skipped"
	if e.Stopped {
		how = "entries skipped, walk stopped early"
	}
	return fmt.Sprintf("linux: %s listing incomplete (%d %s): %v", e.View, e.Skipped, how, e.Err)
}

func (e *IncompleteError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrIncomplete}
	}
	return []error{ErrIncomplete, e.Err}
}

// tally collects skipped entries and the reason a walk stopped.
type tally struct {
	view    string
	skipped int
	bad     []BadObject
	first   error // first skipped entry's error
	stop    error // why the walk stopped early
}

func (t *tally) skip(err error) { t.skipAt(0, err) }

// skipAt counts a skipped entry; addr, when not 0, is the object's address.
func (t *tally) skipAt(addr uint64, err error) {
	t.skipped++
	if t.first == nil {
		t.first = err
	}
	if addr != 0 && len(t.bad) < MaxBadObjects {
		t.bad = append(t.bad, BadObject{View: t.view, Addr: addr, Reason: err.Error()})
	}
}

// merge takes over the skipped entries of an earlier listing's error.
func (t *tally) merge(err error) {
	ie := (*IncompleteError)(nil)
	if !errors.As(err, &ie) {
		return
	}
	t.skipped += ie.Skipped
	if ie.Stopped && t.stop == nil {
		t.stop = ie.Err
	}
	if t.first == nil {
		t.first = ie.Err
	}
	for _, b := range ie.Bad {
		if len(t.bad) < MaxBadObjects {
			t.bad = append(t.bad, b)
		}
	}
}

func (t *tally) err() error {
	if t.skipped == 0 && t.stop == nil {
		return nil
	}
	e := &IncompleteError{View: t.view, Skipped: t.skipped, Stopped: t.stop != nil, Bad: t.bad, Err: t.stop}
	if e.Err == nil {
		e.Err = t.first
	}
	return e
}

// BadObjects returns the objects err (an *IncompleteError) names, nil if
// none.
func BadObjects(err error) []BadObject {
	ie := (*IncompleteError)(nil)
	if errors.As(err, &ie) {
		return ie.Bad
	}
	return nil
}

// StoppedEarly reports whether err says a walk stopped before its end
// (not only that it skipped entries).
func StoppedEarly(err error) bool {
	ie := (*IncompleteError)(nil)
	return errors.As(err, &ie) && ie.Stopped
}

// fields resolves structure offsets from BTF, remembering the first failure.
type fields struct {
	p   *Profile
	err error
}

func (f *fields) off(path string) uint64 {
	o, err := f.p.FieldOffset(path)
	if err != nil && f.err == nil {
		f.err = err
	}
	return o
}

// has reports whether path resolves, without recording a failure.
func (f *fields) has(path string) bool {
	_, err := f.p.FieldOffset(path)
	return err == nil
}

// arrayLen returns the element count and element size of an array field.
func (f *fields) arrayLen(path string) (n, elem uint64) {
	_, typ, err := f.p.Field(path)
	if err != nil {
		if f.err == nil {
			f.err = err
		}
		return 0, 0
	}
	if typ.Kind != KindArray {
		if f.err == nil {
			f.err = fmt.Errorf("%w: %s is not an array", ErrNoField, path)
		}
		return 0, 0
	}
	if typ.ElemSize == 0 {
		if f.err == nil {
			f.err = fmt.Errorf("%w: %s: element of no size", ErrNoField, path)
		}
		return 0, 0
	}
	return typ.Nelems, typ.ElemSize
}

func (f *fields) size(name string) uint64 {
	s, err := f.p.StructSize(name)
	if err != nil && f.err == nil {
		f.err = err
	}
	return s
}

// span is a byte range [lo, hi) of a structure that one read covers.
type span struct{ lo, hi uint64 }

func spanOf(offs ...uint64) span {
	s := span{lo: ^uint64(0)}
	for _, o := range offs {
		s.lo = min(s.lo, o)
		s.hi = max(s.hi, o+8)
	}
	return s
}

func (s span) len() uint64 { return s.hi - s.lo }

// clusters groups 8-byte fields at offs into spans, starting a new span
// where the gap to the next field exceeds gap bytes.
func clusters(offs []uint64, gap uint64) []span {
	offs = append([]uint64(nil), offs...)
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	var out []span
	for _, o := range offs {
		if n := len(out); n > 0 && o <= out[n-1].hi+gap {
			out[n-1].hi = max(out[n-1].hi, o+8)
			continue
		}
		out = append(out, span{o, o + 8})
	}
	return out
}

// taskLayout holds the BTF offsets the task walks use.
type taskLayout struct {
	err error // why tasks cannot be read on this kernel

	// task_struct
	state, flags, tasks, pid, tgid, realParent, signal, mm, cred, comm, startTime, exitState uint64
	threadNode, threadGroup                                                                  uint64
	useThreadHead                                                                            bool   // signal->thread_head + thread_node (else thread_group)
	block                                                                                    span   // the task_struct bytes the fields are in
	blockParts                                                                               []span // the parts of block read: fields far apart are read separately
	// signal_struct
	nrThreads, threadHead uint64
	// cred
	credUID, credGID, credEUID uint64
	credBlock                  span
	// mm_struct
	mmPGD, mmExe uint64
	mmBlock      span
	mmParts      []span // the parts of mmBlock read
	// struct file: f_path.mnt, f_path.dentry
	fMnt, fDentry uint64
	// dentry and qstr
	dParent, dNameLen, dNamePtr uint64
	dBlock                      span
	// mount and vfsmount
	mntParent, mntMountpoint, mntMnt, vfsRoot uint64
	mntBlock                                  span

	// PID namespace IDR (pidErr says why it is unusable).
	pidErr                                 error
	pidLinks, pidTasks, pidNumbers, upidNr uint64
	nsXAHead, xaShift, xaSlots, xaSlotsN   uint64
	hlistNodeSize                          uint64

	// Run queues (rqErr says why they are unusable).
	rqErr                                     error
	rqCurr, rqTimeline, rqTimelineOffInCFS    uint64
	seRunNode, seMyQ, taskSE, rbRight, rbLeft uint64

	// usage: CPU, CPU time, VSZ and RSS (usage.err says why unusable).
	usage usageLayout
	// args: mm_struct's argument and environment bounds (args.err says why unusable).
	args argsLayout
}

// layoutForTasks returns p's task layout, computed on first use (see
// profileCache.tasks).
func layoutForTasks(p *Profile) *taskLayout {
	c := p.caches()
	c.tasksOnce.Do(func() { c.tasks = newTaskLayout(p) })
	return c.tasks
}

func newTaskLayout(p *Profile) *taskLayout {
	l := &taskLayout{}
	f := &fields{p: p}
	if f.has("task_struct.__state") {
		l.state = f.off("task_struct.__state")
	} else {
		l.state = f.off("task_struct.state")
	}
	l.flags = f.off("task_struct.flags")
	l.tasks = f.off("task_struct.tasks")
	l.pid = f.off("task_struct.pid")
	l.tgid = f.off("task_struct.tgid")
	l.realParent = f.off("task_struct.real_parent")
	l.signal = f.off("task_struct.signal")
	l.mm = f.off("task_struct.mm")
	l.cred = f.off("task_struct.cred")
	l.comm = f.off("task_struct.comm")
	l.startTime = f.off("task_struct.start_time")
	l.exitState = f.off("task_struct.exit_state")
	l.nrThreads = f.off("signal_struct.nr_threads")
	if f.has("task_struct.thread_node") && f.has("signal_struct.thread_head") {
		l.useThreadHead = true
		l.threadNode = f.off("task_struct.thread_node")
		l.threadHead = f.off("signal_struct.thread_head")
	} else {
		l.threadGroup = f.off("task_struct.thread_group")
	}
	l.credUID = f.off("cred.uid")
	l.credGID = f.off("cred.gid")
	l.credEUID = f.off("cred.euid")
	l.mmPGD = f.off("mm_struct.pgd")
	l.mmExe = f.off("mm_struct.exe_file")
	l.fMnt = f.off("file.f_path") + f.off("path.mnt")
	l.fDentry = f.off("file.f_path") + f.off("path.dentry")
	l.dParent = f.off("dentry.d_parent")
	l.dNameLen = f.off("dentry.d_name") + f.off("qstr.len")
	l.dNamePtr = f.off("dentry.d_name") + f.off("qstr.name")
	l.mntParent = f.off("mount.mnt_parent")
	l.mntMountpoint = f.off("mount.mnt_mountpoint")
	l.mntMnt = f.off("mount.mnt")
	l.vfsRoot = f.off("vfsmount.mnt_root")
	if f.err != nil {
		l.err = fmt.Errorf("linux: task layout: %w", f.err)
		return l
	}
	taskOffs := []uint64{l.state, l.flags, l.tasks, l.pid, l.tgid, l.realParent, l.signal, l.mm, l.cred,
		l.comm, l.comm + 8, l.startTime, l.exitState, l.threadNode, l.threadGroup}
	mmOffs := []uint64{l.mmPGD, l.mmExe}
	l.usage = newUsageLayout(p, l.nrThreads)
	if u := &l.usage; u.err == nil {
		taskOffs = append(taskOffs, u.utime, u.stime, u.runtime)
		if u.hasCPU {
			taskOffs = append(taskOffs, u.cpu)
		}
		mmOffs = append(append(mmOffs, u.totalVM), u.rss...)
	}
	l.args = newArgsLayout(p)
	l.block = spanOf(taskOffs...)
	// Fields more than a cache line apart are read separately: a listing
	// touches ~1,000 scattered task_structs and mm_structs, and copying
	// the bytes between fields costs more in cache misses than a read.
	// (The usage fields fall inside these spans on Linux 6.1: no read more.)
	l.blockParts = clusters(taskOffs, 1024)
	l.mmBlock = spanOf(mmOffs...)
	l.mmParts = clusters(mmOffs, 1024)
	l.credBlock = spanOf(l.credUID, l.credGID, l.credEUID)
	l.dBlock = spanOf(l.dParent, l.dNameLen, l.dNamePtr)
	l.mntBlock = spanOf(l.mntParent, l.mntMountpoint, l.mntMnt+l.vfsRoot)
	if l.block.len() > 64<<10 || l.mmBlock.len() > 64<<10 || l.dBlock.len() > 4096 || l.mntBlock.len() > 4096 || l.credBlock.len() > 64 {
		l.err = fmt.Errorf("linux: task layout: implausible structure offsets")
		return l
	}

	l.setPIDLayout(p)
	l.setRunQueueLayout(p)
	return l
}

// setPIDLayout resolves the PID namespace IDR's offsets (pidErr says why
// they are unusable).
func (l *taskLayout) setPIDLayout(p *Profile) {
	g := &fields{p: p}
	l.pidLinks = g.off("task_struct.pid_links")
	l.pidTasks = g.off("pid.tasks")
	l.pidNumbers = g.off("pid.numbers")
	l.upidNr = g.off("upid.nr")
	l.hlistNodeSize = g.size("hlist_node")
	l.nsXAHead = g.off("pid_namespace.idr") + g.off("idr.idr_rt") + g.off("xarray.xa_head")
	l.xaShift = g.off("xa_node.shift")
	l.xaSlots = g.off("xa_node.slots")
	l.xaSlotsN, _ = g.arrayLen("xa_node.slots")
	if g.err == nil && (l.xaSlotsN == 0 || l.xaSlotsN > 256 || l.xaSlotsN&(l.xaSlotsN-1) != 0) {
		g.err = fmt.Errorf("%w: xa_node.slots has %d entries", ErrNoField, l.xaSlotsN)
	}
	if g.err != nil {
		l.pidErr = fmt.Errorf("linux: PID IDR layout: %w", g.err)
	}
}

// setRunQueueLayout resolves the run queues' offsets (rqErr says why they
// are unusable).
func (l *taskLayout) setRunQueueLayout(p *Profile) {
	r := &fields{p: p}
	l.rqCurr = r.off("rq.curr")
	l.rqTimeline = r.off("rq.cfs") + r.off("cfs_rq.tasks_timeline") + r.off("rb_root_cached.rb_root") + r.off("rb_root.rb_node")
	l.taskSE = r.off("task_struct.se")
	l.seRunNode = r.off("sched_entity.run_node")
	l.rbRight = r.off("rb_node.rb_right")
	l.rbLeft = r.off("rb_node.rb_left")
	if r.has("sched_entity.my_q") {
		l.seMyQ = r.off("sched_entity.my_q")
	}
	l.rqTimelineOffInCFS = r.off("cfs_rq.tasks_timeline") + r.off("rb_root_cached.rb_root") + r.off("rb_root.rb_node")
	if r.err != nil {
		l.rqErr = fmt.Errorf("linux: run-queue layout: %w", r.err)
	}
}

// taskReader reads tasks for one listing. Paths are cached per (mount,
// dentry) for the listing only: most processes share a few executables.
type taskReader struct {
	k          *Kernel
	l          *taskLayout
	pageOffset uint64 // page_offset_base, 0 if unknown
	buf        []byte
	scratch    []byte // for small reads: at least 64 bytes and the mm_struct span
	sigBuf     []byte // signal_struct's usage span
	paths      map[[2]uint64]string
	tgids      map[uint64]int32 // tgid of each task read, by address: for PPID
	// lastBlockRead is the task whose bytes buf holds, 0 if the last read failed.
	lastBlockRead uint64
	// wantGroup makes finish sum each thread group's CPU time (a
	// process listing: each group is read once).
	wantGroup bool
}

func (r *taskReader) readAt(va uint64, b []byte) error {
	_, err := r.k.AS.ReadVirtual(va, b)
	return err
}

// u32at and u64at read through scratch, which does not escape per call.
func (r *taskReader) u32at(va uint64) (uint32, error) {
	if err := r.readAt(va, r.scratch[:4]); err != nil {
		return 0, err
	}
	return le.Uint32(r.scratch), nil
}

func (r *taskReader) u64at(va uint64) (uint64, error) {
	if err := r.readAt(va, r.scratch[:8]); err != nil {
		return 0, err
	}
	return le.Uint64(r.scratch), nil
}

func (k *Kernel) newTaskReader() (*taskReader, error) {
	l := layoutForTasks(k.Profile)
	if l.err != nil {
		return nil, l.err
	}
	r := &taskReader{k: k, l: l, buf: make([]byte, l.block.len()), scratch: make([]byte, max(64, l.mmBlock.len())),
		sigBuf: make([]byte, l.usage.sigBlock.len()), paths: map[[2]uint64]string{}}
	if va, err := k.Addr("page_offset_base"); err == nil {
		if v, err := vmi.ReadU64(k.AS, va); err == nil && isKernelPtr(v) && v&(vmi.PageSize1G-1) == 0 {
			r.pageOffset = v
		}
	}
	return r, nil
}

// isKernelPtr reports whether v is a canonical kernel-half address.
func isKernelPtr(v uint64) bool { return v >= 0xff00000000000000 }

var le = binary.LittleEndian

func (r *taskReader) readU64(va uint64) (uint64, error) { return vmi.ReadU64(r.k.AS, va) }

// taskRefs are the pointers of a task_struct that finish follows.
type taskRefs struct {
	realParent, cred, signal, mm uint64
	kthread                      bool
}

// read reads and validates the task_struct at addr, and what it points to.
func (r *taskReader) read(addr uint64) (Task, error) {
	t, refs, err := r.readCore(addr)
	if err != nil {
		return Task{}, err
	}
	r.noteTGID(t)
	r.finish(&t, refs)
	return t, nil
}

// readCore reads and validates the task_struct's own fields, leaving its
// parent, cred, signal and mm to finish.
func (r *taskReader) readCore(addr uint64) (Task, taskRefs, error) {
	l := r.l
	r.lastBlockRead = 0
	if !isKernelPtr(addr) {
		return Task{}, taskRefs{}, fmt.Errorf("%w: task_struct pointer %#x is not a kernel address", ErrInconsistent, addr)
	}
	b := r.buf
	for _, p := range l.blockParts {
		if _, err := r.k.AS.ReadVirtual(addr+p.lo, b[p.lo-l.block.lo:p.hi-l.block.lo]); err != nil {
			return Task{}, taskRefs{}, fmt.Errorf("linux: read task_struct at %#x: %w", addr, err)
		}
	}
	r.lastBlockRead = addr
	u32 := func(off uint64) uint32 { return le.Uint32(b[off-l.block.lo:]) }
	u64 := func(off uint64) uint64 { return le.Uint64(b[off-l.block.lo:]) }
	pid, tgid := int32(u32(l.pid)), int32(u32(l.tgid))
	if pid < 0 || pid > maxPID || tgid < 0 || tgid > maxPID {
		return Task{}, taskRefs{}, fmt.Errorf("%w: task_struct at %#x: pid %d tgid %d out of range", ErrInconsistent, addr, pid, tgid)
	}
	t := Task{Addr: addr, PID: int(pid), TGID: int(tgid), StartTime: u64(l.startTime)}
	comm := b[l.comm-l.block.lo:][:taskCommLen]
	if i := indexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	t.Comm = string(comm)
	state, exit := u32(l.state), u32(l.exitState)
	t.State = stateLetter(state, exit)
	flags := u32(l.flags)
	refs := taskRefs{realParent: u64(l.realParent), cred: u64(l.cred), signal: u64(l.signal), mm: u64(l.mm), kthread: flags&pfKthread != 0}
	t.KernelThread = refs.kthread || (refs.mm == 0 && exit == 0)
	l.usage.decodeUsage(&t, b, l.block.lo)
	return t, refs, nil
}

// noteTGID records a task's tgid by address, for its children's PPID.
func (r *taskReader) noteTGID(t Task) {
	if r.tgids == nil {
		// Made on first use: a reader for one task (the gates' TaskAt,
		// at every stop) never needs more than a few entries.
		r.tgids = make(map[uint64]int32, 16)
	}
	if len(r.tgids) < MaxTasks {
		r.tgids[t.Addr] = int32(t.TGID)
	}
}

// finish reads what a task points to: its parent's tgid (from the tasks
// read so far when it can), ids from its cred, thread count, and its mm's
// page tables and executable. Nothing here fails the task: a field that
// cannot be read stays zero.
func (r *taskReader) finish(t *Task, refs taskRefs) {
	l := r.l
	if p := refs.realParent; p != 0 && p != t.Addr {
		if v, ok := r.tgids[p]; ok {
			t.PPID = int(v)
		} else if v, err := r.u32at(p + l.tgid); err == nil && v <= maxPID {
			t.PPID = int(v)
		}
	}
	if c := refs.cred; c != 0 {
		if b := r.scratch[:l.credBlock.len()]; r.readAt(c+l.credBlock.lo, b) == nil {
			t.UID = le.Uint32(b[l.credUID-l.credBlock.lo:])
			t.GID = le.Uint32(b[l.credGID-l.credBlock.lo:])
			t.EUID = le.Uint32(b[l.credEUID-l.credBlock.lo:])
		}
	}
	r.readSignal(t, refs.signal)
	if mm := refs.mm; mm != 0 && !refs.kthread {
		var pgd, exe uint64
		m := r.scratch[:l.mmBlock.len()]
		ok := true
		for _, p := range l.mmParts {
			if r.readAt(mm+p.lo, m[p.lo-l.mmBlock.lo:p.hi-l.mmBlock.lo]) != nil {
				ok = false
				break
			}
		}
		if ok {
			pgd, exe = le.Uint64(m[l.mmPGD-l.mmBlock.lo:]), le.Uint64(m[l.mmExe-l.mmBlock.lo:])
			l.usage.decodeMemory(t, m, l.mmBlock.lo)
		}
		t.PGD = r.physical(pgd)
		if exe != 0 {
			t.Exe, _ = r.exePath(exe)
		}
	}
}

// clone returns a reader for another goroutine of the same listing: its
// own buffers and path cache, the task ids read so far shared read-only.
func (r *taskReader) clone() *taskReader {
	c := *r
	c.buf = make([]byte, len(r.buf))
	c.scratch = make([]byte, len(r.scratch))
	c.sigBuf = make([]byte, len(r.sigBuf))
	c.paths = make(map[[2]uint64]string, len(r.paths))
	for k, v := range r.paths {
		c.paths[k] = v
	}
	return &c
}

// physical converts a direct-map address to a physical address: by
// page_offset_base when the kernel has it, else through the page tables.
func (r *taskReader) physical(va uint64) uint64 {
	if va == 0 {
		return 0
	}
	if r.pageOffset != 0 {
		if va >= r.pageOffset && va-r.pageOffset < 1<<52 && va&(vmi.PageSize4K-1) == 0 {
			return va - r.pageOffset
		}
		return 0
	}
	pa, _, err := r.k.AS.Translate(va)
	if err != nil {
		return 0
	}
	return pa
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// stateLetter is the kernel's __task_state_index mapped to ps's letters.
func stateLetter(state, exit uint32) string {
	s := (state | exit) & taskReport
	if state&taskIdle == taskIdle {
		s = taskReportIdle
	}
	if state == taskRTLockWait {
		s = taskUninterrupt
	}
	i := 0
	for s != 0 {
		i++
		s >>= 1
	}
	return taskStates[i : i+1]
}

// exePath returns the path of the struct file at file, from the global root:
// prepend_path() from fs/d_path.c, crossing mounts, bounded in steps and
// length.
func (r *taskReader) exePath(file uint64) (string, error) {
	l := r.l
	var vfsmnt, dentry uint64
	if fb := r.scratch[:16]; l.fMnt+8 == l.fDentry {
		if err := r.readAt(file+l.fMnt, fb); err != nil {
			return "", err
		}
		vfsmnt, dentry = le.Uint64(fb), le.Uint64(fb[8:])
	} else {
		var err error
		if vfsmnt, err = r.u64at(file + l.fMnt); err != nil {
			return "", err
		}
		if dentry, err = r.u64at(file + l.fDentry); err != nil {
			return "", err
		}
	}
	key := [2]uint64{vfsmnt, dentry}
	if p, ok := r.paths[key]; ok {
		return p, nil
	}
	p, err := r.dPath(vfsmnt, dentry)
	if err != nil {
		return "", err
	}
	if len(r.paths) < MaxTasks {
		r.paths[key] = p
	}
	return p, nil
}

// dPath walks from dentry up to the root of the mount tree.
func (r *taskReader) dPath(vfsmnt, dentry uint64) (string, error) {
	l := r.l
	if vfsmnt < l.mntMnt {
		return "", fmt.Errorf("%w: vfsmount %#x", ErrInconsistent, vfsmnt)
	}
	mnt := vfsmnt - l.mntMnt
	mb := make([]byte, l.mntBlock.len())
	db := make([]byte, l.dBlock.len())
	readMount := func() (root, parent, mountpoint uint64, err error) {
		if _, err = r.k.AS.ReadVirtual(mnt+l.mntBlock.lo, mb); err != nil {
			return
		}
		at := func(off uint64) uint64 { return le.Uint64(mb[off-l.mntBlock.lo:]) }
		return at(l.mntMnt + l.vfsRoot), at(l.mntParent), at(l.mntMountpoint), nil
	}
	root, parent, mountpoint, err := readMount()
	if err != nil {
		return "", fmt.Errorf("linux: read mount %#x: %w", mnt, err)
	}
	var comps []string
	total := 0
	for step := 0; ; step++ {
		if step >= maxPathSteps {
			return "", fmt.Errorf("%w: path deeper than %d steps", ErrInconsistent, maxPathSteps)
		}
		if dentry == root {
			if parent == mnt || parent == 0 {
				break // the root of the mount tree
			}
			dentry, mnt = mountpoint, parent
			if root, parent, mountpoint, err = readMount(); err != nil {
				return "", fmt.Errorf("linux: read mount %#x: %w", mnt, err)
			}
			continue
		}
		if _, err := r.k.AS.ReadVirtual(dentry+l.dBlock.lo, db); err != nil {
			return "", fmt.Errorf("linux: read dentry %#x: %w", dentry, err)
		}
		at := func(off uint64) []byte { return db[off-l.dBlock.lo:] }
		dparent := le.Uint64(at(l.dParent))
		if dparent == dentry {
			break // a filesystem root that is not its mount's root (detached)
		}
		n := uint64(le.Uint32(at(l.dNameLen)))
		if n == 0 || n > maxNameLen || total+int(n)+1 > MaxPathLen {
			return "", fmt.Errorf("%w: dentry %#x name length %d", ErrInconsistent, dentry, n)
		}
		name := make([]byte, n)
		if _, err := r.k.AS.ReadVirtual(le.Uint64(at(l.dNamePtr)), name); err != nil {
			return "", fmt.Errorf("linux: read dentry %#x name: %w", dentry, err)
		}
		comps = append(comps, string(name))
		total += int(n) + 1
		dentry = dparent
	}
	if len(comps) == 0 {
		return "/", nil
	}
	var sb strings.Builder
	sb.Grow(total)
	for i := len(comps) - 1; i >= 0; i-- {
		sb.WriteByte('/')
		sb.WriteString(comps[i])
	}
	return sb.String(), nil
}

// Tasks returns the thread-group leaders on init_task.tasks, one per
// process, in list (creation) order; init_task itself (pid 0) is left out.
// Entries that do not validate are skipped and counted: the error is then an
// *IncompleteError and the tasks returned are still valid.
func (k *Kernel) Tasks() ([]Task, error) {
	if k.Profile.Is32() {
		return k.tasks32()
	}
	r, err := k.newTaskReader()
	if err != nil {
		return nil, err
	}
	r.wantGroup = true
	head, err := k.Addr("init_task")
	if err != nil {
		return nil, err
	}
	n := k.taskCountHint()
	out := make([]Task, 0, n)
	refs := make([]taskRefs, 0, n)
	tl := &tally{view: "tasks"}
	tl.stop = r.walkTaskList(head+r.l.tasks, func(t Task, rf taskRefs) {
		out = append(out, t)
		refs = append(refs, rf)
	}, tl)
	r.finishAll(out, refs)
	return out, tl.err()
}

// finishAll runs finish over tasks, in parallel when there are enough of
// them: each task's cred, signal and mm are independent scattered reads,
// so two cores overlap their cache and TLB misses. Parents' tgids are all
// known by now, so most PPIDs cost no read.
func (r *taskReader) finishAll(tasks []Task, refs []taskRefs) {
	r.parallel(len(tasks), func(wr *taskReader, i int) { wr.finish(&tasks[i], refs[i]) })
}

// parallel calls fn for 0..n-1 over a few goroutines, each with its own
// reader (clone: own buffers and path cache; r.tgids shared read-only), or
// on r alone when n is small. fn must only write index i's results.
func (r *taskReader) parallel(n int, fn func(wr *taskReader, i int)) {
	workers := min(runtime.GOMAXPROCS(0), maxFinishWorkers)
	if n < minParallelTasks || workers < 2 {
		for i := 0; i < n; i++ {
			fn(r, i)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wr := r
		if lo > 0 {
			wr = r.clone()
		}
		wg.Add(1)
		go func(wr *taskReader, lo, hi int) {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				fn(wr, i)
			}
		}(wr, lo, hi)
	}
	wg.Wait()
}

// Parallel reads: below minParallelTasks a goroutine costs more than it
// saves.
const (
	minParallelTasks = 256
	maxFinishWorkers = 4
)

// taskCountHint is the kernel's thread count (nr_threads) bounded to
// [64, MaxTasks]: the capacity a listing starts with, so that it does not
// grow its slice ten times. Only a hint: nothing is trusted but the bound.
func (k *Kernel) taskCountHint() int {
	n := 64
	if va, err := k.Addr("nr_threads"); err == nil {
		if v, err := vmi.ReadU32(k.AS, va); err == nil {
			n = min(max(int(int32(v)), 64), MaxTasks)
		}
	}
	return n
}

// walkTaskList walks the task list from its head like vmi.WalkList, but
// takes each next pointer from the task_struct bytes read anyway, and reads
// each task's own fields only (readCore); fn gets the pointers finish
// needs. A task that does not validate is skipped (and the walk goes on
// through its next pointer if that was read); the walk stops at MaxTasks
// entries or a repeated node.
func (r *taskReader) walkTaskList(head uint64, fn func(Task, taskRefs), tl *tally) error {
	node, err := r.readU64(head)
	if err != nil {
		return fmt.Errorf("linux: task list head %#x: %w", head, err)
	}
	seen := make(map[uint64]struct{}, 1024)
	for count := 0; node != head; count++ {
		if count >= MaxTasks {
			return fmt.Errorf("%w: more than %d tasks", vmi.ErrListTooLong, MaxTasks)
		}
		if _, dup := seen[node]; dup {
			return fmt.Errorf("%w: task list node %#x revisited after %d entries", vmi.ErrListCycle, node, count)
		}
		seen[node] = struct{}{}
		t, refs, err := r.readCore(node - r.l.tasks)
		if err != nil {
			tl.skipAt(node-r.l.tasks, err)
			if r.lastBlockRead != node-r.l.tasks {
				return fmt.Errorf("linux: task list stops at %#x: %w", node, err)
			}
		} else {
			r.noteTGID(t)
			fn(t, refs)
		}
		node = le.Uint64(r.buf[r.l.tasks-r.l.block.lo:])
	}
	return nil
}

// Threads returns every thread: each process's leader from Tasks followed by
// the rest of its thread group (signal->thread_head, or the leader's
// thread_group list on kernels without it).
func (k *Kernel) Threads() ([]Task, error) {
	leaders, lerr := k.Tasks()
	if leaders == nil && lerr != nil && !errors.Is(lerr, ErrIncomplete) {
		return nil, lerr
	}
	r, err := k.newTaskReader()
	if err != nil {
		return nil, err
	}
	l := r.l
	tl := &tally{view: "threads"}
	tl.merge(lerr)
	seen := make(map[uint64]bool, len(leaders))
	out := make([]Task, 0, len(leaders))
	for _, lt := range leaders {
		if len(out) >= MaxTasks {
			tl.stop = fmt.Errorf("%w: more than %d threads", vmi.ErrListTooLong, MaxTasks)
			break
		}
		seen[lt.Addr] = true
		out = append(out, lt)
		var head, linkOff uint64
		if l.useThreadHead {
			sig, err := r.readU64(lt.Addr + l.signal)
			if err != nil || sig == 0 {
				continue
			}
			head, linkOff = sig+l.threadHead, l.threadNode
		} else {
			head, linkOff = lt.Addr+l.threadGroup, l.threadGroup
		}
		werr := vmi.WalkList(k.AS, head, MaxTasks, func(node uint64) error {
			addr := node - linkOff
			if seen[addr] {
				return nil
			}
			if len(out) >= MaxTasks {
				return fmt.Errorf("%w: more than %d threads", vmi.ErrListTooLong, MaxTasks)
			}
			t, err := r.read(addr)
			if err != nil {
				tl.skipAt(addr, err)
				return nil
			}
			if t.TGID != lt.TGID {
				tl.skipAt(addr, fmt.Errorf("%w: thread %#x of tgid %d has tgid %d", ErrInconsistent, addr, lt.TGID, t.TGID))
				return nil
			}
			t.GroupUTime, t.GroupSTime, t.GroupRuntime = lt.GroupUTime, lt.GroupSTime, lt.GroupRuntime
			seen[addr] = true
			out = append(out, t)
			return nil
		})
		if werr != nil {
			tl.skip(fmt.Errorf("linux: thread group of pid %d: %w", lt.PID, werr))
		}
	}
	return out, tl.err()
}

// PIDNamespaceTasks returns every task reachable from init_pid_ns's IDR:
// each struct pid in the radix tree, then the tasks attached to it as
// PIDTYPE_PID. It lists threads as well as leaders, sorted by pid.
func (k *Kernel) PIDNamespaceTasks() ([]Task, error) {
	r, err := k.newTaskReader()
	if err != nil {
		return nil, err
	}
	l := r.l
	if l.pidErr != nil {
		return nil, l.pidErr
	}
	ns, err := k.Addr("init_pid_ns")
	if err != nil {
		return nil, err
	}
	tl := &tally{view: "pid_idr"}
	var out []Task
	seen := map[uint64]bool{}
	tl.stop = k.walkXArray(ns+l.nsXAHead, l, func(index, entry uint64) error {
		// pid->tasks[PIDTYPE_PID] is an hlist of task_struct.pid_links[PIDTYPE_PID].
		node, err := r.readU64(entry + l.pidTasks)
		if err != nil {
			tl.skip(fmt.Errorf("linux: struct pid %#x (index %d): %w", entry, index, err))
			return nil
		}
		for i := 0; node != 0; i++ {
			if i >= maxPIDHlist {
				tl.skip(fmt.Errorf("%w: struct pid %#x has more than %d tasks", ErrInconsistent, entry, maxPIDHlist))
				break
			}
			addr := node - l.pidLinks
			if seen[addr] {
				break
			}
			seen[addr] = true
			t, err := r.read(addr)
			if err != nil {
				tl.skipAt(addr, err)
				break
			}
			if len(out) >= MaxTasks {
				return fmt.Errorf("%w: more than %d tasks", vmi.ErrListTooLong, MaxTasks)
			}
			out = append(out, t)
			if node, err = r.readU64(node); err != nil {
				tl.skip(err)
				break
			}
		}
		return nil
	})
	return out, tl.err()
}

// walkXArray visits every entry of the xarray (radix tree) whose xa_head
// is at headAddr, in index order: depth, node count and cycles are bounded.
// Internal entries that are not nodes (sibling, retry, zero) and value
// entries are skipped; fn sees only plain pointers.
func (k *Kernel) walkXArray(headAddr uint64, l *taskLayout, fn func(index, entry uint64) error) error {
	head, err := vmi.ReadU64(k.AS, headAddr)
	if err != nil {
		return fmt.Errorf("linux: xarray head %#x: %w", headAddr, err)
	}
	isNode := func(e uint64) bool { return e&3 == 2 && e > 4096 }
	if !isNode(head) {
		if head != 0 && head&3 == 0 {
			return fn(0, head)
		}
		return nil
	}
	nodes := 0
	seen := map[uint64]bool{}
	slots := make([]byte, 8*l.xaSlotsN)
	bits := uint64(0)
	for n := l.xaSlotsN; n > 1; n >>= 1 {
		bits++
	}
	var walk func(node, index uint64, wantShift int, depth int) error
	walk = func(node, index uint64, wantShift int, depth int) error {
		if depth > maxIDRDepth {
			return fmt.Errorf("%w: xarray deeper than %d levels", ErrInconsistent, maxIDRDepth)
		}
		if seen[node] {
			return fmt.Errorf("%w: xarray node %#x reached twice", vmi.ErrListCycle, node)
		}
		seen[node] = true
		if nodes++; nodes > maxIDRNodes {
			return fmt.Errorf("%w: more than %d xarray nodes", vmi.ErrListTooLong, maxIDRNodes)
		}
		var sb [1]byte
		if _, err := k.AS.ReadVirtual(node+l.xaShift, sb[:]); err != nil {
			return fmt.Errorf("linux: xarray node %#x: %w", node, err)
		}
		shift := int(sb[0])
		if shift%int(bits) != 0 || shift >= 64 || (wantShift >= 0 && shift != wantShift) {
			return fmt.Errorf("%w: xarray node %#x has shift %d (want %d)", ErrInconsistent, node, shift, wantShift)
		}
		buf := make([]byte, len(slots))
		if _, err := k.AS.ReadVirtual(node+l.xaSlots, buf); err != nil {
			return fmt.Errorf("linux: xarray node %#x slots: %w", node, err)
		}
		for i := uint64(0); i < l.xaSlotsN; i++ {
			e := le.Uint64(buf[8*i:])
			idx := index | i<<uint(shift)
			switch {
			case e == 0 || e&1 == 1: // empty, or a value entry
			case isNode(e):
				if shift == 0 {
					continue // a node below the leaves: ignore
				}
				if err := walk(e-2, idx, shift-int(bits), depth+1); err != nil {
					return err
				}
			case e&3 == 2: // sibling, retry or zero entry
			case shift == 0 || e&3 == 0:
				if err := fn(idx, e); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(head-2, 0, -1, 0)
}

// RunQueueTasks returns the tasks on each online CPU's run queue: rq->curr
// and the CFS red-black tree (descending into group entities' queues). It
// is best effort: real-time and deadline queues are not read, and idle
// tasks (pid 0) are left out.
func (k *Kernel) RunQueueTasks() ([]Task, error) {
	r, err := k.newTaskReader()
	if err != nil {
		return nil, err
	}
	l := r.l
	if l.rqErr != nil {
		return nil, l.rqErr
	}
	rqs, err := k.runQueues()
	if err != nil {
		return nil, err
	}
	tl := &tally{view: "runqueue"}
	var out []Task
	seen := map[uint64]bool{}
	add := func(addr uint64) {
		if addr == 0 || seen[addr] || len(out) >= MaxTasks {
			return
		}
		seen[addr] = true
		t, err := r.read(addr)
		if err != nil {
			tl.skipAt(addr, err)
			return
		}
		if t.PID == 0 {
			return
		}
		out = append(out, t)
	}
	nodes := 0
	for _, rq := range rqs {
		curr, err := r.readU64(rq + l.rqCurr)
		if err != nil {
			tl.skip(fmt.Errorf("linux: rq %#x: %w", rq, err))
			continue
		}
		add(curr)
		if err := k.walkCFS(rq+l.rqTimeline, l, 0, &nodes, add); err != nil {
			tl.skip(fmt.Errorf("linux: rq %#x: %w", rq, err))
		}
	}
	return out, tl.err()
}

// runQueues returns the address of each online CPU's struct rq.
func (k *Kernel) runQueues() ([]uint64, error) {
	rqSym, err := k.Profile.Symbol("runqueues")
	if err != nil {
		return nil, err
	}
	offs, err := k.Addr("__per_cpu_offset")
	if err != nil {
		return nil, err
	}
	ncpuVA, err := k.Addr("nr_cpu_ids")
	if err != nil {
		return nil, err
	}
	ncpu, err := vmi.ReadU32(k.AS, ncpuVA)
	if err != nil {
		return nil, fmt.Errorf("linux: nr_cpu_ids: %w", err)
	}
	if ncpu == 0 || ncpu > maxCPUs {
		return nil, fmt.Errorf("%w: nr_cpu_ids %d", ErrInconsistent, ncpu)
	}
	var online []byte
	if va, err := k.Addr("__cpu_online_mask"); err == nil {
		online = make([]byte, (ncpu+7)/8)
		if _, err := k.AS.ReadVirtual(va, online); err != nil {
			online = nil
		}
	}
	// Per-CPU symbols are offsets from each CPU's area (x86-64 keeps them
	// zero-based and KASLR does not move them); others are in the image.
	base := rqSym
	if isKernelPtr(rqSym) {
		base += k.Slide
	}
	var rqs []uint64
	for cpu := uint32(0); cpu < ncpu; cpu++ {
		if online != nil && online[cpu/8]&(1<<(cpu%8)) == 0 {
			continue
		}
		off, err := vmi.ReadU64(k.AS, offs+8*uint64(cpu))
		if err != nil {
			return nil, fmt.Errorf("linux: __per_cpu_offset[%d]: %w", cpu, err)
		}
		rqs = append(rqs, base+off)
	}
	return rqs, nil
}

// walkCFS visits the sched entities of the CFS tree whose root pointer is at
// rootAddr: tasks go to add, group entities' queues (se->my_q) are walked
// in turn. Depth and node count are bounded and cycles are caught.
func (k *Kernel) walkCFS(rootAddr uint64, l *taskLayout, level int, nodes *int, add func(uint64)) error {
	if level > 8 {
		return fmt.Errorf("%w: task groups nested deeper than 8", ErrInconsistent)
	}
	root, err := vmi.ReadU64(k.AS, rootAddr)
	if err != nil {
		return err
	}
	type frame struct {
		node  uint64
		depth int
	}
	stack := []frame{}
	if root != 0 {
		stack = append(stack, frame{root, 0})
	}
	visited := map[uint64]bool{}
	for len(stack) > 0 {
		f := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if f.depth > maxRBDepth {
			return fmt.Errorf("%w: red-black tree deeper than %d", ErrInconsistent, maxRBDepth)
		}
		if visited[f.node] {
			return fmt.Errorf("%w: red-black node %#x reached twice", vmi.ErrListCycle, f.node)
		}
		visited[f.node] = true
		if *nodes++; *nodes > MaxTasks {
			return fmt.Errorf("%w: more than %d run-queue entities", vmi.ErrListTooLong, MaxTasks)
		}
		var nb [24]byte
		lo := min(l.rbRight, l.rbLeft)
		if _, err := k.AS.ReadVirtual(f.node+lo, nb[:16]); err != nil {
			return fmt.Errorf("linux: red-black node %#x: %w", f.node, err)
		}
		right, left := le.Uint64(nb[l.rbRight-lo:]), le.Uint64(nb[l.rbLeft-lo:])
		se := f.node - l.seRunNode
		var myQ uint64
		if l.seMyQ != 0 {
			if myQ, err = vmi.ReadU64(k.AS, se+l.seMyQ); err != nil {
				return fmt.Errorf("linux: sched_entity %#x: %w", se, err)
			}
		}
		if myQ != 0 {
			if err := k.walkCFS(myQ+l.rqTimelineOffInCFS, l, level+1, nodes, add); err != nil {
				return err
			}
		} else {
			add(se - l.taskSE)
		}
		for _, c := range []uint64{right, left} {
			if c != 0 {
				stack = append(stack, frame{c, f.depth + 1})
			}
		}
	}
	return nil
}
