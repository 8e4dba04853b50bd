package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/gatevisor/gatevisor/internal/armimage"
)

// arm64 kernels: the flat Image (armimage) is the kernel as it lies in
// memory from _text on, so an address's file offset is its link-time
// address minus _text's; there is no ELF to map segments. The image is
// linked as a PIE (CONFIG_RELOCATABLE) with --no-apply-dynamic-relocs:
// every absolute pointer in it (kallsyms_relative_base, the entries of
// sys_call_table) is zero in the file, its value an R_AARCH64_RELATIVE
// relocation that the kernel applies to itself at boot. The profile
// applies them once, at the link-time address, and reads the result as
// the x86 profile reads vmlinux.

// ArchARM64 and ArchAMD64 are Profile.Arch's values.
const (
	ArchAMD64 = "amd64"
	ArchARM64 = "arm64"
)

// rAArch64Relative is R_AARCH64_RELATIVE's r_info (type 1027, no symbol).
const rAArch64Relative = 1027

// Bounds of an arm64 image's relocations: Debian's 6.1 has ~190,000.
const (
	minRelocs = 1000
	maxRelocs = 4 << 20
)

// ErrARM64Image wraps what is wrong with an arm64 Image.
var ErrARM64Image = errors.New("linux: arm64 Image")

// relaRun is the Image's table of RELATIVE relocations: n 24-byte
// records from file offset off.
type relaRun struct{ off, n int }

// findRela returns the longest run of 8-aligned 24-byte Elf64_Rela
// records of type R_AARCH64_RELATIVE whose targets are upper-half
// addresses: the .rela.dyn section that head.S applies at boot.
func findRela(img []byte) (relaRun, error) {
	le := binary.LittleEndian
	isRec := func(p int) bool {
		return p >= 0 && p+24 <= len(img) && le.Uint64(img[p+8:]) == rAArch64Relative && le.Uint64(img[p:])>>48 == 0xffff
	}
	var best relaRun
	var pat [8]byte
	le.PutUint64(pat[:], rAArch64Relative)
	for from := 0; from < len(img); {
		i := bytes.Index(img[from:], pat[:])
		if i < 0 {
			break
		}
		q := from + i - 8 // the record's start
		from += i + 1
		if q&7 != 0 || !isRec(q) {
			continue
		}
		start := q
		for isRec(start-24) && (q-start)/24 < maxRelocs {
			start -= 24
		}
		end := q
		for isRec(end+24) && (end-start)/24 < maxRelocs {
			end += 24
		}
		if n := (end-start)/24 + 1; n > best.n {
			best = relaRun{off: start, n: n}
		}
		from = end + 24
	}
	if best.n < minRelocs {
		return relaRun{}, fmt.Errorf("%w: no table of R_AARCH64_RELATIVE relocations (longest run %d)", ErrARM64Image, best.n)
	}
	return best, nil
}

// kallsymsBaseOffsets returns the file offsets where
// kallsyms_relative_base may lie, located from the token table and the
// names as ParseKallsyms does: the 8 bytes before kallsyms_num_syms (up
// to 6.3), or after the token index and the offsets (6.4 on).
func kallsymsBaseOffsets(img []byte) ([]int, error) {
	digits := []byte("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00")
	var lastErr error = ErrNoKallsyms
	for from, tries := 0, 0; tries < maxCandidates; tries++ {
		i := bytes.Index(img[from:], digits)
		if i < 0 {
			break
		}
		d := from + i
		from = d + 1
		tt, _, err := tokenTableAt(img, d)
		if err != nil {
			lastErr = err
			continue
		}
		ni, err := findNames(img, tt.table)
		if err != nil {
			lastErr = err
			continue
		}
		align8 := func(x int) int { return (x + 7) &^ 7 }
		var out []int
		if ni.numSyms >= 8 {
			out = append(out, ni.numSyms-8)
		}
		for _, o := range []int{tt.index + 512, align8(tt.index + 512)} {
			out = append(out, o+align8(4*ni.n), o+4*ni.n)
		}
		return out, nil
	}
	return nil, lastErr
}

