package gate

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Hook says where a trap sits, and so how Handle reads its event.
//
// Opens and execs are decided inside the kernel, at the LSM hooks the
// kernel calls once it has resolved the path, rather than at the syscall's
// entry: the path the gate then sees is the file the kernel is about to
// open, with symlinks followed, "..", bind mounts and the dirfd applied,
// read from the kernel's own dentries after the kernel copied the name
// from user memory. A symlink (`ln -s /etc/passwd /tmp/x`), a path the
// process rewrites between the gate's read and the kernel's (TOCTOU), an
// int 0x80 call, open_by_handle_at or an io_uring open cannot slip past a
// path rule that way. Every other syscall is decided at its handler.
type Hook uint8

const (
	// AtHandler is the syscall's own handler (__x64_sys_<name>, or the
	// i386 entry __ia32_[compat_]sys_<name>); rdi is the user pt_regs.
	AtHandler Hook = iota
	// AtFileOpen is security_file_open(struct file *): every open of a
	// file, after path resolution and before the file is usable.
	AtFileOpen
	// AtPathMknod is security_path_mknod(const struct path *dir, struct
	// dentry *, ...): an open with O_CREAT about to create the file, so a
	// denied create leaves nothing behind.
	AtPathMknod
	// AtExec is security_bprm_creds_for_exec(struct linux_binprm *): the
	// program an execve is about to run, opened, before the point of no
	// return (the old program still runs if it is refused).
	AtExec
)

var hookSymbols = [...]string{AtFileOpen: "security_file_open", AtPathMknod: "security_path_mknod", AtExec: "security_bprm_creds_for_exec"}

func (h Hook) String() string {
	if h == AtHandler || int(h) >= len(hookSymbols) {
		return "handler"
	}
	return hookSymbols[h]
}

// hooksOf lists the hooks that decide a syscall's events instead of its
// handler.
var hooksOf = map[string][]Hook{
	"open": {AtFileOpen, AtPathMknod}, "openat": {AtFileOpen, AtPathMknod},
	"creat": {AtFileOpen, AtPathMknod}, "openat2": {AtFileOpen, AtPathMknod},
	"execve": {AtExec}, "execveat": {AtExec},
}

// abiNumbers are the syscall numbers of the calls decided at hooks, per
// ABI. Syscall numbers are kernel ABI: they never change.
type abiNumbers struct{ x64, ia32, x32 uint64 }

var syscallNumbers = map[string]abiNumbers{
	"open": {2, 5, 2}, "creat": {85, 8, 85}, "openat": {257, 295, 257}, "openat2": {437, 437, 437},
	"execve": {59, 11, 520}, "execveat": {322, 358, 545},
}

// x32Bit marks an x32-ABI call in orig_ax.
const x32Bit = 0x40000000

// numberOf returns a syscall's number in the ABI of a call.
func numberOf(name string, compat, x32 bool) (uint64, bool) {
	n, ok := syscallNumbers[name]
	switch {
	case !ok:
		return 0, false
	case compat:
		return n.ia32, true
	case x32:
		return n.x32 | x32Bit, true
	}
	return n.x64, true
}

// memberFor finds the syscall among members whose number is nr.
func memberFor(members []Syscall, nr uint64, compat bool) (Syscall, bool) {
	x32 := !compat && nr&x32Bit != 0
	for _, m := range members {
		if n, ok := numberOf(m.Name, compat, x32); ok && n == nr {
			return m, true
		}
	}
	return Syscall{}, false
}

// isExecCall reports whether nr is an execve or execveat.
func isExecCall(nr uint64, compat bool) bool {
	_, ok := memberFor(families["execve"], nr, compat)
	return ok
}

