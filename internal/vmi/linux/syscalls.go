package linux

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"golang.org/x/arch/x86/x86asm"
)

// The system call checks compare live kernel memory with the kernel image it
// was booted from. The expected contents of sys_call_table and the code of the
// dispatch path come from the image (ImageFacts), never from a hand-written
// list and never from guest memory, which a rootkit controls.

// ErrNoImage means an integrity check needs facts from the kernel image that
// were not attached to the profile (Profile.AttachImage or Profile.LoadImage).
var ErrNoImage = errors.New("linux: no kernel image facts attached to the profile (Profile.LoadImage)")

// Bounds on what a real kernel has.
const (
	maxSyscalls     = 4096     // NR_syscalls is under 500 on x86-64
	maxDispatchCode = 64 << 10 // bytes of one dispatch function
	maxAltEntries   = 1 << 20  // .altinstructions entries
)

// dispatchFuncs is the x86-64 system call path: the entry point MSR_LSTAR
// names, the C dispatcher it calls, and (from 6.9, backported to some stable
// kernels) the switch that replaced the indirect call through sys_call_table.
// x32_sys_call and ia32_sys_call are do_syscall_64's and the compat path's
// other switches. Missing functions are skipped.
var dispatchFuncs = []string{"entry_SYSCALL_64", "do_syscall_64", "x64_sys_call", "x32_sys_call", "ia32_sys_call"}

// funcLabels are global labels inside a dispatch function: kallsyms lists
// them as symbols, but the function's code continues past them.
var funcLabels = map[string][]string{
	"entry_SYSCALL_64": {"entry_SYSCALL_64_safe_stack", "entry_SYSCALL_64_after_hwframe",
		"syscall_return_via_sysret", "entry_SYSRETQ_unsafe_stack", "entry_SYSRETQ_end"},
}

// ImageFacts are the parts of a kernel image that the system call checks
// compare live memory with. Addresses are link-time (add Kernel.Slide).
type ImageFacts struct {
	// Banner is the image's linux_banner: facts attach only to the profile
	// of the same build.
	Banner string
	// SyscallTable holds sys_call_table's initial slots.
	SyscallTable []uint64
	// Code holds the dispatch functions' code as the image has it.
	Code []ImageCode
	// Alternatives are the .altinstructions entries whose patch site lies
	// in one of the Code functions.
	Alternatives []Alternative
	// Objects holds read-only operation tables (seq_operations,
	// file_operations of /proc and /proc/net) as the image has them, at
	// link-time addresses: CheckOpsTables compares the live ones.
	Objects []ImageCode

	// decoded caches decodeImage, one entry per Code function.
	decoded atomic.Pointer[[]*decodedFunc]
}

// ImageCode is one function's bytes in the image.
type ImageCode struct {
	Name  string
	Addr  uint64
	Bytes []byte
	// Size is the function's whole extent, which Bytes may cover only the
	// start of (a watched function's prefix).
	Size uint64
	// Watched marks a function rootkits commonly patch inline, checked by
	// CheckInline; the others are the dispatch path, checked by
	// CheckDispatch.
	Watched bool
}

// Alternative is one boot-time code patch the kernel may apply (struct
// alt_instr): Len bytes at Site may be replaced with Repl, which the image
// keeps at ReplAddr.
type Alternative struct {
	Site     uint64
	Len      int
	ReplAddr uint64
	Repl     []byte
}

// Image returns the image facts attached to p, or nil.
func (p *Profile) Image() *ImageFacts {
	return p.caches().image.Load()
}

// SetImage attaches image facts to p. They must come from the same build.
func (p *Profile) SetImage(f *ImageFacts) error {
	if f == nil || f.Banner != p.Banner {
		return fmt.Errorf("linux: image facts are for a different kernel build")
	}
	p.caches().image.Store(f)
	return nil
}

// AttachImage extracts the facts the system call checks need from a kernel
// image (bzImage or vmlinux, the one p was built from) and attaches them to
// p. It does no I/O; decompressing a bzImage takes seconds, so LoadImage
// caches the facts.
func (p *Profile) AttachImage(img []byte) error {
	f, err := NewImageFacts(img, p)
	if err != nil {
		return err
	}
	return p.SetImage(f)
}

// imageCacheFormat is bumped when the cached encoding changes.
const imageCacheFormat = 3

type cachedImage struct {
	Format int
	Facts  *ImageFacts
}

