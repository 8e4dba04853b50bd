package vmi

import (
	"bytes"
	"errors"
	"testing"
)

func TestTranslate(t *testing.T) {
	for _, levels := range []int{4, 5} {
		m := newTestMem(8 << 20)
		pt := newPageTables(m, levels)
		kernel := uint64(0xffffffff81000000)
		if levels == 5 {
			kernel = 0xff11000000000000 // only canonical with LA57
		}
		pt.mapPage(0x400000, 0x200000, PageSize4K, 0)
		pt.mapPage(0x401000, 0x7ff000, PageSize4K, fNX)
		pt.mapPage(kernel, 0x600000, PageSize2M, fNX)
		pt.mapPage(0x7f0040000000, 0x40000000, PageSize1G, 0)
		as := &AddressSpace{Mem: m, CR3: pt.root | 0x5 | 1<<63, LA57: levels == 5} // PCID 5, no-flush bit
		tests := []struct {
			name     string
			va       uint64
			wantPA   uint64
			wantSize uint64
		}{
			{"4K", 0x400123, 0x200123, PageSize4K},
			{"4K NX", 0x401ff8, 0x7ffff8, PageSize4K},
			{"2M", kernel + 0x1abcde, 0x7abcde, PageSize2M},
			{"1G", 0x7f0040000000 + 0x3fffffff, 0x7fffffff, PageSize1G},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				pa, size, err := as.Translate(tt.va)
				if err != nil {
					t.Fatalf("levels=%d Translate(%#x): %v", levels, tt.va, err)
				}
				if pa != tt.wantPA || size != tt.wantSize {
					t.Errorf("levels=%d Translate(%#x) = %#x, %#x; want %#x, %#x", levels, tt.va, pa, size, tt.wantPA, tt.wantSize)
				}
			})
		}
	}
}

func TestTranslateErrors(t *testing.T) {
	m := newTestMem(1 << 20)
	pt := newPageTables(m, 4)
	pt.mapPage(0x400000, 0x80000, PageSize4K, 0)
	as := &AddressSpace{Mem: m, CR3: pt.root}

	// Non-present at each level.
	for _, tt := range []struct {
		va    uint64
		level int
	}{
		{0x0000100000000000, 4}, // another PML4 slot
		{0x0000000040000000, 3}, // same PML4E, other PDPTE
		{0x0000000000200000, 2}, // same PDPTE, other PDE
		{0x0000000000401000, 1}, // same PT, other PTE
	} {
		_, _, err := as.Translate(tt.va)
		var te *TranslationError
		if !errors.As(err, &te) || !errors.Is(err, ErrNotMapped) || te.Level != tt.level {
			t.Errorf("Translate(%#x) = %v; want ErrNotMapped at level %d", tt.va, err, tt.level)
		}
	}

	// Non-canonical.
	if _, _, err := as.Translate(0x0000800000000000); !errors.Is(err, ErrNonCanonical) {
		t.Errorf("non-canonical: got %v", err)
	}
	// With LA57 the same address is canonical.
	if !Canonical(0x0000800000000000, true) || Canonical(0x0100000000000000, true) {
		t.Error("Canonical with la57 wrong")
	}

	// PS in a PML4E is reserved.
	m.put64(pt.root+8*5, 0x200000|fP|ptePS)
	if _, _, err := as.Translate(5 << 39); !errors.Is(err, ErrReservedBit) {
		t.Errorf("PS in PML4E: got %v", err)
	}

	// A table pointer beyond RAM gives a read error naming the level.
	m.put64(pt.root+8*6, 0x000f_ffff_ffff_f000|fP)
	_, _, err := as.Translate(6 << 39)
	var te *TranslationError
	if !errors.As(err, &te) || te.Level != 3 || !errors.Is(err, ErrNoMemory) {
		t.Errorf("table beyond RAM: got %v", err)
	}

	// Absurd CR3.
	bad := &AddressSpace{Mem: m, CR3: ^uint64(0)}
	if _, _, err := bad.Translate(0x400000); !errors.Is(err, ErrNoMemory) {
		t.Errorf("absurd CR3: got %v", err)
	}
}

