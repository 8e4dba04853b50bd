package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gatevisor/gatevisor/internal/armimage"
	"github.com/gatevisor/gatevisor/internal/vmi"
)

// 32-bit ARM (armhf) kernels: the zImage's payload (ExtractZImage) is the
// kernel Image linked at a fixed address (_text; no relocation, no KASLR
// on 32-bit ARM), with 4-byte pointers. Debian's armmp kernel has no
// .BTF (CONFIG_DEBUG_INFO_BTF is off for armhf) and its kallsyms holds
// text symbols only (no KALLSYMS_ALL), so a profile needs a symbol table
// (ProfileOptions.Symbols: an ISF with the kernel's structure layouts and
// its symbols, such as the one kit build --arch armhf writes from Debian's
// -dbg package). The table must be of the same build: its banner is the
// image's, and its text symbols are where kallsyms puts them
// (ISF.CheckAgainst); its data symbols (init_task, modules, init_mm...)
// are then added to kallsyms.

// ArchARMHF is Profile.Arch's value for a 32-bit ARM kernel.
const ArchARMHF = "armhf"

// ErrARMHFNoSymbols says why an armhf kernel cannot be profiled alone.
var ErrARMHFNoSymbols = errors.New("linux: 32-bit ARM kernel without .BTF and without data symbols in kallsyms: give its symbol table (run --symbols FILE.json or a vmlinux with DWARF; kit build --arch armhf writes one into the kit)")

// IsARMHF reports whether p is a 32-bit ARM kernel's profile.
func (p *Profile) IsARMHF() bool { return p.Arch == ArchARMHF }

// Is32 reports whether the profiled kernel has 4-byte pointers.
func (p *Profile) Is32() bool { return p.IsARMHF() }

// newARMHFProfile builds the profile of a zImage.
func newARMHFProfile(raw []byte, opts ProfileOptions) (*Profile, error) {
	img, comp, err := ExtractZImage(raw)
	if err != nil {
		return nil, err
	}
	p := &Profile{Arch: ArchARMHF, Compression: comp}
	ks, err := ParseKallsyms(img)
	if err != nil {
		return nil, err
	}
	if p.ISF = opts.Symbols; p.ISF == nil {
		return nil, ErrARMHFNoSymbols
	}
	if p.ISF.ptrSize != 4 {
		return nil, fmt.Errorf("linux: the symbol table has %d-byte pointers; a 32-bit ARM kernel's are 4", p.ISF.ptrSize)
	}
	// Text symbols first: the table must agree with kallsyms before any
	// of its symbols is taken.
	if err := p.ISF.CheckAgainst("", ks); err != nil {
		return nil, err
	}
	extra := make([]Symbol, 0, len(p.ISF.symbols))
	for name, a := range p.ISF.symbols {
		if a>>32 == 0 && a != 0 && !strings.HasPrefix(name, "$") {
			extra = append(extra, Symbol{Name: name, Addr: a, Type: 'D'})
		}
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i].Name < extra[j].Name })
	if p.Symbols, err = ks.withSymbols(extra); err != nil {
		return nil, err
	}
	base, err := p.Symbol("_text")
	if err != nil {
		return nil, fmt.Errorf("linux: the symbol table has no _text: %w", err)
	}
	addr, err := p.Symbol("linux_banner")
	if err != nil {
		return nil, err
	}
	if _, ok := imageAt(img, base, addr, 1); !ok {
		return nil, fmt.Errorf("linux: linux_banner at %#x is outside the image", addr)
	}
	b := img[addr-base : min(uint64(len(img)), addr-base+1024)]
	end := bytes.IndexByte(b, 0)
	if end < 0 || !bytes.HasPrefix(b, []byte("Linux version ")) {
		return nil, fmt.Errorf("linux: linux_banner at %#x does not hold a banner: the symbol table's _text (%#x) is not this image's", addr, base)
	}
	p.Banner = string(b[:end])
	if f := bytes.Fields(b[:end]); len(f) >= 3 {
		p.Release = string(f[2])
	}
	p.BuildID = arm64BuildID(img) // the same notes layout: vDSO notes first, then vmlinux's GNU and Linux notes
	if err := p.ISF.CheckAgainst(p.Banner, p.Symbols); err != nil {
		return nil, err
	}
	return p, nil
}

