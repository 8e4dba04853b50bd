package vmi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Paging selects an AddressSpace's translation regime.
type Paging uint8

const (
	// PagingX86 is x86-64 4- or 5-level paging from CR3 (LA57): the zero value.
	PagingX86 Paging = iota
	// PagingARM64 is AArch64 stage-1 translation with the 4 KiB granule and
	// 48-bit virtual addresses (TCR_EL1.TG0/TG1 4K, T0SZ = T1SZ = 16): the
	// lower half (bits 63:48 all 0) walks the tables at CR3 (TTBR0_EL1), the
	// upper half (all 1) those at TTBR1 (TTBR1_EL1); 4 levels, L0 to L3,
	// with 1 GiB blocks at L1 and 2 MiB blocks at L2. Checks of the
	// registers that choose other granules or 52-bit addresses are
	// CheckTCR's; this regime walks only the one above.
	PagingARM64
)

// AArch64 descriptor bits (Arm ARM D8.3, VMSAv8-64 translation table format).
const (
	armDescValid = 1 << 0
	armDescTable = 1 << 1 // at L0-L2: table (1) or block (0); at L3: page (1) or reserved (0)
	// armOAMask keeps output-address bits 47:12 of a descriptor or TTBR
	// (BADDR; the ASID in 63:48 and CnP in bit 0 are dropped).
	armOAMask = 0x0000_ffff_ffff_f000
)

var (
	// ErrUnsupportedTranslation means the guest's translation regime is one
	// this package does not walk (16K or 64K granule, 52-bit addresses).
	ErrUnsupportedTranslation = errors.New("vmi: unsupported AArch64 translation regime")
)

// TCR_EL1 fields (Arm ARM D19.2.139).
const (
	tcrT0SZ  = 0x3f    // bits 5:0
	tcrTG0   = 3 << 14 // 00 4K, 01 64K, 10 16K
	tcrT1SZ  = 0x3f << 16
	tcrTG1   = 3 << 30 // 01 16K, 10 4K, 11 64K
	tcrDS    = 1 << 59 // 52-bit addresses with the 4K/16K granules (FEAT_LPA2)
	tcrTG14K = 2 << 30
)

// CheckTCR checks TCR_EL1 against what PagingARM64 walks and says what
// differs: the kernel half's granule and size (TG1, T1SZ), the user
// half's (TG0, T0SZ; 0 and 0 are accepted as unknown), and FEAT_LPA2. A
// zero tcr (not known: no gdbstub register) is accepted.
func CheckTCR(tcr uint64) error {
	if tcr == 0 {
		return nil
	}
	gran1 := map[uint64]string{1 << 30: "16K", 2 << 30: "4K", 3 << 30: "64K", 0: "reserved"}[tcr&tcrTG1]
	gran0 := map[uint64]string{0: "4K", 1 << 14: "64K", 2 << 14: "16K", 3 << 14: "reserved"}[tcr&tcrTG0]
	switch {
	case tcr&tcrTG1 != tcrTG14K:
		return fmt.Errorf("%w: the kernel's translation granule (TCR_EL1.TG1) is %s: only 4K is walked (a kernel built with ARM64_16K_PAGES or ARM64_64K_PAGES)", ErrUnsupportedTranslation, gran1)
	case tcr&tcrDS != 0:
		return fmt.Errorf("%w: TCR_EL1.DS is set (52-bit addresses with FEAT_LPA2): only 48-bit is walked", ErrUnsupportedTranslation)
	case (tcr&tcrT1SZ)>>16 != 16:
		return fmt.Errorf("%w: the kernel half has %d-bit addresses (TCR_EL1.T1SZ %d): only 48-bit is walked (ARM64_VA_BITS_48)", ErrUnsupportedTranslation, 64-(tcr&tcrT1SZ)>>16, (tcr&tcrT1SZ)>>16)
	case tcr&tcrTG0 != 0:
		return fmt.Errorf("%w: the user half's translation granule (TCR_EL1.TG0) is %s: only 4K is walked", ErrUnsupportedTranslation, gran0)
	case tcr&tcrT0SZ < 16:
		return fmt.Errorf("%w: the user half has %d-bit addresses (TCR_EL1.T0SZ %d): only 48-bit is walked", ErrUnsupportedTranslation, 64-tcr&tcrT0SZ, tcr&tcrT0SZ)
	}
	return nil
}

// CanonicalARM64 reports whether va is in one of the two 48-bit halves.
func CanonicalARM64(va uint64) bool {
	top := va >> 48
	return top == 0 || top == 0xffff
}

// root returns the table va's walk starts from: TTBR0 (CR3) for the lower
// half, TTBR1 for the upper.
func (as *AddressSpace) rootARM64(va uint64) uint64 {
	if va>>63 != 0 {
		return as.TTBR1 & armOAMask
	}
	return as.CR3 & armOAMask
}

// walkARM64 is walk for PagingARM64. TranslationError.Level is the
// AArch64 level of the failing table (0 to 3).
func (as *AddressSpace) walkARM64(va uint64) (walkResult, error) {
	return as.walkLongDescriptors(va, as.rootARM64(va), 0, 0x1ff, armOAMask)
}

// walkLongDescriptors walks VMSA long-descriptor tables with the 4 KiB
// granule from table, at level start: AArch64's (levels 0 to 3) and ARMv7
// LPAE's (levels 1 to 3, level 1 indexing 2 bits of a 32-bit address,
// l1Mask 3). oaMask keeps an entry's output address bits.
func (as *AddressSpace) walkLongDescriptors(va, table uint64, start int, l1Mask, oaMask uint64) (walkResult, error) {
	var buf [8]byte
	for level := start; level <= 3; level++ {
		shift := uint(39 - 9*level) // 39, 30, 21, 12
		idx := va >> shift & 0x1ff
		if level == 1 {
			idx = va >> shift & l1Mask
		}
		addr := table + idx*8
		if _, err := as.Mem.ReadAt(buf[:], int64(addr)); err != nil {
			return walkResult{}, &TranslationError{VA: va, Level: level, Table: table, Err: err}
		}
		e := binary.LittleEndian.Uint64(buf[:])
		if e&armDescValid == 0 {
			return walkResult{}, &TranslationError{VA: va, Level: level, Table: table, Entry: e, Err: ErrNotMapped}
		}
		if level == 3 {
			if e&armDescTable == 0 {
				// Bits 1:0 = 01 at level 3 are reserved: the MMU faults.
				return walkResult{}, &TranslationError{VA: va, Level: level, Table: table, Entry: e, Err: ErrReservedBit}
			}
			return walkResult{base: e & oaMask, size: PageSize4K, leafAddr: addr, leaf: e}, nil
		}
		if e&armDescTable == 0 {
			if level == 0 {
				// No level-0 blocks with the 4K granule (without FEAT_LPA2).
				return walkResult{}, &TranslationError{VA: va, Level: level, Table: table, Entry: e, Err: ErrReservedBit}
			}
			size := uint64(1) << shift
			return walkResult{base: e & oaMask &^ (size - 1), size: size, leafAddr: addr, leaf: e}, nil
		}
		table = e & oaMask
	}
	panic("unreachable")
}
