package linux

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// Kernel-image virtual region on x86-64: __START_KERNEL_map and the 1 GiB
// KASLR may place the image in (KERNEL_IMAGE_SIZE).
const (
	startKernelMap  = 0xffffffff80000000
	kernelImageSize = 1 << 30
	// The physical and virtual load addresses are multiples of
	// CONFIG_PHYSICAL_ALIGN, which is at least 2 MiB on x86-64.
	kernelAlign = 2 << 20
	cr4LA57     = 1 << 12
	// ptiUserBit is set in the user half of a PTI page-table pair.
	ptiUserBit = 1 << 12
)

// ErrKASLR means the kernel's load addresses could not be found or verified.
var ErrKASLR = errors.New("linux: cannot locate the kernel in guest memory")

// Registers are the vCPU registers Locate uses; zero values mean unknown.
type Registers struct {
	CR3, CR4 uint64
	// TTBR1 and TCR are TTBR1_EL1 and TCR_EL1 of an arm64 guest.
	TTBR1, TCR uint64
}

// Kernel is a profiled kernel located in guest memory.
type Kernel struct {
	Profile *Profile
	Mem     vmi.PhysicalMemory
	// AS is the kernel's address space (the kernel half of the page tables
	// Locate verified).
	AS *vmi.AddressSpace
	// PhysBase is the physical address of _text.
	PhysBase uint64
	// Slide is added to link-time addresses to get run-time addresses.
	Slide uint64
}

// Locate finds where KASLR placed the kernel described by prof: the
// physical address of _text (the banner's bytes in physical memory, at
// _text's 2 MiB alignment), and the virtual slide (where the page tables
// rooted at regs.CR3 map _text). With no CR3 it uses the kernel's own
// init_top_pgt. The result is verified by reading linux_banner through the
// page tables; failures wrap ErrKASLR.
func Locate(mem vmi.PhysicalMemory, prof *Profile, regs Registers) (*Kernel, error) {
	if prof.IsARM64() {
		return locateARM64(mem, prof, regs)
	}
	if prof.IsARMHF() {
		return locateARMHF(mem, prof, regs)
	}
	syms, err := prof.SymbolList("_text", "linux_banner")
	if err != nil {
		return nil, err
	}
	text, bannerVA := syms[0], syms[1]
	banner := []byte(prof.Banner)
	if len(banner) == 0 || bannerVA < text {
		return nil, fmt.Errorf("%w: profile has no usable banner", ErrKASLR)
	}
	bannerOff := bannerVA - text
	var physCands []uint64
	buf := make([]byte, len(banner))
	for _, r := range mem.Ranges() {
		for pa := (r.Start + kernelAlign - 1) &^ (kernelAlign - 1); pa+bannerOff+uint64(len(banner)) <= r.End && pa >= r.Start; pa += kernelAlign {
			if _, err := mem.ReadAt(buf, int64(pa+bannerOff)); err == nil && bytes.Equal(buf, banner) {
				physCands = append(physCands, pa)
			}
		}
	}
	if len(physCands) == 0 {
		return nil, fmt.Errorf("%w: banner %.40q not found at any 2 MiB-aligned load address", ErrKASLR, prof.Banner)
	}
	var lastErr error
	for _, phys := range physCands {
		for _, as := range candidateSpaces(mem, prof, regs, phys, text) {
			k, err := findSlide(as, prof, phys, text, bannerVA, banner)
			if err == nil {
				k.AS = kernelRoot(k, prof, text, bannerVA, banner)
				k.AS.Linear = directMapWindow(k)
				return k, nil
			}
			lastErr = err
		}
	}
	return nil, lastErr
}

// kernelRoot returns the address space the kernel view keeps: rooted at
// init_top_pgt when that maps the kernel (it lives as long as the kernel;
// the vCPU's CR3 used to locate KASLR may belong to a process that exits,
// and its freed page tables then map nothing or garbage), else k.AS.
func kernelRoot(k *Kernel, prof *Profile, text, bannerVA uint64, banner []byte) *vmi.AddressSpace {
	pgt, ok := prof.Symbols.Lookup("init_top_pgt")
	if !ok || pgt <= text {
		return k.AS
	}
	as := &vmi.AddressSpace{Mem: k.Mem, CR3: k.PhysBase + (pgt - text), LA57: k.AS.LA57}
	got := make([]byte, len(banner))
	if _, err := as.ReadVirtual(bannerVA+k.Slide, got); err != nil || !bytes.Equal(got, banner) {
		return k.AS
	}
	as.Cache = vmi.NewTranslationCache()
	return as
}

