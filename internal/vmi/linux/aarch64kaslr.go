package linux

import (
	"bytes"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// arm64 kernels: where KASLR put the image, found from memory alone.
//
// The physical load address is where the banner's bytes are (the Image
// is placed at a 64 KiB-aligned address at least: EFI's MIN_KIMG_ALIGN,
// QEMU's -kernel at RAM's start plus text_offset). The image's variables
// then read by physical address: kimage_voffset (head.S sets it to
// VA(_text) - PA(_text)) gives the virtual slide, and init_mm.pgd (the
// profile has init_mm from init_task's initializer) is swapper_pg_dir,
// TTBR1_EL1's table. The result is
// verified by reading linux_banner back through those tables. A
// TTBR1_EL1 from the gdbstub is tried first when given; TCR_EL1, when
// given, must describe the 4 KiB-granule 48-bit regime vmi walks. Boot's
// init_pg_dir is never taken as the root.

// arm64ImageAlign is the physical alignment searched for the image.
const arm64ImageAlign = 64 << 10

// locateARM64 is Locate for an arm64 profile.
func locateARM64(mem vmi.PhysicalMemory, prof *Profile, regs Registers) (*Kernel, error) {
	if err := vmi.CheckTCR(regs.TCR); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKASLR, err)
	}
	syms, err := prof.SymbolList("_text", "linux_banner", "kimage_voffset", "init_mm")
	if err != nil {
		return nil, err
	}
	text, bannerVA, voffVA, initMM := syms[0], syms[1], syms[2], syms[3]
	pgdOff, err := prof.FieldOffset("mm_struct.pgd")
	if err != nil {
		return nil, err
	}
	if initMM < text {
		return nil, fmt.Errorf("%w: init_mm %#x below _text", ErrKASLR, initMM)
	}
	banner := []byte(prof.Banner)
	if len(banner) == 0 || bannerVA < text {
		return nil, fmt.Errorf("%w: profile has no usable banner", ErrKASLR)
	}
	bannerOff := bannerVA - text
	buf := make([]byte, len(banner))
	lastErr := fmt.Errorf("%w: banner %.40q not found at any 64 KiB-aligned load address", ErrKASLR, prof.Banner)
	for _, r := range mem.Ranges() {
		for pa := (r.Start + arm64ImageAlign - 1) &^ (arm64ImageAlign - 1); pa >= r.Start && pa+bannerOff+uint64(len(banner)) <= r.End; pa += arm64ImageAlign {
			if _, err := mem.ReadAt(buf, int64(pa+bannerOff)); err != nil || !bytes.Equal(buf, banner) {
				continue
			}
			k, err := arm64At(mem, regs, prof, pa, text, bannerVA, voffVA, initMM, pgdOff, banner)
			if err == nil {
				return k, nil
			}
			lastErr = err
		}
	}
	return nil, lastErr
}

