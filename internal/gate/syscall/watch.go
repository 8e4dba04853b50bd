package gate

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/arch/x86/x86asm"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Hooks trapped by a read watchpoint on their LSM list head.
//
// Why: under QEMU's TCG every execution breakpoint is checked at every
// translation-block lookup, which costs all guest code ≥ 6 % per
// breakpoint (docs/benchmarks.md, "Syscall gate"); a watchpoint is checked
// only on accesses to its page. Each LSM wrapper (security_file_open, ...)
// reads its list head, security_hook_heads.<hook>, before calling the
// LSMs, and nothing else reads that word once the kernel runs, so a read
// watchpoint on it stops the vCPU exactly when the hook is called — after
// the load, a few instructions into the hook. entryModel says what those
// instructions did (what they pushed, where the arguments went), so that
// the gate can read the event and, for a deny, return from the hook as if
// it had returned -errno. A hook whose first instructions do anything the
// model does not know is trapped by breakpoints instead.

// entryModel is a hook's code from its entry to its first read of its list
// head.
type entryModel struct {
	// Stop is the address after the load: the vCPU's rip at the stop.
	Stop uint64
	// Args are the registers holding the hook's arguments at Stop (""
	// when the hook has lost one).
	Args [6]string
	// Saved are the callee-saved registers the code changed, each with
	// the offset from rsp at Stop of the slot it pushed the caller's
	// value to.
	Saved []savedReg
	// RetOff is the offset from rsp at Stop of the return address.
	RetOff uint64
}

type savedReg struct {
	Reg string
	Off uint64
}

// maxEntry bounds the code modelEntry reads and decodes.
const (
	maxEntryBytes = 256
	maxEntryInsns = 48
)

// regNames maps every x86asm register name to the 64-bit register it is
// part of, as the gdbstub names it.
var regNames = func() map[string]string {
	m := map[string]string{}
	for _, r := range [][]string{
		{"rax", "RAX", "EAX", "AX", "AL", "AH"}, {"rcx", "RCX", "ECX", "CX", "CL", "CH"},
		{"rdx", "RDX", "EDX", "DX", "DL", "DH"}, {"rbx", "RBX", "EBX", "BX", "BL", "BH"},
		{"rsp", "RSP", "ESP", "SP", "SPB"}, {"rbp", "RBP", "EBP", "BP", "BPB"},
		{"rsi", "RSI", "ESI", "SI", "SIB"}, {"rdi", "RDI", "EDI", "DI", "DIB"},
	} {
		for _, n := range r[1:] {
			m[n] = r[0]
		}
	}
	for i := 8; i <= 15; i++ {
		for _, suf := range []string{"", "L", "W", "B"} {
			m[fmt.Sprintf("R%d%s", i, suf)] = fmt.Sprintf("r%d", i)
		}
	}
	return m
}()

var calleeSaved = []string{"rbx", "rbp", "r12", "r13", "r14", "r15"}

// argRegs are the registers of the first six arguments (SysV ABI).
var argRegs = [6]string{RegRDI, RegRSI, RegRDX, RegRCX, RegR8, RegR9}

// callerSaved are the registers a call may change.
var callerSaved = []string{"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"}

