package linux

import (
	"errors"
	"fmt"
	"strings"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// A process's argument vector and environment are in its own memory, in
// the range of its stack that mm_struct's arg_start..arg_end and
// env_start..env_end delimit: NUL-terminated strings. They are read here
// through the process's page tables (mm->pgd), as /proc/PID/cmdline and
// /proc/PID/environ read them (get_mm_cmdline, environ_read), with three
// differences: every read is bounded (MaxArgBytes, MaxEnvBytes, and
// MaxArgsTotal for a listing), a page that is not in memory (swapped out,
// or never touched) is reported as such where the kernel would fault it
// in, and nothing is ever written.

// Bounds on what is read from processes' memory.
const (
	// MaxArgBytes bounds the argument vector read from one process.
	MaxArgBytes = 4 << 10
	// MaxEnvBytes bounds the environment read from one process.
	MaxEnvBytes = 16 << 10
	// MaxArgsTotal bounds what one listing reads from all processes:
	// past it, processes are listed without their strings and the listing
	// is incomplete.
	MaxArgsTotal = 2 << 20
)

// UserStrings are NUL-terminated strings read from a process's memory.
type UserStrings struct {
	// Strings are the strings in order (argv[0] first). Guest bytes that
	// are not UTF-8 stay as they are here; JSON shows them as U+FFFD.
	Strings []string `json:"strings"`
	// Size is the length of the range the kernel records, in bytes.
	Size uint64 `json:"size"`
	// Truncated is set when the range is longer than the bound: only its
	// first bytes were read.
	Truncated bool `json:"truncated,omitempty"`
	// NotPresent counts the bytes that were not read because their page is
	// not in memory: the range from the first such page to the end of what
	// was to be read. They are unknown, not empty.
	NotPresent uint64 `json:"not_present,omitempty"`
	// NotPresentWhy says why: "swapped out" (the page-table entry holds a
	// swap entry or another non-present value) or "never touched" (no entry).
	NotPresentWhy string `json:"not_present_why,omitempty"`
	// Error says why the strings could not be read (then they are empty),
	// or why reading stopped early.
	Error string `json:"error,omitempty"`
}

// ProcessArgs is one process's argument vector and, when asked for, its
// environment.
type ProcessArgs struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	// Addr is the task_struct's kernel virtual address.
	Addr         uint64 `json:"addr"`
	KernelThread bool   `json:"kernel_thread"`
	// Args is what /proc/PID/cmdline shows (empty for kernel threads and
	// zombies, which have no memory of their own).
	Args UserStrings `json:"args"`
	// Env is what /proc/PID/environ shows, nil unless asked for.
	Env *UserStrings `json:"env,omitempty"`
}

// argsLayout holds mm_struct's argument and environment bounds.
type argsLayout struct {
	err                                     error
	pgd, argStart, argEnd, envStart, envEnd uint64
	block                                   span
	parts                                   []span
}

func newArgsLayout(p *Profile) argsLayout {
	var l argsLayout
	f := &fields{p: p}
	l.pgd = f.off("mm_struct.pgd")
	l.argStart = f.off("mm_struct.arg_start")
	l.argEnd = f.off("mm_struct.arg_end")
	l.envStart = f.off("mm_struct.env_start")
	l.envEnd = f.off("mm_struct.env_end")
	if f.err != nil {
		l.err = fmt.Errorf("linux: argument layout: %w", f.err)
		return l
	}
	offs := []uint64{l.pgd, l.argStart, l.argEnd, l.envStart, l.envEnd}
	l.block, l.parts = spanOf(offs...), clusters(offs, 256)
	if l.block.len() > 64<<10 {
		l.err = fmt.Errorf("linux: argument layout: implausible mm_struct offsets")
	}
	return l
}

// mmArgs are the bounds get_mm_cmdline and environ_read use.
type mmArgs struct {
	pgd                                uint64 // physical
	argStart, argEnd, envStart, envEnd uint64
}

// userTop is the end of user space with 4-level paging (TASK_SIZE_MAX plus
// the guard page); with 5-level paging it is 1<<56.
func userTop(la57 bool) uint64 {
	if la57 {
		return 1 << 56
	}
	return 1 << 47
}