// newARMHFImageFacts reads sys_call_table's slots from the image: on
// 32-bit ARM, vector_swi indexes the table itself (no wrappers, no
// dispatch code), every slot holding a handler's address (sys_*,
// sys_ni_syscall for the holes, a few assembly wrappers). The table's
// length is the distance to the next symbol.
func newARMHFImageFacts(raw []byte, prof *Profile) (*ImageFacts, error) {
	img, _, err := ExtractZImage(raw)
	if err != nil {
		return nil, err
	}
	base, err := prof.Symbol("_text")
	if err != nil {
		return nil, err
	}
	facts := &ImageFacts{Banner: prof.Banner}
	table, err := checkImageBanner(img, base, prof)
	if err != nil {
		return nil, err
	}
	_, size, ok := prof.Symbols.symbolSize(table)
	if !ok || size < 4 {
		return nil, fmt.Errorf("linux: sys_call_table at %#x has no size (no symbol after it)", table)
	}
	for i := uint64(0); i < min(size/4, maxSyscalls); i++ {
		b, ok := imageAt(img, base, table+4*i, 4)
		if !ok {
			return nil, fmt.Errorf("linux: sys_call_table slot %d is outside the image", i)
		}
		v := uint64(binary.LittleEndian.Uint32(b))
		if s, off, ok := prof.Symbols.Symbol(v); !ok || off != 0 || s.Type == 'D' {
			return nil, fmt.Errorf("linux: the image's sys_call_table slot %d holds %#x, not a function", i, v)
		}
		facts.SyscallTable = append(facts.SyscallTable, v)
	}
	return facts, nil
}

// armhfImageAlign is the physical alignment searched for the image: the
// kernel's own (the Image runs at PHYS_OFFSET + TEXT_OFFSET, page aligned).
const armhfImageAlign = 4 << 10

// locateARMHF is Locate for a 32-bit ARM profile. The kernel's lowmem is
// mapped linearly (VA = PA - PHYS_OFFSET + PAGE_OFFSET), so the banner's
// physical address gives the one offset between the two; init_mm.pgd
// (swapper_pg_dir, read by physical address) is the root of the kernel's
// tables, whose format is found by reading linux_banner back through
// them: the short-descriptor format (CONFIG_ARM_LPAE off, TTBCR.N 0) or
// LPAE's long descriptors (the 4-entry first-level table covers all 4
// GiB).
func locateARMHF(mem vmi.PhysicalMemory, prof *Profile, regs Registers) (*Kernel, error) {
	syms, err := prof.SymbolList("_text", "linux_banner", "init_mm")
	if err != nil {
		return nil, err
	}
	text, bannerVA, initMM := syms[0], syms[1], syms[2]
	pgdOff, err := prof.FieldOffset("mm_struct.pgd")
	if err != nil {
		return nil, err
	}
	banner := []byte(prof.Banner)
	if len(banner) == 0 || bannerVA < text || initMM < text {
		return nil, fmt.Errorf("%w: profile has no usable banner", ErrKASLR)
	}
	buf := make([]byte, len(banner))
	lastErr := fmt.Errorf("%w: banner %.40q not found in physical memory", ErrKASLR, prof.Banner)
	off := bannerVA - text
	for _, r := range mem.Ranges() {
		for pa := (r.Start + armhfImageAlign - 1) &^ (armhfImageAlign - 1); pa >= r.Start && pa+off+uint64(len(banner)) <= r.End; pa += armhfImageAlign {
			if _, err := mem.ReadAt(buf, int64(pa+off)); err != nil || !bytes.Equal(buf, banner) {
				continue
			}
			k, err := armhfAt(mem, prof, regs, pa, text, bannerVA, initMM+pgdOff, banner)
			if err == nil {
				return k, nil
			}
			lastErr = err
		}
	}
	return nil, lastErr
}