// relocateARM64 returns a copy of the flat Image img with its RELATIVE
// relocations applied at the link-time address, and that address (_text's).
// The address is the one the relocations themselves imply: the record
// that fills kallsyms_relative_base targets _text (file offset 0) plus
// that slot's file offset; kallsyms' own _text must then agree.
func relocateARM64(img []byte) ([]byte, uint64, error) {
	run, err := findRela(img)
	if err != nil {
		return nil, 0, err
	}
	fs, err := kallsymsBaseOffsets(img)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ErrARM64Image, err)
	}
	le := binary.LittleEndian
	var base uint64
	found := false
	for i := 0; i < run.n && !found; i++ {
		p := run.off + 24*i
		off, add := le.Uint64(img[p:]), le.Uint64(img[p+16:])
		for _, f := range fs {
			// kallsyms_relative_base is the lowest symbol's address, at
			// the image's start (_stext on 6.1: _text plus the 64 KiB
			// head), and _text is 2 MiB aligned (MIN_KIMG_ALIGN).
			if b := off - uint64(f); b&(2<<20-1) == 0 && add >= b && add-b < 2<<20 {
				base, found = b, true
				break
			}
		}
	}
	if !found {
		return nil, 0, fmt.Errorf("%w: no relocation fills kallsyms_relative_base (file offsets %#x)", ErrARM64Image, fs)
	}
	out := bytes.Clone(img)
	for i := 0; i < run.n; i++ {
		p := run.off + 24*i
		off, add := le.Uint64(img[p:]), le.Uint64(img[p+16:])
		if off < base || off-base > uint64(len(out)-8) {
			continue // in BSS or outside the file: nothing to fill
		}
		le.PutUint64(out[off-base:], add)
	}
	return out, base, nil
}

// isARM64Image reports whether img is an arm64 kernel image (flat, gzip
// or EFI zboot): not a bzImage and not an ELF file.
func isARM64Image(img []byte) bool {
	if len(img) >= armimage.HeaderSize && binary.LittleEndian.Uint32(img[56:]) == armimage.Magic {
		return true
	}
	if bytes.HasPrefix(img, []byte("\x7fELF")) {
		return false
	}
	if _, err := ParseBzImage(img); err == nil {
		return false
	}
	return armimage.Is(img)
}

// imageAt returns n bytes of the relocated image at link-time address
// addr (base is _text's), or false when they lie outside it.
func imageAt(img []byte, base, addr uint64, n int) ([]byte, bool) {
	if addr < base || addr-base >= uint64(len(img)) || uint64(len(img))-(addr-base) < uint64(n) {
		return nil, false
	}
	o := addr - base
	return img[o : o+uint64(n)], true
}

// checkImageBanner checks that a flat image img loaded at base holds the
// profile's linux_banner where the profile says, and returns the address
// of sys_call_table, which the image facts read next.
func checkImageBanner(img []byte, base uint64, prof *Profile) (table uint64, err error) {
	syms, err := prof.SymbolList("linux_banner", "sys_call_table")
	if err != nil {
		return 0, err
	}
	if b, ok := imageAt(img, base, syms[0], len(prof.Banner)); !ok || string(b) != prof.Banner {
		return 0, fmt.Errorf("linux: image's linux_banner %.40q differs from the profile's %.40q", b, prof.Banner)
	}
	return syms[1], nil
}