// ProcessArgs reads the argument vector of each task (a process listing,
// as from Tasks) and, with env, its environment. Kernel threads are listed
// with nothing read. A process whose memory cannot be read has the reason
// in its Args.Error; past MaxArgsTotal bytes in all, processes are listed
// unread and the error is an *IncompleteError (the rows are still true).
func (k *Kernel) ProcessArgs(tasks []Task, env bool) ([]ProcessArgs, error) {
	r, err := k.newTaskReader()
	if err != nil {
		return nil, err
	}
	if r.l.args.err != nil {
		return nil, r.l.args.err
	}
	tl := &tally{view: "args"}
	budget := MaxArgsTotal
	mmBuf := make([]byte, r.l.args.block.len())
	out := make([]ProcessArgs, 0, len(tasks))
	for _, t := range tasks {
		pa := ProcessArgs{PID: t.PID, Comm: t.Comm, Addr: t.Addr, KernelThread: t.KernelThread}
		if env {
			pa.Env = &UserStrings{}
		}
		switch {
		case t.KernelThread:
		case budget <= 0:
			pa.Args.Error = fmt.Sprintf("not read: the listing's bound of %d bytes is reached", MaxArgsTotal)
			if pa.Env != nil {
				pa.Env.Error = pa.Args.Error
			}
			if tl.stop == nil {
				tl.stop = fmt.Errorf("%w: more than %d bytes of arguments", vmi.ErrListTooLong, MaxArgsTotal)
			}
		default:
			budget -= r.processArgs(&pa, t, mmBuf)
		}
		out = append(out, pa)
	}
	return out, tl.err()
}

// processArgs fills pa's strings for task t and returns the bytes read;
// mmBuf holds the mm_struct's bytes.
func (r *taskReader) processArgs(pa *ProcessArgs, t Task, mmBuf []byte) int {
	m, err := r.readMMArgs(t.Addr, mmBuf)
	if err != nil {
		pa.Args.Error = err.Error()
		if pa.Env != nil {
			pa.Env.Error = err.Error()
		}
		return 0
	}
	as := &userSpace{as: vmi.AddressSpace{Mem: r.k.AS.Mem, CR3: m.pgd, LA57: r.k.AS.LA57, Paging: r.k.AS.Paging, TTBR1: r.k.AS.TTBR1}}
	top := userTop(as.as.LA57)
	if as.as.Paging == vmi.PagingARM64 {
		top = 1 << 48 // TASK_SIZE_64 with 48-bit addresses
	}
	pa.Args = cmdline(as, m, top)
	n := pa.Args.bytes()
	if pa.Env != nil {
		*pa.Env = readStrings(as, m.envStart, m.envEnd, MaxEnvBytes, top)
		n += pa.Env.bytes()
	}
	return n
}

// errNoMM means a process has no memory of its own to read.
var errNoMM = errors.New("no mm: the process has exited (a zombie) or is a kernel thread")

// readMMArgs reads task->mm's page-table root and argument bounds into b
// (the argument layout's block).
func (r *taskReader) readMMArgs(task uint64, b []byte) (mmArgs, error) {
	l := &r.l.args
	mm, err := r.u64at(task + r.l.mm)
	if err != nil {
		return mmArgs{}, fmt.Errorf("linux: task %#x mm: %w", task, err)
	}
	if mm == 0 {
		return mmArgs{}, errNoMM
	}
	if !isKernelPtr(mm) {
		return mmArgs{}, fmt.Errorf("%w: task %#x: mm %#x is not a kernel address", ErrInconsistent, task, mm)
	}
	for _, p := range l.parts {
		if err := r.readAt(mm+p.lo, b[p.lo-l.block.lo:p.hi-l.block.lo]); err != nil {
			return mmArgs{}, fmt.Errorf("linux: read mm_struct %#x: %w", mm, err)
		}
	}
	u64 := func(off uint64) uint64 { return le.Uint64(b[off-l.block.lo:]) }
	m := mmArgs{pgd: r.physical(u64(l.pgd)), argStart: u64(l.argStart), argEnd: u64(l.argEnd),
		envStart: u64(l.envStart), envEnd: u64(l.envEnd)}
	if m.pgd == 0 {
		return mmArgs{}, fmt.Errorf("%w: mm_struct %#x: pgd %#x is not in the direct map", ErrInconsistent, mm, u64(l.pgd))
	}
	return m, nil
}

