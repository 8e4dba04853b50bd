package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// What a task uses: the CPU it last ran on, its CPU time, its memory.
//
// The CPU is task_struct.cpu on kernels that keep it there and
// thread_info.cpu (the first member of task_struct) on those that moved it
// (x86-64 since 5.16). CPU time is read twice over: task_struct.utime and
// stime, in nanoseconds as the kernel's tick (or vtime) accounting samples
// them (what crash's ps -t shows), and se.sum_exec_runtime, the runtime the
// scheduler measured to the nanosecond. /proc/PID/stat scales utime and
// stime so that they add up to that runtime (cputime_adjust), so ps's TIME
// is the runtime, truncated to 1/100 s per field; the sampled figures
// differ from it by up to a few ticks per thread (4 ms each at HZ=250;
// under TCG, where ticks are late, tens of ms). A thread group's figures
// are the sums over its live threads plus signal_struct's utime, stime and
// sum_sched_runtime, where exited threads leave theirs
// (thread_group_cputime).
//
// VSZ is mm_struct.total_vm pages. RSS is the file, anon and shmem
// resident-page counters, as /proc/PID/status's VmRSS: on Linux 6.1 and
// before, mm_struct.rss_stat is a struct mm_rss_stat whose count[] holds
// NR_MM_COUNTERS atomic_long_t (with SPLIT_RSS_COUNTING each task batches
// up to 64 page faults in its own task_struct.rss_stat before adding them
// to the mm's, and /proc reads only the mm's, negative values as 0); from
// 6.2 it is an array of NR_MM_COUNTERS struct percpu_counter whose count
// /proc reads (percpu_counter_read_positive), the per-CPU deltas not
// summed. Both layouts are read from BTF; the counters' indices are the
// anonymous enum's MM_FILEPAGES (0), MM_ANONPAGES (1) and MM_SHMEMPAGES
// (3), unchanged since Linux 4.5; BTF's array length must be
// NR_MM_COUNTERS (4), else the enum itself is looked up in BTF.

// usageLayout holds the offsets of what a task uses. err says why usage
// cannot be read on this kernel: the fields then stay zero.
type usageLayout struct {
	err error

	cpu          uint64 // task_struct.cpu or .thread_info.cpu (4 bytes)
	hasCPU       bool   // false on uniprocessor kernels, which have no cpu field
	utime, stime uint64 // task_struct
	runtime      uint64 // task_struct.se.sum_exec_runtime
	// sigUTime, sigSTime and sigRuntime are signal_struct's times of
	// exited threads; sigParts the spans one read of them (and
	// nr_threads) covers.
	sigUTime, sigSTime, sigRuntime uint64
	sigParts                       []span
	sigBlock                       span
	totalVM                        uint64   // mm_struct.total_vm (pages)
	rss                            []uint64 // mm_struct offsets of the file, anon and shmem counters (signed 64-bit)
}

// Counter indices into mm_struct.rss_stat (include/linux/mm_types_task.h).
const (
	mmFilePages  = 0
	mmAnonPages  = 1
	mmShmemPages = 3
	nrMMCounters = 4
)

// pageSize is the size of a page on x86-64, for total_vm and the RSS counters.
const pageSize = vmi.PageSize4K

func newUsageLayout(p *Profile, nrThreads uint64) usageLayout {
	var l usageLayout
	f := &fields{p: p}
	switch {
	case f.has("task_struct.cpu"):
		l.cpu, l.hasCPU = f.off("task_struct.cpu"), true
	case f.has("task_struct.thread_info.cpu"):
		l.cpu, l.hasCPU = f.off("task_struct.thread_info.cpu"), true
	}
	l.utime = f.off("task_struct.utime")
	l.stime = f.off("task_struct.stime")
	l.runtime = f.off("task_struct.se.sum_exec_runtime")
	l.sigUTime = f.off("signal_struct.utime")
	l.sigSTime = f.off("signal_struct.stime")
	l.sigRuntime = f.off("signal_struct.sum_sched_runtime")
	l.totalVM = f.off("mm_struct.total_vm")
	if f.err != nil {
		l.err = fmt.Errorf("linux: usage layout: %w", f.err)
		return l
	}
	rss, err := rssCounters(p)
	if err != nil {
		l.err = fmt.Errorf("linux: usage layout: %w", err)
		return l
	}
	l.rss = rss
	offs := []uint64{nrThreads, l.sigUTime, l.sigSTime, l.sigRuntime}
	l.sigBlock = spanOf(offs...)
	l.sigParts = clusters(offs, 1024) // one read on 6.1: 680 bytes copy faster than three reads
	if l.sigBlock.len() > 16<<10 {
		l.err = fmt.Errorf("linux: usage layout: implausible signal_struct offsets")
	}
	return l
}