// modelEntry decodes code, the first bytes of a hook at entry, up to the
// instruction that loads the size-byte variable at watch (the hook's
// 8-byte list head, or a 4-byte global). Pure.
//
// The code before the load may push registers, move and compute in
// registers, store to memory (its own stack frame), make room on the
// stack, fill memory with rep stos, branch forward, and call functions
// directly (their stack effect is balanced; the registers a call may
// change are forgotten). Anything else refuses the model.
func modelEntry(code []byte, entry, watch uint64, size int) (entryModel, error) {
	// What each register holds: "arg0".."arg5", "orig" (the caller's value
	// of a callee-saved register), or "" (anything else).
	holds := map[string]string{}
	for i, r := range argRegs {
		holds[r] = fmt.Sprintf("arg%d", i)
	}
	for _, r := range calleeSaved {
		holds[r] = "orig"
	}
	var (
		pushes []pushed
		depth  uint64
		// forward holds, for each target of a conditional jump taken
		// before the load, the state the jump carries there; the states
		// meet at the target (a join).
		forward = map[uint64][]branchState{}
	)
	for off, n := 0, 0; off < len(code); n++ {
		if n >= maxEntryInsns {
			return entryModel{}, fmt.Errorf("no read of the list head in the first %d instructions", maxEntryInsns)
		}
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil || inst.Len <= 0 {
			return entryModel{}, fmt.Errorf("undecodable code at +%#x", off)
		}
		pc := entry + uint64(off)
		next := pc + uint64(inst.Len)
		off += inst.Len
		for _, st := range forward[pc] {
			// A join: a register keeps what it holds only if it holds the
			// same on every way in; the stack must be the same.
			if st.depth != depth || !samePushes(st.pushes, pushes) {
				return entryModel{}, fmt.Errorf("paths joining at %#x leave the stack differently", pc)
			}
			for r, v := range holds {
				if st.holds[r] != v {
					holds[r] = ""
				}
			}
		}
		delete(forward, pc)
		if mem, ok := inst.Args[1].(x86asm.Mem); ok && inst.Op == x86asm.MOV && mem.Base == x86asm.RIP &&
			next+uint64(int64(int32(mem.Disp))) == watch {
			dst, ok := regOf(inst.Args[0])
			if !ok || dst == "rsp" || inst.DataSize != size*8 {
				return entryModel{}, fmt.Errorf("the watched variable is read by %v", inst)
			}
			for t := range forward {
				if t <= pc {
					return entryModel{}, fmt.Errorf("a jump before the load lands inside an instruction at %#x", t)
				}
			}
			holds[dst] = ""
			return finishModel(next, holds, pushes, depth)
		}
		switch inst.Op {
		case x86asm.NOP:
		case x86asm.PUSH:
			depth += 8
			if r, ok := regOf(inst.Args[0]); ok {
				if holds[r] == "orig" {
					pushes = append(pushes, pushed{r, depth})
				}
			}
		case x86asm.TEST, x86asm.CMP:
		case x86asm.CALL:
			if _, ok := inst.Args[0].(x86asm.Rel); !ok {
				return entryModel{}, fmt.Errorf("an indirect call before the load: %v", inst)
			}
			for _, r := range callerSaved {
				holds[r] = ""
			}
		case x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ:
			// (rep) stos fills memory at rdi: rdi and rcx change.
			holds["rdi"], holds["rcx"] = "", ""
		case x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JG, x86asm.JGE, x86asm.JL, x86asm.JLE,
			x86asm.JNE, x86asm.JNO, x86asm.JNP, x86asm.JNS, x86asm.JO, x86asm.JP, x86asm.JS:
			rel, ok := inst.Args[0].(x86asm.Rel)
			if !ok || int64(rel) <= 0 {
				return entryModel{}, fmt.Errorf("a backward or indirect branch before the load: %v", inst)
			}
			target := next + uint64(int64(rel))
			forward[target] = append(forward[target], branchState{holds: maps.Clone(holds), pushes: slices.Clone(pushes), depth: depth})
		case x86asm.SUB:
			if r, ok := regOf(inst.Args[0]); ok && r == "rsp" {
				imm, ok := inst.Args[1].(x86asm.Imm)
				if !ok || imm <= 0 || imm > 4096 || inst.DataSize != 64 {
					return entryModel{}, fmt.Errorf("rsp changed by %v", inst)
				}
				depth += uint64(imm)
				continue
			}
			fallthrough
		case x86asm.MOV, x86asm.MOVZX, x86asm.MOVSX, x86asm.MOVSXD, x86asm.LEA, x86asm.ADD, x86asm.AND, x86asm.OR,
			x86asm.XOR, x86asm.SHL, x86asm.SHR, x86asm.SAR:
			dst, ok := regOf(inst.Args[0])
			if !ok {
				continue // a store to memory: no register changes
			}
			if dst == "rsp" {
				return entryModel{}, fmt.Errorf("rsp changed by %v", inst)
			}
			v := ""
			if src, ok := regOf(inst.Args[1]); ok && inst.Op == x86asm.MOV && inst.DataSize == 64 {
				v = holds[src]
			}
			holds[dst] = v
		default:
			return entryModel{}, fmt.Errorf("%v before the load is not modelled", inst)
		}
	}
	return entryModel{}, errors.New("no read of the list head")
}

// branchState is what the model knows on a jump's way to its target.
type branchState struct {
	holds  map[string]string
	pushes []pushed
	depth  uint64
}

func samePushes(a, b []pushed) bool { return slices.Equal(a, b) }

// pushed is a callee-saved register pushed with the caller's value.
type pushed struct {
	reg   string
	depth uint64 // bytes below the entry rsp after the push
}

func finishModel(stop uint64, holds map[string]string, pushes []pushed, depth uint64) (entryModel, error) {
	m := entryModel{Stop: stop, RetOff: depth}
	for i := range argRegs {
		want, orig := fmt.Sprintf("arg%d", i), argRegs[i]
		if holds[orig] == want {
			m.Args[i] = orig
			continue
		}
		for _, r := range append(calleeSaved, "rax", "rcx", "rdx", "r8", "r9", "r10", "r11", "rdi", "rsi") {
			if holds[r] == want {
				m.Args[i] = r
				break
			}
		}
	}
	if m.Args[0] == "" {
		return entryModel{}, errors.New("the first argument is lost before the load")
	}
	for _, r := range calleeSaved {
		if holds[r] == "orig" {
			continue
		}
		found := false
		for _, p := range pushes {
			if p.reg == r {
				m.Saved = append(m.Saved, savedReg{r, depth - p.depth})
				found = true
				break
			}
		}
		if !found {
			return entryModel{}, fmt.Errorf("%s is changed without being saved", r)
		}
	}
	return m, nil
}

