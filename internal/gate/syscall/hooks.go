package gate

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Hook says where a trap sits, and so how Handle reads its events.
//
// Opens, execs, file changes and module loads are decided inside the
// kernel, at the LSM hooks the kernel calls once it has resolved the path,
// rather than at a syscall's entry: the path the gate then sees is the file
// the kernel is about to act on, with symlinks followed, "..", bind mounts
// and the dirfd applied, read from the kernel's own dentries after the
// kernel copied the name from user memory. A symlink (`ln -s /etc/passwd
// /tmp/x`), a path the process rewrites between the gate's read and the
// kernel's (TOCTOU), an int 0x80 call, open_by_handle_at or an io_uring open
// cannot slip past a path rule that way. Syscalls the policy names that no
// hook decides are trapped at their handlers.
type Hook uint8

const (
	// AtHandler is the syscall's own handler (__x64_sys_<name>, or the
	// i386 entry __ia32_[compat_]sys_<name>); rdi is the user pt_regs.
	AtHandler Hook = iota
	// AtFileOpen is security_file_open(struct file *): every open of a
	// file, after path resolution and before the file is usable. Decides
	// the open family, and the file ops open, read, write, append (by the
	// file's mode and flags) and exec (an exec opening its program, its
	// script interpreter or its ELF interpreter).
	AtFileOpen
	// AtPathMknod is security_path_mknod(const struct path *dir, struct
	// dentry *, mode, dev): a file about to be created (an open with
	// O_CREAT, mknod, a unix socket's bind), so a denied create leaves
	// nothing behind. File op create.
	AtPathMknod
	// AtExec is security_bprm_check(struct linux_binprm *): each program an
	// execve is about to run, opened, before the point of no return — the
	// script, then its interpreter. Decides the execve family and the
	// exec class.
	AtExec
	AtPathMkdir    // security_path_mkdir(dir, dentry, mode): file op mkdir
	AtPathRmdir    // security_path_rmdir(dir, dentry): file op rmdir
	AtPathUnlink   // security_path_unlink(dir, dentry): file op unlink
	AtPathRename   // security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags): rename, both names
	AtPathLink     // security_path_link(old_dentry, new_dir, new_dentry): link, both names
	AtPathSymlink  // security_path_symlink(dir, dentry, old_name): file op symlink (the new name)
	AtPathTruncate // security_path_truncate(path): truncate(2), ftruncate(2), open with O_TRUNC
	AtPathChmod    // security_path_chmod(path, mode)
	AtPathChown    // security_path_chown(path, uid, gid)
	AtGetattr      // security_inode_getattr(path): stat and friends; file op getattr
	AtMmap         // security_mmap_file(file, prot, flags): file op mmap (file mappings only)
	// AtModuleFile is security_kernel_post_read_file(file, buf, size, id):
	// finit_module has read the module's file; module load, with the
	// file's path and the SHA-256 of what the kernel read.
	AtModuleFile
	// AtModuleData is security_kernel_post_load_data(buf, size, id, desc):
	// init_module has copied the module's image from user memory.
	AtModuleData
	// AtModuleDelete is __do_sys_delete_module(name, flags), which reads
	// modules_disabled (once it knows the caller may unload modules)
	// before it copies the name: module unload.
	AtModuleDelete
	// AtPtraceAccess is security_ptrace_access_check(child, mode): a
	// ptrace attach (PTRACE_ATTACH, PTRACE_SEIZE) the kernel's own checks
	// have allowed, about to attach; /proc and process_vm_readv ask it too
	// (not the ptrace syscall: skipped). AtPtraceTraceme is
	// security_ptrace_traceme(parent): PTRACE_TRACEME. They decide the
	// ptrace syscall when every statement about it is about those
	// requests only (ptraceHooks).
	AtPtraceAccess
	AtPtraceTraceme
	// AtCapable is security_capable(cred, ns, cap, opts): delete_module
	// asks capable(CAP_SYS_MODULE) before it does anything else. It
	// decides module unload where __do_sys_delete_module's own watchpoint
	// is too dear (capableUnload); every other capable() call is resumed
	// at once.
	AtCapable
	numHooks
)

// hookDef is how one hook is found and watched.
type hookDef struct {
	sym string
	// head is the hook's security_hook_heads member, which the hook reads
	// before calling the LSMs (watch.go); watchVar, for a function that is
	// not an LSM hook, is a 4-byte global it reads first instead.
	head     string
	watchVar string
	// fields are the BTF fields its events need; a kernel without them
	// does not get the hook.
	fields []string
}