// rssCounters returns the mm_struct offsets of the file, anon and shmem
// resident-page counters, for either layout of mm_struct.rss_stat.
func rssCounters(p *Profile) ([]uint64, error) {
	base, typ, err := p.Field("mm_struct.rss_stat")
	if err != nil {
		return nil, err
	}
	var first, stride, n uint64
	switch typ.Kind {
	case KindStruct: // struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
		off, ctyp, err := p.Field("mm_rss_stat.count")
		if err != nil {
			return nil, err
		}
		if ctyp.Kind != KindArray {
			return nil, fmt.Errorf("%w: mm_rss_stat.count is not an array", ErrNoField)
		}
		if ctyp.ElemSize != 8 {
			return nil, fmt.Errorf("%w: mm_rss_stat.count has %d-byte counters", ErrNoField, ctyp.ElemSize)
		}
		first, stride, n = base+off, 8, ctyp.Nelems
	case KindArray: // struct percpu_counter rss_stat[NR_MM_COUNTERS] (6.2+)
		if sz := typ.ElemSize; sz < 8 || sz > 256 {
			return nil, fmt.Errorf("%w: mm_struct.rss_stat elements of %d bytes", ErrNoField, sz)
		}
		off, err := p.FieldOffset("percpu_counter.count")
		if err != nil {
			return nil, err
		}
		first, stride, n = base+off, typ.ElemSize, typ.Nelems
	default:
		return nil, fmt.Errorf("%w: mm_struct.rss_stat is of kind %d", ErrNoField, typ.Kind)
	}
	idx := []uint64{mmFilePages, mmAnonPages, mmShmemPages}
	if n != nrMMCounters {
		var err error
		if idx, err = mmCounterEnum(p, n); err != nil {
			return nil, err
		}
	}
	out := make([]uint64, len(idx))
	for i, x := range idx {
		out[i] = first + x*stride
	}
	return out, nil
}

// mmCounterEnum reads MM_FILEPAGES, MM_ANONPAGES and MM_SHMEMPAGES from
// the kernel's BTF (an anonymous enum: every type is scanned, ~0.1 s),
// for kernels whose counters are not the four of 4.5 to 6.x.
func mmCounterEnum(p *Profile, n uint64) ([]uint64, error) {
	want := []string{"MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES"}
	src, err := p.layouts()
	if err != nil {
		return nil, fmt.Errorf("%w: mm counters: %w", ErrNoField, err)
	}
	out := make([]uint64, 0, len(want))
	for _, w := range want {
		if v, ok := src.enumValue(w); ok && v < n {
			out = append(out, v)
		}
	}
	if len(out) == len(want) {
		return out, nil
	}
	return nil, fmt.Errorf("%w: rss_stat has %d counters and BTF has no MM_FILEPAGES/MM_ANONPAGES/MM_SHMEMPAGES below it", ErrNoField, n)
}

// decodeUsage sets the task's CPU and CPU time from its task_struct
// bytes b, which start at offset lo of the structure.
func (l *usageLayout) decodeUsage(t *Task, b []byte, lo uint64) {
	if l.err != nil {
		return
	}
	t.CPU = -1
	if l.hasCPU {
		if c := le.Uint32(b[l.cpu-lo:]); c < maxCPUs {
			t.CPU = int(c)
		}
	}
	t.UTime, t.STime = le.Uint64(b[l.utime-lo:]), le.Uint64(b[l.stime-lo:])
	t.Runtime = le.Uint64(b[l.runtime-lo:])
}

