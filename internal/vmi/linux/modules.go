package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// Module is one loadable kernel module.
type Module struct {
	// Addr is the struct module's kernel virtual address.
	Addr uint64 `json:"addr"`
	Name string `json:"name"`
	// Base and Size describe the module's core layout: its text, read-only
	// data and data (from 6.4, the text region's base and the core regions'
	// total size).
	Base uint64 `json:"base"`
	Size uint64 `json:"size"`
	// State is live, coming, going or unformed.
	State string `json:"state"`
}

// The module area on x86-64 (Documentation/x86/x86_64/mm.rst): from
// MODULES_VADDR, just past the 1 GiB kernel image region, to MODULES_END.
// It is the same with 4- and 5-level paging.
const (
	modulesVAddr = startKernelMap + kernelImageSize // 0xffffffffc0000000
	modulesEnd   = 0xffffffffff000000
	// maxModuleSize bounds one module's core layout.
	maxModuleSize = 256 << 20
	// maxScanBytes bounds the bytes ScanModules reads.
	maxScanBytes = 512 << 20
	// listPoison1 and listPoison2 are what list_del leaves in a removed
	// node (LIST_POISON1/2 with CONFIG_ILLEGAL_POINTER_VALUE 0xdead000000000000).
	listPoison1 = 0xdead000000000100
	listPoison2 = 0xdead000000000122
)

// moduleStates names enum module_state's values.
var moduleStates = [...]string{"live", "coming", "going", "unformed"}

// moduleLayout holds the BTF offsets the module walks use.
type moduleLayout struct {
	err error

	state, list, name, nameLen, mkobjMod uint64
	// Core regions: base and size offsets of each (one for core_layout,
	// several for 6.4's mem[]).
	coreBase, coreSize []uint64
	size               uint64 // sizeof(struct module)
	block              span   // bytes of struct module one read covers

	// sysfs: module_kset -> kset.list of kobject.entry in module_kobject.kobj.
	ksetList, kobjEntry, mkKobj, mkMod uint64
}

// layoutForModules returns p's module layout, computed on first use (see
// profileCache.modules).
func layoutForModules(p *Profile) *moduleLayout {
	c := p.caches()
	c.modulesOnce.Do(func() { c.modules = newModuleLayout(p) })
	return c.modules
}

func newModuleLayout(p *Profile) *moduleLayout {
	l := &moduleLayout{}
	f := &fields{p: p}
	l.state = f.off("module.state")
	l.list = f.off("module.list")
	l.name = f.off("module.name")
	l.nameLen, _ = f.arrayLen("module.name")
	l.mkKobj = f.off("module_kobject.kobj")
	l.mkMod = f.off("module_kobject.mod")
	l.mkobjMod = f.off("module.mkobj") + l.mkMod
	l.ksetList = f.off("kset.list")
	l.kobjEntry = f.off("kobject.entry")
	l.size = f.size("module")
	if f.has("module.core_layout") {
		core := f.off("module.core_layout")
		l.coreBase = []uint64{core + f.off("module_layout.base")}
		l.coreSize = []uint64{core + f.off("module_layout.size")}
		if f.has("module.data_layout") {
			// CONFIG_ARCH_WANTS_MODULES_DATA_IN_VMALLOC (6.0-6.3): the
			// data, struct module among it, has a layout of its own.
			data := f.off("module.data_layout")
			l.coreBase = append(l.coreBase, data+f.off("module_layout.base"))
			l.coreSize = append(l.coreSize, data+f.off("module_layout.size"))
		}
	} else {
		// Linux 6.4+: mem[MOD_TEXT], mem[MOD_DATA], mem[MOD_RODATA],
		// mem[MOD_RO_AFTER_INIT] are the core regions.
		mem := f.off("module.mem")
		n, elem := f.arrayLen("module.mem")
		base, size := f.off("module_memory.base"), f.off("module_memory.size")
		for i := uint64(0); i < min(n, 4); i++ {
			l.coreBase = append(l.coreBase, mem+i*elem+base)
			l.coreSize = append(l.coreSize, mem+i*elem+size)
		}
	}
	if f.err == nil && (l.nameLen == 0 || l.nameLen > 256 || len(l.coreBase) == 0 || l.size == 0 || l.size > 64<<10) {
		f.err = fmt.Errorf("%w: implausible struct module layout", ErrNoField)
	}
	if f.err != nil {
		l.err = fmt.Errorf("linux: module layout: %w", f.err)
		return l
	}
	offs := []uint64{l.state, l.list, l.list + 8, l.name + l.nameLen - 8, l.mkobjMod}
	offs = append(offs, l.coreBase...)
	offs = append(offs, l.coreSize...)
	l.block = spanOf(offs...)
	return l
}

