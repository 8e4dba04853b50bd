package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// flatMem is guest RAM from physical address 0.
type flatMem []byte

func (m flatMem) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 || gpa > int64(len(m)) || int64(len(m))-gpa < int64(len(p)) {
		return 0, fmt.Errorf("%w: %#x", vmi.ErrNoMemory, gpa)
	}
	return copy(p, m[gpa:]), nil
}

func (m flatMem) Ranges() []vmi.Range { return []vmi.Range{{Start: 0, End: uint64(len(m))}} }

const (
	testText   = 0xffffffff81000000
	testBanner = "Linux version 6.1.0-test (gcc) #1 SMP\n"
	bannerOff  = 0x123450
)

func testProfile() *Profile {
	syms := []Symbol{
		{"_text", testText, 'T'},
		{"linux_banner", testText + bannerOff, 'D'},
		{"init_top_pgt", testText + 0x300000, 'D'},
	}
	return &Profile{Banner: testBanner, Symbols: kallsymsOf(syms)}
}

// kaslrMem builds 16 MiB of RAM with the kernel image at physical phys,
// mapped with 2 MiB pages at testText+slide by 4-level tables at root, which
// is placed at init_top_pgt's physical address when atInitTopPgt is set.
func kaslrMem(phys, slide uint64, atInitTopPgt bool) (flatMem, uint64) {
	m := make(flatMem, 16<<20)
	le := binary.LittleEndian
	copy(m[phys+bannerOff:], testBanner+"\x00")
	copy(m[0x3000:], testBanner) // a decoy copy, as in the printk buffer
	root, pdpt, pd := uint64(0x10000), uint64(0x11000), uint64(0x12000)
	if atInitTopPgt {
		root = phys + 0x300000
	}
	va := testText + slide
	le.PutUint64(m[root+8*((va>>39)&511):], pdpt|3)
	le.PutUint64(m[pdpt+8*((va>>30)&511):], pd|3)
	for i := uint64(0); i < 3; i++ {
		le.PutUint64(m[pd+8*(((va>>21)&511)+i):], (phys+i<<21)|0x83|1<<63)
	}
	return m, root
}

func TestLocate(t *testing.T) {
	const phys, slide = 0x600000, 0x1e00000
	prof := testProfile()
	m, root := kaslrMem(phys, slide, false)
	for name, regs := range map[string]Registers{
		"CR3":           {CR3: root},
		"CR3 with PCID": {CR3: root | 0x7},
		"PTI user CR3":  {CR3: root | ptiUserBit},
	} {
		t.Run(name, func(t *testing.T) {
			k, err := Locate(m, prof, regs)
			if err != nil {
				t.Fatal(err)
			}
			if k.PhysBase != phys || k.Slide != slide {
				t.Errorf("PhysBase %#x Slide %#x; want %#x %#x", k.PhysBase, k.Slide, phys, slide)
			}
			if b, err := k.Banner(); err != nil || b != testBanner {
				t.Errorf("Banner = %q, %v", b, err)
			}
			if a, err := k.Addr("linux_banner"); err != nil || a != testText+bannerOff+slide {
				t.Errorf("Addr = %#x, %v", a, err)
			}
			if s, off, ok := k.SymbolAt(testText + slide + 0x10); !ok || s.Name != "_text" || off != 0x10 {
				t.Errorf("SymbolAt = %v+%#x", s, off)
			}
		})
	}
	t.Run("init_top_pgt", func(t *testing.T) {
		m, _ := kaslrMem(phys, slide, true)
		k, err := Locate(m, prof, Registers{})
		if err != nil || k.Slide != slide {
			t.Fatalf("Locate = %+v, %v", k, err)
		}
	})
}

func TestLocateFailures(t *testing.T) {
	const phys, slide = 0x600000, 0x1e00000
	prof := testProfile()
	m, root := kaslrMem(phys, slide, false)
	t.Run("no banner", func(t *testing.T) {
		other := *prof
		other.Banner = "Linux version 9.9\n"
		if _, err := Locate(m, &other, Registers{CR3: root}); !errors.Is(err, ErrKASLR) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("page tables do not map _text", func(t *testing.T) {
		if _, err := Locate(m, prof, Registers{CR3: 0x20000}); !errors.Is(err, ErrKASLR) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("banner page mapped elsewhere", func(t *testing.T) {
		bad := append(flatMem(nil), m...)
		va := uint64(testText + slide)
		// Remap the 2 MiB page holding _text's banner to a page without it.
		pd := uint64(0x12000) + 8*((va>>21)&511)
		binary.LittleEndian.PutUint64(bad[pd+8:], 0xa00000|0x83)
		// _text's own page still maps; make the banner live in the second page.
		p2 := *prof
		p2.Symbols = testProfile().Symbols
		p2.Symbols = p2.Symbols.withAddr("linux_banner", testText+0x200000+0x100)
		copy(bad[phys+0x200100:], testBanner)
		if _, err := Locate(bad, &p2, Registers{CR3: root}); !errors.Is(err, ErrKASLR) {
			t.Errorf("got %v", err)
		}
	})
}