// LoadImage attaches image facts to p from the cache in cacheDir ("" means
// ProfileCacheDir), keyed by p's banner, or else from the kernel image at
// path, caching them. An empty path means the cache only. Cache failures
// are not fatal.
func (p *Profile) LoadImage(path, cacheDir string) error {
	if p.Image() != nil {
		return nil
	}
	if cacheDir == "" {
		cacheDir, _ = ProfileCacheDir()
	}
	var file string
	if cacheDir != "" {
		file = filepath.Join(cacheDir, BannerKey(p.Banner)+".image")
		if f, err := os.Open(file); err == nil {
			var c cachedImage
			err := gob.NewDecoder(f).Decode(&c)
			f.Close()
			if err == nil && c.Format == imageCacheFormat && p.SetImage(c.Facts) == nil {
				return nil
			}
		}
	}
	if path == "" {
		return fmt.Errorf("%w: none cached for this build", ErrNoImage)
	}
	img, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("linux: read kernel image: %w", err)
	}
	if err := p.AttachImage(img); err != nil {
		return err
	}
	if file != "" {
		var b bytes.Buffer
		if gob.NewEncoder(&b).Encode(cachedImage{Format: imageCacheFormat, Facts: p.Image()}) == nil &&
			os.MkdirAll(cacheDir, 0o755) == nil {
			writeFileAtomic(file, b.Bytes())
		}
	}
	return nil
}

// NewImageFacts reads sys_call_table, the dispatch functions' code and their
// alternatives from a kernel image (bzImage or vmlinux), using prof's
// symbols and BTF for where they are. The image's banner must match prof's.
func NewImageFacts(img []byte, prof *Profile) (*ImageFacts, error) {
	if prof.IsARM64() {
		return newARM64ImageFacts(img, prof)
	}
	if prof.IsARMHF() {
		return newARMHFImageFacts(img, prof)
	}
	vmlinux, _, err := ExtractVmlinux(img)
	if err != nil {
		return nil, err
	}
	f, err := openELF(vmlinux)
	if err != nil {
		return nil, err
	}
	im := &elfImage{f: f, b: vmlinux}
	facts := &ImageFacts{Banner: prof.Banner}
	bannerVA, err := prof.Symbol("linux_banner")
	if err != nil {
		return nil, err
	}
	if b := im.read(bannerVA, uint64(len(prof.Banner))); string(b) != prof.Banner {
		return nil, fmt.Errorf("linux: image's linux_banner %.40q differs from the profile's %.40q", b, prof.Banner)
	}
	textStart, textEnd, err := prof.coreText()
	if err != nil {
		return nil, err
	}

	table, err := prof.Symbol("sys_call_table")
	if err != nil {
		return nil, err
	}
	end := prof.Symbols.next(table, nil)
	n := min((end-table)/8, maxSyscalls)
	b := im.read(table, 8*n)
	if b == nil {
		return nil, fmt.Errorf("linux: sys_call_table at %#x is outside the image's data", table)
	}
	for i := range n {
		facts.SyscallTable = append(facts.SyscallTable, binary.LittleEndian.Uint64(b[8*i:]))
	}
	// The symbol after sys_call_table may be aligned past its end: drop the
	// padding, which does not point into the kernel's text.
	for len(facts.SyscallTable) > 0 {
		v := facts.SyscallTable[len(facts.SyscallTable)-1]
		if v >= textStart && v < textEnd {
			break
		}
		facts.SyscallTable = facts.SyscallTable[:len(facts.SyscallTable)-1]
	}
	if len(facts.SyscallTable) == 0 {
		return nil, fmt.Errorf("linux: the image's sys_call_table holds no text addresses")
	}

	for _, name := range dispatchFuncs {
		addr, ok := prof.Symbols.Lookup(name)
		if !ok {
			continue
		}
		end := prof.Symbols.next(addr, funcLabels[name])
		size := min(end-addr, maxDispatchCode)
		code := im.read(addr, size)
		if code == nil {
			return nil, fmt.Errorf("linux: %s at %#x is outside the image's data", name, addr)
		}
		facts.Code = append(facts.Code, ImageCode{Name: name, Addr: addr, Bytes: bytes.Clone(code), Size: end - addr})
	}
	facts.Code = append(facts.Code, watchedCode(im, prof, facts)...)
	facts.Objects = opsTables(im, prof)
	facts.Alternatives = im.alternatives(prof, facts.Code)
	return facts, nil
}

// elfImage reads a vmlinux's loaded bytes at link-time addresses.
type elfImage struct {
	f *elf.File
	b []byte
}