// cmdline reads the argument vector as get_mm_cmdline does: arg_start up
// to arg_end, or, when the last byte of that range is not NUL (the
// process rewrote its arguments with setproctitle), the first string from
// arg_start, up to a page and running on into the environment when the
// environment directly follows.
func cmdline(as *userSpace, m mmArgs, top uint64) UserStrings {
	if m.argStart >= m.argEnd {
		if m.argStart > m.argEnd {
			return UserStrings{Error: fmt.Sprintf("inconsistent mm: arg_start %#x after arg_end %#x", m.argStart, m.argEnd)}
		}
		return UserStrings{Strings: []string{}}
	}
	if m.argEnd > top {
		return UserStrings{Error: fmt.Sprintf("inconsistent mm: arg_end %#x is not a user address", m.argEnd)}
	}
	var last [1]byte
	if err := as.read(m.argEnd-1, last[:]); err != nil || last[0] == 0 {
		return readStrings(as, m.argStart, m.argEnd, MaxArgBytes, top)
	}
	// setproctitle: the kernel reads one page from arg_start, within the
	// arguments and the environment right after them, up to the first NUL.
	end := m.argEnd
	if m.envStart == m.argEnd && m.envEnd >= m.envStart && m.envEnd <= top {
		end = m.envEnd
	}
	end = min(end, m.argStart+vmi.PageSize4K)
	us := readStrings(as, m.argStart, end, MaxArgBytes, top)
	if len(us.Strings) > 1 {
		us.Strings = us.Strings[:1]
	}
	return us
}

// readStrings reads [start, end) of a process's memory, at most max bytes
// of it, and splits it into strings.
func readStrings(as *userSpace, start, end uint64, max int, top uint64) UserStrings {
	if start > end || end > top {
		return UserStrings{Error: fmt.Sprintf("inconsistent mm: range %#x-%#x is not in user space", start, end)}
	}
	us := UserStrings{Size: end - start}
	n := us.Size
	if n > uint64(max) {
		n, us.Truncated = uint64(max), true
	}
	data, notPresent, why, err := readUser(as, start, n)
	us.NotPresent, us.NotPresentWhy = notPresent, why
	if err != nil {
		us.Error = err.Error()
	}
	us.Strings = SplitStrings(data)
	return us
}

// readUser reads n bytes at va through as, page by page. It stops at the
// first page that is not present and returns what it read before, the
// bytes left unread and why the page is missing; any other failure is an
// error (with the bytes read before it).
func readUser(as *userSpace, va, n uint64) (data []byte, notPresent uint64, why string, err error) {
	data = make([]byte, 0, n)
	for uint64(len(data)) < n {
		addr := va + uint64(len(data))
		chunk := min(n-uint64(len(data)), vmi.PageSize4K-addr&(vmi.PageSize4K-1))
		buf := data[len(data) : len(data)+int(chunk)]
		if err := as.read(addr, buf); err != nil {
			te := (*vmi.TranslationError)(nil)
			if errors.As(err, &te) && errors.Is(err, vmi.ErrNotMapped) {
				why = "swapped out"
				if te.Entry == 0 {
					why = "never touched"
				}
				return data, n - uint64(len(data)), why, nil
			}
			return data, 0, "", fmt.Errorf("read user memory at %#x: %w", addr, err)
		}
		data = data[:len(data)+int(chunk)]
	}
	return data, 0, "", nil
}

// SplitStrings splits NUL-terminated strings as /proc/PID/cmdline and
// environ hold them: "a\x00b\x00" is ["a", "b"]; a last string without
// its NUL (cut by a bound) is kept; no bytes is no strings. Joining the
// result with NULs and adding one gives the bytes back, but for a last
// string that had no NUL.
func SplitStrings(b []byte) []string {
	if len(b) == 0 {
		return []string{}
	}
	if b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return strings.Split(string(b), "\x00")
}

// userSpace reads a process's memory through its page tables, keeping
// the last page's translation: the argument vector's last byte, the
// arguments and the environment are most often on one page, read with
// one walk instead of three.
type userSpace struct {
	as       vmi.AddressSpace
	page, pa uint64 // the last page translated and its physical address
	valid    bool
}

// read reads len(p) bytes at va, which must not cross a page.
func (u *userSpace) read(va uint64, p []byte) error {
	page := va &^ (vmi.PageSize4K - 1)
	if !u.valid || page != u.page {
		pa, size, err := u.as.Translate(page)
		if err != nil {
			return err
		}
		u.page, u.pa, u.valid = page, pa, size >= vmi.PageSize4K
	}
	if _, err := u.as.Mem.ReadAt(p, int64(u.pa+va-page)); err != nil {
		return fmt.Errorf("read user memory at %#x (physical %#x): %w", va, u.pa+va-page, err)
	}
	return nil
}

// bytes is how many bytes of guest memory the strings took.
func (u *UserStrings) bytes() int {
	n := 0
	for _, s := range u.Strings {
		n += len(s) + 1
	}
	return n
}