// armhfAt tries the image at physical address phys.
func armhfAt(mem vmi.PhysicalMemory, prof *Profile, regs Registers, phys, text, bannerVA, pgdVA uint64, banner []byte) (*Kernel, error) {
	delta := phys - text // PA = VA + delta in the linear map (mod 2^64)
	var b [4]byte
	if _, err := mem.ReadAt(b[:], int64(pgdVA+delta)); err != nil {
		return nil, fmt.Errorf("%w: read init_mm.pgd: %v", ErrKASLR, err)
	}
	pgd := uint64(binary.LittleEndian.Uint32(b[:])) + delta
	if pgd>>40 != 0 {
		return nil, fmt.Errorf("%w: init_mm.pgd %#x is not in the linear map", ErrKASLR, pgd-delta)
	}
	cands := []*vmi.AddressSpace{
		{Mem: mem, Paging: vmi.PagingARMv7, CR3: pgd},
		{Mem: mem, Paging: vmi.PagingARMLPAE, CR3: pgd, TTBCR: 1 << 31},
	}
	if regs.TCR != 0 { // TTBCR from the gdbstub: its format only
		if vmi.PagingOfTTBCR(regs.TCR) == vmi.PagingARMLPAE {
			cands = cands[1:]
		} else {
			cands = cands[:1]
		}
	}
	got := make([]byte, len(banner))
	var lastErr error
	for _, as := range cands {
		if _, err := as.ReadVirtual(bannerVA, got); err != nil || !bytes.Equal(got, banner) {
			lastErr = fmt.Errorf("%w: linux_banner does not read back through the tables at %#x (%v): %v", ErrKASLR, pgd, as.Paging, err)
			continue
		}
		// And the physical image agrees with the tables on _text.
		if pa, _, err := as.Translate(text); err != nil || pa != phys {
			lastErr = fmt.Errorf("%w: the tables map _text to %#x, the banner puts it at %#x", ErrKASLR, pa, phys)
			continue
		}
		// Translate does not cache ARMv7 walks; callers invalidate it.
		as.Cache = vmi.NewTranslationCache()
		return &Kernel{Profile: prof, Mem: mem, AS: as, PhysBase: phys}, nil
	}
	return nil, lastErr
}

// armhfLinear returns the physical address of a lowmem (linear map)
// address: PA = VA - _text + PhysBase.
func (k *Kernel) armhfLinear(va uint64) uint64 {
	text, _ := k.Profile.Symbol("_text")
	return va - text + k.PhysBase
}

// isZImage reports whether img is a 32-bit ARM zImage.
func isZImage(img []byte) bool { return armimage.IsZImage(img) }

// regionARMHF is region for a 32-bit ARM kernel (Documentation/arch/arm/
// memory.rst): user space below the module area, which is the 16 MiB
// below PAGE_OFFSET; the kernel image; the rest of kernel space (lowmem,
// vmalloc, fixmap, vectors). PAGE_OFFSET is _text's 256 MiB boundary
// (0xC0000000 with VMSPLIT_3G; 2G and 1G splits are 256 MiB-aligned too).
func (k *Kernel) regionARMHF(va uint64) string {
	text, _ := k.Profile.Symbol("_text")
	pageOffset := text &^ (1<<28 - 1)
	switch {
	case va < pageOffset-16<<20:
		return "user space"
	case va < pageOffset:
		return "module space"
	case k.inCoreText(va):
		if s := k.symbolName(va); s != "" {
			return "the kernel image (" + s + ")"
		}
		return "the kernel image"
	}
	return "kernel memory outside the kernel text"
}