// read returns n bytes at link-time address addr, or nil if they are not
// all file-backed bytes of one loadable segment.
func (im *elfImage) read(addr, n uint64) []byte {
	for _, p := range im.f.Progs {
		if p.Type != elf.PT_LOAD || addr < p.Vaddr || addr-p.Vaddr >= p.Filesz || n > p.Filesz-(addr-p.Vaddr) {
			continue
		}
		off := p.Off + (addr - p.Vaddr)
		if off > uint64(len(im.b)) || n > uint64(len(im.b))-off {
			return nil
		}
		return im.b[off : off+n]
	}
	return nil
}

// alternatives returns the struct alt_instr entries (layout from BTF,
// between __alt_instructions and __alt_instructions_end) that patch code in
// funcs. Without the symbols or the BTF type it returns none: the dispatch
// check then relies on its other allowances.
func (im *elfImage) alternatives(prof *Profile, funcs []ImageCode) []Alternative {
	start, ok1 := prof.Symbols.Lookup("__alt_instructions")
	end, ok2 := prof.Symbols.Lookup("__alt_instructions_end")
	size, err := prof.StructSize("alt_instr")
	if !ok1 || !ok2 || err != nil || size == 0 || end < start || (end-start)/size > maxAltEntries {
		return nil
	}
	offs := make([]uint64, 4)
	for i, f := range []string{"alt_instr.instr_offset", "alt_instr.repl_offset", "alt_instr.instrlen", "alt_instr.replacementlen"} {
		if offs[i], err = prof.FieldOffset(f); err != nil || offs[i] >= size {
			return nil
		}
	}
	tab := im.read(start, end-start)
	if tab == nil {
		return nil
	}
	var out []Alternative
	for e := uint64(0); e+size <= uint64(len(tab)); e += size {
		ent := tab[e : e+size]
		va := start + e
		site := va + offs[0] + uint64(int64(int32(binary.LittleEndian.Uint32(ent[offs[0]:]))))
		repl := va + offs[1] + uint64(int64(int32(binary.LittleEndian.Uint32(ent[offs[1]:]))))
		ilen, rlen := int(ent[offs[2]]), int(ent[offs[3]])
		for _, fn := range funcs {
			if site < fn.Addr || site-fn.Addr >= uint64(len(fn.Bytes)) {
				continue
			}
			r := im.read(repl, uint64(rlen))
			if r == nil {
				break
			}
			out = append(out, Alternative{Site: site, Len: ilen, ReplAddr: repl, Repl: bytes.Clone(r)})
			break
		}
	}
	return out
}

// next returns the address of the first symbol above addr whose name is not
// one of labels: the end of the function at addr.
func (k *Kallsyms) next(addr uint64, labels []string) uint64 {
	i := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] > addr })
	for ; i < len(k.addrs); i++ {
		if !containsString(labels, k.name(i)) {
			return k.addrs[i]
		}
	}
	return addr
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// coreText returns the link-time bounds of the core kernel text.
func (p *Profile) coreText() (start, end uint64, err error) {
	if start, err = p.Symbol("_stext"); err != nil {
		return 0, 0, err
	}
	if end, err = p.Symbol("_etext"); err != nil {
		return 0, 0, err
	}
	if end <= start {
		return 0, 0, fmt.Errorf("linux: _etext %#x is not above _stext %#x", end, start)
	}
	return start, end, nil
}

// SyscallEntry is one slot of the x86-64 system call table, sys_call_table.
type SyscallEntry struct {
	Nr int `json:"nr"`
	// Name is the handler the kernel image puts in this slot, e.g. "__x64_sys_read".
	Name string `json:"name"`
	// Addr is the slot's live value.
	Addr uint64 `json:"addr"`
	// SlotAddr is the slot's kernel virtual address, SlotPhys its guest-physical address.
	SlotAddr uint64 `json:"slot_addr"`
	SlotPhys uint64 `json:"slot_phys"`
	// Symbol is where the live value points, "sym" or "sym+0xoff", or "" outside every symbol.
	Symbol string `json:"symbol"`
	// Owner, for a live value outside the kernel image, is the module that
	// holds it: "module+0xoff", flagged when the module is hidden.
	Owner string `json:"owner,omitempty"`
	// InCoreText reports whether the live value lies in _stext.._etext.
	InCoreText bool `json:"in_core_text"`
	Hooked     bool `json:"hooked"`
	// Reason says why the entry is flagged.
	Reason string `json:"reason,omitempty"`
}