func TestSelfReferencingTables(t *testing.T) {
	m := newTestMem(1 << 20)
	pt := newPageTables(m, 4)
	// Recursive slot: PML4[511] points at the PML4 itself, as Windows does.
	m.put64(pt.root+511*8, pt.root|fP|fRW)
	as := &AddressSpace{Mem: m, CR3: pt.root}
	// The address whose indexes are all 511 maps the PML4 page itself.
	va := uint64(0xfffffffffffff000)
	pa, size, err := as.Translate(va)
	if err != nil || pa != pt.root || size != PageSize4K {
		t.Fatalf("Translate(%#x) = %#x, %d, %v; want the PML4 at %#x", va, pa, size, err, pt.root)
	}
	// A "cycle" with PS set where hardware forbids it terminates too.
	m.put64(pt.root+510*8, pt.root|fP|ptePS)
	if _, _, err := as.Translate(0xffffff0000000000); !errors.Is(err, ErrReservedBit) {
		t.Errorf("got %v", err)
	}
}

func TestReadVirtualAcrossPages(t *testing.T) {
	m := newTestMem(4 << 20)
	pt := newPageTables(m, 4)
	pt.mapPage(0x10000, 0x300000, PageSize4K, 0)
	pt.mapPage(0x11000, 0x100000, PageSize4K, 0) // not contiguous physically
	copy(m.b[0x300ffc:], "abcd")
	copy(m.b[0x100000:], "efgh")
	as := &AddressSpace{Mem: m, CR3: pt.root}
	got := make([]byte, 8)
	if n, err := as.ReadVirtual(0x10ffc, got); err != nil || n != 8 || string(got) != "abcdefgh" {
		t.Fatalf("ReadVirtual = %d, %q, %v", n, got, err)
	}
	// A read running into an unmapped page returns what it read and ErrNotMapped.
	n, err := as.ReadVirtual(0x11ffc, got)
	if n != 4 || !errors.Is(err, ErrNotMapped) {
		t.Errorf("ReadVirtual into unmapped page = %d, %v", n, err)
	}
}

func TestTranslationCache(t *testing.T) {
	m := newTestMem(4 << 20)
	pt := newPageTables(m, 4)
	pt.mapPage(0x10000, 0x300000, PageSize4K, 0)
	pt.mapPage(0x40000000, 0x200000, PageSize2M, 0)
	c := &TranslationCache{MaxHits: 3}
	as := &AddressSpace{Mem: m, CR3: pt.root, Cache: c}

	mustTranslate := func(va, want uint64) {
		t.Helper()
		pa, _, err := as.Translate(va)
		if err != nil || pa != want {
			t.Fatalf("Translate(%#x) = %#x, %v; want %#x", va, pa, err, want)
		}
	}
	mustTranslate(0x10010, 0x300010)
	mustTranslate(0x40001234, 0x201234)
	if c.Len() != 2 {
		t.Fatalf("cache has %d entries, want 2", c.Len())
	}
	// The guest remaps the page: the leaf re-validation sees it at once.
	pt.mapPage(0x10000, 0x380000, PageSize4K, 0)
	mustTranslate(0x10010, 0x380010)
	// The guest unmaps it.
	m.put64(pt.entryAddr(0x10000, 1), 0)
	if _, _, err := as.Translate(0x10010); !errors.Is(err, ErrNotMapped) {
		t.Fatalf("after unmap: %v", err)
	}
	// The guest swaps a whole page table under a PDE, leaving the old table's
	// bytes in place: the cache serves the old mapping for at most MaxHits
	// hits, or until Invalidate.
	pt.mapPage(0x10000, 0x300000, PageSize4K, 0)
	mustTranslate(0x10010, 0x300010) // fill
	newPT := m.alloc()
	m.put64(newPT+0x10*8, 0x390000|fP)
	m.put64(pt.entryAddr(0x10000, 2), newPT|fP|fRW)
	for i := 0; i < 3; i++ {
		mustTranslate(0x10010, 0x300010) // stale hits 1..3
	}
	mustTranslate(0x10010, 0x390010) // hit 4 > MaxHits: walked again
	m.put64(pt.entryAddr(0x10000, 2), pt.m.alloc()|fP|fRW)
	m.put64(pt.entryAddr(0x10000, 1), 0x3a0000|fP)
	mustTranslate(0x10010, 0x390010) // stale again
	c.Invalidate()
	mustTranslate(0x10010, 0x3a0010)
	c.InvalidateRoot(pt.root | 0x5)
	if c.Len() != 0 {
		t.Errorf("InvalidateRoot left %d entries", c.Len())
	}
	// Bounded size.
	for i := uint64(0); i < 2*cacheSlots; i++ {
		mustTranslate(0x40000000+(i%512)*PageSize4K, 0x200000+(i%512)*PageSize4K)
	}
	if c.Len() > cacheSlots {
		t.Errorf("cache grew to %d entries", c.Len())
	}
	// Static memory: no re-validation, no hit limit.
	c.Static = true
	c.Invalidate()
	mustTranslate(0x40000000, 0x200000)
	m.put64(pt.entryAddr(0x40000000, 2), 0)
	for i := 0; i < 10; i++ {
		mustTranslate(0x40000000, 0x200000)
	}
}

