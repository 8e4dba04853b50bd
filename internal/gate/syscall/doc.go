// Package gate is the syscall gate: it enforces security-server verdicts on
// the guest's system calls from outside the VM, with no agent in the guest.
// It never decides: every verdict comes from secserver. Imported only by
// monitor.
//
//	policy ──Plan──► syscalls it names ──► __x64_sys_<name> (kallsyms + KASLR slide)
//	                                         │ gdbstub software breakpoints (monitor)
//	vCPU hits one ──► Handle(registers)      ▼
//	  rdi = struct pt_regs * ──► args (BTF offsets)   gs_base + current_task ──► task_struct
//	  path args ──► user memory through the task's page tables (≤ PATH_MAX)
//	  event.Event ──► secserver.Decide ──► Outcome: register writes
//	     allow  rip past the entry no-op (endbr64 / 5-byte nop), or step
//	     deny   rax = -errno; rip = [rsp]; rsp += 8   (the handler "returns")
//	     kill   rip = do_group_exit, rdi = SIGKILL    (dies as if killed)
//
// Fail closed: an event that cannot be read (bad task pointer, unreadable
// pt_regs) is still decided — as an event with what could be read — and
// a Handle error makes the caller deny with EPERM.
//
// The gate reports syscall families under the policy's name: a policy that
// names open traps open, openat, creat and openat2 and reports each as
// "open" with the arguments of open(path, flags, mode); execve covers
// execveat. A policy that names openat itself gets openat's own arguments.
// Paths are made absolute against the task's working directory when the
// dirfd is AT_FDCWD; a path relative to another directory fd is reported
// as written (see docs/design.md, "Syscall gate").
package gate
