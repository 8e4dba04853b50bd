package gate

import (
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// isa is the instruction set the guest kernel runs on, as the gate sees
// it: where a trapped function finds its arguments, what the syscall
// handlers are called, the syscall numbers of the calls decided at hooks,
// and how a trapped function is made to return. The monitor runs on an
// x86-64 host for guests of either kind, so both are always compiled in
// (isaX86 here, isaARM64 in isa_aarch64.go) and the profile picks one.
type isa struct {
	name string
	// args are the registers of a C function's first six arguments at its
	// first instruction (SysV: rdi..r9; AAPCS64: x0..x5).
	args [6]string
	// pc and sp name the program counter and the stack pointer.
	pc, sp string
	// handlerPrefix is the prefix of the native syscall handlers' symbols;
	// compatPrefixes those of the compat ABI's entries, preferred first.
	handlerPrefix  string
	compatPrefixes []string
	// numbers are the syscall numbers of the calls hooks decide.
	numbers map[string]abiNumbers
	// hookFields are the layouts every hook's event needs, beyond the
	// hook's own (hookDef.fields).
	hookFields []string
	arm64      bool
}

var isaX86 = &isa{
	name:           "x86-64",
	args:           [6]string{RegRDI, RegRSI, RegRDX, RegRCX, RegR8, RegR9},
	pc:             RegRIP,
	sp:             RegRSP,
	handlerPrefix:  "__x64_sys_",
	compatPrefixes: []string{"__ia32_compat_sys_", "__ia32_sys_"},
	numbers:        syscallNumbers,
	hookFields:     []string{"path.mnt", "path.dentry", "task_struct.thread_info", "thread_info.status"},
}

// isaOf returns the instruction set of the kernel of profile p.
func isaOf(p *linux.Profile) *isa {
	if p != nil && p.IsARM64() {
		return isaARM64
	}
	return isaX86
}

// handler returns the symbol of a syscall's native handler.
func (a *isa) handler(name string) string { return a.handlerPrefix + name }

// compatHandlers returns the symbols a syscall's compat entry may have.
func (a *isa) compatHandlers(name string) []string {
	out := make([]string, len(a.compatPrefixes))
	for i, p := range a.compatPrefixes {
		out[i] = p + name
	}
	return out
}

// hookSym returns the function hook h is trapped at on this instruction
// set: its hookDef's, except module unload on arm64, whose
// __do_sys_delete_module the compiler inlined into the handler (Debian's
// 6.1 has no such symbol) and whose x86 watch on modules_disabled has no
// arm64 counterpart: there the handler, __arm64_sys_delete_module, is the
// hook (its x0 is the user pt_regs).
func (a *isa) hookSym(h Hook) string {
	if a.arm64 && h == AtModuleDelete {
		return a.handler("delete_module")
	}
	return h.String()
}

// arg returns a trapped function's argument i (0-5) from its registers.
func (a *isa) arg(regs Regs, i int) uint64 { return regs[a.args[i]] }

// argOK is arg, and whether the register is in regs at all (a watch stop's
// model may have lost it).
func (a *isa) argOK(regs Regs, i int) (uint64, bool) {
	v, ok := regs[a.args[i]]
	return v, ok
}

// numberOf returns a syscall's number in the ABI of a call.
func (a *isa) numberOf(name string, compat, x32 bool) (uint64, bool) {
	n, ok := a.numbers[name]
	switch {
	case !ok:
		return 0, false
	case compat:
		return n.ia32, n.ia32 != noSyscall
	case x32 && !a.arm64:
		return n.x32 | x32Bit, true
	}
	return n.x64, n.x64 != noSyscall
}

// noSyscall marks a call an ABI does not have (arm64 has no open or
// creat, only openat).
const noSyscall = ^uint64(0)