// arm64At tries the image at physical address phys.
func arm64At(mem vmi.PhysicalMemory, regs Registers, prof *Profile, phys, text, bannerVA, voffVA, initMM, pgdOff uint64, banner []byte) (*Kernel, error) {
	// Physical reads of the image's own variables (the image is
	// physically contiguous from _text).
	imgU64 := func(linkVA uint64) (uint64, error) {
		return readPhysU64(mem, phys+(linkVA-text))
	}
	voff, err := imgU64(voffVA)
	if err != nil {
		return nil, fmt.Errorf("%w: read kimage_voffset: %v", ErrKASLR, err)
	}
	va := phys + voff
	if va>>48 != 0xffff || va&0xffff != 0 {
		return nil, fmt.Errorf("%w: kimage_voffset %#x puts _text at %#x", ErrKASLR, voff, va)
	}
	slide := va - text
	var roots []uint64
	if regs.TTBR1 != 0 {
		roots = append(roots, regs.TTBR1)
	}
	// init_mm.pgd is swapper_pg_dir once paging_init ran (the image's
	// own initializer names init_pg_dir, the early tables): a run-time
	// address in the image, so its PA is VA - kimage_voffset.
	if pgd, err := imgU64(initMM + pgdOff); err == nil && pgd >= voff && pgd-voff >= phys {
		roots = append(roots, pgd-voff)
	}
	// Until paging_init both name init_pg_dir, the boot-time tables the
	// linker places after BSS, which free_initmem frees before init runs:
	// a view of the kernel through them (the kernel gate's, located while
	// the kernel boots) would read freed memory from then on (seen: the
	// boot watchpoint's read of system_state walked a level-0 table full
	// of code). swapper_pg_dir, the tables the kernel keeps, lies before
	// the init section: a root at or above __init_begin is not taken, and
	// the kernel is not located until paging_init switched to
	// swapper_pg_dir (the caller tries again).
	if ib, err := prof.Symbol("__init_begin"); err == nil && ib > text {
		initPA := phys + (ib - text)
		kept := roots[:0]
		for _, r := range roots {
			if r < phys || r >= initPA {
				continue
			}
			kept = append(kept, r)
		}
		if len(kept) == 0 && len(roots) > 0 {
			return nil, fmt.Errorf("%w: the kernel still runs on its boot-time page tables at %#x (init_pg_dir, at or above __init_begin's %#x): paging_init has not switched to swapper_pg_dir yet", ErrKASLR, roots[0], initPA)
		}
		roots = kept
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%w: no TTBR1_EL1 and no init_mm.pgd in the image at %#x", ErrKASLR, phys)
	}
	got := make([]byte, len(banner))
	var lastErr error
	for _, root := range roots {
		as := &vmi.AddressSpace{Mem: mem, Paging: vmi.PagingARM64, TTBR1: root}
		if _, err := as.ReadVirtual(bannerVA+slide, got); err != nil {
			lastErr = fmt.Errorf("%w: _text at %#x (physical %#x) but linux_banner does not read back through the tables at %#x: %v", ErrKASLR, va, phys, root, err)
			continue
		}
		if !bytes.Equal(got, banner) {
			lastErr = fmt.Errorf("%w: _text at %#x but linux_banner reads back %.40q", ErrKASLR, va, got)
			continue
		}
		as.Cache = vmi.NewTranslationCache()
		return &Kernel{Profile: prof, Mem: mem, AS: as, PhysBase: phys, Slide: slide}, nil
	}
	return nil, lastErr
}

func readPhysU64(mem vmi.PhysicalMemory, pa uint64) (uint64, error) {
	var b [8]byte
	if _, err := mem.ReadAt(b[:], int64(pa)); err != nil {
		return 0, err
	}
	return le.Uint64(b[:]), nil
}

// arm64ModulesSpan is how far below the kernel image module_alloc places
// modules with ARM64_MODULE_PLTS (2 GiB; 128 MiB without PLTs, inside it).
const arm64ModulesSpan = 2 << 30

// arm64ModuleArea returns the virtual range module_alloc allocates from
// on arm64: the 2 GiB below the kernel image's run-time _text (6.1's
// module_alloc_base is randomized within it), clipped to the upper half.
func (k *Kernel) arm64ModuleArea() (uint64, uint64, error) {
	text, err := k.Addr("_text")
	if err != nil {
		return 0, 0, err
	}
	const vmallocStart = 0xffff800000000000 // _PAGE_END(48): modules and vmalloc begin here
	lo := uint64(vmallocStart)
	if text-vmallocStart > arm64ModulesSpan {
		lo = text - arm64ModulesSpan
	}
	return lo, text, nil
}

// mappedPagesARM64 is mappedPages for AArch64 stage-1 tables (the upper
// half, from TTBR1): fn gets each valid page or block overlapping
// [lo, hi), clipped, in address order. Each table is read once; the range
// bounds the work.
func mappedPagesARM64(as *vmi.AddressSpace, lo, hi uint64, fn func(va, size uint64) error) error {
	const (
		valid    = 1
		table    = 2
		addrMask = 0x0000_ffff_ffff_f000
	)
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, vmi.PageSize4K)
	}
	var walk func(tablePA uint64, level int, base uint64) error
	walk = func(tablePA uint64, level int, base uint64) error {
		t := bufs[level]
		if _, err := as.Mem.ReadAt(t, int64(tablePA)); err != nil {
			return nil // an unreadable table maps nothing we can read
		}
		shift := uint(39 - 9*level)
		span := uint64(1) << shift
		for i := uint64(0); i < 512; i++ {
			va := base + i*span
			if va+span-1 < lo || va >= hi {
				continue
			}
			e := le.Uint64(t[8*i:])
			if e&valid == 0 {
				continue
			}
			switch {
			case level == 3 && e&table != 0, level == 1 && e&table == 0, level == 2 && e&table == 0:
				s, end := max(va, lo), min(va+span, hi)
				if err := fn(s, end-s); err != nil {
					return err
				}
			case level < 3 && e&table != 0:
				if err := walk(e&addrMask, level+1, va); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(as.TTBR1&addrMask, 0, 0xffff000000000000)
}