// SyscallTable reads sys_call_table and compares each slot with the handler
// the kernel image puts there (ImageFacts, which must be attached to the
// profile). A slot is Hooked when its live value differs from the image's
// or points outside the core kernel text; a slot that cannot be read is
// Hooked too, with the read error as Reason: a table the IDS cannot see is
// not a clean one.
func (k *Kernel) SyscallTable() ([]SyscallEntry, error) {
	facts := k.Profile.Image()
	if facts == nil {
		return nil, ErrNoImage
	}
	table, err := k.Addr("sys_call_table")
	if err != nil {
		return nil, err
	}
	n := len(facts.SyscallTable)
	if n > maxSyscalls {
		n = maxSyscalls
	}
	ps := 8 // a slot: a pointer (4 bytes on 32-bit ARM)
	if k.Profile.Is32() {
		ps = 4
	}
	buf := make([]byte, ps*n)
	readErr := make([]error, n)
	if _, err := k.AS.ReadVirtual(table, buf); err != nil {
		// Read slot by slot to tell which ones are unreadable.
		for i := range n {
			if _, err := k.AS.ReadVirtual(table+uint64(ps*i), buf[ps*i:ps*i+ps]); err != nil {
				readErr[i] = err
			}
		}
	}
	out := make([]SyscallEntry, 0, n)
	var mods *ModuleMap
	var physPage, physVA uint64 = 0, 1 // one translation per page
	for i := range n {
		e := SyscallEntry{Nr: i, SlotAddr: table + uint64(ps*i)}
		want := facts.SyscallTable[i] + k.Slide
		e.Name = k.symbolName(want)
		if va := e.SlotAddr &^ (vmi.PageSize4K - 1); va != physVA {
			if pa, _, err := k.AS.Translate(va); err == nil {
				physPage, physVA = pa, va
			}
		}
		if physVA == e.SlotAddr&^(vmi.PageSize4K-1) {
			e.SlotPhys = physPage + e.SlotAddr&(vmi.PageSize4K-1)
		}
		if readErr[i] != nil {
			e.Hooked, e.Reason = true, fmt.Sprintf("slot unreadable: %v", readErr[i])
			out = append(out, e)
			continue
		}
		if ps == 4 {
			e.Addr = uint64(binary.LittleEndian.Uint32(buf[ps*i:]))
		} else {
			e.Addr = binary.LittleEndian.Uint64(buf[8*i:])
		}
		e.Symbol = k.symbolName(e.Addr)
		e.InCoreText = k.inCoreText(e.Addr)
		switch {
		case !e.InCoreText:
			e.Hooked = true
			where := k.region(e.Addr)
			if e.Owner = k.owner(&mods, e.Addr); e.Owner != "" {
				where = e.Owner + " in " + where
			}
			e.Reason = fmt.Sprintf("points into %s, outside core kernel text; the image has %s", where, e.Name)
		case e.Addr != want:
			e.Hooked = true
			got := e.Symbol
			if got == "" {
				got = fmt.Sprintf("%#x", e.Addr)
			}
			e.Reason = fmt.Sprintf("points at %s; the image has %s", got, e.Name)
		}
		out = append(out, e)
	}
	return out, nil
}

// symbolName names run-time address va as "sym" or "sym+0xoff", or "" when
// it is outside the kernel image's symbols.
func (k *Kernel) symbolName(va uint64) string {
	b := boundsOf(k.Profile)
	if va-k.Slide < b.imageLo || va-k.Slide >= b.imageHi {
		return ""
	}
	s, off, ok := k.SymbolAt(va)
	if !ok {
		return ""
	}
	if off == 0 {
		return k.Profile.Symbols.preferredAlias(s)
	}
	return fmt.Sprintf("%s+%#x", s.Name, off)
}

// syscallPrefixes are the names of syscall entry points, preferred among
// aliases: a handler with no arguments is one function with three names
// (__do_sys_getpid, __x64_sys_getpid, __ia32_sys_getpid), and kallsyms
// lists them all.
var syscallPrefixes = []string{"__x64_sys_", "__ia32_sys_", "__ia32_compat_sys_", "__x64_compat_sys_"}

// preferredAlias returns s's name, or the name of a symbol at the same
// address that is a syscall entry point.
func (k *Kallsyms) preferredAlias(s Symbol) string {
	lo := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] >= s.Addr })
	hi := lo
	for hi < len(k.addrs) && k.addrs[hi] == s.Addr && hi-lo < 64 {
		hi++
	}
	for _, p := range syscallPrefixes {
		if strings.HasPrefix(s.Name, p) {
			return s.Name
		}
		for x := lo; x < hi; x++ {
			if a := k.name(x); strings.HasPrefix(a, p) {
				return a
			}
		}
	}
	return s.Name
}