// moduleIdentity decodes what every word size shares in a struct
// module's block b at addr: its state and its name, validated.
func (l *moduleLayout) moduleIdentity(b []byte, addr uint64) (Module, error) {
	at := func(off uint64) []byte { return b[off-l.block.lo:] }
	st := le.Uint32(at(l.state))
	if st >= uint32(len(moduleStates)) {
		return Module{}, fmt.Errorf("%w: module %#x state %d", ErrInconsistent, addr, st)
	}
	nb := at(l.name)[:l.nameLen]
	n := indexByte(nb, 0)
	if n <= 0 {
		return Module{}, fmt.Errorf("%w: module %#x has no NUL-terminated name", ErrInconsistent, addr)
	}
	for _, c := range nb[:n] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return Module{}, fmt.Errorf("%w: module %#x name %q", ErrInconsistent, addr, nb[:n])
		}
	}
	return Module{Addr: addr, Name: string(nb[:n]), State: moduleStates[st]}, nil
}

// parseModule decodes and validates the struct module whose block (l.block)
// is b, at address addr. strict adds the checks a memory scan needs: the
// structure lies inside its own core layout, its list pointers are kernel
// pointers or list_del's poison, and its kobject points back to it.
func (l *moduleLayout) parseModule(b []byte, addr uint64, strict bool, area moduleArea) (Module, error) {
	at := func(off uint64) []byte { return b[off-l.block.lo:] }
	m, err := l.moduleIdentity(b, addr)
	if err != nil {
		return Module{}, err
	}
	m.Base = le.Uint64(at(l.coreBase[0]))
	inside := false
	for i := range l.coreBase {
		base, size := le.Uint64(at(l.coreBase[i])), uint64(le.Uint32(at(l.coreSize[i])))
		m.Size += size
		if base != 0 && addr >= base && addr-base < size {
			inside = true
		}
	}
	if m.Size > maxModuleSize {
		return Module{}, fmt.Errorf("%w: module %#x (%s) core size %d", ErrInconsistent, addr, m.Name, m.Size)
	}
	if !strict {
		return m, nil
	}
	if !inside || m.Base < area.lo || m.Base >= area.hi {
		return Module{}, fmt.Errorf("%w: module %#x is not inside its core layout", ErrInconsistent, addr)
	}
	next, prev := le.Uint64(at(l.list)), le.Uint64(at(l.list+8))
	sane := func(p uint64) bool { return isKernelPtr(p) && p&7 == 0 }
	poisoned := next == listPoison1 && prev == listPoison2
	if !poisoned && !(sane(next) && sane(prev)) {
		return Module{}, fmt.Errorf("%w: module %#x list pointers %#x %#x", ErrInconsistent, addr, next, prev)
	}
	if mk := le.Uint64(at(l.mkobjMod)); mk != addr && !(mk == 0 && (m.State == "coming" || m.State == "unformed")) {
		return Module{}, fmt.Errorf("%w: module %#x kobject points to %#x", ErrInconsistent, addr, mk)
	}
	return m, nil
}

// moduleArea is the virtual range modules are allocated from.
type moduleArea struct{ lo, hi uint64 }

// x86ModuleArea is x86-64's: MODULES_VADDR to MODULES_END.
var x86ModuleArea = moduleArea{modulesVAddr, modulesEnd}