func TestRawMemoryLayout(t *testing.T) {
	img := bytes.Repeat([]byte{1}, 0x2000)
	copy(img[0x1000:], "high")
	m, err := NewRawMemory(bytes.NewReader(img), int64(len(img)), []Range{{0, 0x1000}, {0x100000000, 0x100001000}})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := m.ReadAt(buf, 0x100000000); err != nil || string(buf) != "high" {
		t.Errorf("ReadAt high = %q, %v", buf, err)
	}
	if _, err := m.ReadAt(buf, 0x1000); !errors.Is(err, ErrNoMemory) {
		t.Errorf("ReadAt in hole: %v", err)
	}
	if _, err := m.ReadAt(buf, 0xffe); !errors.Is(err, ErrNoMemory) {
		t.Errorf("ReadAt across hole end: %v", err)
	}
	if got := m.Ranges(); len(got) != 2 {
		t.Errorf("Ranges = %v", got)
	}
	if _, err := NewRawMemory(bytes.NewReader(img), int64(len(img)), []Range{{0, 0x3000}}); err == nil {
		t.Error("layout larger than image accepted")
	}
	if _, err := NewRawMemory(bytes.NewReader(img), int64(len(img)), []Range{{0, 0x1000}, {0x800, 0x1800}}); err == nil {
		t.Error("overlapping layout accepted")
	}
}

// FuzzTranslate walks page tables in fuzzed memory: it must terminate
// without panicking, and a success must point inside 52-bit physical space.
func FuzzTranslate(f *testing.F) {
	m := newTestMem(64 << 10)
	pt := newPageTables(m, 4)
	pt.mapPage(0x400000, 0x8000, PageSize4K, 0)
	pt.mapPage(0xffffffff81000000, 0x200000, PageSize2M, 0)
	f.Add(m.b[:0x8000], pt.root, uint64(0x400010), false)
	f.Add(m.b[:0x8000], pt.root, uint64(0xffffffff81001000), true)
	f.Add([]byte{}, uint64(0), uint64(0), false)
	f.Fuzz(func(t *testing.T, mem []byte, cr3, va uint64, la57 bool) {
		tm := &testMem{b: mem}
		as := &AddressSpace{Mem: tm, CR3: cr3, LA57: la57, Cache: NewTranslationCache()}
		pa, size, err := as.Translate(va)
		if err == nil {
			if pa >= maxPhysAddr || (size != PageSize4K && size != PageSize2M && size != PageSize1G) {
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

func TestLinearWindow(t *testing.T) {
	mem := newTestMem(64 << 10)
	copy(mem.b[0x1000:], "ABCD")
	as := &AddressSpace{Mem: mem, CR3: 0, Linear: &LinearWindow{Base: 0xffff888000000000, Size: PageSize1G}}
	pa, size, err := as.Translate(0xffff888000001234)
	if err != nil || pa != 0x1234 || size != PageSize1G {
		t.Fatalf("Translate in the window = %#x, %#x, %v", pa, size, err)
	}
	b := make([]byte, 4)
	if _, err := as.ReadVirtual(0xffff888000001000, b); err != nil || string(b) != "ABCD" {
		t.Fatalf("ReadVirtual in the window = %q, %v", b, err)
	}
	// Outside the window: the page tables (none here) decide.
	if _, _, err := as.Translate(0xffff888000000000 + PageSize1G); err == nil {
		t.Fatal("an address past the window translated without page tables")
	}
	// A misaligned window is ignored.
	as.Linear = &LinearWindow{Base: 0xffff888000001000, Size: PageSize1G}
	if _, _, err := as.Translate(0xffff888000002000); err == nil {
		t.Fatal("a misaligned window was used")
	}
}