// hookAddrs resolves the hooks this kernel has. A hook is used only when
// the layouts its event needs are in the kernel's BTF; otherwise its
// syscalls are trapped at their handlers as before.
func hookAddrs(k *linux.Kernel) map[Hook]uint64 {
	out := map[Hook]uint64{}
	if _, err := k.Profile.StructSize("pt_regs"); err != nil {
		return out
	}
	for _, f := range []string{"file.f_path", "file.f_flags", "path.mnt", "path.dentry", "task_struct.thread_info", "thread_info.status"} {
		if _, err := k.Profile.FieldOffset(f); err != nil {
			return out
		}
	}
	for h := AtFileOpen; int(h) < len(hookSymbols); h++ {
		if h == AtExec {
			if _, err := k.Profile.FieldOffset("linux_binprm.file"); err != nil {
				continue
			}
		}
		if a, err := k.Addr(hookSymbols[h]); err == nil {
			out[h] = a
		}
	}
	if out[AtFileOpen] == 0 {
		delete(out, AtPathMknod) // creates alone would leave opens undecided
	}
	return out
}

// Via says how a trap's instruction reaches the function it stands for.
type Via uint8

const (
	// AtEntry is the function's first instruction.
	AtEntry Via = iota
	// ViaCall is a direct call to the function in one of its callers: the
	// arguments are in their registers there, and an allow performs the
	// call (pushes the return address, enters the function).
	ViaCall
	// ViaJump is a direct tail jump to the function: arguments in
	// registers, the caller's return address at [rsp].
	ViaJump
	// ViaWatch is a read watchpoint on the hook's LSM list head: the vCPU
	// stops a few instructions into the hook (watch.go).
	ViaWatch
)

// hookSites finds where each hook is called from, to trap the calls
// instead of the hook's first instruction.
//
// Why: under QEMU's TCG, code on the same 4 KiB page as a breakpoint runs
// one instruction per translation block, and the LSM hooks share pages of
// security/security.c with hooks every syscall passes through
// (security_file_permission on each read and write, security_task_kill,
// security_capable): a breakpoint there slows syscalls the policy never
// names. Their call sites sit in the VFS code of the call they decide
// (do_dentry_open, path_openat, bprm_execve). Under KVM a breakpoint costs
// nothing until it is hit, and either placement is as good.
//
// A hook is trapped at its call sites only when every reference to it in
// the kernel's text and static data is a direct call or tail jump
// (linux.CodeRefs): a pointer to it, a conditional tail call or code the
// decoder cannot take apart means a call could come some other way, and
// the hook is trapped at its entry. So is a hook the kernel exports to
// modules, whose calls from a module loaded later no scan of the core text
// sees — except security_path_mknod: AtPathMknod decides only opens that
// create, and every one of those reaches it from path_openat in the core
// kernel; a module's own mknod is not the gate's to decide there.
func hookSites(k *linux.Kernel, hooks map[Hook]uint64) map[Hook][]linux.CodeRef {
	out := map[Hook][]linux.CodeRef{}
	var targets []uint64
	for _, a := range hooks {
		targets = append(targets, a)
	}
	if len(targets) == 0 {
		return out
	}
	refs, err := k.CodeRefs(targets)
	if err != nil {
		return out
	}
hooks:
	for h, a := range hooks {
		if _, err := k.Addr("__ksymtab_" + h.String()); err == nil && h != AtPathMknod {
			continue
		}
		for _, r := range refs[a] {
			if r.Kind != linux.RefCall && r.Kind != linux.RefJump {
				continue hooks
			}
		}
		out[h] = refs[a]
		if h == AtPathMknod {
			out[h] = openCreates(refs[a])
		}
	}
	return out
}

// createOpeners are the functions an open that creates its file calls
// security_path_mknod from (path_openat, or one of the functions inlined
// into it).
var createOpeners = map[string]bool{"path_openat": true, "open_last_lookups": true, "lookup_open": true, "may_o_create": true}

