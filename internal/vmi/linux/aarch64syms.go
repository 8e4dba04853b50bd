package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// arm64 kernels built without CONFIG_KALLSYMS_ALL (Debian's) keep only
// text symbols in kallsyms: no linux_banner, init_task or sys_call_table.
// The profile adds the data symbols introspection needs from the image
// itself, each found by what it is and checked:
//
//   - the exported symbols, from __ksymtab and __ksymtab_gpl: arrays of
//     struct kernel_symbol {int value_offset, name_offset,
//     namespace_offset} (PREL32: each relative to its own field), sorted
//     by name, whose names lie in __ksymtab_strings. init_task,
//     init_pid_ns, __per_cpu_offset, nr_cpu_ids, __cpu_online_mask,
//     init_net and kimage_voffset are among them;
//   - linux_banner: the one "Linux version " string of the banner's form;
//   - sys_call_table: the array of __NR_syscalls pointers, in the
//     relocated image, each to a kallsyms symbol __arm64_sys_*, the first
//     __arm64_sys_io_setup (syscall 0 of the generic table);
//   - modules and module_kset: the one global that three functions using
//     it address in common (findCommonTarget).

// ksymEntry is one exported symbol.
type ksymEntry struct {
	name string
	off  uint64 // from _text
}

// Bounds of the exported-symbol search.
const (
	minKsymRun   = 64  // entries of a real __ksymtab run
	maxKsymName  = 128 // an exported name's length
	maxExported  = 1 << 17
	arm64SysBase = "__arm64_sys_"
)

// exportedSymbols finds every run of struct kernel_symbol entries in img
// (limit: the image's size with BSS) and returns their symbols.
func exportedSymbols(img []byte, limit uint64) []ksymEntry {
	le := binary.LittleEndian
	name := func(e int) (string, bool) {
		t := int64(e) + 4 + int64(int32(le.Uint32(img[e+4:])))
		// Not img[t-1] == 0: the linker merges a name into the tail of
		// a longer one (inode_add_bytes inside __inode_add_bytes).
		if t < 0 || t >= int64(len(img)) {
			return "", false
		}
		end := bytes.IndexByte(img[t:min(int64(len(img)), t+maxKsymName+1)], 0)
		if end <= 0 {
			return "", false
		}
		s := img[t : t+int64(end)]
		for i, c := range s {
			if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
				return "", false
			}
		}
		return string(s), true
	}
	entry := func(e int) (ksymEntry, bool) {
		if e < 0 || e+12 > len(img) {
			return ksymEntry{}, false
		}
		v := int64(e) + int64(int32(le.Uint32(img[e:])))
		if v < 0 || uint64(v) >= limit {
			return ksymEntry{}, false
		}
		ns := int64(e) + 8 + int64(int32(le.Uint32(img[e+8:])))
		if ns < 0 || ns >= int64(len(img)) {
			return ksymEntry{}, false
		}
		n, ok := name(e)
		return ksymEntry{name: n, off: uint64(v)}, ok
	}
	var out []ksymEntry
	for e := 0; e+12 <= len(img) && len(out) < maxExported; e += 4 {
		first, ok := entry(e)
		if !ok {
			continue
		}
		run := []ksymEntry{first}
		q := e + 12
		for ; len(run) < maxExported; q += 12 {
			x, ok := entry(q)
			if !ok || x.name <= run[len(run)-1].name {
				break
			}
			run = append(run, x)
		}
		if len(run) >= minKsymRun {
			out = append(out, run...)
			e = q - 4 // the loop adds 4
		}
	}
	return out
}

// findBanner returns linux_banner's offset: "Linux version R (...) ...\n".
func findBanner(img []byte) (int, bool) {
	for from, tries := 0, 0; tries < 64; tries++ {
		i := bytes.Index(img[from:], []byte("Linux version "))
		if i < 0 {
			return 0, false
		}
		p := from + i
		from = p + 1
		if p > 0 && img[p-1] != 0 {
			continue
		}
		end := bytes.IndexByte(img[p:min(len(img), p+1024)], 0)
		if end > 0 && img[p+end-1] == '\n' && bytes.Contains(img[p:p+end], []byte(" (")) && !bytes.Contains(img[p:p+end], []byte("%")) {
			return p, true
		}
	}
	return 0, false
}

