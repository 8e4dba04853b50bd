package vmi

import (
	"encoding/binary"
	"errors"
	"testing"
)

func (m *testMem) put32(gpa, v uint64) { binary.LittleEndian.PutUint32(m.b[gpa:], uint32(v)) }

// shortTables builds ARMv7 short-descriptor tables: a 16 KiB first-level
// table (N = 0) and 1 KiB second-level tables placed in 4 KiB pages.
type shortTables struct {
	m    *testMem
	root uint64
}

func newShortTables(m *testMem) *shortTables {
	root := m.alloc()
	for root&(16<<10-1) != 0 { // the first-level table is 16 KiB aligned
		root = m.alloc()
	}
	for i := 0; i < 3; i++ {
		m.alloc() // 16 KiB, contiguous: alloc hands out pages in order
	}
	return &shortTables{m: m, root: root}
}

// mapShort maps va to pa with a small page (4K), a large page (64K), a
// section (1M) or a supersection (16M, pa up to 40 bits).
func (pt *shortTables) mapShort(va, pa, size uint64) {
	l1 := pt.root + (va>>20)*4
	switch size {
	case PageSize1M:
		pt.m.put32(l1, pa&shortSectionBase|2|0x0c0e) // AP, C, B
		return
	case PageSize16M:
		e := pa&shortSuperBase | (pa>>32&0xf)<<20 | (pa>>36&0xf)<<5 | shortSectionSuper | 2
		for i := uint64(0); i < 16; i++ { // repeated in 16 consecutive entries
			pt.m.put32(pt.root+((va>>20)&^15+i)*4, e)
		}
		return
	}
	e := uint64(binary.LittleEndian.Uint32(pt.m.b[l1:]))
	if e&3 != shortDescTable {
		e = pt.m.alloc() | shortDescTable
		pt.m.put32(l1, e)
	}
	l2 := e & shortTableBase
	if size == PageSize64K {
		for i := uint64(0); i < 16; i++ {
			pt.m.put32(l2+((va>>12&0xff)&^15+i)*4, pa&shortLargeBase|1)
		}
		return
	}
	pt.m.put32(l2+(va>>12&0xff)*4, pa&shortSmallBase|2|1) // small page, XN
}

func TestTranslateARMv7Short(t *testing.T) {
	m := newTestMem(4 << 20)
	pt := newShortTables(m)
	pt.mapShort(0xc0000000, 0x00100000, PageSize1M)                       // the linear map: sections
	pt.mapShort(0xc1000000, 0x23_4500_0000, PageSize16M)                  // a supersection above 4 GiB
	pt.mapShort(0xbf000000, 0x00201000, PageSize4K)                       // a module page
	pt.mapShort(0x00010000, 0x00300000, PageSize64K)                      // a large page
	as := &AddressSpace{Mem: m, Paging: PagingARMv7, CR3: pt.root | 0x6a} // TTBR0 with its attribute bits
	for _, tt := range []struct {
		va, pa, size uint64
	}{
		{0xc0012345, 0x00112345, PageSize1M},
		{0xc1abcdef, 0x23_45ab_cdef, PageSize16M},
		{0xbf000abc, 0x00201abc, PageSize4K},
		{0x0001fffc, 0x0030fffc, PageSize64K},
	} {
		pa, size, err := as.Translate(tt.va)
		if err != nil || pa != tt.pa || size != tt.size {
			t.Errorf("Translate(%#x) = %#x, %#x, %v; want %#x, %#x", tt.va, pa, size, err, tt.pa, tt.size)
		}
	}
	for _, tt := range []struct {
		va    uint64
		level int
		want  error
	}{
		{0x80000000, 1, ErrNotMapped}, // first-level fault
		{0xbf001000, 2, ErrNotMapped}, // second-level fault
		{1 << 32, 0, ErrNonCanonical}, // not a 32-bit address
		{0xc0100000, 1, ErrNotMapped}, // past the one section
	} {
		_, _, err := as.Translate(tt.va)
		if !errors.Is(err, tt.want) {
			t.Errorf("Translate(%#x) = %v, want %v", tt.va, err, tt.want)
		}
		var te *TranslationError
		if tt.level != 0 && (!errors.As(err, &te) || te.Level != tt.level) {
			t.Errorf("Translate(%#x): %v, want a level-%d TranslationError", tt.va, err, tt.level)
		}
	}
	// A table outside memory: the read error, not a panic.
	bad := &AddressSpace{Mem: m, Paging: PagingARMv7, CR3: 0xffffc000}
	if _, _, err := bad.Translate(0xc0000000); err == nil || errors.Is(err, ErrNotMapped) {
		t.Errorf("Translate through a table outside memory: %v", err)
	}
}

