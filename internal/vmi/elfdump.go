package vmi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// ELF constants used by QEMU dump-guest-memory files.
const (
	elfHeaderSize  = 64
	elfPhdrSize    = 56
	elfPhdr32Size  = 32
	elfShdrSize    = 64
	etCore         = 4
	emX86_64       = 62
	ptLoad         = 1
	ptNote         = 4
	pnXnum         = 0xffff
	ntPRStatus     = 1
	qemuNoteType   = 0
	maxPhdrs       = 1 << 20  // QEMU writes one per RAM block; a million is absurd already
	maxNoteBytes   = 64 << 20 // all notes together
	maxCPUs        = 1 << 12
	qemuStateMin   = 432 // QEMUCPUState up to and including cr[5]
	qemuStateGSB   = 440 // ... plus kernel_gs_base
	prstatusSize   = 336 // struct elf_prstatus on x86-64
	prstatusRegOff = 112
)

// Segment is a segment register as saved in a QEMU CPU note.
type Segment struct {
	Selector uint32
	Limit    uint32
	Flags    uint32
	Base     uint64
}

// CPUState is one vCPU's registers as saved by QEMU in an ELF dump's "QEMU"
// note (QEMUCPUState), completed from the vCPU's NT_PRSTATUS note where present.
type CPUState struct {
	// Index is the vCPU's position in the dump, from 0.
	Index int
	// Version is QEMUCPUState's version (1 in every QEMU release so far).
	Version                                uint32
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
	CS, DS, ES, FS, GS, SS                 Segment
	LDT, TR, GDT, IDT                      Segment
	// CR holds CR0 to CR4.
	CR [5]uint64
	// KernelGSBase is MSR_KERNEL_GS_BASE; valid when HasKernelGSBase.
	KernelGSBase    uint64
	HasKernelGSBase bool
	// PID is the pr_pid of the vCPU's NT_PRSTATUS note (QEMU writes the vCPU
	// index plus one), or 0 without one.
	PID uint32
}

// CR3 returns the vCPU's CR3 as saved (PCID and flag bits included).
func (c *CPUState) CR3() uint64 { return c.CR[3] }

// CR4 returns the vCPU's CR4.
func (c *CPUState) CR4() uint64 { return c.CR[4] }

// GSBase returns the GS segment base (the per-CPU area while in the kernel).
func (c *CPUState) GSBase() uint64 { return c.GS.Base }

// LA57 reports whether the vCPU used 5-level paging (CR4.LA57).
func (c *CPUState) LA57() bool { return c.CR[4]&cr4LA57 != 0 }

// ELFDump is guest memory from a QEMU ELF core file written by QMP
// dump-guest-memory with paging=false: PT_LOAD segments map guest-physical
// addresses (p_paddr) to file offsets, and notes hold each vCPU's registers.
type ELFDump struct {
	seg     *segments
	cpus    []CPUState
	machine uint16
	f       *os.File
}

// OpenELFDump opens and parses a QEMU ELF dump file.
func OpenELFDump(path string) (*ELFDump, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vmi: open dump: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vmi: open dump: %w", err)
	}
	d, err := NewELFDump(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vmi: open dump %s: %w", path, err)
	}
	d.f = f
	return d, nil
}