// symBounds are a profile's link-time bounds: the core text (_stext to
// _etext; empty when unknown) and the image's symbols (_text to _end, or
// the last symbol).
type symBounds struct {
	textLo, textHi, imageLo, imageHi uint64
}

// boundsOf returns p's symbol bounds, computed on first use (see
// profileCache.bounds).
func boundsOf(p *Profile) *symBounds {
	c := p.caches()
	c.boundsOnce.Do(func() { c.bounds = newSymBounds(p) })
	return &c.bounds
}

func newSymBounds(p *Profile) symBounds {
	var b symBounds
	if lo, hi, err := p.coreText(); err == nil {
		b.textLo, b.textHi = lo, hi
	}
	if text, err := p.Symbol("_text"); err == nil && p.Symbols.Len() > 0 {
		end, ok := p.Symbols.Lookup("_end")
		if !ok || end <= text {
			end = p.Symbols.addrs[p.Symbols.Len()-1] + 1
		}
		b.imageLo, b.imageHi = text, end
	}
	return b
}

// inCoreText reports whether run-time address va is in _stext.._etext.
func (k *Kernel) inCoreText(va uint64) bool {
	b := boundsOf(k.Profile)
	return va-k.Slide >= b.textLo && va-k.Slide < b.textHi
}

// region names the part of the address space run-time address va is in,
// for findings. The direct map and vmalloc bases are randomised: they are
// read from page_offset_base and vmalloc_base when the kernel has them.
func (k *Kernel) region(va uint64) string {
	if k.Profile.Is32() {
		return k.regionARMHF(va)
	}
	// x86-64 virtual memory regions (Documentation/arch/x86/x86_64/mm.rst).
	const (
		modStart     = startKernelMap + kernelImageSize // MODULES_VADDR
		modEnd       = 0xffffffffff000000               // MODULES_END, below the fixmap
		directMapLen = 64 << 40                         // 4-level; 32 PiB with 5-level
		vmallocLen   = 32 << 40
	)
	switch {
	case va < 1<<47:
		return "user space"
	case va >= modStart && va < modEnd:
		return "module space"
	case va >= startKernelMap && va < modStart:
		if s := k.symbolName(va); s != "" {
			return "the kernel image (" + s + ")"
		}
		return "the kernel image"
	case !vmi.Canonical(va, k.AS.LA57):
		return "a non-canonical address"
	}
	size := uint64(directMapLen)
	if k.AS.LA57 {
		size = 32 << 50
	}
	if base, ok := k.readVar("page_offset_base"); ok && va >= base && va-base < size {
		return "the direct map"
	}
	if base, ok := k.readVar("vmalloc_base"); ok && va >= base && va-base < vmallocLen {
		return "vmalloc space"
	}
	return "kernel space outside the image"
}

// readVar reads a kernel u64 variable.
func (k *Kernel) readVar(name string) (uint64, bool) {
	va, err := k.Addr(name)
	if err != nil {
		return 0, false
	}
	v, err := vmi.ReadU64(k.AS, va)
	return v, err == nil
}

// symbolNameLink is symbolName for a link-time address.
func (k *Kernel) symbolNameLink(addr uint64) string { return k.symbolName(addr + k.Slide) }

// hasPrefix reports whether s starts with any of prefixes.
func hasPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// DispatchFinding is a branch in the system call dispatch path that goes
// somewhere the kernel image's code does not.
type DispatchFinding struct {
	// Function is the dispatch function holding the branch, e.g. "x64_sys_call".
	Function string `json:"function"`
	// Addr is the branch instruction's kernel virtual address.
	Addr uint64 `json:"addr"`
	// Target is where it branches (0 for an indirect branch), TargetSymbol
	// its symbol ("" if none).
	Target       uint64 `json:"target"`
	TargetSymbol string `json:"target_symbol"`
	// TargetOwner, for a target outside the kernel image, is the module
	// that holds it ("module+0xoff", flagged when hidden).
	TargetOwner string `json:"target_owner,omitempty"`
	// Syscalls are the syscall numbers whose dispatch the branch replaces
	// (those whose handler the image calls at that place), when known.
	Syscalls []int `json:"syscalls,omitempty"`
	// FentrySite says the branch is at the function's __fentry__ call,
	// where ftrace attaches.
	FentrySite bool   `json:"fentry_site,omitempty"`
	Reason     string `json:"reason"`
}