// regOf returns the 64-bit register an operand names.
func regOf(a x86asm.Arg) (string, bool) {
	r, ok := a.(x86asm.Reg)
	if !ok {
		return "", false
	}
	n, ok := regNames[r.String()]
	return n, ok
}

// hookWatch is how a hook is trapped by a watchpoint.
type hookWatch struct {
	head  uint64 // the watched variable's address (the list head)
	size  int    // its size in bytes: 8 for a list head
	model entryModel
	next  nextInsn // the instruction at model.Stop, when EmulateNext can perform it
}

// hookWatches plans a read watchpoint for each hook whose entry code
// modelEntry understands: on its security_hook_heads member, or on the
// global hookDefs names for it.
func hookWatches(k *linux.Kernel, hooks map[Hook]uint64) map[Hook]hookWatch {
	out := map[Hook]hookWatch{}
	heads, herr := k.Addr("security_hook_heads")
	for h, entry := range hooks {
		var (
			addr uint64
			size = 8
		)
		switch d := hookDefs[h]; {
		case d.watchVar != "":
			a, err := k.Addr(d.watchVar)
			if err != nil {
				continue
			}
			addr, size = a, 4
		case herr == nil:
			off, err := k.Profile.FieldOffset("security_hook_heads." + d.head)
			if err != nil {
				continue
			}
			addr = heads + off
		default:
			continue
		}
		code := make([]byte, maxEntryBytes)
		if _, err := k.AS.ReadVirtual(entry, code); err != nil {
			continue
		}
		m, err := modelEntry(code, entry, addr, size)
		if err != nil {
			continue
		}
		w := hookWatch{head: addr, size: size, model: m}
		if off := m.Stop - entry; off < uint64(len(code)) {
			w.next, _ = decodeNext(code[off:])
		}
		out[h] = w
	}
	return out
}

// watchArgs returns regs with the hook's arguments where the hook code
// received them (rdi, rsi), for hookEvent.
func watchArgs(t Trap, regs Regs) Regs {
	out := maps.Clone(regs) // a copy: the caller's registers are the vCPU's
	if out == nil {
		out = Regs{}
	}
	for i, r := range argRegs {
		if src := t.model.Args[i]; src != "" {
			out[r] = regs[src]
		} else {
			delete(out, r) // lost: reading it would read another value
		}
	}
	return out
}

// watchDenyWrites returns from the hook with -errno: the callee-saved
// registers its code pushed are restored, rip is the return address.
func watchDenyWrites(mem vmi.VirtualReader, t Trap, regs Regs, errno int32) ([]RegWrite, error) {
	rsp := regs[RegRSP]
	ret, err := vmi.ReadU64(mem, rsp+t.model.RetOff)
	if err != nil {
		return nil, fmt.Errorf("gate: read the return address at %#x: %w", rsp+t.model.RetOff, err)
	}
	w := []RegWrite{{RegRAX, uint64(-int64(errno))}}
	for _, s := range t.model.Saved {
		v, err := vmi.ReadU64(mem, rsp+s.Off)
		if err != nil {
			return nil, fmt.Errorf("gate: read the saved %s at %#x: %w", s.Reg, rsp+s.Off, err)
		}
		w = append(w, RegWrite{s.Reg, v})
	}
	return append(w, RegWrite{RegRIP, ret}, RegWrite{RegRSP, rsp + t.model.RetOff + 8}), nil
}

// nextInsn is the instruction right after a hook's watched load, which
// the monitor performs itself when it resumes a vCPU in place on a VM with
// several vCPUs (EmulateNext): left at the stop address, the vCPU would be
// found there by the next stop for another vCPU, before it ran, and its
// call decided twice; stepping it instead costs QEMU a flush of all
// translated code (tens of milliseconds under TCG).
type nextInsn struct {
	op       x86asm.Op // TEST, PUSH or MOV
	dst, src string    // registers as the gdbstub names them
	size     int       // operand size in bits: 32 or 64
	len      int
}