// findSyscallTable returns the offset and length of sys_call_table in the
// relocated image: 8-aligned pointers to __arm64_sys_* symbols, the first
// to __arm64_sys_io_setup.
func findSyscallTable(img []byte, base uint64, k *Kallsyms) (int, int, bool) {
	first, ok := k.Lookup(arm64SysBase + "io_setup")
	if !ok {
		return 0, 0, false
	}
	le := binary.LittleEndian
	var pat [8]byte
	le.PutUint64(pat[:], first)
	best, bestN := 0, 0
	for from := 0; ; {
		i := bytes.Index(img[from:], pat[:])
		if i < 0 {
			break
		}
		p := from + i
		from = p + 1
		if p&7 != 0 {
			continue
		}
		n := 0
		for q := p; q+8 <= len(img) && n < 4096; q += 8 {
			s, off, ok := k.Symbol(le.Uint64(img[q:]))
			if !ok || off != 0 || !strings.HasPrefix(s.Name, arm64SysBase) {
				break
			}
			n++
		}
		if n > bestN {
			best, bestN = p, n
		}
		from = p + 8*max(n, 1) // linear in the image, whatever it repeats
	}
	return best, bestN, bestN >= 256
}

// findCommonTarget returns the offset of the one global that every
// function of fns addresses with ADRP and ADD (or LDR): the way the
// compiler addresses a global, directly or from a section anchor. Each
// set of functions is chosen so that what they share is one variable:
// find_module_all, print_modules and module_get_kallsym all walk the
// modules list (LIST_HEAD(modules) carries no relocation in Debian's
// image, so its initial value does not tell); module_add_driver,
// mod_sysfs_setup and lookup_or_create_module_kobject all use
// module_kset; sock_from_file, sock_alloc_file and sockfd_lookup all
// compare with socket_file_ops. Data symbols already known are left out
// of the intersection. What the symbol points to is validated by the walk that
// reads it, as any guest data.
func findCommonTarget(img []byte, base, limit uint64, k *Kallsyms, fns ...string) (int, bool) {
	common := commonTargets(img, base, limit, k, fns...)
	if len(common) != 1 {
		return 0, false
	}
	return int(common[0] - base), true
}

// commonTargets returns the globals (not yet known data symbols) that
// every function of fns addresses, sorted.
func commonTargets(img []byte, base, limit uint64, k *Kallsyms, fns ...string) []uint64 {
	var common map[uint64]bool
	for _, name := range fns {
		fn, ok := k.Lookup(name)
		if !ok {
			return nil
		}
		_, size, ok := k.symbolSize(fn)
		if !ok || size == 0 || size > 4096 {
			size = 512
		}
		code, ok := imageAt(img, base, fn, int(min(size, uint64(len(img)))))
		if !ok {
			return nil
		}
		these := map[uint64]bool{}
		for _, t := range adrpTargets(code, fn) {
			if s, off, ok := k.Symbol(t); ok && off == 0 && s.Addr == t && s.Type != 't' && s.Type != 'T' {
				continue // a data symbol already known: not the one sought
			}
			if t >= base && t-base < limit && t&7 == 0 && (common == nil || common[t]) {
				these[t] = true
			}
		}
		common = these
	}
	out := make([]uint64, 0, len(common))
	for t := range common {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// adrpTargets returns the addresses code (at pc) forms with ADRP Xn
// followed by ADD Xd, Xn, #imm or LDR/STR Xt, [Xn, #imm] (a register's
// page plus an offset), the way the compiler addresses a global.
func adrpTargets(code []byte, pc uint64) []uint64 {
	le := binary.LittleEndian
	page := map[uint32]uint64{} // register -> page from its last ADRP
	var out []uint64
	for i := 0; i+4 <= len(code); i += 4 {
		ins := le.Uint32(code[i:])
		at := pc + uint64(i)
		switch {
		case ins&0x9f000000 == 0x90000000: // ADRP
			immlo, immhi := uint64(ins>>29&3), uint64(ins>>5&0x7ffff)
			imm := int64((immhi<<2|immlo)<<43) >> 31 // sign-extend 21 bits, times 4096
			page[ins&31] = uint64(int64(at&^0xfff) + imm)
		case ins&0xffc00000 == 0x91000000: // ADD Xd, Xn, #imm12 (no shift)
			if p, ok := page[ins>>5&31]; ok {
				t := p + uint64(ins>>10&0xfff)
				out = append(out, t)
				page[ins&31] = t // an anchor the code addresses more from
			} else {
				delete(page, ins&31)
			}
		case ins&0xffc00000 == 0xf9400000: // LDR Xt, [Xn, #imm12*8]
			if p, ok := page[ins>>5&31]; ok {
				out = append(out, p+uint64(ins>>10&0xfff)*8)
			}
			delete(page, ins&31)
		case ins&0xffe00400 == 0xf8400400: // LDR Xt, [Xn, #simm9]! or [Xn], #simm9
			if p, ok := page[ins>>5&31]; ok {
				imm := uint64(int64(uint64(ins>>12&0x1ff)<<55) >> 55)
				if ins&0x800 != 0 { // pre-index: the address is Xn + imm
					out = append(out, p+imm)
				} else {
					out = append(out, p)
				}
				page[ins>>5&31] = p + imm
			}
			delete(page, ins&31)
		}
	}
	return out
}

// symbolSize returns the symbol at addr, and the distance to the next
// symbol's address.
func (k *Kallsyms) symbolSize(addr uint64) (Symbol, uint64, bool) {
	i := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] > addr })
	if i == 0 {
		return Symbol{}, 0, false
	}
	s := k.sym(i - 1)
	if i == len(k.addrs) {
		return s, 0, true
	}
	return s, k.addrs[i] - addr, true
}

