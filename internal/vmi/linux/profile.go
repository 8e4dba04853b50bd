package linux

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// Profile is what introspection needs to know about one kernel build: its
// banner, symbols (link-time addresses) and structure layouts.
//
// Several goroutines may query one Profile at once. Its fields are set when
// it is built and not changed after its first query: what is computed from
// them is kept (see profileCache). To vary a field, copy the Profile.
type Profile struct {
	// Banner is linux_banner, e.g. "Linux version 6.1.0-56-amd64 (...) ...\n".
	Banner string
	// Release is the banner's version word, e.g. "6.1.0-56-amd64".
	Release string
	// BuildID is the hex GNU build id of vmlinux, if it has one.
	BuildID string
	// Compression is how the bzImage payload was compressed.
	Compression Compression
	// Arch is the kernel's architecture: ArchAMD64 ("" in profiles
	// cached before arm64) or ArchARM64.
	Arch    string
	Symbols *Kallsyms
	// BTF holds the structure layouts from the image's .BTF section; ISF
	// holds them from a Volatility 3 symbol table when the image has no
	// .BTF (or its BTF is ignored: ProfileOptions). Layout queries read
	// BTF when it is set, else ISF.
	BTF *BTF
	ISF *ISF

	// cache holds the *profileCache of this Profile: what is worked out
	// from the fields above after load, or attached to it later. It is
	// made on first use (see caches), so that a Profile from NewProfile,
	// from LoadProfile or LoadCachedProfile, or written as a literal
	// behaves the same. It is an atomic.Value, not sync.Once fields, so
	// that a Profile can still be copied to vary a field; the copy gets a
	// cache of its own.
	cache atomic.Value
}

// profileCache holds what a Profile computes about its kernel once and then
// only reads: the structure layouts the object walks use, each computed
// from BTF and kallsyms the first time a walk asks for it, and the image
// facts attached with SetImage.
//
// Any goroutine querying the Profile may read any field, through the
// accessor named in its comment and only through it: each accessor
// computes its field under the sync.Once placed before it, and after that
// the field does not change (image excepted, which is an atomic pointer).
// A layout that cannot be worked out holds the error, and every walk that
// needs it returns that error: computing a layout never fails anything but
// that walk.
//
// Layouts are computed on first use rather than at load because a listing
// needs only its own (a module check has no use for the task layout), and
// because a Profile written as a literal is only filled in after it is
// made.
type profileCache struct {
	// owner is the Profile this cache belongs to. A copy of a Profile
	// starts with the original's cache; caches tells them apart by owner.
	owner *Profile

	// bounds are the link-time bounds of the core text and of the image's
	// symbols, from kallsyms. Read with boundsOf.
	boundsOnce sync.Once
	bounds     symBounds

	// tasks are the offsets the task walks read (task_struct, signal_struct,
	// cred, mm_struct, the path structures, the PID IDR, the run queues),
	// from BTF. Read with layoutForTasks.
	tasksOnce sync.Once
	tasks     *taskLayout

	// modules are struct module's offsets and those of the sysfs module
	// kset, from BTF. Read with layoutForModules.
	modulesOnce sync.Once
	modules     *moduleLayout

	// files are the offsets of task -> files_struct -> fdtable -> struct
	// file, from BTF. Read with layoutForFiles.
	filesOnce sync.Once
	files     *fileLayout

	// sockets are struct socket's and struct sock's offsets, from BTF.
	// Read with layoutForSockets.
	socketsOnce sync.Once
	sockets     *sockLayout

	// lsm are the LSM hook lists' layout: security_hook_heads's members
	// and struct security_hook_list's offsets, from BTF. Read with
	// layoutForLSM.
	lsmOnce sync.Once
	lsm     *lsmLayout

	// fields memoises field and StructSize answers by path ("s.f" or a
	// struct name): the gates ask the same dozen at every stop. The keys
	// are the program's own strings, so the map is bounded by the code.
	fieldsMu sync.Mutex
	fields   map[string]fieldAnswer

	// image holds the kernel image facts the system call checks compare
	// memory with, nil until SetImage (through AttachImage or LoadImage)
	// stores them; a later SetImage replaces them. Read with Image.
	image atomic.Pointer[ImageFacts]
}