// readModule reads and validates the struct module at addr.
func (k *Kernel) readModule(l *moduleLayout, addr uint64, buf []byte, strict bool) (Module, error) {
	if !isKernelPtr(addr) {
		return Module{}, fmt.Errorf("%w: module pointer %#x is not a kernel address", ErrInconsistent, addr)
	}
	if _, err := k.AS.ReadVirtual(addr+l.block.lo, buf); err != nil {
		return Module{}, fmt.Errorf("linux: read module at %#x: %w", addr, err)
	}
	return l.parseModule(buf, addr, strict, x86ModuleArea)
}

// Modules returns the modules on the kernel's modules list, in list order
// (most recently loaded first). Entries that do not validate are skipped and
// counted in an *IncompleteError.
func (k *Kernel) Modules() ([]Module, error) {
	if k.Profile.Is32() {
		return k.modules32()
	}
	l := layoutForModules(k.Profile)
	if l.err != nil {
		return nil, l.err
	}
	head, err := k.Addr("modules")
	if err != nil {
		return nil, err
	}
	buf := make([]byte, l.block.len())
	tl := &tally{view: "modules"}
	var out []Module
	tl.stop = vmi.WalkList(k.AS, head, MaxModules, func(node uint64) error {
		m, err := k.readModule(l, node-l.list, buf, false)
		if err != nil {
			tl.skipAt(node-l.list, err)
			return nil
		}
		out = append(out, m)
		return nil
	})
	return out, tl.err()
}

// ModulesFromSysfs returns the modules that module_kset's kobjects
// (/sys/module) point to. Built-in modules have kobjects there too, with no
// struct module; they are left out.
func (k *Kernel) ModulesFromSysfs() ([]Module, error) {
	if k.Profile.Is32() {
		return k.modulesFromSysfs32()
	}
	l := layoutForModules(k.Profile)
	if l.err != nil {
		return nil, l.err
	}
	va, err := k.Addr("module_kset")
	if err != nil {
		return nil, err
	}
	kset, err := vmi.ReadU64(k.AS, va)
	if err != nil {
		return nil, fmt.Errorf("linux: module_kset: %w", err)
	}
	if !isKernelPtr(kset) {
		return nil, fmt.Errorf("%w: module_kset is %#x", ErrInconsistent, kset)
	}
	buf := make([]byte, l.block.len())
	tl := &tally{view: "sysfs"}
	var out []Module
	seen := map[uint64]bool{}
	// Built-in modules' kobjects count towards the bound too.
	tl.stop = vmi.WalkList(k.AS, kset+l.ksetList, 4*MaxModules, func(node uint64) error {
		mk := node - l.kobjEntry - l.mkKobj
		mod, err := vmi.ReadU64(k.AS, mk+l.mkMod)
		if err != nil {
			tl.skip(fmt.Errorf("linux: module_kobject %#x: %w", mk, err))
			return nil
		}
		if mod == 0 || seen[mod] {
			return nil
		}
		seen[mod] = true
		m, err := k.readModule(l, mod, buf, false)
		if err != nil {
			tl.skipAt(mod, err)
			return nil
		}
		if len(out) >= MaxModules {
			return fmt.Errorf("%w: more than %d modules", vmi.ErrListTooLong, MaxModules)
		}
		out = append(out, m)
		return nil
	})
	return out, tl.err()
}

