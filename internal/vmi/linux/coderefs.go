package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"

	"golang.org/x/arch/x86/x86asm"
)

// RefKind says how the kernel refers to a function.
type RefKind uint8

const (
	// RefCall is a direct call (call rel32): the function's arguments are
	// in their registers at this instruction, and its return address will
	// be the next one.
	RefCall RefKind = iota + 1
	// RefJump is a direct tail call (jmp rel32): arguments in registers,
	// the caller's return address at [rsp].
	RefJump
	// RefOther is any other reference: a conditional tail call, the
	// address taken (lea, mov, push of an immediate), or a pointer to the
	// function in static data. Calls through it cannot be found by
	// looking at call instructions.
	RefOther
	// RefUnknown is a byte pattern that would refer to the function if it
	// were an instruction, in code the decoder cannot take apart: it may
	// be a reference.
	RefUnknown
)

func (r RefKind) String() string {
	switch r {
	case RefCall:
		return "call"
	case RefJump:
		return "jmp"
	case RefOther:
		return "other"
	}
	return "unknown"
}

// CodeRef is one reference to a function.
type CodeRef struct {
	Kind RefKind
	// Addr is the run-time address of the referring instruction (or data
	// word); Len the instruction's length.
	Addr uint64
	Len  int
	// Where names the enclosing symbol, "func+0xoff".
	Where string
}

// Bounds of what CodeRefs reads and reports: a core text or data region
// larger than maxScan is not a kernel this code knows; an instruction
// further than maxDecode from the start of its symbol is not decoded (it
// is reported as RefUnknown); more than maxRefs references to one function
// is an error (the caller falls back to what needs no list).
const (
	maxScan   = 128 << 20
	maxDecode = 256 << 10
	maxRefs   = 4096
)

// CodeRefs finds every reference to the functions at run-time addresses
// targets in the live core kernel text (_stext.._etext) and static data
// (.rodata and .data). It lets a caller trap a function at its call sites
// rather than at its entry — a call site sits in its caller's code, which
// may be colder than the function's own page — and tells it when that
// would miss calls: a reference other than a direct call or jump means the
// function can be reached some other way.
//
// The text is scanned for every 32-bit field that would refer to a target:
// a displacement relative to the end of an instruction (rel32 of a call,
// jmp or jcc; a RIP-relative operand, with up to a 4-byte immediate after
// it) or the target's address as a sign-extended immediate. Each such field
// is then decoded in its enclosing function, from the function's start,
// and kept only if an instruction there really refers to the target. Each
// function is decoded at most once, so the work is linear in the text.
// Module text is not scanned: a caller must not rely on this for functions
// modules can call (exported symbols).
func (k *Kernel) CodeRefs(targets []uint64) (map[uint64][]CodeRef, error) {
	b := boundsOf(k.Profile)
	if b.textHi <= b.textLo {
		return nil, fmt.Errorf("linux: code references: the profile has no _stext/_etext")
	}
	lo, hi := b.textLo+k.Slide, b.textHi+k.Slide
	if hi-lo > maxScan {
		return nil, fmt.Errorf("linux: code references: core text of %d bytes is implausible", hi-lo)
	}
	text := make([]byte, hi-lo)
	if _, err := k.AS.ReadVirtual(lo, text); err != nil {
		return nil, fmt.Errorf("linux: code references: read the core text: %w", err)
	}
	out := map[uint64][]CodeRef{}
	want := map[uint64]bool{}
	for _, t := range targets {
		want[t] = true
		out[t] = nil
	}
	var errTooMany error
	add := func(t uint64, r CodeRef) bool {
		if len(out[t]) >= maxRefs {
			errTooMany = fmt.Errorf("linux: code references: more than %d to %#x", maxRefs, t)
			return false
		}
		out[t] = append(out[t], r)
		return true
	}
	d := decoder{k: k, text: text, base: lo, want: want, symStart: -1}
	scanRel32(text, lo, targets, func(off int, t uint64) bool {
		ref, target, ok := d.classify(off, t)
		if !ok {
			return true
		}
		if refs := out[target]; len(refs) > 0 && refs[len(refs)-1].Addr == ref.Addr {
			return true // another field of the same instruction
		}
		return add(target, ref)
	})
	if errTooMany != nil {
		return nil, errTooMany
	}
	for _, sec := range [][2]string{{"__start_rodata", "__end_rodata"}, {"_sdata", "_edata"}} {
		s, err1 := k.Addr(sec[0])
		e, err2 := k.Addr(sec[1])
		if err1 != nil || err2 != nil || e <= s || e-s > maxScan {
			continue // the kernel has no such section
		}
		data := make([]byte, e-s)
		if _, err := k.AS.ReadVirtual(s, data); err != nil {
			return nil, fmt.Errorf("linux: code references: read %s..%s: %w", sec[0], sec[1], err)
		}
		for _, t := range targets {
			var pat [8]byte
			binary.LittleEndian.PutUint64(pat[:], t)
			for off := 0; ; {
				i := bytes.Index(data[off:], pat[:])
				if i < 0 {
					break
				}
				va := s + uint64(off+i)
				if !add(t, CodeRef{Kind: RefOther, Addr: va, Len: 8, Where: k.symbolName(va)}) {
					return nil, errTooMany
				}
				off += i + 1
			}
		}
	}
	for _, refs := range out {
		sort.Slice(refs, func(i, j int) bool { return refs[i].Addr < refs[j].Addr })
	}
	return out, nil
}

