// Package gate is the syscall gate: it enforces security-server verdicts on
// the guest's system calls from outside the VM, with no agent in the guest.
// It never decides: every verdict comes from secserver.
//
//	policy ──Plan──► syscalls it names ──► breakpoints (kallsyms + KASLR slide), set by monitor:
//	  open family   ──► security_file_open, security_path_mknod   (hooks.go: the kernel's resolved file)
//	  execve family ──► security_bprm_creds_for_exec
//	                    each trapped, on a 1-vCPU VM, by a read watchpoint on its
//	                    security_hook_heads entry (watch.go); else at its call sites
//	                    (do_dentry_open+0xf3, ...) when linux.CodeRefs proves those are
//	                    the only ways in; else at its entry
//	  any other     ──► __x64_sys_<name> and its i386 entry __ia32_[compat_]sys_<name>
//	vCPU hits one ──► Handle(registers)
//	  handler: rdi = struct pt_regs * ──► args (BTF offsets); path args from user memory (≤ PATH_MAX)
//	  hook:    user pt_regs at the top of the task's kernel stack ──► which syscall, args;
//	           path from the struct file / dentry the kernel resolved (symlinks followed)
//	  gs_base + current_task ──► task_struct ──► subject
//	  event.Event ──► secserver.Decide ──► Outcome: register (and memory) writes
//	     allow  rip past the entry no-op (endbr64 / 5-byte nop), or step;
//	            at a call site: push the return address, rip = the hook
//	     deny   rax = -errno; rip = [rsp]; rsp += 8   (the handler or hook "returns");
//	            at a call site: rax = -errno; rip past the call;
//	            at a watch stop: rax = -errno, pushed registers restored, return
//	     kill   at a handler: rip = do_group_exit, rdi = SIGKILL (dies as if killed);
//	            at a hook: the hook fails with EPERM and SIGKILL is queued on the
//	            task, taken on its way back to user mode (nothing the kernel holds leaks)
//
// Fail closed: an event that cannot be read (bad task pointer, unreadable
// pt_regs) is still decided — as an event with what could be read — and
// a Handle error makes the caller deny with EPERM.
//
// The gate reports syscall families under the policy's name: a policy that
// names open decides open, openat, creat and openat2 and reports each as
// "open" with the arguments of open(path, flags, mode); execve covers
// execveat. A policy that names openat itself gets openat's own arguments.
// Opens and execs carry the path of the file the kernel resolved. Other
// path syscalls (unlink, mkdir, ...) carry the path as written, made
// absolute against the task's working directory or the dirfd's directory
// (see docs/design.md, "Syscall gate").
package gate