// decodeNext decodes the instruction at code[0:] when it is one
// EmulateNext performs: test of two registers, push of a register, or a
// 64-bit move between registers. Pure.
func decodeNext(code []byte) (nextInsn, bool) {
	inst, err := x86asm.Decode(code, 64)
	if err != nil || inst.Len <= 0 {
		return nextInsn{}, false
	}
	for _, p := range inst.Prefix {
		if p == 0 {
			break
		}
		if b := byte(p); b < 0x40 || b > 0x4f { // only REX
			return nextInsn{}, false
		}
	}
	n := nextInsn{op: inst.Op, size: inst.DataSize, len: inst.Len}
	var ok1, ok2 bool
	switch inst.Op {
	case x86asm.TEST:
		n.dst, ok1 = regOf(inst.Args[0])
		n.src, ok2 = regOf(inst.Args[1])
		if !ok1 || !ok2 || (n.size != 32 && n.size != 64) || !fullOrLow32(inst.Args[0]) || !fullOrLow32(inst.Args[1]) {
			return nextInsn{}, false
		}
	case x86asm.PUSH:
		// In 64-bit mode a push of a register always pushes 8 bytes
		// (x86asm reports the default operand size, 32).
		r, isReg := inst.Args[0].(x86asm.Reg)
		n.src, ok1 = regOf(inst.Args[0])
		if !ok1 || !isReg || r < x86asm.RAX || r > x86asm.R15 || n.src == "rsp" || inst.Len > 2 {
			return nextInsn{}, false
		}
		n.size = 64
	case x86asm.MOV:
		n.dst, ok1 = regOf(inst.Args[0])
		n.src, ok2 = regOf(inst.Args[1])
		if !ok1 || !ok2 || n.size != 64 || n.dst == "rsp" {
			return nextInsn{}, false
		}
	default:
		return nextInsn{}, false
	}
	return n, true
}

// fullOrLow32 reports whether a register operand is a whole 64-bit
// register or its low 32 bits (not AH or a 16/8-bit part).
func fullOrLow32(a x86asm.Arg) bool {
	r, ok := a.(x86asm.Reg)
	return ok && (r >= x86asm.EAX && r <= x86asm.R15L || r >= x86asm.RAX && r <= x86asm.R15)
}

// x86 flags TEST sets (CF, OF cleared; PF, ZF, SF from the result; AF is
// left undefined by the architecture and kept).
const (
	flagCF = 1 << 0
	flagPF = 1 << 2
	flagZF = 1 << 6
	flagSF = 1 << 7
	flagOF = 1 << 11
)

// EmulateNext returns the writes that perform the instruction after t's
// watched load on a vCPU stopped there with regs, as the CPU would: the
// vCPU then resumes past it. rip is written last, and a register that
// already holds its result is not written. ok is false when t has no such instruction
// the gate can perform (the caller steps the vCPU instead).
func EmulateNext(t Trap, regs Regs) (writes []RegWrite, mem []MemWrite, ok bool) {
	n := t.next
	if t.Via != ViaWatch || n.len == 0 {
		return nil, nil, false
	}
	rip, ok1 := regs[RegRIP]
	if !ok1 || rip != t.Addr {
		return nil, nil, false
	}
	get := func(r string) (uint64, bool) { v, ok := regs[r]; return v, ok }
	switch n.op {
	case x86asm.TEST:
		a, ok1 := get(n.dst)
		b, ok2 := get(n.src)
		fl, ok3 := get("eflags")
		if !ok1 || !ok2 || !ok3 {
			return nil, nil, false
		}
		r, sign := a&b, uint64(1)<<63
		if n.size == 32 {
			r, sign = r&0xffffffff, 1<<31
		}
		old := fl
		fl &^= flagCF | flagPF | flagZF | flagSF | flagOF
		if r == 0 {
			fl |= flagZF
		}
		if r&sign != 0 {
			fl |= flagSF
		}
		if bitsSet(uint8(r))%2 == 0 {
			fl |= flagPF
		}
		if fl != old { // else the flags already are the test's: one write fewer
			writes = append(writes, RegWrite{"eflags", fl})
		}
	case x86asm.PUSH:
		v, ok1 := get(n.src)
		sp, ok2 := get(RegRSP)
		if !ok1 || !ok2 {
			return nil, nil, false
		}
		mem = append(mem, MemWrite{Addr: sp - 8, Value: v})
		writes = append(writes, RegWrite{RegRSP, sp - 8})
	case x86asm.MOV:
		v, ok1 := get(n.src)
		if !ok1 {
			return nil, nil, false
		}
		if cur, ok := get(n.dst); !ok || cur != v {
			writes = append(writes, RegWrite{n.dst, v})
		}
	default:
		return nil, nil, false
	}
	return append(writes, RegWrite{RegRIP, rip + uint64(n.len)}), mem, true
}

func bitsSet(b uint8) int {
	n := 0
	for ; b != 0; b &= b - 1 {
		n++
	}
	return n
}