// NewELFDump parses a QEMU ELF dump of size bytes read from r.
func NewELFDump(r io.ReaderAt, size int64) (*ELFDump, error) {
	var eh [elfHeaderSize]byte
	if size < elfHeaderSize {
		return nil, fmt.Errorf("%w: file of %d bytes is too short for an ELF header", ErrFormat, size)
	}
	if _, err := r.ReadAt(eh[:], 0); err != nil {
		return nil, fmt.Errorf("vmi: read ELF header: %w", err)
	}
	if !bytes.Equal(eh[:4], []byte("\x7fELF")) {
		return nil, fmt.Errorf("%w: not an ELF file", ErrFormat)
	}
	if eh[4] != 2 && eh[4] != 1 || eh[5] != 1 {
		return nil, fmt.Errorf("%w: not a little-endian ELF64 or ELF32 file (class %d, data %d)", ErrFormat, eh[4], eh[5])
	}
	le := binary.LittleEndian
	if t := le.Uint16(eh[16:]); t != etCore {
		return nil, fmt.Errorf("%w: ELF type %d is not a core file", ErrFormat, t)
	}
	machine := le.Uint16(eh[18:])
	// ELF32: QEMU's dump of a 32-bit guest (armhf); its program headers
	// are read as ELF64's below (phdr32).
	is32 := eh[4] == 1
	phdrSize := uint64(elfPhdrSize)
	var phoff, shoff, phentsize, phnum uint64
	if is32 {
		phoff, shoff = uint64(le.Uint32(eh[28:])), uint64(le.Uint32(eh[32:]))
		phentsize, phnum = uint64(le.Uint16(eh[42:])), uint64(le.Uint16(eh[44:]))
		phdrSize = elfPhdr32Size
	} else {
		phoff, shoff = le.Uint64(eh[32:]), le.Uint64(eh[40:])
		phentsize, phnum = uint64(le.Uint16(eh[54:])), uint64(le.Uint16(eh[56:]))
	}
	if phnum == pnXnum && is32 {
		return nil, fmt.Errorf("%w: an ELF32 dump with PN_XNUM segments", ErrFormat)
	}
	if phnum == pnXnum {
		// More than 65534 segments: the real count is section 0's sh_info.
		if shoff == 0 || shoff > uint64(size) || uint64(size)-shoff < elfShdrSize {
			return nil, fmt.Errorf("%w: PN_XNUM without a section header", ErrFormat)
		}
		var sh [elfShdrSize]byte
		if _, err := r.ReadAt(sh[:], int64(shoff)); err != nil {
			return nil, fmt.Errorf("vmi: read section header 0: %w", err)
		}
		phnum = uint64(le.Uint32(sh[44:]))
	}
	if phentsize != phdrSize {
		return nil, fmt.Errorf("%w: program header size %d, want %d", ErrFormat, phentsize, phdrSize)
	}
	if phnum == 0 || phnum > maxPhdrs {
		return nil, fmt.Errorf("%w: %d program headers", ErrFormat, phnum)
	}
	if phoff > uint64(size) || (uint64(size)-phoff)/phdrSize < phnum {
		return nil, fmt.Errorf("%w: program headers at %#x (%d of them) exceed file size %#x", ErrFormat, phoff, phnum, size)
	}
	phdrs := make([]byte, phnum*phdrSize)
	if _, err := r.ReadAt(phdrs, int64(phoff)); err != nil {
		return nil, fmt.Errorf("vmi: read program headers: %w", err)
	}
	var segs []segment
	var notes []byte
	for i := uint64(0); i < phnum; i++ {
		ph := phdrs[i*phdrSize : (i+1)*phdrSize]
		typ := le.Uint32(ph[0:])
		var off, paddr, filesz uint64
		if is32 { // Elf32_Phdr: type, offset, vaddr, paddr, filesz, memsz, flags, align
			off, paddr, filesz = uint64(le.Uint32(ph[4:])), uint64(le.Uint32(ph[12:])), uint64(le.Uint32(ph[16:]))
		} else {
			off, paddr, filesz = le.Uint64(ph[8:]), le.Uint64(ph[24:]), le.Uint64(ph[32:])
		}
		if off > uint64(size) || uint64(size)-off < filesz {
			return nil, fmt.Errorf("%w: segment %d at %#x+%#x exceeds file size %#x", ErrFormat, i, off, filesz, size)
		}
		switch typ {
		case ptLoad:
			if paddr >= maxPhysAddr || maxPhysAddr-paddr < filesz {
				return nil, fmt.Errorf("%w: segment %d at physical %#x+%#x beyond 52 bits", ErrFormat, i, paddr, filesz)
			}
			segs = append(segs, segment{Range: Range{paddr, paddr + filesz}, off: int64(off)})
		case ptNote:
			if filesz > maxNoteBytes || uint64(len(notes))+filesz > maxNoteBytes {
				return nil, fmt.Errorf("%w: notes larger than %d bytes", ErrFormat, maxNoteBytes)
			}
			buf := make([]byte, filesz)
			if _, err := r.ReadAt(buf, int64(off)); err != nil {
				return nil, fmt.Errorf("vmi: read notes: %w", err)
			}
			notes = append(notes, buf...)
		}
	}
	s, err := newSegments(r, size, segs)
	if err != nil {
		return nil, err
	}
	d := &ELFDump{seg: s, machine: machine}
	if err := d.parseNotes(notes); err != nil {
		return nil, err
	}
	return d, nil
}

// note is one ELF note.
type note struct {
	name string
	typ  uint32
	desc []byte
}