var hookDefs = [numHooks]hookDef{
	AtFileOpen:      {sym: "security_file_open", head: "file_open", fields: []string{"file.f_path", "file.f_flags", "file.f_mode"}},
	AtPathMknod:     {sym: "security_path_mknod", head: "path_mknod"},
	AtExec:          {sym: "security_bprm_check", head: "bprm_check_security", fields: []string{"linux_binprm.file", "file.f_path"}},
	AtPathMkdir:     {sym: "security_path_mkdir", head: "path_mkdir"},
	AtPathRmdir:     {sym: "security_path_rmdir", head: "path_rmdir"},
	AtPathUnlink:    {sym: "security_path_unlink", head: "path_unlink"},
	AtPathRename:    {sym: "security_path_rename", head: "path_rename"},
	AtPathLink:      {sym: "security_path_link", head: "path_link"},
	AtPathSymlink:   {sym: "security_path_symlink", head: "path_symlink"},
	AtPathTruncate:  {sym: "security_path_truncate", head: "path_truncate"},
	AtPathChmod:     {sym: "security_path_chmod", head: "path_chmod"},
	AtPathChown:     {sym: "security_path_chown", head: "path_chown"},
	AtGetattr:       {sym: "security_inode_getattr", head: "inode_getattr"},
	AtMmap:          {sym: "security_mmap_file", head: "mmap_file", fields: []string{"file.f_path"}},
	AtModuleFile:    {sym: "security_kernel_post_read_file", head: "kernel_post_read_file", fields: []string{"file.f_path"}},
	AtModuleData:    {sym: "security_kernel_post_load_data", head: "kernel_post_load_data"},
	AtModuleDelete:  {sym: "__do_sys_delete_module", watchVar: "modules_disabled"},
	AtPtraceAccess:  {sym: "security_ptrace_access_check", head: "ptrace_access_check"},
	AtPtraceTraceme: {sym: "security_ptrace_traceme", head: "ptrace_traceme"},
	AtCapable:       {sym: "security_capable", head: "capable"},
}

// The layouts every hook's event needs (the subject and, for the syscall
// class, the user registers) are per instruction set: isa.hookFields.

func (h Hook) String() string {
	if h == AtHandler || h >= numHooks {
		return "handler"
	}
	return hookDefs[h].sym
}

// classSet is a set of event classes.
type classSet uint16

func (s classSet) has(c event.Class) bool { return s&(1<<c) != 0 }

// Has reports whether class c is armed in s.
func (s classSet) Has(c event.Class) bool { return s.has(c) }
func setOf(cs ...event.Class) classSet {
	var s classSet
	for _, c := range cs {
		s |= 1 << c
	}
	return s
}

// hooksOf lists the hooks that decide a syscall's events instead of its
// handler.
var hooksOf = map[string][]Hook{
	"open": {AtFileOpen, AtPathMknod}, "openat": {AtFileOpen, AtPathMknod},
	"creat": {AtFileOpen, AtPathMknod}, "openat2": {AtFileOpen, AtPathMknod},
	"execve": {AtExec}, "execveat": {AtExec},
}

// fileOpHooks lists the hooks that decide each file op: the file class's
// whole vocabulary. A policy naming any other file op is refused
// (policy.Check), because no gate would see it.
var fileOpHooks = map[string][]Hook{
	"open": {AtFileOpen}, "read": {AtFileOpen}, "write": {AtFileOpen}, "append": {AtFileOpen}, "exec": {AtFileOpen},
	"create": {AtPathMknod}, "mkdir": {AtPathMkdir}, "rmdir": {AtPathRmdir}, "unlink": {AtPathUnlink},
	"rename": {AtPathRename}, "link": {AtPathLink}, "symlink": {AtPathSymlink}, "truncate": {AtPathTruncate},
	"chmod": {AtPathChmod}, "chown": {AtPathChown}, "getattr": {AtGetattr}, "mmap": {AtMmap},
}

// moduleOpHooks lists the hooks of the module class's ops.
var moduleOpHooks = map[string][]Hook{
	"load":   {AtModuleFile, AtModuleData},
	"unload": {AtModuleDelete},
}

// abiNumbers are the syscall numbers of the calls decided at hooks, per
// ABI. Syscall numbers are kernel ABI: they never change.
type abiNumbers struct{ x64, ia32, x32 uint64 }

var syscallNumbers = map[string]abiNumbers{
	"open": {2, 5, 2}, "creat": {85, 8, 85}, "openat": {257, 295, 257}, "openat2": {437, 437, 437},
	"execve": {59, 11, 520}, "execveat": {322, 358, 545},
	"ptrace": {101, 26, 521}, "delete_module": {176, 129, 176},
}

