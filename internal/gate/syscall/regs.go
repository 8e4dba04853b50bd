package gate

import (
	"encoding/binary"
	"fmt"
)

// Register names as the gdbstub's x86-64 target description spells them.
const (
	RegRAX    = "rax"
	RegRCX    = "rcx"
	RegRDX    = "rdx"
	RegRDI    = "rdi"
	RegRSI    = "rsi"
	RegR8     = "r8"
	RegR9     = "r9"
	RegRSP    = "rsp"
	RegRIP    = "rip"
	RegGSBase = "gs_base"
	RegCR3    = "cr3"
	RegCR4    = "cr4"
)

// Regs are one vCPU's registers by name.
type Regs map[string]uint64

// RegWrite is one register the caller must set before resuming the vCPU.
type RegWrite struct {
	Reg   string
	Value uint64
}

// MemWrite is one 8-byte little-endian value the caller must store at a
// kernel virtual address (as the stopped vCPU sees it) before resuming.
type MemWrite struct {
	Addr  uint64
	Value uint64
}

// PtRegs is the part of the user context (struct pt_regs) a syscall gate
// needs: the argument registers of both ABIs and the syscall number.
type PtRegs struct {
	Args       [6]uint64 // x86-64 ABI: di, si, dx, r10, r8, r9
	CompatArgs [6]uint64 // i386 ABI (int 0x80, 32-bit processes): bx, cx, dx, si, di, bp
	OrigAX     uint64    // the syscall number
}

// ArgsFor returns the arguments in the ABI the call was made with.
func (p PtRegs) ArgsFor(compat bool) [6]uint64 {
	if compat {
		return p.CompatArgs
	}
	return p.Args
}

// PtRegsLayout holds the BTF offsets of struct pt_regs's fields.
type PtRegsLayout struct {
	Args       [6]uint64
	CompatArgs [6]uint64
	OrigAX     uint64
	NR32       bool   // the number is 32 bits wide (arm64's s32 syscallno)
	Size       uint64 // bytes one read must cover
}

// PtRegsFields are the pt_regs members the gate reads: the x86-64
// arguments in order, orig_ax, then the i386 arguments bx, cx and bp that
// are not x86-64 argument registers.
var PtRegsFields = [10]string{"di", "si", "dx", "r10", "r8", "r9", "orig_ax", "bx", "cx", "bp"}

// NewPtRegsLayout builds the layout from field offsets (offset(name)
// returns pt_regs.<name>'s byte offset).
func NewPtRegsLayout(offset func(field string) (uint64, error)) (PtRegsLayout, error) {
	var l PtRegsLayout
	offs := map[string]uint64{}
	for _, f := range PtRegsFields {
		off, err := offset(f)
		if err != nil {
			return l, fmt.Errorf("gate: pt_regs.%s: %w", f, err)
		}
		if off > 4096 {
			return l, fmt.Errorf("gate: pt_regs.%s at implausible offset %d", f, off)
		}
		offs[f] = off
		l.Size = max(l.Size, off+8)
	}
	for i, f := range PtRegsFields[:6] {
		l.Args[i] = offs[f]
	}
	for i, f := range [6]string{"bx", "cx", "dx", "si", "di", "bp"} {
		l.CompatArgs[i] = offs[f]
	}
	l.OrigAX = offs["orig_ax"]
	return l, nil
}

// Decode reads the fields out of b, the first l.Size bytes of a pt_regs.
// Pure.
func (l PtRegsLayout) Decode(b []byte) (PtRegs, error) {
	if uint64(len(b)) < l.Size {
		return PtRegs{}, fmt.Errorf("gate: pt_regs: %d bytes, need %d", len(b), l.Size)
	}
	var p PtRegs
	for i, off := range l.Args {
		p.Args[i] = binary.LittleEndian.Uint64(b[off:])
	}
	for i, off := range l.CompatArgs {
		// The i386 ABI passes 32-bit values.
		p.CompatArgs[i] = uint64(binary.LittleEndian.Uint32(b[off:]))
	}
	if l.NR32 {
		p.OrigAX = uint64(binary.LittleEndian.Uint32(b[l.OrigAX:]))
	} else {
		p.OrigAX = binary.LittleEndian.Uint64(b[l.OrigAX:])
	}
	return p, nil
}

// DenyWrites emulates a return from the syscall handler at its first
// instruction with -errno: the handler has not run, its return address is
// at [rsp]. retAddr is the value read there.
func DenyWrites(regs Regs, retAddr uint64, errno int32) []RegWrite {
	return []RegWrite{
		{RegRAX, uint64(-int64(errno))},
		{RegRIP, retAddr},
		{RegRSP, regs[RegRSP] + 8},
	}
}

// KillWrites makes the vCPU call do_group_exit(SIGKILL) instead of the
// handler: the thread group exits with the status of a SIGKILL death
// (the shell reports 137), through the kernel's own exit path.
func KillWrites(doGroupExit uint64) []RegWrite {
	return isaX86.killWrites(doGroupExit)
}

// killWrites is KillWrites in the registers of a.
func (a *isa) killWrites(doGroupExit uint64) []RegWrite {
	return []RegWrite{{a.args[0], sigKill}, {a.pc, doGroupExit}}
}

const sigKill = 9

// Apply returns regs with writes applied (for tests and for reasoning
// about an outcome).
func Apply(regs Regs, writes []RegWrite) Regs {
	out := make(Regs, len(regs))
	for k, v := range regs {
		out[k] = v
	}
	for _, w := range writes {
		out[w.Reg] = w.Value
	}
	return out
}
