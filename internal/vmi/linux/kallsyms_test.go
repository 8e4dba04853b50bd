package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// synthSyms returns n symbols sorted by address: per-CPU ones at small
// absolute addresses first, then kernel text and data.
func synthSyms(n int) []Symbol {
	syms := []Symbol{{"fixed_percpu_data", 0, 'A'}, {"cpu_tss_rw", 0x6000, 'A'}}
	addr := uint64(0xffffffff81000000)
	syms = append(syms, Symbol{"_text", addr, 'T'}, Symbol{"_stext", addr, 'T'})
	for i := 0; len(syms) < n-3; i++ {
		addr += 0x40 + uint64(i%7)*0x10
		name := fmt.Sprintf("__x64_sys_call%d", i)
		if i%3 == 1 {
			name = fmt.Sprintf("do_something_%d", i)
		}
		syms = append(syms, Symbol{name, addr, "Tt"[i%2]})
	}
	syms = append(syms, Symbol{"_etext", addr + 0x100, 'T'}, Symbol{"linux_banner", addr + 0x200000, 'D'},
		Symbol{"a_very_long_symbol_" + strings.Repeat("x", 200), addr + 0x300000, 'd'})
	return syms
}

type synthLayout int

const (
	layout61 synthLayout = iota // offsets, base, num_syms, names, markers, tokens
	layout62                    // ... markers, seqs_of_names, tokens
	layout64                    // num_syms, names, markers, tokens, offsets, base
)

// buildKallsyms lays out kallsyms tables the way scripts/kallsyms.c does,
// each table 8-byte aligned, preceded by filler.
func buildKallsyms(syms []Symbol, layout synthLayout) []byte {
	le := binary.LittleEndian
	// Tokens: every byte used in names keeps its own slot; free slots get
	// multi-character tokens.
	used := map[byte]bool{}
	for _, s := range syms {
		used[s.Type] = true
		for i := 0; i < len(s.Name); i++ {
			used[s.Name[i]] = true
		}
	}
	multi := []string{"__x64_sys_", "call", "do_", "some", "thing_", "Tdo", "per", "cpu_", "xxxxxxxx"}
	tokens := make([]string, 256)
	for i := range tokens {
		switch {
		case used[byte(i)]:
			tokens[i] = string(rune(i))
		case len(multi) > 0:
			tokens[i], multi = multi[0], multi[1:]
		default:
			tokens[i] = fmt.Sprintf("~%02x", i) // unused, never matches
		}
	}
	encode := func(s string) []byte {
		var out []byte
		for len(s) > 0 {
			best := -1
			for i, t := range tokens {
				if strings.HasPrefix(s, t) && (best < 0 || len(t) > len(tokens[best])) {
					best = i
				}
			}
			out = append(out, byte(best))
			s = s[len(tokens[best]):]
		}
		return out
	}
	var names []byte
	var markers []uint32
	for i, s := range syms {
		if i%256 == 0 {
			markers = append(markers, uint32(len(names)))
		}
		e := encode(string(s.Type) + s.Name)
		if len(e) > 127 {
			names = append(names, byte(len(e)&0x7f|0x80), byte(len(e)>>7))
		} else {
			names = append(names, byte(len(e)))
		}
		names = append(names, e...)
	}
	base := syms[2].Addr
	var b bytes.Buffer
	align := func() {
		for b.Len()%8 != 0 {
			b.WriteByte(0)
		}
	}
	u32 := func(v uint32) { binary.Write(&b, le, v) }
	offsets := func() {
		align()
		for _, s := range syms {
			if s.Type == 'A' {
				u32(uint32(s.Addr))
			} else {
				u32(uint32(int32(-int64(s.Addr-base) - 1)))
			}
		}
		align()
		binary.Write(&b, le, base)
	}
	b.WriteString("filler: 0 1 2 3 \x00\x00\x00")
	if layout != layout64 {
		offsets()
	}
	align()
	u32(uint32(len(syms)))
	align()
	b.Write(names)
	align()
	for _, m := range markers {
		u32(m)
	}
	if layout == layout62 {
		align()
		b.Write(make([]byte, 3*len(syms)))
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
	if layout == layout64 {
		offsets()
	}
	b.WriteString("trailing filler")
	return b.Bytes()
}

func TestParseKallsyms(t *testing.T) {
	for _, layout := range []synthLayout{layout61, layout62, layout64} {
		for _, n := range []int{600, 2000} {
			t.Run(fmt.Sprintf("layout%d/%d", layout, n), func(t *testing.T) {
				want := synthSyms(n)
				k, err := ParseKallsyms(buildKallsyms(want, layout))
				if err != nil {
					t.Fatal(err)
				}
				got := k.Symbols()
				if len(got) != len(want) {
					t.Fatalf("%d symbols, want %d", len(got), len(want))
				}
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("symbol %d: (-want +got)\n-%+v\n+%+v", i, want[i], got[i])
					}
				}
				if !k.Layout.BaseRelative || !k.Layout.AbsolutePercpu || k.Layout.RelativeBase != 0xffffffff81000000 {
					t.Errorf("layout %+v", k.Layout)
				}
				if a, ok := k.Lookup("_etext"); !ok || a != want[len(want)-3].Addr {
					t.Errorf("Lookup(_etext) = %#x, %v", a, ok)
				}
				s, off, ok := k.Symbol(want[10].Addr + 4)
				if !ok || s.Name != want[10].Name || off != 4 {
					t.Errorf("Symbol = %v+%d, %v", s, off, ok)
				}
				if s, _, _ := k.Symbol(0xffffffff81000000); s.Name != "_text" {
					t.Errorf("Symbol(_text address) = %s; want the first alias", s.Name)
				}
				if _, _, ok := k.Symbol(^uint64(0)); ok {
					t.Error("Symbol past the last symbol found one")
				}
			})
		}
	}
}

func TestParseKallsymsGarbage(t *testing.T) {
	img := buildKallsyms(synthSyms(600), layout61)
	k, err := ParseKallsyms(img)
	if err != nil {
		t.Fatal(err)
	}
	layout := k.Layout
	for _, tc := range []struct {
		name string
		mod  func([]byte)
	}{
		{"no tables", func(b []byte) { copy(b, bytes.Repeat([]byte{0}, len(b))) }},
		{"token index wrong", func(b []byte) { b[layout.TokenIndex+20] ^= 0x40 }},
		{"marker wrong", func(b []byte) { b[layout.Markers+4] ^= 0x01 }},
		{"num_syms wrong", func(b []byte) { b[layout.NumSyms] ^= 0x01 }},
		// A wrong relative base only shifts every address; NewProfile checks
		// _text against the ELF segments for that.
	} {
		b := append([]byte(nil), img...)
		tc.mod(b)
		if _, err := ParseKallsyms(b); err == nil {
			t.Errorf("%s: parsed", tc.name)
		}
	}
}

// FuzzKallsyms feeds mutated tables to the parser: no panic, and a success
// returns sorted symbols.
func FuzzKallsyms(f *testing.F) {
	f.Add(buildKallsyms(synthSyms(300), layout61))
	f.Add(buildKallsyms(synthSyms(300), layout64))
	f.Add([]byte("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00"))
	f.Fuzz(func(t *testing.T, img []byte) {
		k, err := ParseKallsyms(img)
		if err != nil {
			return
		}
		s := k.Symbols()
		for i := 1; i < len(s); i++ {
			if s[i].Addr < s[i-1].Addr {
				t.Fatal("unsorted")
			}
		}
	})
}
