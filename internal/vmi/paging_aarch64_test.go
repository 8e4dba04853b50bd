package vmi

import (
	"errors"
	"strings"
	"testing"
)

// armTables builds AArch64 4K-granule, 48-bit stage-1 tables in a testMem.
type armTables struct {
	m    *testMem
	root uint64
}

// Descriptor attributes a kernel mapping carries besides valid and
// table/page: AF (10), inner shareable (9:8), UXN (54), PXN (53).
const armAttrs = 1<<10 | 3<<8 | 1<<54 | 1<<53

func newARMTables(m *testMem) *armTables { return &armTables{m: m, root: m.alloc()} }

// mapARM maps va to pa with a page (4K), a 2M block (L2) or a 1G block (L1).
func (pt *armTables) mapARM(va, pa, size uint64) {
	leaf := map[uint64]int{PageSize4K: 3, PageSize2M: 2, PageSize1G: 1}[size]
	table := pt.root
	for level := 0; level < leaf; level++ {
		a := table + (va>>(39-9*uint(level))&0x1ff)*8
		e := pt.m.get64(a)
		if e&armDescValid == 0 {
			e = pt.m.alloc() | armDescValid | armDescTable
			pt.m.put64(a, e)
		}
		table = e & armOAMask
	}
	e := pa | armDescValid | armAttrs
	if leaf == 3 {
		e |= armDescTable
	}
	pt.m.put64(table+(va>>(39-9*uint(leaf))&0x1ff)*8, e)
}

// entryAddr returns the address of va's descriptor at level.
func (pt *armTables) entryAddr(va uint64, level int) uint64 {
	table := pt.root
	for l := 0; ; l++ {
		a := table + (va>>(39-9*uint(l))&0x1ff)*8
		if l == level {
			return a
		}
		table = pt.m.get64(a) & armOAMask
	}
}

func TestTranslateARM64(t *testing.T) {
	m := newTestMem(8 << 20)
	user, kern := newARMTables(m), newARMTables(m)
	user.mapARM(0x0000aaaab0000000, 0x200000, PageSize4K)
	user.mapARM(0x0000ffffb7e00000, 0x400000, PageSize2M)
	kern.mapARM(0xffff800008000000, 0x600000, PageSize2M)                                                  // the kernel image, a block at L2
	kern.mapARM(0xffff000040000000, 0x40000000, PageSize1G)                                                // the linear map, a block at L1
	kern.mapARM(0xffff800008200000+0x3000, 0x7ff000, PageSize4K)                                           // a page at L3
	as := &AddressSpace{Mem: m, Paging: PagingARM64, CR3: user.root | 1<<48 | 1, TTBR1: kern.root | 5<<48} // ASIDs and CnP are ignored
	for _, tt := range []struct {
		name     string
		va       uint64
		wantPA   uint64
		wantSize uint64
	}{
		{"user page", 0x0000aaaab0000abc, 0x200abc, PageSize4K},
		{"user 2M block", 0x0000ffffb7e12345, 0x412345, PageSize2M},
		{"kernel 2M block", 0xffff8000081fffff, 0x7fffff, PageSize2M},
		{"kernel 1G block", 0xffff00007fffffff, 0x7fffffff, PageSize1G},
		{"kernel page", 0xffff800008203ff8, 0x7ffff8, PageSize4K},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, cache := range []*TranslationCache{nil, NewTranslationCache()} {
				as := *as
				as.Cache = cache
				for range 2 { // the second from the cache
					pa, size, err := as.Translate(tt.va)
					if err != nil || pa != tt.wantPA || size != tt.wantSize {
						t.Fatalf("Translate(%#x) = %#x, %#x, %v; want %#x, %#x", tt.va, pa, size, err, tt.wantPA, tt.wantSize)
					}
				}
			}
		})
	}
	// The halves are separate: the user VA of a kernel mapping's index is not mapped.
	if _, _, err := as.Translate(0x0000800008000000); !errors.Is(err, ErrNotMapped) {
		t.Errorf("lower-half twin of a kernel address: %v, want ErrNotMapped", err)
	}
	buf := make([]byte, 8)
	copy(m.b[0x7ffff8:], "ARM64ok!")
	if _, err := as.ReadVirtual(0xffff800008203ff8, buf); err != nil || string(buf) != "ARM64ok!" {
		t.Errorf("ReadVirtual = %q, %v", buf, err)
	}
}

