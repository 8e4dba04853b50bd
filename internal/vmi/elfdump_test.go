package vmi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type testLoad struct {
	paddr uint64
	data  []byte
}

func mkNote(name string, typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	binary.Write(&b, le, uint32(len(name)+1))
	binary.Write(&b, le, uint32(len(desc)))
	binary.Write(&b, le, typ)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// qemuNote returns a QEMUCPUState with recognizable values.
func qemuNote(cpu int, withGSB bool) []byte {
	size := qemuStateMin
	if withGSB {
		size = qemuStateGSB
	}
	b := make([]byte, size)
	le := binary.LittleEndian
	le.PutUint32(b, 1)
	le.PutUint32(b[4:], uint32(size))
	for i := 0; i < 18; i++ { // rax..r15, rip, rflags
		le.PutUint64(b[8+8*i:], uint64(cpu)<<32|uint64(i+1))
	}
	for i := 0; i < 10; i++ { // segments
		o := 152 + 24*i
		le.PutUint32(b[o:], uint32(0x10+i))
		le.PutUint64(b[o+16:], uint64(cpu)<<32|uint64(0x1000*(i+1)))
	}
	le.PutUint64(b[392+3*8:], 0x1234000|uint64(cpu)) // cr3 with a PCID
	le.PutUint64(b[392+4*8:], cr4LA57)
	if withGSB {
		le.PutUint64(b[432:], 0xffff888000000000+uint64(cpu))
	}
	return b
}

func prstatusNote(cpu int) []byte {
	b := make([]byte, prstatusSize)
	binary.LittleEndian.PutUint32(b[32:], uint32(cpu+1))
	binary.LittleEndian.PutUint64(b[prstatusRegOff+16*8:], 0xffffffff81000000+uint64(cpu)) // rip
	binary.LittleEndian.PutUint64(b[prstatusRegOff+22*8:], 0xffff888000001000)             // gs_base
	return b
}

// buildDump writes a QEMU-style ELF core file: one PT_NOTE, then PT_LOADs.
func buildDump(notes []byte, loads []testLoad) []byte {
	le := binary.LittleEndian
	phnum := 1 + len(loads)
	off := uint64(elfHeaderSize + elfPhdrSize*phnum)
	var body bytes.Buffer
	ph := make([]byte, 0, elfPhdrSize*phnum)
	addPh := func(typ uint32, paddr uint64, data []byte) {
		p := make([]byte, elfPhdrSize)
		le.PutUint32(p[0:], typ)
		le.PutUint64(p[8:], off+uint64(body.Len()))
		le.PutUint64(p[24:], paddr)
		le.PutUint64(p[32:], uint64(len(data)))
		le.PutUint64(p[40:], uint64(len(data)))
		ph = append(ph, p...)
		body.Write(data)
	}
	addPh(ptNote, 0, notes)
	for _, l := range loads {
		addPh(ptLoad, l.paddr, l.data)
	}
	h := make([]byte, elfHeaderSize)
	copy(h, "\x7fELF\x02\x01\x01")
	le.PutUint16(h[16:], etCore)
	le.PutUint16(h[18:], emX86_64)
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[32:], elfHeaderSize)
	le.PutUint16(h[52:], elfHeaderSize)
	le.PutUint16(h[54:], elfPhdrSize)
	le.PutUint16(h[56:], uint16(phnum))
	return append(append(h, ph...), body.Bytes()...)
}

func testDump() []byte {
	var notes []byte
	for cpu := 0; cpu < 2; cpu++ {
		notes = append(notes, mkNote("CORE", ntPRStatus, prstatusNote(cpu))...)
	}
	for cpu := 0; cpu < 2; cpu++ {
		notes = append(notes, mkNote("QEMU", qemuNoteType, qemuNote(cpu, cpu == 0))...)
	}
	low := bytes.Repeat([]byte("L"), 0xa0000)
	copy(low[0x1000:], "low memory")
	high := bytes.Repeat([]byte("H"), 0x1000)
	return buildDump(notes, []testLoad{{0x100000, high}, {0, low}, {0xc0000, bytes.Repeat([]byte("R"), 0x40000)}})
}