// TestTranslateARMv7Split: with TTBCR.N = 2, the top 1 GiB walks TTBR1's
// table and the rest a 4 KiB TTBR0 table indexed by VA[29:20].
func TestTranslateARMv7Split(t *testing.T) {
	m := newTestMem(4 << 20)
	kern := newShortTables(m)
	kern.mapShort(0xc0000000, 0x00100000, PageSize1M)
	user := m.alloc()
	m.put32(user+(0x00400000>>20)*4, 0x00500000|2)
	as := &AddressSpace{Mem: m, Paging: PagingARMv7, CR3: user, TTBR1: kern.root, TTBCR: 2}
	if pa, _, err := as.Translate(0xc0000010); err != nil || pa != 0x00100010 {
		t.Errorf("kernel address: %#x, %v", pa, err)
	}
	if pa, _, err := as.Translate(0x00400010); err != nil || pa != 0x00500010 {
		t.Errorf("user address: %#x, %v", pa, err)
	}
	if _, _, err := as.Translate(0x80000000); !errors.Is(err, ErrNotMapped) {
		t.Errorf("TTBR1 region hole: %v", err)
	}
}

// lpaeTables builds ARMv7 long-descriptor tables the way Linux does with
// VMSPLIT_3G: T1SZ = 2 (TTBR1 walks the top 1 GiB from the second level),
// T0SZ = 0 (TTBR0's 4-entry first-level table covers the rest).
type lpaeTables struct {
	m         *testMem
	pgd, kpmd uint64
	ttbcr     uint64
}

func newLPAETables(m *testMem) *lpaeTables {
	return &lpaeTables{m: m, pgd: m.alloc(), kpmd: m.alloc(), ttbcr: ttbcrEAE | 2<<16}
}

func (pt *lpaeTables) mapLPAE(va, pa, size uint64) {
	var l2 uint64
	if va >= 0xc0000000 {
		l2 = pt.kpmd
	} else {
		a := pt.pgd + (va>>30)*8
		e := pt.m.get64(a)
		if e&armDescValid == 0 {
			e = pt.m.alloc() | 3
			pt.m.put64(a, e)
		}
		l2 = e & lpaeOAMask
		if size == PageSize1G {
			pt.m.put64(a, pa|1|1<<10)
			return
		}
	}
	a := l2 + (va>>21&0x1ff)*8
	if size == PageSize2M {
		pt.m.put64(a, pa|1|1<<10)
		return
	}
	e := pt.m.get64(a)
	if e&armDescValid == 0 {
		e = pt.m.alloc() | 3
		pt.m.put64(a, e)
	}
	pt.m.put64(e&lpaeOAMask+(va>>12&0x1ff)*8, pa|3|1<<10)
}