// withSymbols returns k plus extra symbols (names k lacks), sorted by
// address as k's are.
func (k *Kallsyms) withSymbols(extra []Symbol) (*Kallsyms, error) {
	type col struct {
		name string
		addr uint64
		typ  byte
	}
	all := make([]col, 0, k.Len()+len(extra))
	for i := range k.addrs {
		all = append(all, col{k.name(i), k.addrs[i], k.types[i]})
	}
	seen := map[string]bool{}
	for _, s := range extra {
		if _, ok := k.Lookup(s.Name); ok || seen[s.Name] {
			continue
		}
		seen[s.Name] = true
		all = append(all, col{s.Name, s.Addr, s.Type})
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].addr < all[j].addr })
	names, addrs, types := make([]string, len(all)), make([]uint64, len(all)), make([]byte, len(all))
	for i, c := range all {
		names[i], addrs[i], types[i] = c.name, c.addr, c.typ
	}
	return newKallsyms(k.Layout, names, addrs, types)
}

// arm64DataSymbols adds the data symbols above to k, and _text (base).
// limit is the image's size with BSS (the header's image_size).
func arm64DataSymbols(img []byte, base, limit uint64, k *Kallsyms) (*Kallsyms, error) {
	etext, _ := k.Lookup("_etext")
	var extra []Symbol
	add := func(name string, off uint64) {
		t := byte('D')
		if base+off < etext {
			t = 'T'
		}
		extra = append(extra, Symbol{Name: name, Addr: base + off, Type: t})
	}
	add("_text", 0)
	if limit > uint64(len(img)) {
		add("_end", limit)
	}
	for _, e := range exportedSymbols(img, max(limit, uint64(len(img)))) {
		add(e.name, e.off)
	}
	if p, ok := findBanner(img); ok {
		add("linux_banner", uint64(p))
	} else {
		return nil, fmt.Errorf("%w: no linux_banner (\"Linux version ...\") in the image", ErrARM64Image)
	}
	withExports, err := k.withSymbols(extra)
	if err != nil {
		return nil, err
	}
	extra = extra[:0]
	if p, n, ok := findSyscallTable(img, base, withExports); ok {
		add("sys_call_table", uint64(p))
		_ = n
	}
	lim := max(limit, uint64(len(img)))
	if p, ok := findCommonTarget(img, base, lim, withExports, "find_module_all", "print_modules", "module_get_kallsym"); ok {
		add("modules", uint64(p))
	}
	if p, ok := findCommonTarget(img, base, lim, withExports, "module_add_driver", "mod_sysfs_setup", "lookup_or_create_module_kobject"); ok {
		add("module_kset", uint64(p))
	}
	if p, ok := findCommonTarget(img, base, lim, withExports, "get_kprobe", "__get_valid_kprobe", "show_kprobe_addr"); ok {
		add("kprobe_table", uint64(p))
	}
	if p, ok := findCommonTarget(img, base, lim, withExports, "sock_from_file", "sock_alloc_file", "sockfd_lookup"); ok {
		add("socket_file_ops", uint64(p))
	}
	// cpu_rq(cpu): &runqueues plus __per_cpu_offset[cpu]; the known
	// symbols the two functions share (__per_cpu_offset,
	// __cpu_online_mask) drop out, and struct rq is cacheline aligned.
	if p, ok := findCommonTarget(img, base, lim, withExports, "scheduler_tick", "resched_cpu"); ok && p&63 == 0 {
		add("runqueues", uint64(p))
	}
	return withExports.withSymbols(extra)
}

// ErrNoDataSymbol means a data symbol is missing from a kernel whose
// kallsyms has text symbols only (an arm64 kernel without
// KALLSYMS_ALL): its absence says nothing of the kernel's configuration.
var ErrNoDataSymbol = fmt.Errorf("%w: not among the data symbols recovered from this arm64 kernel's image (its kallsyms has text symbols only)", ErrNoSymbol)

// noDataSymbols returns, for an arm64 profile, why a missing data symbol
// cannot be taken to mean the feature is configured out; nil otherwise.
func (p *Profile) noDataSymbols(name string) error {
	if !p.IsARM64() {
		return nil
	}
	return fmt.Errorf("%s: %w", name, ErrNoDataSymbol)
}