// x32Bit marks an x32-ABI call in orig_ax.
const x32Bit = 0x40000000

// memberFor finds the syscall among members whose number is nr.
func (a *isa) memberFor(members []Syscall, nr uint64, compat bool) (Syscall, bool) {
	x32 := !compat && nr&x32Bit != 0
	for _, m := range members {
		if n, ok := a.numberOf(m.Name, compat, x32); ok && n == nr {
			return m, true
		}
	}
	return Syscall{}, false
}

// isExecCall reports whether nr is an execve or execveat.
func (a *isa) isExecCall(nr uint64, compat bool) bool {
	_, ok := a.memberFor(families["execve"], nr, compat)
	return ok
}

// hasHook reports whether profile p has hook h and the layouts its events
// need.
func hasHook(p *linux.Profile, h Hook) bool {
	if _, err := p.StructSize("pt_regs"); err != nil {
		return false
	}
	d := hookDefs[h]
	for _, f := range append(slices.Clone(isaOf(p).hookFields), d.fields...) {
		if _, err := p.FieldOffset(f); err != nil {
			return false
		}
	}
	a := isaOf(p)
	if _, err := p.Symbol(a.hookSym(h)); err != nil {
		return false
	}
	if h == AtModuleDelete && !a.arm64 {
		_, err := p.Symbol(d.watchVar)
		return err == nil
	}
	return true
}