// CheckDispatch disassembles the live code of the system call path
// (entry_SYSCALL_64, the entry MSR_LSTAR names; do_syscall_64; x64_sys_call,
// the switch that dispatches from 6.9 on and in backports, and its x32 and
// ia32 siblings) and reports branches that go where the kernel image's code
// does not. Each function is bounded by its kallsyms extent. It returns
// nil, nil on kernels without x64_sys_call, whose dispatch goes through
// sys_call_table, which SyscallTable checks.
//
// Live code is not byte-for-byte the image's: at boot the kernel rewrites
// alternatives (CPU-specific instruction sequences), retpoline and return
// thunk sites (an indirect thunk call becomes "call *%reg", a return-thunk
// jump becomes "ret" or a jump to another thunk), paravirt call sites,
// static keys (a nop becomes a jump inside the function) and ftrace's
// __fentry__ calls (which become nops). So the check does not compare bytes:
// it decodes both the same way and compares where each branch goes.
// A live branch is reported when
//   - its target is outside the core kernel text (module space, the direct
//     map, vmalloc: where injected code lives), or
//   - the image has a direct branch at the same place to a different
//     symbol (a redirected call, even to another real syscall handler), or
//   - the image has no branch there and the target is none of the image
//     function's own targets, its alternatives' replacement targets, or the
//     mitigation thunks the kernel patches in, or
//   - it is an indirect branch where the image has neither an indirect
//     branch nor a thunk call, or
//   - it replaces the __fentry__ call: ftrace (or a hook using it) is
//     attached to the dispatcher.
//
// Branches inside the function itself (the switch's own jumps and patched
// static keys) are not reported.
func (k *Kernel) CheckDispatch() ([]DispatchFinding, error) { return k.CheckDispatchMemo(nil) }

// CheckDispatchMemo is CheckDispatch skipping functions whose live code
// memo saw clean before.
func (k *Kernel) CheckDispatchMemo(memo *CodeMemo) ([]DispatchFinding, error) {
	if _, ok := k.Profile.Symbols.Lookup("x64_sys_call"); !ok {
		return nil, nil
	}
	facts := k.Profile.Image()
	if facts == nil {
		return nil, ErrNoImage
	}
	var out []DispatchFinding
	var mods *ModuleMap
	for i, fn := range facts.Code {
		if fn.Watched {
			continue
		}
		if len(fn.Bytes) > maxDispatchCode {
			return nil, fmt.Errorf("linux: image code of %s is %d bytes, over the %d-byte bound", fn.Name, len(fn.Bytes), maxDispatchCode)
		}
		live := make([]byte, len(fn.Bytes))
		if _, err := k.AS.ReadVirtual(fn.Addr+k.Slide, live); err != nil {
			out = append(out, DispatchFinding{Function: fn.Name, Addr: fn.Addr + k.Slide,
				Reason: fmt.Sprintf("live code unreadable: %v", err)})
			continue
		}
		for _, f := range k.compareMemo(memo, facts, i, live, nil) {
			d := decodeImage(facts, i)
			if f.Target != 0 {
				f.TargetOwner = k.owner(&mods, f.Target)
			}
			f.Syscalls = redirectedSyscalls(facts, d.insns, int(f.Addr-(fn.Addr+k.Slide)))
			if f.TargetOwner != "" {
				f.Reason += "; the target is " + f.TargetOwner
			}
			if len(f.Syscalls) > 0 {
				f.Reason += fmt.Sprintf("; it redirects syscall %s", joinInts(f.Syscalls))
			}
			out = append(out, f)
		}
	}
	return out, nil
}

// insn is one decoded instruction; target is meaningful for direct branches.
type insn struct {
	off, len int
	op       x86asm.Op
	kind     branchKind
	target   uint64
}

type branchKind uint8

const (
	notBranch branchKind = iota
	directBranch
	indirectBranch
)

// decode decodes code linearly as if loaded at base. An undecodable byte is
// skipped, so decoding resynchronises after data or a torn patch.
func decode(code []byte, base uint64) []insn {
	var out []insn
	for off := 0; off < len(code); {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil || inst.Len <= 0 {
			off++
			continue
		}
		in := insn{off: off, len: inst.Len, op: inst.Op}
		if isBranch(inst.Op) {
			switch a := inst.Args[0].(type) {
			case x86asm.Rel:
				in.kind = directBranch
				in.target = base + uint64(off+inst.Len) + uint64(int64(a))
			case x86asm.Reg, x86asm.Mem:
				if inst.Op == x86asm.CALL || inst.Op == x86asm.JMP {
					in.kind = indirectBranch
				}
			}
		}
		out = append(out, in)
		off += inst.Len
	}
	return out
}