// caches returns p's cache, making it on first use. A copy of a Profile
// (q := *p) holds p's cache in q.cache; its owner is then not q, and q gets
// a cache of its own, as a distinct Profile that may differ from p in any
// field. Copying a Profile while another goroutine uses it is a data race,
// as for any struct.
func (p *Profile) caches() *profileCache {
	cur := p.cache.Load()
	if c, _ := cur.(*profileCache); c != nil && c.owner == p {
		return c
	}
	c := &profileCache{owner: p}
	if p.cache.CompareAndSwap(cur, c) {
		return c
	}
	// Another goroutine made p's cache first: only caches stores into
	// p.cache, and only a cache owned by p.
	return p.cache.Load().(*profileCache)
}

var (
	// ErrNoBTF means the kernel has no .BTF section (CONFIG_DEBUG_INFO_BTF=n).
	ErrNoBTF = errors.New("linux: kernel has no .BTF section (needs CONFIG_DEBUG_INFO_BTF)")
	// ErrNoSymbol means a symbol the operation needs is not in kallsyms.
	ErrNoSymbol = errors.New("linux: symbol not found")
	// ErrNoField means a structure or field path is not in BTF.
	ErrNoField = errors.New("linux: structure field not found")
)

// ProfileOptions say where a profile's structure layouts come from when
// the kernel image has no .BTF.
type ProfileOptions struct {
	// Symbols is a Volatility 3 symbol table of the kernel (LoadISF),
	// read for structure layouts when the image has no .BTF section; an
	// image with .BTF is profiled from its BTF and Symbols is not used
	// (unless IgnoreBTF). Nil: a kernel without BTF is refused (ErrNoBTF).
	Symbols *ISF
	// IgnoreBTF profiles the image as if it had no .BTF section, to check
	// a symbol table against the kernel's own BTF. Such a profile is not
	// cached.
	IgnoreBTF bool
}

// NewProfile builds a profile from a kernel image: a bzImage or a vmlinux ELF.
// It does no I/O.
func NewProfile(img []byte) (*Profile, error) { return NewProfileWith(img, ProfileOptions{}) }

// NewProfileWith builds a profile from a kernel image, its structure
// layouts from the image's BTF or else from opts.Symbols, which must then
// be of the same build (ISF.CheckAgainst). It does no I/O.
func NewProfileWith(img []byte, opts ProfileOptions) (*Profile, error) {
	if isARM64Image(img) {
		return newARM64Profile(img, opts)
	}
	if isZImage(img) {
		return newARMHFProfile(img, opts)
	}
	vmlinux, comp, err := ExtractVmlinux(img)
	if err != nil {
		return nil, err
	}
	p := &Profile{Compression: comp}
	if p.Symbols, err = ParseKallsyms(vmlinux); err != nil {
		return nil, err
	}
	f, err := openELF(vmlinux)
	if err != nil {
		return nil, err
	}
	if sec := f.Section(".BTF"); sec != nil && sec.Type != elf.SHT_NOBITS && !opts.IgnoreBTF {
		if sec.Size > uint64(len(vmlinux)) {
			return nil, fmt.Errorf("linux: .BTF section of %d bytes in a %d-byte image", sec.Size, len(vmlinux))
		}
		raw, err := sec.Data()
		if err != nil {
			return nil, fmt.Errorf("linux: read .BTF: %w", err)
		}
		if p.BTF, err = ParseBTF(raw); err != nil {
			return nil, fmt.Errorf("linux: parse .BTF: %w", err)
		}
	} else if p.ISF = opts.Symbols; p.ISF == nil {
		return nil, ErrNoBTF
	}
	if sec := f.Section(".notes"); sec != nil && sec.Type != elf.SHT_NOBITS && sec.Size < 1<<20 {
		if b, err := sec.Data(); err == nil {
			p.BuildID = gnuBuildID(b)
		}
	}
	if err := p.checkText(f); err != nil {
		return nil, err
	}
	if err := p.readBanner(f, vmlinux); err != nil {
		return nil, err
	}
	if p.ISF != nil {
		if err := p.ISF.CheckAgainst(p.Banner, p.Symbols); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// openELF parses an ELF image; debug/elf is not hardened against every
// malformed input, so a panic in it becomes an error.
func openELF(b []byte) (f *elf.File, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("linux: malformed vmlinux ELF: %v", r)
		}
	}()
	f, err = elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("linux: vmlinux is not an ELF file: %w", err)
	}
	return f, nil
}