func TestTranslateARM64Errors(t *testing.T) {
	m := newTestMem(1 << 20)
	pt := newARMTables(m)
	va := uint64(0xffff800008201000)
	pt.mapARM(va, 0x80000, PageSize4K)
	as := &AddressSpace{Mem: m, Paging: PagingARM64, TTBR1: pt.root}
	for _, tt := range []struct {
		name  string
		va    uint64
		level int
		err   error
	}{
		{"L0 invalid", 0xffff000008201000, 0, ErrNotMapped},
		{"L1 invalid", 0xffff800048201000, 1, ErrNotMapped},
		{"L2 invalid", 0xffff800008401000, 2, ErrNotMapped},
		{"L3 invalid", 0xffff800008202000, 3, ErrNotMapped},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := as.Translate(tt.va)
			te, ok := errors.AsType[*TranslationError](err)
			if !ok || !errors.Is(err, tt.err) || te.Level != tt.level {
				t.Fatalf("Translate(%#x) = %v; want level %d %v", tt.va, err, tt.level, tt.err)
			}
		})
	}
	for _, va := range []uint64{0x0001000000000000, 0xfffe800008201000, 0x8000000000000000} {
		if _, _, err := as.Translate(va); !errors.Is(err, ErrNonCanonical) {
			t.Errorf("Translate(%#x) = %v, want ErrNonCanonical", va, err)
		}
	}
	// Reserved encodings: an L0 block, and 01 at L3.
	l0 := pt.entryAddr(va, 0)
	saved := m.get64(l0)
	m.put64(l0, 0x40000000|armDescValid)
	if _, _, err := as.Translate(va); !errors.Is(err, ErrReservedBit) {
		t.Errorf("L0 block: %v, want ErrReservedBit", err)
	}
	m.put64(l0, saved)
	l3 := pt.entryAddr(va, 3)
	m.put64(l3, m.get64(l3)&^armDescTable)
	if _, _, err := as.Translate(va); !errors.Is(err, ErrReservedBit) {
		t.Errorf("L3 descriptor 01: %v, want ErrReservedBit", err)
	}
	// A table pointing outside memory is a read error, not a panic.
	m.put64(l3, 0)
	m.put64(pt.entryAddr(va, 2), 0x7fff_ffff_f000|armDescValid|armDescTable)
	if _, _, err := as.Translate(va); err == nil || errors.Is(err, ErrNotMapped) {
		t.Errorf("table outside memory: %v, want a read error", err)
	}
}

func TestCheckTCR(t *testing.T) {
	// Linux 6.1 arm64 defconfig, 4K pages, 48-bit VA: TG1=4K, TG0=4K, T1SZ=T0SZ=16.
	const linux48 = 2<<30 | 16<<16 | 16
	for _, tt := range []struct {
		name string
		tcr  uint64
		want string // "" for accepted
	}{
		{"unknown", 0, ""},
		{"4K 48-bit", linux48 | 5<<32 | 1<<37, ""},
		{"16K kernel", linux48&^(3<<30) | 1<<30, "TG1) is 16K"},
		{"64K kernel", linux48 | 3<<30, "TG1) is 64K"},
		{"64K user", linux48 | 1<<14, "TG0) is 64K"},
		{"39-bit", linux48&^(0x3f<<16) | 25<<16, "39-bit"},
		{"52-bit LPA2", linux48 | 1<<59, "LPA2"},
		{"52-bit user", linux48&^0x3f | 12, "52-bit"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckTCR(tt.tcr)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("CheckTCR(%#x) = %v", tt.tcr, err)
				}
				return
			}
			if !errors.Is(err, ErrUnsupportedTranslation) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("CheckTCR(%#x) = %v, want %q", tt.tcr, err, tt.want)
			}
		})
	}
}

func FuzzTranslateARM64(f *testing.F) {
	m := newTestMem(64 << 10)
	pt := newARMTables(m)
	pt.mapARM(0xffff800008000000, 0x200000, PageSize2M)
	pt.mapARM(0x0000aaaab0000000, 0x8000, PageSize4K)
	f.Add(m.b[:0x8000], pt.root, pt.root, uint64(0xffff800008001234))
	f.Add(m.b[:0x8000], pt.root, pt.root, uint64(0x0000aaaab0000010))
	f.Add([]byte{}, uint64(0), uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, mem []byte, ttbr0, ttbr1, va uint64) {
		tm := &testMem{b: mem}
		as := &AddressSpace{Mem: tm, Paging: PagingARM64, CR3: ttbr0, TTBR1: ttbr1, Cache: NewTranslationCache()}
		pa, size, err := as.Translate(va)
		if err == nil {
			if pa > armOAMask|0xfff || (size != PageSize4K && size != PageSize2M && size != PageSize1G) {
				t.Fatalf("Translate(%#x) = %#x, %#x", va, pa, size)
			}
			if pa2, _, err := as.Translate(va); err != nil || pa2 != pa {
				t.Fatalf("cached Translate(%#x) = %#x, %v; uncached %#x", va, pa2, err, pa)
			}
		}
		buf := make([]byte, 64)
		as.ReadVirtual(va, buf)
	})
}
