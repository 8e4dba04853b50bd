package vmi

import (
	"encoding/binary"
	"fmt"
)

// ARMv7-A (32-bit ARM) translation, both formats of the VMSAv7 (Arm ARM
// B3.5 and B3.6):
//
//   - PagingARMv7: the short-descriptor format (TTBCR.EAE 0), which
//     kernels without CONFIG_ARM_LPAE use (Debian's armmp). TTBCR.N splits
//     the 4 GiB between TTBR0 (below 2^(32-N)) and TTBR1; N = 0 puts all of
//     it under TTBR0, which is what Linux does (each process's table
//     repeats the kernel's entries). The first level has 4096 >> N 4-byte
//     entries (sections of 1 MiB, supersections of 16 MiB, page tables);
//     the second 256 (large pages of 64 KiB, small pages of 4 KiB).
//   - PagingARMLPAE: the long-descriptor format (TTBCR.EAE 1), which
//     CONFIG_ARM_LPAE kernels use (armmp-lpae): 8-byte descriptors, three
//     levels (1 GiB blocks, 2 MiB blocks, 4 KiB pages), a 40-bit output
//     address; T0SZ and T1SZ size the two regions (Linux: TTBR1 holds the
//     top 1 GiB with VMSPLIT_3G, T1SZ 2).
//
// AddressSpace.CR3 holds TTBR0, TTBR1 TTBR1 and TTBCR TTBCR. Virtual
// addresses are 32-bit: a larger one is ErrNonCanonical.

// ARMv7 paging regimes (see Paging).
const (
	// PagingARMv7 is the ARMv7 short-descriptor format.
	PagingARMv7 Paging = 16 + iota
	// PagingARMLPAE is the ARMv7 long-descriptor format (LPAE).
	PagingARMLPAE
)

// TTBCR fields.
const (
	ttbcrN    = 7       // short-descriptor: the TTBR0 region's size
	ttbcrEAE  = 1 << 31 // long-descriptor format
	ttbcrT0SZ = 7       // long-descriptor: TTBR0 region 2^(32-T0SZ)
	ttbcrT1SZ = 7 << 16 // long-descriptor: TTBR1 region 2^(32-T1SZ) at the top
)

// PagingOfTTBCR returns the regime TTBCR selects.
func PagingOfTTBCR(ttbcr uint64) Paging {
	if ttbcr&ttbcrEAE != 0 {
		return PagingARMLPAE
	}
	return PagingARMv7
}

// isARMv7 reports whether p is one of the 32-bit ARM regimes.
func (p Paging) isARMv7() bool { return p == PagingARMv7 || p == PagingARMLPAE }

// Section and page sizes of the short-descriptor format.
const (
	PageSize64K          = 1 << 16
	PageSize1M           = 1 << 20
	PageSize16M          = 1 << 24
	shortSectionBase     = 0xfff0_0000
	shortSuperBase       = 0xff00_0000
	shortTableBase       = 0xffff_fc00
	shortLargeBase       = 0xffff_0000
	shortSmallBase       = 0xffff_f000
	lpaeOAMask           = 0x0000_00ff_ffff_f000 // output address bits 39:12
	lpaeTTBRMask         = 0x0000_00ff_ffff_ffe0 // BADDR: bits 39:5 (the smallest table, 4 entries, is 32-byte aligned)
	shortDescFault       = 0
	shortDescTable       = 1
	shortSectionSuper    = 1 << 18
	shortSmallPageOrXN   = 2
	shortSuperExtBits    = 0x00f0_0000 // supersection PA[35:32] in bits 23:20
	shortSuperExtBitsHi  = 0x0000_01e0 // supersection PA[39:36] in bits 8:5
	shortLargePageInBits = 1
)