// scanRel32 calls hit, in increasing offset order, for each offset of text
// (loaded at base) holding a 32-bit field that refers to a target as a
// displacement from the end of an instruction (the field last, or followed
// by a 1-, 2- or 4-byte immediate) or as a sign-extended absolute address.
// It stops when hit returns false.
func scanRel32(text []byte, base uint64, targets []uint64, hit func(off int, target uint64) bool) {
	if len(targets) == 0 || len(text) < 4 {
		return
	}
	lo, hi := targets[0], targets[0]
	for _, t := range targets {
		lo, hi = min(lo, t), max(hi, t)
	}
	w := binary.LittleEndian.Uint32(text)
	span, absSpan := hi-(lo-4), hi-lo
	for off := 0; ; off++ {
		v := uint64(int64(int32(w)))
		// x is where the field points if the instruction ends right after
		// it; a trailing immediate moves the end (and the target) up to 4
		// bytes further.
		x := base + uint64(off) + 4 + v
		if x-(lo-4) <= span || v-lo <= absSpan {
			for _, t := range targets {
				if d := t - x; d <= 4 && d != 3 || v == t {
					if !hit(off, t) {
						return
					}
				}
			}
		}
		if off+4 >= len(text) {
			return
		}
		w = w>>8 | uint32(text[off+4])<<24
	}
}

// decoder classifies the fields scanRel32 finds. It remembers where it
// stopped decoding, so that fields met in increasing order decode each
// function once.
type decoder struct {
	k    *Kernel
	text []byte
	base uint64
	want map[uint64]bool
	// symStart is the text offset of the symbol being decoded, last the
	// offset of the last field classified, at the offset of the
	// instruction cur (cur.Len == 0: not decoded yet).
	symStart, last, at int
	cur                x86asm.Inst
	bad                bool // decoding failed before at
}

// classify decodes the instruction that holds the field at off. ok is false
// when the field is not part of an instruction that refers to a target (a
// coincidence of bytes).
func (d *decoder) classify(off int, target uint64) (CodeRef, uint64, bool) {
	va := d.base + uint64(off)
	unknown := CodeRef{Kind: RefUnknown, Addr: va, Len: 4, Where: d.k.symbolName(va)}
	_, symOff, ok := d.k.SymbolAt(va)
	if !ok || symOff > uint64(off) || symOff > maxDecode {
		return unknown, target, true
	}
	if start := off - int(symOff); start != d.symStart || off < d.last {
		d.symStart, d.at, d.cur, d.bad = start, start, x86asm.Inst{}, false
	}
	d.last = off
	for !d.bad {
		if d.cur.Len == 0 {
			inst, err := x86asm.Decode(d.text[d.at:min(len(d.text), d.at+16)], 64)
			if err != nil || inst.Len <= 0 {
				d.bad = true
				break
			}
			d.cur = inst
		}
		if d.at+d.cur.Len <= off {
			d.at += d.cur.Len
			d.cur = x86asm.Inst{}
			continue
		}
		return d.refersTo(d.at, d.cur)
	}
	return unknown, target, true
}

// refersTo returns how the instruction at off refers to a target, if it
// does.
func (d *decoder) refersTo(off int, inst x86asm.Inst) (CodeRef, uint64, bool) {
	iva := d.base + uint64(off)
	ref := CodeRef{Addr: iva, Len: inst.Len, Where: d.k.symbolName(iva)}
	next := iva + uint64(inst.Len)
	for _, a := range inst.Args {
		var t uint64
		switch a := a.(type) {
		case x86asm.Rel:
			t = next + uint64(int64(a))
		case x86asm.Mem:
			// The decoder gives a 32-bit displacement zero-extended; the
			// CPU sign-extends it.
			t = uint64(int64(int32(a.Disp)))
			if a.Base == x86asm.RIP {
				t += next
			} else if !d.want[t] {
				t = uint64(a.Disp) // a 64-bit absolute address (moffs)
			}
		case x86asm.Imm:
			t = uint64(a)
		default:
			continue
		}
		if !d.want[t] {
			continue
		}
		switch {
		case inst.Op == x86asm.CALL && isRel(inst.Args[0]):
			ref.Kind = RefCall
		case inst.Op == x86asm.JMP && isRel(inst.Args[0]):
			ref.Kind = RefJump
		default:
			ref.Kind = RefOther
		}
		return ref, t, true
	}
	return CodeRef{}, 0, false
}

func isRel(a x86asm.Arg) bool {
	_, ok := a.(x86asm.Rel)
	return ok
}
