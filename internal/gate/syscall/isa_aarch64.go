package gate

import (
	"encoding/binary"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// The kernel gate on arm64 guests (docs/design.md, "Kernel gate on
// arm64"):
//
//	trap          an execution breakpoint (gdbstub Z0) at the function's first
//	              instruction: a syscall handler __arm64_sys_<name> or an LSM
//	              hook security_<hook>. Nothing has run yet: no frame is
//	              pushed, x30 (LR) is the caller's return address (plain: the
//	              hook's paciasp comes after its two ftrace NOPs).
//	arguments     handler: x0 = struct pt_regs * (orig_x0, regs[1..5];
//	              syscallno); hook: x0-x5 (AAPCS64).
//	current       SP_EL0, which the arm64 kernel keeps `current` in at EL1,
//	              read from the gdbstub's system registers.
//	user context  task->stack + THREAD_SIZE - sizeof(pt_regs); TIF_32BIT
//	              marks an AArch32 task (compat syscall numbers).
//	allow         pc past the NOP the function starts with (ftrace's
//	              patchable entry), else a single step.
//	deny          x0 = -errno, pc = x30: the function returns at once.
//	kill          handler: pc = do_group_exit, x0 = SIGKILL; hook: deny with
//	              EPERM and queue SIGKILL (TIF_SIGPENDING is bit 0 on arm64).
//	fault-in      x0 = path, x1 = PATH_MAX+1, x30 = the trap, pc =
//	              strnlen_user; the handler gets x0 and x30 back on return.
//
// No watchpoints: the hooks' list heads (security_hook_heads) are data
// symbols an arm64 kallsyms without KALLSYMS_ALL does not list, and the
// entry model (watch.go) decodes x86-64 only; no call-site traps either
// (linux.CodeRefs decodes x86-64). Every hook is trapped at its entry.

// AArch64 register names as QEMU's gdbstub target description spells them
// (org.gnu.gdb.aarch64.core, and SP_EL0 among its system registers).
const (
	RegX0    = "x0"
	RegX1    = "x1"
	RegLR    = "x30"
	RegPC    = "pc"
	RegSP    = "sp"
	RegSPEL0 = "SP_EL0"
)

var isaARM64 = &isa{
	name:           "arm64",
	args:           [6]string{"x0", "x1", "x2", "x3", "x4", "x5"},
	pc:             RegPC,
	sp:             RegSP,
	handlerPrefix:  "__arm64_sys_",
	compatPrefixes: []string{"__arm64_compat_sys_"},
	// Native: the generic table (include/uapi/asm-generic/unistd.h);
	// compat: the AArch32 EABI table (arch/arm64/include/asm/unistd32.h).
	// Kernel ABI: never renumbered.
	numbers: map[string]abiNumbers{
		"open": {x64: noSyscall, ia32: 5}, "creat": {x64: noSyscall, ia32: 8},
		"openat": {x64: 56, ia32: 322}, "openat2": {x64: 437, ia32: 437},
		"execve": {x64: 221, ia32: 11}, "execveat": {x64: 281, ia32: 387},
		"ptrace": {x64: 117, ia32: 26}, "delete_module": {x64: 106, ia32: 129},
	},
	hookFields: []string{"path.mnt", "path.dentry", "task_struct.thread_info", "thread_info.flags", "task_struct.stack"},
	arm64:      true,
}

// AArch64 instructions the gate recognises at a function's entry.
const (
	a64NOP  = 0xd503201f
	a64BTIC = 0xd503245f // bti c: a landing pad, no state
)

// skipARM64 returns 4 when the instruction at a function's entry is one an
// allowed call may skip (a NOP or a BTI landing pad), else 0 (step it).
func skipARM64(insn []byte) int {
	if len(insn) < 4 {
		return 0
	}
	switch binary.LittleEndian.Uint32(insn) {
	case a64NOP, a64BTIC:
		return 4
	}
	return 0
}

// armPtRegsLayout is struct pt_regs of arm64: the six arguments are
// orig_x0 (x0 as the task entered the kernel: regs[0] is overwritten
// with the return value only after the handler returns) and regs[1..5],
// in both ABIs (an AArch32 task's r0-r5 are in the same slots, upper
// halves zero); the number is the s32 syscallno.
func armPtRegsLayout(offset func(field string) (uint64, error)) (PtRegsLayout, error) {
	var l PtRegsLayout
	regs, err := offset("regs")
	if err != nil {
		return l, fmt.Errorf("gate: pt_regs.regs: %w", err)
	}
	x0, err := offset("orig_x0")
	if err != nil {
		return l, fmt.Errorf("gate: pt_regs.orig_x0: %w", err)
	}
	nr, err := offset("syscallno")
	if err != nil {
		return l, fmt.Errorf("gate: pt_regs.syscallno: %w", err)
	}
	if regs > 4096 || x0 > 4096 || nr > 4096 {
		return l, fmt.Errorf("gate: pt_regs at implausible offsets (regs %d, orig_x0 %d, syscallno %d)", regs, x0, nr)
	}
	l.Args[0] = x0
	for i := 1; i < 6; i++ {
		l.Args[i] = regs + 8*uint64(i)
	}
	l.CompatArgs = l.Args
	l.OrigAX, l.NR32 = nr, true
	l.Size = max(regs+6*8, x0+8, nr+4)
	return l, nil
}

// denyARM64 returns from a function at its first instruction with
// -errno: x0 is the return value, pc the caller's return address in x30.
// Nothing was pushed, so nothing else changes.
func denyARM64(regs Regs, errno int32) ([]RegWrite, error) {
	lr, ok := regs[RegLR]
	if !ok || lr>>48 != 0xffff {
		return nil, fmt.Errorf("gate: the return address in x30 (%#x) is not kernel text", lr)
	}
	return []RegWrite{{RegX0, uint64(-int64(errno))}, {RegPC, lr}}, nil
}

// handlerArgs01 returns the first two syscall arguments of a stop at a
// syscall handler's entry, from the pt_regs its x0 points to.
func (g *Gate) handlerArgs01(regs Regs) (uint64, uint64, error) {
	pr := make([]byte, g.ptregs.Size)
	at := g.isa.arg(regs, 0)
	if _, err := g.k.AS.ReadVirtual(at, pr); err != nil {
		return 0, 0, fmt.Errorf("read pt_regs at %#x: %w", at, err)
	}
	p, err := g.ptregs.Decode(pr)
	if err != nil {
		return 0, 0, err
	}
	return p.Args[0], p.Args[1], nil
}

// currentTaskARM64 reads the task in SP_EL0.
func (g *Gate) currentTaskARM64(regs Regs) (uint64, error) {
	v, ok := regs[RegSPEL0]
	if !ok {
		return 0, fmt.Errorf("the stop's registers have no %s (the gdbstub did not give it)", RegSPEL0)
	}
	return g.k.CurrentTaskARM64(v)
}

// userSpaceARM64 is a task's address space: its mm->pgd as TTBR0 under
// the kernel's TTBR1.
func (g *Gate) userSpaceARM64(task linux.Task) *vmi.AddressSpace {
	return &vmi.AddressSpace{Mem: g.k.Mem, CR3: task.PGD, Paging: vmi.PagingARM64, TTBR1: g.k.AS.TTBR1}
}
