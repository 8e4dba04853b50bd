package vmi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// x86-64 paging constants.
const (
	cr4LA57 = 1 << 12

	ptepresent = 1 << 0
	ptePS      = 1 << 7
	// pteAddrMask keeps bits 51:12 of a CR3 value or table entry: it drops the
	// PCID/flag bits of CR3, the NX bit (63), protection keys (62:59) and the
	// bits ignored by hardware (62:52).
	pteAddrMask = 0x000f_ffff_ffff_f000

	// Page sizes.
	PageSize4K = 1 << 12
	PageSize2M = 1 << 21
	PageSize1G = 1 << 30
)

var (
	// ErrNotMapped means a page-table entry on the walk is not present.
	ErrNotMapped = errors.New("vmi: virtual address not mapped")
	// ErrNonCanonical means a virtual address is not canonical for the paging mode.
	ErrNonCanonical = errors.New("vmi: non-canonical virtual address")
	// ErrReservedBit means a page-table entry sets a bit the CPU would fault on
	// (PS in a PML5E or PML4E).
	ErrReservedBit = errors.New("vmi: reserved bit set in page-table entry")
)

// TranslationError reports where a page-table walk failed.
type TranslationError struct {
	VA uint64
	// Level is the paging level of the failing table: 5 for the PML5, 4 for
	// the PML4, 3 for the PDPT, 2 for the page directory, 1 for the page table.
	Level int
	// Table is the guest-physical address of the failing table, Entry the
	// value read from it (zero if the read itself failed).
	Table, Entry uint64
	Err          error
}

func (e *TranslationError) Error() string {
	return fmt.Sprintf("vmi: translate %#x: level %d table %#x entry %#x: %v", e.VA, e.Level, e.Table, e.Entry, e.Err)
}

func (e *TranslationError) Unwrap() error { return e.Err }

// AddressSpace is a guest virtual address space: the page tables rooted at
// CR3 in Mem. The zero Cache means no caching. An AddressSpace is safe for
// concurrent use when its Cache is (TranslationCache is).
type AddressSpace struct {
	Mem PhysicalMemory
	// CR3 is the page-table root as loaded in CR3; PCID and flag bits are ignored.
	CR3 uint64
	// LA57 selects 5-level paging (CR4.LA57); otherwise 4-level.
	LA57 bool
	// Cache, if not nil, caches translations; see TranslationCache.
	Cache *TranslationCache
	// Linear, when set, is a window of virtual addresses that Translate
	// resolves by arithmetic, without a page-table walk (see LinearWindow).
	Linear *LinearWindow
	// Paging is the translation regime: PagingX86 (the zero value) or
	// PagingARM64, whose lower half walks from CR3 (as TTBR0_EL1) and
	// upper half from TTBR1 (paging_arm64.go).
	Paging Paging
	TTBR1  uint64
	// TTBCR is the ARMv7 regimes' TTBCR (paging_armv7.go).
	TTBCR uint64
}

// LinearWindow is a range of virtual addresses that maps linearly onto
// guest-physical memory: pa = va - Base for va in [Base, Base+Size).
// Linux's direct map of all RAM is one, and the kernel itself relies on
// that identity (__pa, virt_to_page), so reading through the window sees
// what the kernel sees. Base and Size must be multiples of 1 GiB (a window
// that is not is ignored); whoever sets a window must have checked it
// against the page tables (linux.Locate does).
type LinearWindow struct {
	Base, Size uint64
}

// contains reports whether va is in the window.
func (w *LinearWindow) contains(va uint64) bool {
	return (w.Base|w.Size)&(PageSize1G-1) == 0 && va >= w.Base && va-w.Base < w.Size
}

// NewAddressSpace returns the address space rooted at cr3, with the paging
// mode taken from cr4.
func NewAddressSpace(mem PhysicalMemory, cr3, cr4 uint64) *AddressSpace {
	return &AddressSpace{Mem: mem, CR3: cr3, LA57: cr4&cr4LA57 != 0}
}

// Canonical reports whether va is canonical: bits 63 down to the top bit of
// the paging mode (47, or 56 with la57) are all equal.
func Canonical(va uint64, la57 bool) bool {
	shift := 47
	if la57 {
		shift = 56
	}
	top := int64(va) >> shift
	return top == 0 || top == -1
}