// hookAddrs resolves the hooks this kernel has. A hook is used only when
// the layouts its event needs are in the kernel's BTF; otherwise the
// syscalls it decides are trapped at their handlers, and the file, exec
// and module classes it decides are not observed (policy.Check refuses a
// policy that needs them).
func hookAddrs(k *linux.Kernel) map[Hook]uint64 {
	out := map[Hook]uint64{}
	for h := AtFileOpen; h < numHooks; h++ {
		if !hasHook(k.Profile, h) {
			continue
		}
		if a, err := k.Addr(isaOf(k.Profile).hookSym(h)); err == nil {
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
	// ViaWatch is a read watchpoint on what the hook reads first (its LSM
	// list head): the vCPU stops a few instructions into the hook
	// (watch.go).
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
// sees — except security_path_mknod for opens: AtPathMknod decides only
// opens that create when the file class is not armed, and every one of
// those reaches it from path_openat in the core kernel.
func hookSites(k *linux.Kernel, hooks map[Hook]uint64) map[Hook][]linux.CodeRef {
	out := map[Hook][]linux.CodeRef{}
	if isaOf(k.Profile).arm64 {
		return out // CodeRefs decodes x86-64: arm64 hooks are trapped at their entries
	}
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
	}
	return out
}

// sitesFor returns the call sites to trap for hook h armed for classes:
// for AtPathMknod armed only for the open family, the opens' calls; and
// none (trap the entry) when the hook is exported but every caller must be
// caught.
func (g *Gate) sitesFor(h Hook, classes classSet) []linux.CodeRef {
	refs := g.sites[h]
	if h != AtPathMknod || len(refs) == 0 {
		return refs
	}
	if classes.has(event.ClassFile) {
		if _, err := g.k.Addr("__ksymtab_" + h.String()); err == nil {
			return nil // a module's mknod must be decided too: the entry
		}
		return refs
	}
	return openCreates(refs)
}

// createOpeners are the functions an open that creates its file calls
// security_path_mknod from (path_openat, or one of the functions inlined
// into it).
var createOpeners = map[string]bool{"path_openat": true, "open_last_lookups": true, "lookup_open": true, "may_o_create": true}

// openCreates keeps the calls of security_path_mknod that opens make: the
// others (mknod, a unix socket's bind, a bpffs pin) are never the syscall
// class's to decide at AtPathMknod, and every breakpoint costs every
// syscall under TCG (docs/benchmarks.md, "Syscall gate"). All sites are
// kept when none is recognised.
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

// handleHook decides a hit of a hook trap: every event the hit means for
// the classes armed there, in order, until one is refused.
func (g *Gate) handleHook(t Trap, regs Regs) (Outcome, error) {
	if t.Via == ViaWatch {
		regs = watchArgs(t, regs)
	}
	if t.Via == ViaOwnEntry {
		if !ownHit(t, regs) {
			// Another LSM's entry at the same load: not the gate's call.
			return Outcome{Event: event.Event{Class: t.primaryClass(), Op: t.Syscall.Op}, Skipped: true, Decision: secserver.Decision{Verdict: secserver.Allow}}, nil
		}
		regs = ownArgs(t, regs)
	}
	hit, readErr := g.hookEvents(t, regs)
	if len(hit.events) == 0 {
		if readErr != nil {
			// Nothing could be read, not even whose call it is: fail
			// closed with an event of the hook's class.
			ev := event.Event{Class: t.primaryClass(), Op: t.Syscall.Op, Time: time.Now().UTC()}
			return g.decide(t, regs, ev, readErr)
		}
		return g.allowOutcome(t, regs, event.Event{Class: t.primaryClass(), Op: t.Syscall.Op}), nil
	}
	var (
		out     Outcome
		err     error
		decided = make([]Decided, 0, len(hit.events))
	)
	for i, ev := range hit.events {
		if i == hit.created {
			continue // the open that created the file, decided at the create
		}
		out, err = g.decide(t, regs, ev, readErr)
		decided = append(decided, Decided{Event: out.Event, Decision: out.Decision, ReadErr: out.ReadErr})
		if err != nil || !out.Decision.Allows() {
			break
		}
	}
	out.Decided = decided
	if len(decided) == 0 {
		out = g.allowOutcome(t, regs, hit.events[0])
		return out, nil
	}
	if err == nil && hit.mknod >= 0 && out.Decision.Allows() {
		g.noteCreated(hit.task, hit.events[hit.mknod])
	}
	if err == nil && out.Kill {
		// do_group_exit from inside the kernel's open or exec path would
		// never give back what it holds (the half-opened file, its
		// dentries): refuse the call and queue SIGKILL, which the task
		// takes on its way back to user mode.
		stores, serr := g.k.QueueSIGKILL(hit.task)
		if serr != nil {
			out.ReadErr = errors.Join(out.ReadErr, fmt.Errorf("queue SIGKILL (the call is refused with EPERM instead): %w", serr))
		}
		for _, s := range stores {
			out.MemWrites = append(out.MemWrites, MemWrite(s))
		}
	}
	return out, err
}

// Ops returns the ops of class c the trap decides, sorted; nil for a
// class it does not decide, [""] for every op (exec).
func (t Trap) Ops(c event.Class) []string {
	if !t.Classes.has(c) {
		return nil
	}
	set := map[string]bool{}
	switch c {
	case event.ClassSyscall:
		set[t.Syscall.Op] = true
		for _, m := range t.Members {
			set[m.Op] = true
		}
		delete(set, "")
	case event.ClassFile, event.ClassModule:
		ops := fileOpHooks
		if c == event.ClassModule {
			ops = moduleOpHooks
		}
		for op, hs := range ops {
			if slices.Contains(hs, t.Hook) {
				set[op] = true
			}
		}
		if c == event.ClassModule && t.Hook == AtCapable {
			set["unload"] = true
		}
	default:
		return []string{""}
	}
	out := make([]string, 0, len(set))
	for op := range set {
		out = append(out, op)
	}
	slices.Sort(out)
	return out
}

// primaryClass is the class a trap's events are reported under when
// nothing could be read.
func (t Trap) primaryClass() event.Class {
	for _, c := range []event.Class{event.ClassSyscall, event.ClassExec, event.ClassModule, event.ClassFile} {
		if t.Classes.has(c) {
			return c
		}
	}
	return event.ClassSyscall
}

// allowOutcome resumes a hook trap without asking the security server.
func (g *Gate) allowOutcome(t Trap, regs Regs, ev event.Event) Outcome {
	out := Outcome{Event: ev, Skipped: true}
	out.Decision.Verdict = secserver.Allow
	out.resume(t, regs, g.isa)
	return out
}

// hookHit is what one hit of a hook means: the events to decide, in order.
type hookHit struct {
	events []event.Event
	task   uint64
	// created is the index of a syscall open event already decided when
	// the same call created the file (-1: none); mknod is the index of a
	// syscall open event decided at a create (-1: none).
	created, mknod int
}

// hookEvents builds the events of a hook hit for the classes armed at t.
// It returns no events for a hit that is not the policy's to decide (a
// kernel thread's own file access, an exec's own opens for the syscall
// class, a firmware read at the module hooks).
func (g *Gate) hookEvents(t Trap, regs Regs) (hookHit, error) {
	hit := hookHit{created: -1, mknod: -1}
	var errs []error
	now := time.Now().UTC()
	var (
		unload     PtRegs
		unloadErr  error
		unloadComp bool
	)
	if mode, ok := g.isa.argOK(regs, 1); ok && t.Hook == AtPtraceAccess && mode&ptraceModeAttach == 0 {
		// A /proc read or process_vm_readv asking to read a process, not
		// an attach: resumed on its registers alone (ps makes one per
		// process it lists).
		return hit, nil
	}
	if t.Hook == AtCapable {
		// Most capable() calls are not delete_module's: resumed after
		// reading two registers and the task's syscall number, before
		// anything else is read.
		var skip bool
		unload, unloadComp, skip, unloadErr = g.capableCall(regs)
		if skip {
			return hit, nil
		}
	}
	taskAddr, task, terr := g.currentTask(regs)
	hit.task = taskAddr
	var subj event.Subject
	if terr != nil {
		errs = append(errs, fmt.Errorf("current task: %w", terr))
	} else {
		subj = subjectOf(task)
		if task.KernelThread && t.Hook != AtExec && t.Hook != AtModuleFile && t.Hook != AtModuleData {
			// A kernel thread's own file access; a usermode helper's exec
			// (modprobe, hotplug) and any module load are decided.
			return hit, nil
		}
	}
	// A hit makes one to four events (an open: its syscall event, open,
	// read, write, append); appended one by one, the slice grew three
	// times a stop (event.Event is large).
	hit.events = make([]event.Event, 0, 4)
	mk := func(c event.Class, op, path string, args ...int64) event.Event {
		return event.Event{Class: c, Op: op, Subject: subj, Path: path, Args: args, Time: now}
	}
	path := func(p string, err error) string {
		if err != nil {
			errs = append(errs, fmt.Errorf("the file's path: %w", err))
			return "" // unreadable: decided as a path that matches no file rule
		}
		return p
	}
	file := t.Classes.has(event.ClassFile)
	files := filePaths{g: g}
	switch t.Hook {
	case AtFileOpen, AtPathMknod, AtExec, AtPtraceAccess, AtPtraceTraceme:
		if t.Classes.has(event.ClassSyscall) && terr == nil {
			sev, skip, err := g.syscallHookEvent(t, regs, taskAddr, task, now, &files)
			if err != nil {
				errs = append(errs, err)
			}
			if !skip {
				if t.Hook == AtFileOpen && err == nil && g.takeCreated(taskAddr, sev) {
					hit.created = len(hit.events)
				}
				if t.Hook == AtPathMknod {
					hit.mknod = len(hit.events)
				}
				hit.events = append(hit.events, sev)
			}
		}
		switch {
		case t.Hook == AtFileOpen && file:
			p := path(files.path(g.isa.arg(regs, 0)))
			flags, ferr := g.k.FileFlags(g.isa.arg(regs, 0))
			mode, merr := g.k.FileMode(g.isa.arg(regs, 0))
			if err := errors.Join(ferr, merr); err != nil {
				errs = append(errs, fmt.Errorf("the file's flags: %w", err))
			}
			// An exec's opens carry __FMODE_EXEC in f_flags (open_exec);
			// FMODE_EXEC reaches f_mode only in some kernels.
			if mode&fmodeExec != 0 || flags&fmodeExecFlag != 0 {
				hit.events = append(hit.events, mk(event.ClassFile, "exec", p))
				break
			}
			hit.events = append(hit.events, mk(event.ClassFile, "open", p, int64(flags)))
			if mode&fmodeRead != 0 {
				hit.events = append(hit.events, mk(event.ClassFile, "read", p))
			}
			if mode&fmodeWrite != 0 {
				hit.events = append(hit.events, mk(event.ClassFile, "write", p))
			}
			if flags&oAppend != 0 {
				hit.events = append(hit.events, mk(event.ClassFile, "append", p))
			}
		case t.Hook == AtPathMknod && file:
			hit.events = append(hit.events, mk(event.ClassFile, "create", path(g.k.ChildPath(g.isa.arg(regs, 0), g.isa.arg(regs, 1))), int64(uint32(g.isa.arg(regs, 2)))))
		case t.Hook == AtExec && t.Classes.has(event.ClassExec):
			var p string
			f, err := g.k.BinprmFile(g.isa.arg(regs, 0))
			if err == nil {
				p = path(files.path(f))
			} else {
				path("", err)
			}
			hit.events = append(hit.events, mk(event.ClassExec, "", p))
		}
	case AtPathMkdir:
		hit.events = append(hit.events, mk(event.ClassFile, "mkdir", path(g.k.ChildPath(g.isa.arg(regs, 0), g.isa.arg(regs, 1))), int64(uint32(g.isa.arg(regs, 2)))))
	case AtPathRmdir, AtPathUnlink:
		op := map[Hook]string{AtPathRmdir: "rmdir", AtPathUnlink: "unlink"}[t.Hook]
		hit.events = append(hit.events, mk(event.ClassFile, op, path(g.k.ChildPath(g.isa.arg(regs, 0), g.isa.arg(regs, 1)))))
	case AtPathRename:
		// Both names: a rename takes a name away from one place and puts
		// it in another; rules on either must hold.
		flags := int64(uint32(g.isa.arg(regs, 4)))
		hit.events = append(hit.events,
			mk(event.ClassFile, "rename", path(g.k.ChildPath(g.isa.arg(regs, 0), g.isa.arg(regs, 1))), flags),
			mk(event.ClassFile, "rename", path(g.k.ChildPath(g.isa.arg(regs, 2), g.isa.arg(regs, 3))), flags))
	case AtPathLink:
		// The existing file (hard links stay on one mount) and the new name:
		// a rule on /etc/shadow holds against `ln /etc/shadow /root/s`.
		hit.events = append(hit.events,
			mk(event.ClassFile, "link", path(g.k.ChildPath(g.isa.arg(regs, 1), g.isa.arg(regs, 0)))),
			mk(event.ClassFile, "link", path(g.k.ChildPath(g.isa.arg(regs, 1), g.isa.arg(regs, 2)))))
	case AtPathSymlink:
		hit.events = append(hit.events, mk(event.ClassFile, "symlink", path(g.k.ChildPath(g.isa.arg(regs, 0), g.isa.arg(regs, 1)))))
	case AtPathTruncate, AtGetattr:
		op := map[Hook]string{AtPathTruncate: "truncate", AtGetattr: "getattr"}[t.Hook]
		hit.events = append(hit.events, mk(event.ClassFile, op, path(g.k.PathAt(g.isa.arg(regs, 0)))))
	case AtPathChmod:
		hit.events = append(hit.events, mk(event.ClassFile, "chmod", path(g.k.PathAt(g.isa.arg(regs, 0))), int64(uint16(g.isa.arg(regs, 1)))))
	case AtPathChown:
		hit.events = append(hit.events, mk(event.ClassFile, "chown", path(g.k.PathAt(g.isa.arg(regs, 0))), int64(uint32(g.isa.arg(regs, 1))), int64(uint32(g.isa.arg(regs, 2)))))
	case AtMmap:
		if g.isa.arg(regs, 0) == 0 {
			return hit, nil // an anonymous mapping: no file
		}
		hit.events = append(hit.events, mk(event.ClassFile, "mmap", path(g.k.FilePath(g.isa.arg(regs, 0))), int64(g.isa.arg(regs, 1)), int64(g.isa.arg(regs, 2))))
	case AtModuleFile, AtModuleData:
		ev, skip, err := g.moduleLoadEvent(t.Hook, regs)
		if skip {
			return hit, nil
		}
		if err != nil {
			errs = append(errs, err)
		}
		ev.Subject, ev.Time = subj, now
		hit.events = append(hit.events, ev)
	case AtCapable:
		var name string
		args := unload.ArgsFor(unloadComp)
		if unloadErr != nil {
			errs = append(errs, unloadErr)
		} else if terr == nil {
			n, err := readUserString(g.userSpace(task, regs), args[0], moduleNameLen)
			if err != nil {
				errs = append(errs, fmt.Errorf("the module's name: %w", err))
			}
			name = n
		}
		ev := mk(event.ClassModule, "unload", "", int64(uint32(args[1])))
		ev.Module = name
		hit.events = append(hit.events, ev)
	case AtModuleDelete:
		var name string
		nameArg, flags := g.isa.arg(regs, 0), g.isa.arg(regs, 1)
		var perr error
		if g.isa.arm64 {
			// The syscall's handler (isa.hookSym): x0 is the user pt_regs.
			nameArg, flags, perr = g.handlerArgs01(regs)
			if perr != nil {
				errs = append(errs, perr)
			}
		}
		if terr == nil && perr == nil {
			n, err := readUserString(g.userSpace(task, regs), nameArg, moduleNameLen)
			if err != nil {
				errs = append(errs, fmt.Errorf("the module's name: %w", err))
			}
			name = n
		}
		ev := mk(event.ClassModule, "unload", "", int64(flags))
		ev.Module = name
		hit.events = append(hit.events, ev)
	}
	return hit, errors.Join(errs...)
}

// File mode and flag bits (include/linux/fs.h, uapi fcntl.h); kernel ABI.
const (
	fmodeRead  = 0x1
	fmodeWrite = 0x2
	fmodeExec  = 0x20
	// fmodeExecFlag is __FMODE_EXEC, the open flag open_exec passes; it
	// stays in f_flags.
	fmodeExecFlag = 0x20
	oAppend       = 0o2000
)

// syscallHookEvent builds the syscall-class event of a hit of AtFileOpen,
// AtPathMknod or AtExec: which syscall, and its arguments, come from the
// user registers the task entered the kernel with; the path from the
// kernel's resolved file. skip says the hit is not the syscall class's to
// decide here.
func (g *Gate) syscallHookEvent(t Trap, regs Regs, taskAddr uint64, task linux.Task, now time.Time, files *filePaths) (ev event.Event, skip bool, err error) {
	ev = event.Event{Class: event.ClassSyscall, Op: t.Syscall.Op, Time: now, Subject: subjectOf(task)}
	var errs []error
	p, compat, rerr := g.userCall(regs, taskAddr)
	haveRgs := rerr == nil
	if rerr != nil {
		errs = append(errs, rerr)
	}
	sc, known := Syscall{}, false
	if haveRgs {
		sc, known = g.isa.memberFor(t.Members, p.OrigAX, compat)
	}
	switch {
	case known:
		ev.Op = sc.Op
		ev.Args = g.eventArgs(sc, p.ArgsFor(compat), task, regs)
	case t.Hook == AtPtraceAccess || t.Hook == AtPtraceTraceme:
		if haveRgs {
			// /proc, process_vm_readv, kcmp, pidfd_getfd: not ptrace.
			return ev, true, nil
		}
		// Whose call it is cannot be read: decided (and failed closed) as
		// a ptrace call.
		return ev, false, errors.Join(errs...)
	case haveRgs && t.Hook != AtExec && g.isa.isExecCall(p.OrigAX, compat):
		// An execve opening its program or interpreter: AtExec decides
		// execs.
		return ev, true, nil
	case haveRgs && t.Hook == AtPathMknod:
		// mknod, mkfifo or a unix socket's bind: not an open; the policy
		// decides those at their handlers if it names them.
		return ev, true, nil
	case t.Hook == AtExec:
		// A usermode helper's or init's exec (kernel_execve).
		ev.Args = []int64{0, 0, 0}
	default:
		// An open no open syscall made: io_uring, a kernel read of a file
		// on a process's behalf. Decided as an open with the file's flags.
		var flags uint32
		if t.Hook == AtFileOpen {
			flags, _ = g.k.FileFlags(g.isa.arg(regs, 0))
		}
		ev.Args = []int64{0, int64(flags), 0}
	}
	var perr error
	switch t.Hook {
	case AtFileOpen:
		ev.Path, perr = files.path(g.isa.arg(regs, 0))
	case AtPathMknod:
		ev.Path, perr = g.k.ChildPath(g.isa.arg(regs, 0), g.isa.arg(regs, 1))
	case AtExec:
		var file uint64
		if file, perr = g.k.BinprmFile(g.isa.arg(regs, 0)); perr == nil {
			ev.Path, perr = files.path(file)
		}
	}
	if perr != nil {
		ev.Path = ""
		errs = append(errs, fmt.Errorf("the file's path: %w", perr))
	}
	return ev, false, errors.Join(errs...)
}

// userCall reads the user registers the task at taskAddr entered the
// kernel with, and whether it made an i386 call.
func (g *Gate) userCall(regs Regs, taskAddr uint64) (PtRegs, bool, error) {
	var ra uint64
	var err error
	if g.isa.arm64 {
		ra, err = g.k.UserRegsAddrARM64(taskAddr)
	} else {
		ra, err = g.userRegsAddr(regs[RegGSBase], taskAddr)
	}
	if err != nil {
		return PtRegs{}, false, fmt.Errorf("user registers: %w", err)
	}
	pr := make([]byte, g.ptregs.Size)
	if _, err := g.k.AS.ReadVirtual(ra, pr); err != nil {
		return PtRegs{}, false, fmt.Errorf("user registers: %w", err)
	}
	p, err := g.ptregs.Decode(pr)
	if err != nil {
		return PtRegs{}, false, fmt.Errorf("user registers: %w", err)
	}
	compat, err := g.k.InCompatSyscall(taskAddr)
	if err != nil {
		return PtRegs{}, false, fmt.Errorf("user registers: %w", err)
	}
	return p, compat, nil
}

// ptraceModeAttach is PTRACE_MODE_ATTACH (include/linux/ptrace.h), which
// every attach passes to security_ptrace_access_check.
const ptraceModeAttach = 0x02

// capSysModule is CAP_SYS_MODULE (uapi linux/capability.h).
const capSysModule = 16

// capableCall looks at a hit of AtCapable: skip says it is not
// delete_module asking for CAP_SYS_MODULE. Otherwise p holds the call's
// user registers (err: they could not be read; the hit is then decided,
// and fails closed, as an unload).
func (g *Gate) capableCall(regs Regs) (p PtRegs, compat, skip bool, err error) {
	capArg, ok := g.isa.argOK(regs, 2)
	if !ok {
		return p, false, false, errors.New("the capability argument is lost before the stop")
	}
	if uint32(capArg) != capSysModule {
		return p, false, true, nil
	}
	taskAddr, err := g.currentTaskAddr(regs)
	if err != nil {
		return p, false, false, fmt.Errorf("current task: %w", err)
	}
	p, compat, err = g.userCall(regs, taskAddr)
	if err != nil {
		return p, false, false, err
	}
	if nr, ok := g.isa.numberOf("delete_module", compat, !compat && p.OrigAX&x32Bit != 0); !ok || nr != p.OrigAX {
		return p, false, true, nil
	}
	return p, compat, false, nil
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
	addr, err := g.currentTaskAddr(regs)
	if err != nil {
		return addr, linux.Task{}, err
	}
	g.taskMu.Lock()
	defer g.taskMu.Unlock()
	tr, err := g.taskReader()
	if err != nil {
		return addr, linux.Task{}, err
	}
	task, err := tr.Read(addr)
	return addr, task, err
}

// taskReader returns the gate's task reader, made on first use.
// Preconditions: g.taskMu is held.
func (g *Gate) taskReader() (*linux.TaskReader, error) {
	if g.tasks == nil {
		tr, err := g.k.NewTaskReader()
		if err != nil {
			return nil, err
		}
		g.tasks = tr
	}
	return g.tasks, nil
}

// userRegsAddr is g.k.UserRegsAddr through the gate's task reader.
func (g *Gate) userRegsAddr(gsBase, task uint64) (uint64, error) {
	g.taskMu.Lock()
	defer g.taskMu.Unlock()
	tr, err := g.taskReader()
	if err != nil {
		return 0, err
	}
	return tr.UserRegsAddr(gsBase, task)
}

// filePath is g.k.FilePath through the gate's task reader.
func (g *Gate) filePath(file uint64) (string, error) {
	g.taskMu.Lock()
	defer g.taskMu.Unlock()
	tr, err := g.taskReader()
	if err != nil {
		return "", err
	}
	return tr.FilePath(file)
}

// currentTaskAddr returns the address of the task running on the stopped
// vCPU: from the per-CPU current_task at GS base (x86-64) or SP_EL0 (arm64).
func (g *Gate) currentTaskAddr(regs Regs) (uint64, error) {
	if g.isa.arm64 {
		return g.currentTaskARM64(regs)
	}
	g.taskMu.Lock()
	if !g.curOffOK {
		off, err := g.k.CurrentTaskOffset()
		if err != nil {
			g.taskMu.Unlock()
			return 0, err
		}
		g.curOff, g.curOffOK = off, true
	}
	off := g.curOff
	g.taskMu.Unlock()
	return g.k.CurrentTaskAt(regs[RegGSBase], off)
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

// filePaths is the path of the last struct file read in one stop: an open
// under both a syscall and a file rule names the same file twice, and the
// VM does not run between the two reads. Never kept across stops.
type filePaths struct {
	g    *Gate
	file uint64
	p    string
	err  error
	ok   bool
}

func (f *filePaths) path(file uint64) (string, error) {
	if !f.ok || f.file != file {
		f.p, f.err = f.g.filePath(file)
		f.file, f.ok = file, true
	}
	return f.p, f.err
}

// argsKey is args as a map key: the numbers in decimal, comma-separated
// (fmt.Sprint's reflection was half the cost of a lookup at every open).
func argsKey(args []int64) string {
	var b [8 * 21]byte
	out := b[:0]
	for i, a := range args {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendInt(out, a, 10)
	}
	return string(out)
}

func (g *Gate) noteCreated(task uint64, ev event.Event) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.created) >= maxCreated {
		g.created = map[createdKey]bool{}
	}
	g.created[createdKey{task, ev.Path, argsKey(ev.Args)}] = true
}

// takeCreated reports (and forgets) whether this open by task was decided
// when it created the file.
func (g *Gate) takeCreated(task uint64, ev event.Event) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := createdKey{task, ev.Path, argsKey(ev.Args)}
	if g.created[k] {
		delete(g.created, k)
		return true
	}
	return false
}