// ScanModules scans the mapped pages of the module area for struct module
// candidates that validate: a known state, a printable NUL-terminated name,
// list pointers that are kernel pointers (or list_del's poison: a module
// unlinked by a rootkit), a core layout of sane size that contains the
// structure itself, and a kobject pointing back to it. It finds modules
// removed from both the module list and sysfs, as long as their memory is
// mapped. Results are in address order.
func (k *Kernel) ScanModules() ([]Module, error) {
	if k.Profile.Is32() {
		return k.scanModules32()
	}
	l := layoutForModules(k.Profile)
	if l.err != nil {
		return nil, l.err
	}
	area, mapped := x86ModuleArea, mappedPages
	if k.AS.Paging == vmi.PagingARM64 {
		lo, hi, err := k.arm64ModuleArea()
		if err != nil {
			return nil, err
		}
		area, mapped = moduleArea{lo, hi}, func(as *vmi.AddressSpace, lo, hi uint64, fn func(va, size uint64) error) error {
			return mappedPagesARM64(as, lo, hi, fn)
		}
	}
	tl := &tally{view: "scan"}
	var out []Module
	scanned := uint64(0)
	const chunk = 1 << 20
	buf := make([]byte, chunk+l.size)
	scanRun := func(start, end uint64) error {
		for va := start; va < end; va += chunk {
			n := min(end-va, chunk+l.size)
			if scanned += min(n, chunk); scanned > maxScanBytes {
				return fmt.Errorf("%w: more than %d MiB mapped in the module area", ErrInconsistent, maxScanBytes>>20)
			}
			b := buf[:n]
			if _, err := k.AS.ReadVirtual(va, b); err != nil {
				tl.skip(fmt.Errorf("linux: module area %#x: %w", va, err))
				continue
			}
			for off := uint64(0); off+l.block.hi <= n && off < chunk; off += 8 {
				// Cheap filters first: state, first name byte.
				if le.Uint32(b[off+l.state:]) >= uint32(len(moduleStates)) {
					continue
				}
				if c := b[off+l.name]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
					continue
				}
				m, err := l.parseModule(b[off+l.block.lo:off+l.block.hi], va+off, true, area)
				if err != nil {
					continue
				}
				if len(out) >= MaxModules {
					return fmt.Errorf("%w: more than %d module candidates", vmi.ErrListTooLong, MaxModules)
				}
				out = append(out, m)
			}
		}
		return nil
	}
	runStart, runEnd := uint64(0), uint64(0)
	err := mapped(k.AS, area.lo, area.hi, func(va, size uint64) error {
		if runEnd == va && runEnd != 0 {
			runEnd += size
			return nil
		}
		if runEnd != 0 {
			if err := scanRun(runStart, runEnd); err != nil {
				return err
			}
		}
		runStart, runEnd = va, va+size
		return nil
	})
	if err == nil && runEnd != 0 {
		err = scanRun(runStart, runEnd)
	}
	if err != nil {
		tl.stop = err
	}
	return out, tl.err()
}

// mappedPages calls fn for each present leaf mapping overlapping [lo, hi)
// in as, in address order, clipped to the range. It reads each page table
// once; the range bounds the work even for self-referencing tables.
func mappedPages(as *vmi.AddressSpace, lo, hi uint64, fn func(va, size uint64) error) error {
	const (
		present  = 1
		ps       = 1 << 7
		addrMask = 0x000f_ffff_ffff_f000
	)
	levels := 4
	if as.LA57 {
		levels = 5
	}
	table := make([][]byte, levels+1)
	for i := range table {
		table[i] = make([]byte, vmi.PageSize4K)
	}
	var walk func(tablePA uint64, level int, base uint64) error
	walk = func(tablePA uint64, level int, base uint64) error {
		t := table[level]
		if _, err := as.Mem.ReadAt(t, int64(tablePA)); err != nil {
			return nil // an unreadable table maps nothing we can read
		}
		shift := 12 + 9*uint(level-1)
		span := uint64(1) << shift
		for i := uint64(0); i < 512; i++ {
			va := base + i*span
			if level == levels && va>>47 != 0 && !as.LA57 {
				va |= 0xffff000000000000 // sign-extend the upper half
			} else if level == levels && as.LA57 && va>>56 != 0 {
				va |= 0xff00000000000000
			}
			if va+span-1 < lo || va >= hi {
				continue
			}
			e := le.Uint64(t[8*i:])
			if e&present == 0 {
				continue
			}
			if level == 1 || (e&ps != 0 && level <= 3) {
				s, end := max(va, lo), min(va+span, hi)
				if err := fn(s, end-s); err != nil {
					return err
				}
				continue
			}
			if e&ps != 0 {
				continue // reserved at this level
			}
			if err := walk(e&addrMask, level-1, va); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(as.CR3&addrMask, levels, 0)
}