// walkARMv7 is walk for PagingARMv7. TranslationError.Level is 1 for
// the first-level table, 2 for the second.
func (as *AddressSpace) walkARMv7(va uint64) (walkResult, error) {
	n := as.TTBCR & ttbcrN
	table := as.CR3 &^ (uint64(1)<<(14-n) - 1) & 0xffff_ffff
	idx := (va >> 20) & (0xfff >> n)
	if n != 0 && va>>(32-n) != 0 {
		table = as.TTBR1 &^ (1<<14 - 1) & 0xffff_ffff
		idx = va >> 20 & 0xfff
	}
	e, addr, err := as.readDesc32(table, idx)
	if err != nil {
		return walkResult{}, &TranslationError{VA: va, Level: 1, Table: table, Err: err}
	}
	switch e & 3 {
	case shortDescFault:
		return walkResult{}, &TranslationError{VA: va, Level: 1, Table: table, Entry: e, Err: ErrNotMapped}
	case shortDescTable:
		l2 := e & shortTableBase
		e2, addr2, err := as.readDesc32(l2, va>>12&0xff)
		if err != nil {
			return walkResult{}, &TranslationError{VA: va, Level: 2, Table: l2, Err: err}
		}
		switch {
		case e2&3 == shortDescFault:
			return walkResult{}, &TranslationError{VA: va, Level: 2, Table: l2, Entry: e2, Err: ErrNotMapped}
		case e2&3 == shortLargePageInBits:
			return walkResult{base: e2 & shortLargeBase, size: PageSize64K, leafAddr: addr2, leaf: e2}, nil
		default: // 1x: small page, bit 0 is XN
			return walkResult{base: e2 & shortSmallBase, size: PageSize4K, leafAddr: addr2, leaf: e2}, nil
		}
	default: // 1x: section or supersection, bit 0 is PXN
		if e&shortSectionSuper != 0 {
			base := e&shortSuperBase | (e&shortSuperExtBits)<<12 | (e&shortSuperExtBitsHi)<<31
			return walkResult{base: base, size: PageSize16M, leafAddr: addr, leaf: e}, nil
		}
		return walkResult{base: e & shortSectionBase, size: PageSize1M, leafAddr: addr, leaf: e}, nil
	}
}

// readDesc32 reads the 4-byte descriptor idx of the table at table.
func (as *AddressSpace) readDesc32(table, idx uint64) (e, addr uint64, err error) {
	var buf [4]byte
	addr = table + idx*4
	if _, err := as.Mem.ReadAt(buf[:], int64(addr)); err != nil {
		return 0, addr, err
	}
	return uint64(binary.LittleEndian.Uint32(buf[:])), addr, nil
}

// lpaeRegion returns the table va's walk starts from and the level it
// starts at, for PagingARMLPAE (Arm ARM B3.6.4).
func (as *AddressSpace) lpaeRegion(va uint64) (table uint64, level int, err error) {
	t0 := as.TTBCR & ttbcrT0SZ
	t1 := (as.TTBCR & ttbcrT1SZ) >> 16
	var sz uint64
	switch {
	case t1 != 0 && va >= 1<<32-1<<(32-t1):
		table, sz = as.TTBR1, t1
	case t1 == 0 && t0 == 0, va < 1<<(32-t0):
		table, sz = as.CR3, t0
	default:
		return 0, 0, fmt.Errorf("%w: %#x is in neither TTBR0's region (T0SZ %d) nor TTBR1's (T1SZ %d)", ErrNotMapped, va, t0, t1)
	}
	level = 1
	if sz >= 2 {
		level = 2 // a region of at most 1 GiB starts at the second level
	}
	return table & lpaeTTBRMask, level, nil
}

// walkLPAE is walk for PagingARMLPAE. TranslationError.Level is the
// long-descriptor level of the failing table (1 to 3).
func (as *AddressSpace) walkLPAE(va uint64) (walkResult, error) {
	table, start, err := as.lpaeRegion(va)
	if err != nil {
		return walkResult{}, &TranslationError{VA: va, Level: 1, Err: err}
	}
	return as.walkLongDescriptors(va, table, start, 3, lpaeOAMask)
}