func isBranch(op x86asm.Op) bool {
	switch op {
	case x86asm.CALL, x86asm.JMP, x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JCXZ, x86asm.JE,
		x86asm.JECXZ, x86asm.JG, x86asm.JGE, x86asm.JL, x86asm.JLE, x86asm.JNE, x86asm.JNO, x86asm.JNP,
		x86asm.JNS, x86asm.JO, x86asm.JP, x86asm.JRCXZ, x86asm.JS, x86asm.LOOP, x86asm.LOOPE, x86asm.LOOPNE:
		return true
	}
	return false
}

// covering returns the instruction of insns (sorted by offset) whose bytes
// include off.
func covering(insns []insn, off int) (insn, bool) {
	i := sort.Search(len(insns), func(i int) bool { return insns[i].off > off }) - 1
	if i >= 0 && off < insns[i].off+insns[i].len {
		return insns[i], true
	}
	return insn{}, false
}

// isThunk reports whether a symbol is one of the speculation-mitigation
// thunks the kernel patches call and return sites to use at boot.
func isThunk(name string) bool {
	return hasPrefix(name, "__x86_indirect_thunk_", "__x86_indirect_jump_thunk_", "__x86_indirect_call_thunk_",
		"__x86_return_thunk", "__x86_return_skl", "call_depth_return_thunk", "entry_ibpb", "clear_bhb_loop") ||
		strings.HasSuffix(name, "_return_thunk") || strings.HasSuffix(name, "_untrain_ret")
}

// isFtrace reports whether a symbol is ftrace's: a live call to one at the
// __fentry__ site means the function is being traced.
func isFtrace(name string) bool {
	return hasPrefix(name, "ftrace_", "__fentry__", "fentry_")
}

// decodedFunc is an image function decoded once: its instructions, the
// targets it may reach (its own direct branches and those of every
// alternative patched into it), and its alternatives' sites.
type decodedFunc struct {
	insns   []insn
	targets map[uint64]bool
	sites   []altSite
}

// altSite is where an alternative may be patched in, as offsets into the
// function, and what its replacement branches to. Replacements are decoded
// where the image keeps them, which is where their relative branches point
// from: the kernel re-targets them when it copies them in.
type altSite struct {
	start, end int
	targets    map[uint64]bool
	indirect   bool
}

// decodeImage decodes facts.Code[i] and the alternatives patched into it,
// once: image code does not change, and decoding is most of
// CheckDispatch's time.
func decodeImage(facts *ImageFacts, i int) *decodedFunc {
	if all := facts.decoded.Load(); all != nil && i < len(*all) && (*all)[i] != nil {
		return (*all)[i]
	}
	d := decodeImageFunc(facts, i)
	for {
		old := facts.decoded.Load()
		next := make([]*decodedFunc, len(facts.Code))
		if old != nil {
			copy(next, *old)
		}
		next[i] = d
		if facts.decoded.CompareAndSwap(old, &next) {
			return d
		}
	}
}

func decodeImageFunc(facts *ImageFacts, i int) *decodedFunc {
	fn := facts.Code[i]
	d := &decodedFunc{insns: decode(fn.Bytes, fn.Addr), targets: map[uint64]bool{}}
	for _, in := range d.insns {
		if in.kind == directBranch {
			d.targets[in.target] = true
		}
	}
	for _, a := range facts.Alternatives {
		if a.Site < fn.Addr || a.Site-fn.Addr >= uint64(len(fn.Bytes)) {
			continue
		}
		s := altSite{start: int(a.Site - fn.Addr), targets: map[uint64]bool{}}
		s.end = s.start + max(a.Len, len(a.Repl))
		for _, in := range decode(a.Repl, a.ReplAddr) {
			switch in.kind {
			case directBranch:
				s.targets[in.target] = true
				d.targets[in.target] = true
			case indirectBranch:
				s.indirect = true
			}
		}
		d.sites = append(d.sites, s)
	}
	return d
}