// openCreates keeps the calls of security_path_mknod that opens make: the
// others (mknod, a unix socket's bind, a bpffs pin) are never the gate's
// to decide at AtPathMknod, and every breakpoint costs every syscall
// under TCG (docs/benchmarks.md, "Syscall gate"). All sites are kept when
// none is recognised.
func openCreates(refs []linux.CodeRef) []linux.CodeRef {
	var out []linux.CodeRef
	for _, r := range refs {
		fn, _, _ := strings.Cut(r.Where, "+")
		fn, _, _ = strings.Cut(fn, ".") // path_openat.isra.0
		if createOpeners[fn] {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return refs
	}
	return out
}

// handleHook decides a hit of a hook trap.
func (g *Gate) handleHook(t Trap, regs Regs) (Outcome, error) {
	if t.Via == ViaWatch {
		regs = watchArgs(t, regs)
	}
	ev, taskAddr, skip, readErr := g.hookEvent(t, regs)
	if skip || (t.Hook == AtFileOpen && readErr == nil && g.takeCreated(taskAddr, ev)) {
		// Not a call the policy decides here (an exec's own opens, a
		// kernel thread's), or the open that created the file and was
		// decided at AtPathMknod already.
		return g.allowOutcome(t, regs, ev), nil
	}
	out, err := g.decide(t, regs, ev, readErr)
	if err == nil && t.Hook == AtPathMknod && out.Decision.Allows() {
		g.noteCreated(taskAddr, ev)
	}
	if err == nil && out.Kill {
		// do_group_exit from inside the kernel's open or exec path would
		// never give back what it holds (the half-opened file, its
		// dentries): refuse the call and queue SIGKILL, which the task
		// takes on its way back to user mode.
		stores, serr := g.k.QueueSIGKILL(taskAddr)
		if serr != nil {
			out.ReadErr = errors.Join(out.ReadErr, fmt.Errorf("queue SIGKILL (the call is refused with EPERM instead): %w", serr))
		}
		for _, s := range stores {
			out.MemWrites = append(out.MemWrites, MemWrite(s))
		}
	}
	return out, err
}

// allowOutcome resumes a hook trap without asking the security server.
func (g *Gate) allowOutcome(t Trap, regs Regs, ev event.Event) Outcome {
	out := Outcome{Event: ev, Skipped: true}
	out.Decision.Verdict = secserver.Allow
	out.resume(t, regs)
	return out
}

// hookEvent builds the event of a hook hit: the subject from the current
// task, the syscall and its arguments from the user registers it entered
// the kernel with, and the path from the kernel's resolved file. skip says
// the hit is not one the policy decides here.
func (g *Gate) hookEvent(t Trap, regs Regs) (ev event.Event, taskAddr uint64, skip bool, err error) {
	ev = event.Event{Class: event.ClassSyscall, Op: t.Syscall.Op, Time: time.Now().UTC()}
	var errs []error
	taskAddr, task, terr := g.currentTask(regs)
	if terr != nil {
		errs = append(errs, fmt.Errorf("current task: %w", terr))
	} else {
		if task.KernelThread && t.Hook != AtExec {
			// A kernel thread's own file access; a usermode helper's exec
			// (modprobe, hotplug) is decided like any other.
			return ev, taskAddr, true, nil
		}
		ev.Subject = subjectOf(task)
	}
	var (
		p       PtRegs
		compat  bool
		haveRgs bool
	)
	if terr == nil {
		ra, rerr := g.k.UserRegsAddr(regs[RegGSBase], taskAddr)
		if rerr == nil {
			pr := make([]byte, g.ptregs.Size)
			if _, rerr = g.k.AS.ReadVirtual(ra, pr); rerr == nil {
				p, rerr = g.ptregs.Decode(pr)
			}
		}
		if rerr == nil {
			compat, rerr = g.k.InCompatSyscall(taskAddr)
		}
		if rerr != nil {
			errs = append(errs, fmt.Errorf("user registers: %w", rerr))
		} else {
			haveRgs = true
		}
	}
	sc, known := Syscall{}, false
	if haveRgs {
		sc, known = memberFor(t.Members, p.OrigAX, compat)
	}
	switch {
	case known:
		ev.Op = sc.Op
		ev.Args = g.eventArgs(sc, p.ArgsFor(compat), task, regs)
	case haveRgs && t.Hook != AtExec && isExecCall(p.OrigAX, compat):
		// An execve opening its program or interpreter: AtExec decides
		// execs.
		return ev, taskAddr, true, nil
	case haveRgs && t.Hook == AtPathMknod:
		// mknod, mkfifo or a unix socket's bind: not an open; the policy
		// decides those at their handlers if it names them.
		return ev, taskAddr, true, nil
	case t.Hook == AtExec:
		// A usermode helper's or init's exec (kernel_execve).
		ev.Args = []int64{0, 0, 0}
	default:
		// An open no open syscall made: io_uring, a kernel read of a file
		// on a process's behalf. Decided as an open with the file's flags.
		var flags uint32
		if t.Hook == AtFileOpen {
			flags, _ = g.k.FileFlags(regs[RegRDI])
		}
		ev.Args = []int64{0, int64(flags), 0}
	}
	var perr error
	switch t.Hook {
	case AtFileOpen:
		ev.Path, perr = g.k.FilePath(regs[RegRDI])
	case AtPathMknod:
		ev.Path, perr = g.k.ChildPath(regs[RegRDI], regs[RegRSI])
	case AtExec:
		var file uint64
		if file, perr = g.k.BinprmFile(regs[RegRDI]); perr == nil {
			ev.Path, perr = g.k.FilePath(file)
		}
	}
	if perr != nil {
		ev.Path = ""
		errs = append(errs, fmt.Errorf("the file's path: %w", perr))
	}
	return ev, taskAddr, false, errors.Join(errs...)
}

// eventArgs maps raw arguments to the event's, in the family's signature.
func (g *Gate) eventArgs(sc Syscall, raw [6]uint64, task linux.Task, regs Regs) []int64 {
	idx := sc.Args
	if idx == nil {
		idx = []int{0, 1, 2, 3, 4, 5}
	}
	args := make([]int64, 0, len(idx))
	for _, i := range idx {
		var v uint64
		switch {
		case i >= 0 && i < 6:
			v = raw[i]
		case i == argCreatFlags:
			v = oCreatFlags
		case i == argHowFlags && sc.How >= 0:
			v, _ = vmi.ReadU64(g.userSpace(task, regs), raw[sc.How])
		}
		args = append(args, int64(v))
	}
	return args
}

// currentTask reads the task running on the stopped vCPU.
func (g *Gate) currentTask(regs Regs) (uint64, linux.Task, error) {
	addr, err := g.k.CurrentTask(regs[RegGSBase])
	if err != nil {
		return addr, linux.Task{}, err
	}
	task, err := g.k.TaskAt(addr)
	return addr, task, err
}

func subjectOf(task linux.Task) event.Subject {
	s := event.Subject{PID: int32(task.TGID), Start: task.StartTime, Comm: task.Comm, Exe: task.Exe, UID: task.UID, GID: task.GID}
	if task.PPID > 0 {
		s.PPID = int32(task.PPID)
	}
	return s
}

// createdKey is a file an open is creating, allowed at AtPathMknod.
type createdKey struct {
	task uint64
	path string
	args string // the call's arguments: a later, different call is decided anew
}

// maxCreated bounds creates awaiting their AtFileOpen hit.
const maxCreated = 4096

func (g *Gate) noteCreated(task uint64, ev event.Event) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.created) >= maxCreated {
		g.created = map[createdKey]bool{}
	}
	g.created[createdKey{task, ev.Path, fmt.Sprint(ev.Args)}] = true
}

// takeCreated reports (and forgets) whether this open by task was decided
// when it created the file.
func (g *Gate) takeCreated(task uint64, ev event.Event) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := createdKey{task, ev.Path, fmt.Sprint(ev.Args)}
	if g.created[k] {
		delete(g.created, k)
		return true
	}
	return false
}