// decodeMemory sets the task's VSZ and RSS from its mm_struct bytes b,
// which start at offset lo of the structure.
func (l *usageLayout) decodeMemory(t *Task, b []byte, lo uint64) {
	if l.err != nil {
		return
	}
	t.VSZ = clampPages(le.Uint64(b[l.totalVM-lo:]))
	var rss uint64
	for _, off := range l.rss {
		if v := int64(le.Uint64(b[off-lo:])); v > 0 { // a batched counter may be negative: /proc reads 0
			rss += uint64(v)
		}
	}
	t.RSS = clampPages(rss)
}

// readSignal sets the task's thread count from its signal_struct at s
// and, in a process listing (wantGroup), its thread group's CPU time.
func (r *taskReader) readSignal(t *Task, s uint64) {
	l := r.l
	u := &l.usage
	if s == 0 {
		return
	}
	if !r.wantGroup || u.err != nil {
		if v, err := r.u32at(s + l.nrThreads); err == nil && int32(v) > 0 && v <= MaxTasks {
			t.Threads = int(v)
		}
		return
	}
	b := r.sigBuf
	for _, p := range u.sigParts {
		if r.readAt(s+p.lo, b[p.lo-u.sigBlock.lo:p.hi-u.sigBlock.lo]) != nil {
			return
		}
	}
	if v := le.Uint32(b[l.nrThreads-u.sigBlock.lo:]); int32(v) > 0 && v <= MaxTasks {
		t.Threads = int(v)
	}
	r.groupTimes(t, s, b)
}

// maxPages bounds a page count taken from the guest (2^52 bytes of
// physical address space), so that the byte count cannot overflow.
const maxPages = 1 << 40

func clampPages(n uint64) uint64 { return min(n, maxPages) * pageSize }

// groupTimes sets t's thread group's CPU time: signal_struct's (exited
// threads) plus every live thread's. sigBytes holds signal_struct's bytes
// (sigBlock). The thread list is walked only for a group of more than one
// thread, bounded like Threads.
func (r *taskReader) groupTimes(t *Task, sig uint64, sigBytes []byte) {
	u := &r.l.usage
	at := func(off uint64) uint64 { return le.Uint64(sigBytes[off-u.sigBlock.lo:]) }
	t.GroupUTime = at(u.sigUTime) + t.UTime
	t.GroupSTime = at(u.sigSTime) + t.STime
	t.GroupRuntime = at(u.sigRuntime) + t.Runtime
	if t.Threads <= 1 {
		return
	}
	head, link := sig+r.l.threadHead, r.l.threadNode
	if !r.l.useThreadHead {
		head, link = t.Addr+r.l.threadGroup, r.l.threadGroup
	}
	_ = vmi.WalkList(r.k.AS, head, min(t.Threads+1, MaxTasks), func(node uint64) error {
		if th := node - link; th != t.Addr {
			ut, st, rt := r.threadTimes(th)
			t.GroupUTime += ut
			t.GroupSTime += st
			t.GroupRuntime += rt
		}
		return nil
	})
}

// threadTimes reads a thread's utime, stime and runtime (0 for what
// cannot be read: the group's sums are then short of it).
func (r *taskReader) threadTimes(th uint64) (ut, st, rt uint64) {
	u := &r.l.usage
	if lo := min(u.utime, u.stime); max(u.utime, u.stime) == lo+8 {
		if b := r.scratch[:16]; r.readAt(th+lo, b) == nil {
			ut, st = le.Uint64(b[u.utime-lo:]), le.Uint64(b[u.stime-lo:])
		}
	} else {
		ut, _ = r.u64at(th + u.utime)
		st, _ = r.u64at(th + u.stime)
	}
	rt, _ = r.u64at(th + u.runtime)
	return ut, st, rt
}