// checkText cross-checks kallsyms against the ELF: _text must start an
// executable segment.
func (p *Profile) checkText(f *elf.File) error {
	text, err := p.Symbol("_text")
	if err != nil {
		return err
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_LOAD && prog.Flags&elf.PF_X != 0 && prog.Vaddr == text {
			return nil
		}
	}
	return fmt.Errorf("%w: _text at %#x does not start an executable segment", ErrNoKallsyms, text)
}

// readBanner reads linux_banner from the image at its link-time address.
func (p *Profile) readBanner(f *elf.File, img []byte) error {
	addr, ok := p.Symbols.Lookup("linux_banner")
	if !ok {
		return fmt.Errorf("%w: linux_banner", ErrNoSymbol)
	}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_LOAD || addr < prog.Vaddr || addr-prog.Vaddr >= prog.Filesz {
			continue
		}
		off := prog.Off + (addr - prog.Vaddr)
		if off >= uint64(len(img)) {
			break
		}
		b := img[off:min(uint64(len(img)), off+1024)]
		end := bytes.IndexByte(b, 0)
		if end < 0 || !bytes.HasPrefix(b, []byte("Linux version ")) {
			return fmt.Errorf("linux: linux_banner at %#x does not hold a banner", addr)
		}
		p.Banner = string(b[:end])
		if f := strings.Fields(p.Banner); len(f) >= 3 {
			p.Release = f[2]
		}
		return nil
	}
	return fmt.Errorf("linux: linux_banner at %#x is outside the image's segments", addr)
}

func gnuBuildID(notes []byte) string {
	le := binary.LittleEndian
	for len(notes) >= 12 {
		namesz, descsz, typ := uint64(le.Uint32(notes)), uint64(le.Uint32(notes[4:])), le.Uint32(notes[8:])
		notes = notes[12:]
		n, d := (namesz+3)&^3, (descsz+3)&^3
		if n > uint64(len(notes)) || d > uint64(len(notes))-n {
			return ""
		}
		if typ == 3 && namesz == 4 && string(notes[:3]) == "GNU" {
			return hex.EncodeToString(notes[n : n+descsz])
		}
		notes = notes[n+d:]
	}
	return ""
}

// IsARM64 reports whether p is an arm64 kernel's profile.
func (p *Profile) IsARM64() bool { return p.Arch == ArchARM64 }

// Symbol returns a symbol's link-time address.
func (p *Profile) Symbol(name string) (uint64, error) {
	a, ok := p.Symbols.Lookup(name)
	if !ok {
		return 0, fmt.Errorf("%w: %s", ErrNoSymbol, name)
	}
	return a, nil
}

// SymbolList returns the link-time addresses of names, in order, or the
// first one's error the profile lacks.
func (p *Profile) SymbolList(names ...string) ([]uint64, error) {
	out := make([]uint64, len(names))
	for i, n := range names {
		a, err := p.Symbol(n)
		if err != nil {
			return nil, err
		}
		out[i] = a
	}
	return out, nil
}

// FieldOffset returns the byte offset of a field given as a path from a
// structure: "task_struct.comm", "task_struct.se.vruntime". Members of
// anonymous unions and structures are found as if they were direct members.
func (p *Profile) FieldOffset(path string) (uint64, error) {
	off, _, err := p.field(path)
	return off, err
}

// Field returns a field's offset and type.
func (p *Profile) Field(path string) (uint64, FieldType, error) {
	return p.field(path)
}

// fieldAnswer is one memoised answer of field or StructSize.
type fieldAnswer struct {
	off uint64
	typ FieldType
	err error
}

func (p *Profile) field(path string) (uint64, FieldType, error) {
	c := p.caches()
	c.fieldsMu.Lock()
	a, ok := c.fields[path]
	c.fieldsMu.Unlock()
	if !ok {
		a.off, a.typ, a.err = p.lookupField(path)
		c.remember(path, a)
	}
	return a.off, a.typ, a.err
}