// directMapWindow returns Linux's direct map of physical memory
// (page_offset_base: every RAM page at base+pa) as a linear window, so that
// reads of slab objects — tasks, creds, mm, dentries — cost no page-table
// walk. It is used only when page_offset_base is 1 GiB-aligned and the
// page tables agree with it at the first, middle and last page of every RAM
// range; otherwise nil, and reads walk the tables as before.
func directMapWindow(k *Kernel) *vmi.LinearWindow {
	va, err := k.Addr("page_offset_base")
	if err != nil {
		return nil
	}
	base, err := vmi.ReadU64(k.AS, va)
	if err != nil || !isKernelPtr(base) || base&(vmi.PageSize1G-1) != 0 {
		return nil
	}
	ranges := k.Mem.Ranges()
	if len(ranges) == 0 {
		return nil
	}
	size := (ranges[len(ranges)-1].End + vmi.PageSize1G - 1) &^ uint64(vmi.PageSize1G-1)
	if size == 0 || base+size < base {
		return nil
	}
	probe := &vmi.AddressSpace{Mem: k.Mem, CR3: k.AS.CR3, LA57: k.AS.LA57}
	agreed := 0
	for _, r := range ranges {
		if r.End <= r.Start {
			continue
		}
		for _, pa := range []uint64{r.Start &^ 0xfff, (r.Start + (r.End-r.Start)/2) &^ 0xfff, (r.End - 1) &^ 0xfff} {
			got, _, err := probe.Translate(base + pa)
			if err != nil {
				continue // a page the direct map leaves out
			}
			if got != pa {
				return nil
			}
			agreed++
		}
	}
	if agreed == 0 {
		return nil
	}
	return &vmi.LinearWindow{Base: base, Size: size}
}

// candidateSpaces lists the address spaces to search: the given CR3, its
// kernel half under PTI, and init_top_pgt; 4- or 5-level as CR4 says, both
// when CR4 is unknown.
func candidateSpaces(mem vmi.PhysicalMemory, prof *Profile, regs Registers, phys, text uint64) []*vmi.AddressSpace {
	var roots []uint64
	if regs.CR3 != 0 {
		roots = append(roots, regs.CR3, regs.CR3&^ptiUserBit)
	}
	if pgt, ok := prof.Symbols.Lookup("init_top_pgt"); ok && pgt > text {
		roots = append(roots, phys+(pgt-text))
	}
	modes := []bool{false, true}
	if regs.CR4 != 0 || regs.CR3 != 0 {
		modes = []bool{regs.CR4&cr4LA57 != 0}
	}
	var out []*vmi.AddressSpace
	seen := map[[2]uint64]bool{}
	for _, r := range roots {
		for _, la57 := range modes {
			k := [2]uint64{r &^ 0xfff, map[bool]uint64{false: 4, true: 5}[la57]}
			if seen[k] {
				continue
			}
			seen[k] = true
			out = append(out, &vmi.AddressSpace{Mem: mem, CR3: r, LA57: la57})
		}
	}
	return out
}

func findSlide(as *vmi.AddressSpace, prof *Profile, phys, text, bannerVA uint64, banner []byte) (*Kernel, error) {
	for va := uint64(startKernelMap); va < startKernelMap+kernelImageSize; va += kernelAlign {
		pa, _, err := as.Translate(va)
		if err != nil || pa != phys {
			continue
		}
		slide := va - text
		got := make([]byte, len(banner))
		if _, err := as.ReadVirtual(bannerVA+slide, got); err != nil {
			return nil, fmt.Errorf("%w: _text maps at %#x but linux_banner does not read back: %v", ErrKASLR, va, err)
		}
		if !bytes.Equal(got, banner) {
			return nil, fmt.Errorf("%w: _text maps at %#x but linux_banner reads back %.40q", ErrKASLR, va, got)
		}
		as.Cache = vmi.NewTranslationCache()
		return &Kernel{Profile: prof, Mem: as.Mem, AS: as, PhysBase: phys, Slide: slide}, nil
	}
	return nil, fmt.Errorf("%w: no page of the kernel-image region maps _text (physical %#x) with CR3 %#x", ErrKASLR, phys, as.CR3)
}

// Addr returns a symbol's run-time virtual address.
func (k *Kernel) Addr(name string) (uint64, error) {
	a, err := k.Profile.Symbol(name)
	if err != nil {
		return 0, err
	}
	return a + k.Slide, nil
}

// SymbolAt returns the symbol containing run-time address va and the offset.
func (k *Kernel) SymbolAt(va uint64) (Symbol, uint64, bool) {
	return k.Profile.Symbols.Symbol(va - k.Slide)
}

// Banner reads linux_banner from guest memory.
func (k *Kernel) Banner() (string, error) {
	va, err := k.Addr("linux_banner")
	if err != nil {
		return "", err
	}
	return vmi.ReadCString(k.AS, va, 1024)
}
