package vmi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// elf32Dump builds an ELF32 core file as QEMU's dump-guest-memory writes
// it for a 32-bit ARM guest: one PT_LOAD of data at physical paddr.
func elf32Dump(paddr uint32, data []byte) []byte {
	le := binary.LittleEndian
	h := make([]byte, 52+32)
	copy(h, "\x7fELF\x01\x01\x01")
	le.PutUint16(h[16:], etCore)
	le.PutUint16(h[18:], 40) // EM_ARM
	le.PutUint32(h[28:], 52) // e_phoff
	le.PutUint16(h[42:], 32) // e_phentsize
	le.PutUint16(h[44:], 1)  // e_phnum
	ph := h[52:]
	le.PutUint32(ph[0:], ptLoad)
	le.PutUint32(ph[4:], uint32(len(h)))
	le.PutUint32(ph[12:], paddr)
	le.PutUint32(ph[16:], uint32(len(data)))
	le.PutUint32(ph[20:], uint32(len(data)))
	return append(h, data...)
}

func TestELF32Dump(t *testing.T) {
	data := bytes.Repeat([]byte("armhf RAM "), 410)
	b := elf32Dump(0x40000000, data)
	d, err := NewELFDump(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if r := d.Ranges(); len(r) != 1 || r[0].Start != 0x40000000 || r[0].End != 0x40000000+uint64(len(data)) || d.Machine() != 40 {
		t.Fatalf("ranges %v machine %d", r, d.Machine())
	}
	got := make([]byte, 5)
	if _, err := d.ReadAt(got, 0x40000000+10); err != nil || string(got) != "armhf" {
		t.Fatalf("ReadAt = %q, %v", got, err)
	}
	// A segment past the file's end is refused.
	bad := bytes.Clone(b)
	binary.LittleEndian.PutUint32(bad[52+16:], uint32(len(data)+1))
	if _, err := NewELFDump(bytes.NewReader(bad), int64(len(bad))); !errors.Is(err, ErrFormat) {
		t.Errorf("oversized segment: %v", err)
	}
	// A 64-bit program header size in an ELF32 file is refused.
	binary.LittleEndian.PutUint16(bad[42:], 56)
	if _, err := NewELFDump(bytes.NewReader(bad), int64(len(bad))); !errors.Is(err, ErrFormat) {
		t.Errorf("ELF32 with 56-byte program headers: %v", err)
	}
}