// remember stores a field answer.
func (c *profileCache) remember(key string, a fieldAnswer) {
	c.fieldsMu.Lock()
	defer c.fieldsMu.Unlock()
	if c.fields == nil {
		c.fields = map[string]fieldAnswer{}
	}
	c.fields[key] = a
}

// layoutSource answers the structure-layout questions of a Profile:
// BTF, or an ISF symbol table for a kernel without BTF.
type layoutSource interface {
	// field returns the offset and type of the field path parts[1:] in
	// the structure or union parts[0] (len(parts) >= 2).
	field(parts []string) (uint64, FieldType, error)
	// structSize returns the size of the structure name.
	structSize(name string) (uint64, error)
	// enumValue returns the value of the enumerator name, from any enum.
	enumValue(name string) (uint64, bool)
	// members returns the named members of the structure name (see
	// Profile.StructMembers).
	members(name string) ([]Member, error)
}

// layouts returns p's source of structure layouts: BTF, else ISF.
func (p *Profile) layouts() (layoutSource, error) {
	switch {
	case p.BTF != nil:
		return p.BTF, nil
	case p.ISF != nil:
		return p.ISF, nil
	}
	return nil, ErrNoBTF
}

func (p *Profile) lookupField(path string) (uint64, FieldType, error) {
	parts := strings.Split(path, ".")
	if len(parts) < 2 {
		return 0, FieldType{}, fmt.Errorf("%w: %q is not struct.field", ErrNoField, path)
	}
	src, err := p.layouts()
	if err != nil {
		return 0, FieldType{}, fmt.Errorf("%w: %s: %w", ErrNoField, path, err)
	}
	return src.field(parts)
}

// field answers Profile.Field from BTF.
func (b *BTF) field(parts []string) (uint64, FieldType, error) {
	id, err := b.lookup(parts[0])
	if err != nil {
		return 0, FieldType{}, fmt.Errorf("%w: %v", ErrNoField, err)
	}
	typ, err := b.typ(id)
	if err != nil {
		return 0, FieldType{}, fmt.Errorf("%w: %s: %v", ErrNoField, parts[0], err)
	}
	var off uint64
	var m btfMember
	for i, name := range parts[1:] {
		var moff uint64
		var ok bool
		if m, moff, ok = b.findMember(typ, []byte(name), 0); !ok {
			return 0, FieldType{}, fmt.Errorf("%w: %s has no member %q", ErrNoField, strings.Join(parts[:i+1], "."), name)
		}
		if m.bitSize != 0 || moff%8 != 0 {
			return 0, FieldType{}, fmt.Errorf("%w: %s is a bitfield", ErrNoField, strings.Join(parts[:i+2], "."))
		}
		off += moff / 8
		if typ, err = b.resolve(m.typ); err != nil {
			return 0, FieldType{}, fmt.Errorf("%w: %s: %v", ErrNoField, strings.Join(parts[:i+2], "."), err)
		}
	}
	return off, b.fieldType(m.typ), nil
}

// StructSize returns the size in bytes of a structure.
func (p *Profile) StructSize(name string) (uint64, error) {
	c := p.caches()
	key := "sizeof " + name
	c.fieldsMu.Lock()
	a, ok := c.fields[key]
	c.fieldsMu.Unlock()
	if !ok {
		a.off, a.err = p.lookupStructSize(name)
		c.remember(key, a)
	}
	return a.off, a.err
}

func (p *Profile) lookupStructSize(name string) (uint64, error) {
	src, err := p.layouts()
	if err != nil {
		return 0, fmt.Errorf("%w: struct %s: %w", ErrNoField, name, err)
	}
	return src.structSize(name)
}

// structSize answers Profile.StructSize from BTF.
func (b *BTF) structSize(name string) (uint64, error) {
	id, err := b.lookup(name)
	if err == nil {
		var t btfType
		if t, err = b.typ(id); err == nil && t.kind != btfKindStruct {
			err = fmt.Errorf("%s: not found", name) // a union
		}
		if err == nil {
			return uint64(t.sizeType), nil
		}
	}
	return 0, fmt.Errorf("%w: struct %s: %v", ErrNoField, name, err)
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