// Translate returns the guest-physical address that va maps to and the size of
// the page that maps it. On failure the error is a *TranslationError wrapping
// ErrNotMapped, ErrReservedBit or a physical read error, or it wraps
// ErrNonCanonical.
func (as *AddressSpace) Translate(va uint64) (gpa, pageSize uint64, err error) {
	if as.Paging == PagingARM64 {
		if !CanonicalARM64(va) {
			return 0, 0, fmt.Errorf("%w: %#x", ErrNonCanonical, va)
		}
	} else if as.Paging.isARMv7() {
		if va>>32 != 0 {
			return 0, 0, fmt.Errorf("%w: %#x is not a 32-bit address", ErrNonCanonical, va)
		}
	} else if !Canonical(va, as.LA57) {
		return 0, 0, fmt.Errorf("%w: %#x", ErrNonCanonical, va)
	}
	if w := as.Linear; w != nil && w.contains(va) {
		// Contiguous over the aligned gigabyte: ReadVirtual splits reads
		// there, and at the window's end the next translation walks.
		return va - w.Base, PageSize1G, nil
	}
	c := as.Cache
	if as.Paging.isARMv7() {
		c = nil // the cache re-reads 8-byte leaves; short descriptors are 4
	}
	if c != nil {
		if gpa, size, ok := c.lookup(as, va); ok {
			return gpa, size, nil
		}
	}
	w, err := as.walk(va)
	if err != nil {
		return 0, 0, err
	}
	if c != nil {
		c.store(as, va, w)
	}
	return w.base | va&(w.size-1), w.size, nil
}

// walkResult is a successful walk: the page's base and size, and the leaf
// entry's address and value (for cache re-validation).
type walkResult struct {
	base, size uint64
	leafAddr   uint64
	leaf       uint64
}

func (as *AddressSpace) walk(va uint64) (walkResult, error) {
	switch as.Paging {
	case PagingARM64:
		return as.walkARM64(va)
	case PagingARMv7:
		return as.walkARMv7(va)
	case PagingARMLPAE:
		return as.walkLPAE(va)
	}
	levels := 4
	if as.LA57 {
		levels = 5
	}
	table := as.CR3 & pteAddrMask
	var buf [8]byte
	for level := levels; level >= 1; level-- {
		shift := 12 + 9*uint(level-1)
		idx := (va >> shift) & 0x1ff
		addr := table + idx*8
		if _, err := as.Mem.ReadAt(buf[:], int64(addr)); err != nil {
			return walkResult{}, &TranslationError{VA: va, Level: level, Table: table, Err: err}
		}
		e := binary.LittleEndian.Uint64(buf[:])
		if e&ptepresent == 0 {
			return walkResult{}, &TranslationError{VA: va, Level: level, Table: table, Entry: e, Err: ErrNotMapped}
		}
		if e&ptePS != 0 && level != 1 {
			if level > 3 {
				return walkResult{}, &TranslationError{VA: va, Level: level, Table: table, Entry: e, Err: ErrReservedBit}
			}
			size := uint64(1) << shift
			return walkResult{base: e & pteAddrMask &^ (size - 1), size: size, leafAddr: addr, leaf: e}, nil
		}
		if level == 1 {
			return walkResult{base: e & pteAddrMask, size: PageSize4K, leafAddr: addr, leaf: e}, nil
		}
		table = e & pteAddrMask
	}
	panic("unreachable")
}

// ReadVirtual reads len(p) bytes at va, translating each page separately. It
// returns the number of bytes read before the first failure.
func (as *AddressSpace) ReadVirtual(va uint64, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		addr := va + uint64(n)
		if addr < va {
			return n, fmt.Errorf("%w: read wraps past %#x", ErrNonCanonical, va)
		}
		gpa, size, err := as.Translate(addr)
		if err != nil {
			return n, err
		}
		chunk := p[n:]
		if rest := size - addr&(size-1); uint64(len(chunk)) > rest {
			chunk = chunk[:rest]
		}
		m, err := as.Mem.ReadAt(chunk, int64(gpa))
		n += m
		if err != nil {
			return n, fmt.Errorf("vmi: read virtual %#x (physical %#x): %w", addr, gpa, err)
		}
	}
	return n, nil
}