// newARM64Profile builds the profile of an arm64 image.
func newARM64Profile(raw []byte, opts ProfileOptions) (*Profile, error) {
	flat, comp, err := armimage.Unwrap(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotKernel, err)
	}
	h, err := armimage.Parse(flat)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotKernel, err)
	}
	if h.BigEndian() || h.PageSize() != 4<<10 {
		return nil, fmt.Errorf("%w: big-endian %v, %d-byte pages: only little-endian kernels with 4 KiB pages are read", ErrARM64Image, h.BigEndian(), h.PageSize())
	}
	img, base, err := relocateARM64(flat)
	if err != nil {
		return nil, err
	}
	p := &Profile{Arch: ArchARM64, Compression: Compression(comp)}
	ks, err := ParseKallsyms(img)
	if err != nil {
		return nil, err
	}
	if p.Symbols, err = arm64DataSymbols(img, base, h.ImageSize, ks); err != nil {
		return nil, err
	}
	text, err := p.Symbol("_text")
	if err != nil {
		return nil, err
	}
	if text != base {
		return nil, fmt.Errorf("%w: kallsyms puts _text at %#x, the relocations at %#x", ErrARM64Image, text, base)
	}
	if raw, ok := findBTF(img); ok && !opts.IgnoreBTF {
		if p.BTF, err = ParseBTF(raw); err != nil {
			return nil, fmt.Errorf("linux: parse .BTF: %w", err)
		}
	} else if p.ISF = opts.Symbols; p.ISF == nil {
		return nil, ErrNoBTF
	}
	p.BuildID = arm64BuildID(img)
	if err := p.addImagePointers(img, base); err != nil {
		return nil, err
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
		return nil, fmt.Errorf("linux: linux_banner at %#x does not hold a banner", addr)
	}
	p.Banner = string(b[:end])
	if f := bytes.Fields(b[:end]); len(f) >= 3 {
		p.Release = string(f[2])
	}
	if p.ISF != nil {
		if err := p.ISF.CheckAgainst(p.Banner, p.Symbols); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// findBTF returns the image's .BTF section, found by its header (there is
// no __start_BTF in a kallsyms without data symbols): magic 0xeB9F,
// version 1, a 24-byte header whose type and string sections lie inside
// the image. The first such header that ParseBTF accepts is vmlinux's.
func findBTF(img []byte) ([]byte, bool) {
	le := binary.LittleEndian
	for from, tries := 0, 0; tries < 64; tries++ {
		i := bytes.Index(img[from:], []byte{0x9f, 0xeb, 1, 0, 24, 0, 0, 0})
		if i < 0 || from+i+24 > len(img) {
			return nil, false
		}
		p := from + i
		from = p + 1
		h := img[p:]
		typeOff, typeLen, strOff, strLen := uint64(le.Uint32(h[8:])), uint64(le.Uint32(h[12:])), uint64(le.Uint32(h[16:])), uint64(le.Uint32(h[20:]))
		end := 24 + max(typeOff+typeLen, strOff+strLen)
		if end > uint64(len(img)-p) || typeLen == 0 || strLen == 0 {
			continue
		}
		if _, err := ParseBTF(img[p : p+int(end)]); err == nil {
			return img[p : p+int(end)], true
		}
	}
	return nil, false
}

// newARM64ImageFacts is NewImageFacts for an arm64 image: the banner and
// sys_call_table's initial slots from the relocated Image (every slot a
// __arm64_sys_* wrapper). arm64 dispatch (el0_svc -> invoke_syscall)
// indexes the table itself, so there is no dispatch code to compare, and
// the x86 code checks (dispatch, alternatives, ops tables) have no facts.
func newARM64ImageFacts(raw []byte, prof *Profile) (*ImageFacts, error) {
	flat, _, err := armimage.Unwrap(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotKernel, err)
	}
	img, base, err := relocateARM64(flat)
	if err != nil {
		return nil, err
	}
	facts := &ImageFacts{Banner: prof.Banner}
	table, err := checkImageBanner(img, base, prof)
	if err != nil {
		return nil, err
	}
	for i := uint64(0); i < maxSyscalls; i++ {
		b, ok := imageAt(img, base, table+8*i, 8)
		if !ok {
			break
		}
		v := binary.LittleEndian.Uint64(b)
		s, off, ok := prof.Symbols.Symbol(v)
		if !ok || off != 0 || !strings.HasPrefix(s.Name, arm64SysBase) {
			break
		}
		facts.SyscallTable = append(facts.SyscallTable, v)
	}
	if len(facts.SyscallTable) == 0 {
		return nil, fmt.Errorf("linux: the image's sys_call_table holds no __arm64_sys_* wrappers")
	}
	return facts, nil
}

