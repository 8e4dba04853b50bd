package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

// buildKallsyms32 lays out the tables as a 32-bit ARM 6.1 kernel does
// (scripts/kallsyms.c with 4-byte alignment): kallsyms_offsets (int32,
// relative to the base, none negative), kallsyms_relative_base as a 4-byte
// long, kallsyms_num_syms, the names, the markers, the token table and
// its index.
func buildKallsyms32(syms []Symbol) []byte {
	le := binary.LittleEndian
	used := map[byte]bool{}
	for _, s := range syms {
		used[s.Type] = true
		for i := 0; i < len(s.Name); i++ {
			used[s.Name[i]] = true
		}
	}
	tokens := make([]string, 256)
	for i := range tokens {
		if used[byte(i)] {
			tokens[i] = string(rune(i))
		} else {
			tokens[i] = fmt.Sprintf("~%02x", i)
		}
	}
	var names []byte
	var markers []uint32
	for i, s := range syms {
		if i%256 == 0 {
			markers = append(markers, uint32(len(names)))
		}
		e := []byte(string(s.Type) + s.Name) // one token per byte
		names = append(names, byte(len(e)))
		names = append(names, e...)
	}
	var b bytes.Buffer
	align := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	u32 := func(v uint32) { binary.Write(&b, le, v) }
	b.WriteString("filler 0 1 2 \x00")
	align()
	base := uint32(syms[0].Addr)
	for _, s := range syms {
		u32(uint32(s.Addr) - base)
	}
	u32(base)
	u32(uint32(len(syms)))
	b.Write(names)
	align()
	for _, m := range markers {
		u32(m)
	}
	align()
	var idx []uint16
	start := b.Len()
	for _, t := range tokens {
		idx = append(idx, uint16(b.Len()-start))
		b.WriteString(t)
		b.WriteByte(0)
	}
	align()
	for _, i := range idx {
		binary.Write(&b, le, i)
	}
	b.WriteString("trailing")
	return b.Bytes()
}

// TestParseKallsyms32: a 32-bit kernel's tables, whose relative base is a
// 4-byte long just before kallsyms_num_syms.
func TestParseKallsyms32(t *testing.T) {
	var want []Symbol
	addr := uint64(0xc0208000)
	want = append(want, Symbol{"stext", addr, 'T'})
	for i := 0; len(want) < 700; i++ {
		addr += 0x20 + uint64(i%5)*4
		want = append(want, Symbol{fmt.Sprintf("sys_call%d", i), addr, "Tt"[i%2]})
	}
	k, err := ParseKallsyms(buildKallsyms32(want))
	if err != nil {
		t.Fatal(err)
	}
	got := k.Symbols()
	if len(got) != len(want) || !k.Layout.BaseRelative || k.Layout.AbsolutePercpu || k.Layout.RelativeBase != 0xc0208000 {
		t.Fatalf("%d symbols, layout %+v", len(got), k.Layout)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("symbol %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