// compareCode compares the live code of one dispatch function with the
// image's; see CheckDispatch. Addresses from the image are link-time, from
// live code run-time.
func (k *Kernel) compareCode(fn ImageCode, live []byte, d *decodedFunc) []DispatchFinding {
	img, targets := d.insns, d.targets
	inAlt := func(off int, target uint64, indirect bool) bool {
		for _, s := range d.sites {
			if off >= s.start && off < s.end && (indirect && s.indirect || !indirect && s.targets[target]) {
				return true
			}
		}
		return false
	}

	base := fn.Addr + k.Slide
	end := base + max(uint64(len(fn.Bytes)), fn.Size)
	var out []DispatchFinding
	for _, in := range decode(live, base) {
		if in.kind == notBranch {
			continue
		}
		f := DispatchFinding{Function: fn.Name, Addr: base + uint64(in.off)}
		orig, hasOrig := covering(img, in.off)
		origName := ""
		if hasOrig && orig.kind == directBranch {
			origName = k.symbolNameLink(orig.target)
		}
		fentrySite := origName == "__fentry__"
		f.FentrySite = fentrySite
		if in.kind == indirectBranch {
			switch {
			case hasOrig && orig.kind == indirectBranch: // unchanged, or a retpoline site made plain
			case hasOrig && orig.kind == directBranch && isThunk(origName): // retpoline site
			case inAlt(in.off, 0, true):
			default:
				f.Reason = fmt.Sprintf("indirect %s where the image has %s", strings.ToLower(in.op.String()), describe(orig, hasOrig, origName))
				out = append(out, f)
			}
			continue
		}
		if in.target >= base && in.target < end {
			continue // inside the function: the switch's own jumps, patched static keys
		}
		f.Target = in.target
		f.TargetSymbol = k.symbolName(in.target)
		link := in.target - k.Slide
		name := f.TargetSymbol
		if name == "" {
			name = fmt.Sprintf("%#x", in.target)
		}
		switch {
		case !k.inCoreText(in.target):
			f.Reason = fmt.Sprintf("%s into %s, outside core kernel text", strings.ToLower(in.op.String()), k.region(in.target))
			if fentrySite {
				f.Reason += ", at the __fentry__ site: an ftrace trampoline or a hook is attached"
			}
		case hasOrig && orig.kind == directBranch && orig.target == link && orig.off == in.off:
			continue // the image's branch
		case isThunk(f.TargetSymbol):
			continue // a mitigation thunk patched in at boot
		case inAlt(in.off, link, false):
			continue // an alternative's replacement
		case fentrySite && isFtrace(f.TargetSymbol):
			f.Reason = fmt.Sprintf("ftrace is attached: the __fentry__ site calls %s", f.TargetSymbol)
		case fentrySite:
			f.Reason = fmt.Sprintf("%s %s replaces the __fentry__ call", strings.ToLower(in.op.String()), name)
		case hasOrig && orig.kind == directBranch && hasPrefix(origName, "__SCT__"):
			continue // a static call site, patched to call its current target directly
		case hasOrig && orig.kind == indirectBranch:
			continue // a paravirt call site, patched to call its target directly
		case hasOrig && orig.kind == directBranch && orig.off == in.off:
			f.Reason = fmt.Sprintf("%s %s where the image branches to %s", strings.ToLower(in.op.String()), name, origName)
		case targets[link]:
			continue // a target the image's function has, at a shifted position
		default:
			f.Reason = fmt.Sprintf("%s %s where the image has %s", strings.ToLower(in.op.String()), name, describe(orig, hasOrig, origName))
		}
		out = append(out, f)
	}
	return out
}

// redirectedSyscalls returns the syscall numbers a patch at offset off of a
// dispatch function takes over: those whose handler the image calls (or
// jumps to) at off, or in the first 16 bytes after it (a patch over a
// case's argument setup lands before its call). Numbers come from the
// image's syscall table; none when the image has no handler call there.
func redirectedSyscalls(facts *ImageFacts, img []insn, off int) []int {
	for _, in := range img {
		if in.off+in.len <= off || in.kind != directBranch {
			continue
		}
		if in.off > off+16 {
			break
		}
		var nrs []int
		for nr, h := range facts.SyscallTable {
			if h == in.target && len(nrs) < 64 {
				nrs = append(nrs, nr)
			}
		}
		if len(nrs) > 0 {
			return nrs
		}
	}
	return nil
}

// joinInts writes numbers as "1, 2, 3".
func joinInts(v []int) string {
	var b strings.Builder
	for i, n := range v {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d", n)
	}
	return b.String()
}

// describe says what the image has at a place, for findings.
func describe(orig insn, ok bool, name string) string {
	switch {
	case !ok:
		return "no instruction"
	case orig.kind == directBranch:
		return fmt.Sprintf("%s %s", strings.ToLower(orig.op.String()), name)
	case orig.kind == indirectBranch:
		return "an indirect " + strings.ToLower(orig.op.String())
	}
	return strings.ToLower(orig.op.String())
}