// parseNotes reads a sequence of ELF64 notes (4-byte aligned as QEMU writes them).
func parseNotes(b []byte) ([]note, error) {
	le := binary.LittleEndian
	var out []note
	for len(b) > 0 {
		if len(b) < 12 {
			return nil, fmt.Errorf("%w: truncated note header", ErrFormat)
		}
		namesz, descsz, typ := uint64(le.Uint32(b)), uint64(le.Uint32(b[4:])), le.Uint32(b[8:])
		b = b[12:]
		nameLen, descLen := align4(namesz), align4(descsz)
		if nameLen > uint64(len(b)) || descLen > uint64(len(b))-nameLen {
			return nil, fmt.Errorf("%w: note (name %d, desc %d bytes) exceeds the note segment", ErrFormat, namesz, descsz)
		}
		name := string(bytes.TrimRight(b[:namesz], "\x00"))
		out = append(out, note{name: name, typ: typ, desc: b[nameLen : nameLen+descsz]})
		b = b[nameLen+descLen:]
	}
	return out, nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

func (d *ELFDump) parseNotes(b []byte) error {
	notes, err := parseNotes(b)
	if err != nil {
		return err
	}
	var prstatus []note
	for _, n := range notes {
		switch {
		case n.name == "QEMU" && n.typ == qemuNoteType:
			if len(d.cpus) >= maxCPUs {
				return fmt.Errorf("%w: more than %d vCPU notes", ErrFormat, maxCPUs)
			}
			cpu, err := parseQEMUCPUState(n.desc)
			if err != nil {
				return fmt.Errorf("vCPU %d: %w", len(d.cpus), err)
			}
			cpu.Index = len(d.cpus)
			d.cpus = append(d.cpus, cpu)
		case n.name == "CORE" && n.typ == ntPRStatus:
			if len(prstatus) >= maxCPUs {
				return fmt.Errorf("%w: more than %d NT_PRSTATUS notes", ErrFormat, maxCPUs)
			}
			prstatus = append(prstatus, n)
		}
	}
	if len(d.cpus) == 0 {
		// No QEMU notes (an older or foreign dump): take what NT_PRSTATUS has.
		for i := range prstatus {
			d.cpus = append(d.cpus, CPUState{Index: i})
		}
	}
	// QEMU writes NT_PRSTATUS for each vCPU in order, then QEMU notes in the same order.
	for i, n := range prstatus {
		if i >= len(d.cpus) || d.machine != emX86_64 || len(n.desc) < prstatusSize {
			continue
		}
		applyPRStatus(&d.cpus[i], n.desc)
	}
	return nil
}

func parseQEMUCPUState(b []byte) (CPUState, error) {
	le := binary.LittleEndian
	var c CPUState
	if len(b) < qemuStateMin {
		return c, fmt.Errorf("%w: QEMU CPU note of %d bytes, want at least %d", ErrFormat, len(b), qemuStateMin)
	}
	c.Version = le.Uint32(b)
	size := le.Uint32(b[4:])
	if c.Version != 1 {
		return c, fmt.Errorf("%w: QEMU CPU note version %d, want 1", ErrFormat, c.Version)
	}
	if size < qemuStateMin || uint64(size) > uint64(len(b)) {
		return c, fmt.Errorf("%w: QEMU CPU note says %d bytes in a %d-byte note", ErrFormat, size, len(b))
	}
	u := func(off int) uint64 { return le.Uint64(b[off:]) }
	regs := []*uint64{&c.RAX, &c.RBX, &c.RCX, &c.RDX, &c.RSI, &c.RDI, &c.RSP, &c.RBP,
		&c.R8, &c.R9, &c.R10, &c.R11, &c.R12, &c.R13, &c.R14, &c.R15, &c.RIP, &c.RFLAGS}
	for i, r := range regs {
		*r = u(8 + 8*i)
	}
	segs := []*Segment{&c.CS, &c.DS, &c.ES, &c.FS, &c.GS, &c.SS, &c.LDT, &c.TR, &c.GDT, &c.IDT}
	for i, s := range segs {
		o := 152 + 24*i
		*s = Segment{Selector: le.Uint32(b[o:]), Limit: le.Uint32(b[o+4:]), Flags: le.Uint32(b[o+8:]), Base: u(o + 16)}
	}
	for i := range c.CR {
		c.CR[i] = u(392 + 8*i)
	}
	if size >= qemuStateGSB {
		c.KernelGSBase = u(432)
		c.HasKernelGSBase = true
	}
	return c, nil
}

// applyPRStatus fills in what an x86-64 NT_PRSTATUS note has and the QEMU
// note may lack. Preconditions: len(b) >= prstatusSize.
func applyPRStatus(c *CPUState, b []byte) {
	le := binary.LittleEndian
	c.PID = le.Uint32(b[32:])
	reg := func(i int) uint64 { return le.Uint64(b[prstatusRegOff+8*i:]) }
	if c.Version != 0 {
		return // the QEMU note is complete
	}
	c.R15, c.R14, c.R13, c.R12, c.RBP, c.RBX = reg(0), reg(1), reg(2), reg(3), reg(4), reg(5)
	c.R11, c.R10, c.R9, c.R8, c.RAX, c.RCX = reg(6), reg(7), reg(8), reg(9), reg(10), reg(11)
	c.RDX, c.RSI, c.RDI, c.RIP = reg(12), reg(13), reg(14), reg(16)
	c.CS.Selector, c.RFLAGS, c.RSP, c.SS.Selector = uint32(reg(17)), reg(18), reg(19), uint32(reg(20))
	c.FS.Base, c.GS.Base = reg(21), reg(22)
	c.DS.Selector, c.ES.Selector, c.FS.Selector, c.GS.Selector = uint32(reg(23)), uint32(reg(24)), uint32(reg(25)), uint32(reg(26))
}

// ReadAt implements PhysicalMemory.
func (d *ELFDump) ReadAt(p []byte, gpa int64) (int, error) { return d.seg.readAt(p, gpa) }

// Ranges implements PhysicalMemory.
func (d *ELFDump) Ranges() []Range { return d.seg.ranges() }

// CPUs returns the saved state of every vCPU, in vCPU order.
func (d *ELFDump) CPUs() []CPUState { return append([]CPUState(nil), d.cpus...) }

// Machine returns the ELF e_machine of the dump (62 for x86-64).
func (d *ELFDump) Machine() uint16 { return d.machine }

// Close closes the file opened by OpenELFDump; it does nothing for NewELFDump.
func (d *ELFDump) Close() error {
	if d.f == nil {
		return nil
	}
	return d.f.Close()
}