func TestELFDump(t *testing.T) {
	img := testDump()
	path := filepath.Join(t.TempDir(), "dump.elf")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenELFDump(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got, want := d.Ranges(), []Range{{0, 0xa0000}, {0xc0000, 0x101000}}; !equalRanges(got, want) {
		t.Errorf("Ranges = %v, want %v", got, want)
	}
	buf := make([]byte, 10)
	if _, err := d.ReadAt(buf, 0x1000); err != nil || string(buf) != "low memory" {
		t.Errorf("ReadAt = %q, %v", buf, err)
	}
	// Across two adjacent segments.
	if _, err := d.ReadAt(buf, 0x100000-5); err != nil || string(buf) != "RRRRRHHHHH" {
		t.Errorf("ReadAt across segments = %q, %v", buf, err)
	}
	if _, err := d.ReadAt(buf, 0xa0000); !errors.Is(err, ErrNoMemory) {
		t.Errorf("ReadAt in hole: %v", err)
	}
	cpus := d.CPUs()
	if len(cpus) != 2 {
		t.Fatalf("%d CPUs, want 2", len(cpus))
	}
	c0, c1 := cpus[0], cpus[1]
	if c0.CR3() != 0x1234000 || c1.CR3() != 0x1234001 || !c0.LA57() {
		t.Errorf("CR3 = %#x, %#x; LA57 %v", c0.CR3(), c1.CR3(), c0.LA57())
	}
	if c0.RAX != 1 || c0.R15 != 16 || c0.RIP != 17 || c0.RFLAGS != 18 || c1.RIP != 1<<32|17 {
		t.Errorf("registers: rax %#x r15 %#x rip %#x rflags %#x cpu1 rip %#x", c0.RAX, c0.R15, c0.RIP, c0.RFLAGS, c1.RIP)
	}
	if c0.CS.Selector != 0x10 || c0.GS.Base != 0x5000 || c0.GSBase() != 0x5000 || c0.IDT.Base != 0xa000 {
		t.Errorf("segments: cs %#x gs base %#x idt %#x", c0.CS.Selector, c0.GS.Base, c0.IDT.Base)
	}
	if !c0.HasKernelGSBase || c0.KernelGSBase != 0xffff888000000000 || c1.HasKernelGSBase {
		t.Errorf("kernel_gs_base: %v %#x, cpu1 %v", c0.HasKernelGSBase, c0.KernelGSBase, c1.HasKernelGSBase)
	}
	if c0.PID != 1 || c1.PID != 2 || c1.Index != 1 {
		t.Errorf("PIDs %d %d index %d", c0.PID, c1.PID, c1.Index)
	}
}

func TestELFDumpPRStatusOnly(t *testing.T) {
	img := buildDump(mkNote("CORE", ntPRStatus, prstatusNote(0)), []testLoad{{0, make([]byte, 4096)}})
	d, err := NewELFDump(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	cpus := d.CPUs()
	if len(cpus) != 1 || cpus[0].RIP != 0xffffffff81000000 || cpus[0].GSBase() != 0xffff888000001000 {
		t.Errorf("CPUs = %+v", cpus)
	}
}

func TestELFDumpMalformed(t *testing.T) {
	good := testDump()
	le := binary.LittleEndian
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := map[string][]byte{
		"empty":      {},
		"not ELF":    mod(func(b []byte) []byte { b[0] = 0; return b }),
		"32-bit":     mod(func(b []byte) []byte { b[4] = 1; return b }),
		"not core":   mod(func(b []byte) []byte { le.PutUint16(b[16:], 2); return b }),
		"phentsize":  mod(func(b []byte) []byte { le.PutUint16(b[54:], 32); return b }),
		"phnum huge": mod(func(b []byte) []byte { le.PutUint16(b[56:], 0xfffe); return b }),
		"phoff huge": mod(func(b []byte) []byte { le.PutUint64(b[32:], 1<<62); return b }),
		"xnum no sh": mod(func(b []byte) []byte { le.PutUint16(b[56:], pnXnum); return b }),
		"segment beyond file": mod(func(b []byte) []byte {
			le.PutUint64(b[elfHeaderSize+elfPhdrSize+32:], 1<<40)
			return b
		}),
		"segment beyond 52 bits": mod(func(b []byte) []byte {
			le.PutUint64(b[elfHeaderSize+elfPhdrSize+24:], 1<<60)
			return b
		}),
		"overlapping segments": mod(func(b []byte) []byte {
			le.PutUint64(b[elfHeaderSize+2*elfPhdrSize+24:], 0x100800)
			return b
		}),
		"note desc huge": mod(func(b []byte) []byte {
			noteOff := le.Uint64(b[elfHeaderSize+8:])
			le.PutUint32(b[noteOff+4:], 0xffffffff)
			return b
		}),
		"truncated": good[:len(good)-100],
	}
	for name, img := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := NewELFDump(bytes.NewReader(img), int64(len(img))); err == nil {
				t.Error("malformed dump accepted")
			}
		})
	}
	// Bad QEMU notes.
	for name, desc := range map[string][]byte{
		"short":   make([]byte, 100),
		"version": func() []byte { b := qemuNote(0, true); le.PutUint32(b, 2); return b }(),
		"size":    func() []byte { b := qemuNote(0, true); le.PutUint32(b[4:], 4096); return b }(),
	} {
		img := buildDump(mkNote("QEMU", 0, desc), []testLoad{{0, make([]byte, 16)}})
		if _, err := NewELFDump(bytes.NewReader(img), int64(len(img))); !errors.Is(err, ErrFormat) {
			t.Errorf("QEMU note %s: got %v, want ErrFormat", name, err)
		}
	}
}

func equalRanges(a, b []Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzELFDump parses fuzzed dumps: no panic, and every range reads or fails cleanly.
func FuzzELFDump(f *testing.F) {
	f.Add(testDump()[:0x2000])
	f.Add(buildDump(mkNote("QEMU", 0, qemuNote(0, true)), []testLoad{{0x1000, []byte("data")}}))
	f.Add(buildDump(mkNote("CORE", 1, prstatusNote(0)), nil))
	f.Add(elf32Dump(0x40000000, []byte("armhf")))
	f.Fuzz(func(t *testing.T, img []byte) {
		d, err := NewELFDump(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			return
		}
		buf := make([]byte, 16)
		for _, r := range d.Ranges() {
			d.ReadAt(buf[:min(r.Len(), 16)], int64(r.Start))
		}
		for _, c := range d.CPUs() {
			as := NewAddressSpace(d, c.CR3(), c.CR4())
			as.Translate(c.RIP)
		}
	})
}