func TestTranslateARMLPAE(t *testing.T) {
	m := newTestMem(4 << 20)
	pt := newLPAETables(m)
	pt.mapLPAE(0xc0000000, 0x40000000, PageSize2M)
	pt.mapLPAE(0xbf000000, 0x00203000, PageSize4K) // below TTBR1's region: TTBR0
	pt.mapLPAE(0x40000000, 0x80_0000_0000-PageSize1G, PageSize1G)
	as := &AddressSpace{Mem: m, Paging: PagingOfTTBCR(pt.ttbcr), CR3: pt.pgd, TTBR1: pt.kpmd | 0xff<<48, TTBCR: pt.ttbcr}
	if as.Paging != PagingARMLPAE || PagingOfTTBCR(2) != PagingARMv7 {
		t.Fatal("PagingOfTTBCR does not follow TTBCR.EAE")
	}
	for _, tt := range []struct{ va, pa, size uint64 }{
		{0xc0012345, 0x40012345, PageSize2M},
		{0xbf000123, 0x00203123, PageSize4K},
		{0x7fffffff, 0x7f_ffff_ffff, PageSize1G},
	} {
		pa, size, err := as.Translate(tt.va)
		if err != nil || pa != tt.pa || size != tt.size {
			t.Errorf("Translate(%#x) = %#x, %#x, %v; want %#x, %#x", tt.va, pa, size, err, tt.pa, tt.size)
		}
	}
	// Invalid entries at each level, a reserved L3 descriptor, a 64-bit VA.
	m.put64(pt.kpmd+(0xc0200000>>21&0x1ff)*8, 0)
	l3 := m.alloc()
	m.put64(pt.kpmd+(0xc0400000>>21&0x1ff)*8, l3|3)
	m.put64(l3, 0x1000|1) // bits 1:0 = 01 at level 3: reserved
	for _, tt := range []struct {
		va   uint64
		want error
	}{
		{0xc0200000, ErrNotMapped},
		{0xc0400000, ErrReservedBit},
		{0x00001000, ErrNotMapped},
		{0xc0401000, ErrNotMapped},
		{1 << 40, ErrNonCanonical},
	} {
		if _, _, err := as.Translate(tt.va); !errors.Is(err, tt.want) {
			t.Errorf("Translate(%#x) = %v, want %v", tt.va, err, tt.want)
		}
	}
	// T0SZ = 1: TTBR0 holds 2 GiB; between it and TTBR1's 1 GiB is a hole.
	hole := *as
	hole.TTBCR = ttbcrEAE | 2<<16 | 1
	if _, _, err := hole.Translate(0x80000000); !errors.Is(err, ErrNotMapped) {
		t.Errorf("address between the regions: %v", err)
	}
}

func FuzzTranslateARMv7(f *testing.F) {
	m := newTestMem(64 << 10)
	pt := newShortTables(m)
	pt.mapShort(0xc0000000, 0x00100000, PageSize1M)
	pt.mapShort(0xbf000000, 0x00201000, PageSize4K)
	f.Add(m.b[:0xa000], pt.root, uint64(0), uint64(0), uint64(0xc0001234))
	f.Add(m.b[:0xa000], pt.root, uint64(0), uint64(0), uint64(0xbf000010))
	f.Add(m.b[:0xa000], pt.root, pt.root, uint64(ttbcrEAE|2<<16), uint64(0xc0001234))
	f.Add([]byte{}, uint64(0), uint64(0), uint64(7), uint64(0xffffffff))
	f.Fuzz(func(t *testing.T, mem []byte, ttbr0, ttbr1, ttbcr, va uint64) {
		as := &AddressSpace{Mem: &testMem{b: mem}, Paging: PagingOfTTBCR(ttbcr), CR3: ttbr0, TTBR1: ttbr1, TTBCR: ttbcr}
		pa, size, err := as.Translate(va)
		if err == nil {
			if va>>32 != 0 || pa >= 1<<40 || pa&(size-1) != va&(size-1) {
				t.Fatalf("Translate(%#x) = %#x, %#x", va, pa, size)
			}
			switch size {
			case PageSize4K, PageSize64K, PageSize1M, PageSize16M, PageSize2M, PageSize1G:
			default:
				t.Fatalf("Translate(%#x): page size %#x", va, size)
			}
		}
		buf := make([]byte, 64)
		as.ReadVirtual(va, buf)
	})
}