// addImagePointers adds init_mm and init_cred from the image's own static
// initializer of init_task (.active_mm = &init_mm, .cred = &init_cred, at
// their link-time values once relocated):
// Locate reads the kernel's page-table root from init_mm.pgd, and the live
// init_task.active_mm is whatever mm the idle task last borrowed.
func (p *Profile) addImagePointers(img []byte, base uint64) error {
	initTask, err := p.Symbol("init_task")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrARM64Image, err)
	}
	activeMM, err := p.FieldOffset("task_struct.active_mm")
	if err != nil {
		return err
	}
	b, ok := imageAt(img, base, initTask+activeMM, 8)
	if !ok {
		return fmt.Errorf("%w: init_task.active_mm outside the image", ErrARM64Image)
	}
	mm := binary.LittleEndian.Uint64(b)
	if _, ok := imageAt(img, base, mm, 8); !ok || mm&7 != 0 {
		return fmt.Errorf("%w: init_task.active_mm %#x is not in the image", ErrARM64Image, mm)
	}
	extra := []Symbol{{Name: "init_mm", Addr: mm, Type: 'D'}}
	// init_task.cred = &init_cred, likewise.
	if off, err := p.FieldOffset("task_struct.cred"); err == nil {
		if b, ok := imageAt(img, base, initTask+off, 8); ok {
			if c := binary.LittleEndian.Uint64(b); c&7 == 0 {
				if _, ok := imageAt(img, base, c, 8); ok {
					extra = append(extra, Symbol{Name: "init_cred", Addr: c, Type: 'D'})
				}
			}
		}
	}
	extra = append(extra, p.ftraceSymbols(img, base)...)
	syms, err := p.Symbols.withSymbols(extra)
	if err != nil {
		return err
	}
	p.Symbols = syms
	return nil
}

// ftraceSymbols returns ftrace_ops_list and ftrace_list_end: of the
// globals that ftrace_ops_list_func, is_ftrace_trampoline and
// __unregister_ftrace_function all address (the list head and its
// neighbours), the one whose static value is an ftrace_ops whose func is
// ftrace_stub (ftrace_ops_list = &ftrace_list_end, ftrace_list_end.func =
// ftrace_stub, at their link-time values once relocated). None when that
// is not exactly one.
func (p *Profile) ftraceSymbols(img []byte, base uint64) []Symbol {
	funcOff, err := p.FieldOffset("ftrace_ops.func")
	if err != nil {
		return nil
	}
	stub, ok := p.Symbols.Lookup("ftrace_stub")
	if !ok {
		return nil
	}
	var found []Symbol
	for _, c := range commonTargets(img, base, uint64(len(img)), p.Symbols, "ftrace_ops_list_func", "is_ftrace_trampoline", "__unregister_ftrace_function") {
		b, ok := imageAt(img, base, c, 8)
		if !ok {
			continue
		}
		end := binary.LittleEndian.Uint64(b)
		if f, ok := imageAt(img, base, end+funcOff, 8); ok && end&7 == 0 && binary.LittleEndian.Uint64(f) == stub {
			found = append(found, Symbol{Name: "ftrace_ops_list", Addr: c, Type: 'D'}, Symbol{Name: "ftrace_list_end", Addr: end, Type: 'D'})
		}
	}
	if len(found) != 2 {
		return nil
	}
	return found
}

// arm64BuildID returns the kernel's GNU build id from its .notes, which
// the image holds with no ELF header to name it: of the 20-byte build-id
// notes followed by a "Linux" note, the last. The vDSOs embedded in
// .rodata carry build ids of their own, earlier in the image; the
// kernel's .notes come after .rodata, just before .BTF.
func arm64BuildID(img []byte) string {
	note := []byte("\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\x00")
	id := ""
	for from, tries := 0, 0; tries < 64; tries++ {
		i := bytes.Index(img[from:], note)
		if i < 0 {
			break
		}
		p := from + i
		from = p + 1
		next := p + len(note) + 20
		if next+20 <= len(img) && binary.LittleEndian.Uint32(img[next:]) == 6 && string(img[next+12:next+18]) == "Linux\x00" {
			id = gnuBuildID(img[p : p+len(note)+20])
		}
	}
	return id
}
