package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
)

// BTF is a kernel's type information (its .BTF section), read where it
// lies: the section (in memory, or in the profile cache file), one offset
// per type and an index of the named structures and unions, and nothing
// decoded. A lookup reads the few records it needs; no type graph is
// built. From the profile cache (LoadCachedProfile) the section and its
// index stay in the file and are read with pread when a lookup needs
// them: a kernel's ~5 MB of types then cost the monitor nothing resident
// but a few blocks of its string section (lookups are memoised by
// Profile, and all of them happen when layouts are first computed).
//
// Every read is bounds-checked: a malformed section (a kernel image is
// input) gives errors, never a panic. Only little-endian BTF (x86-64) is
// read.
//
// A BTF is immutable; any number of goroutines may query it.
type BTF struct {
	src io.ReaderAt // the section, header included, at offset 0
	// size is the section's length; types and strs are its type and
	// string sections, as offsets into src.
	size        uint64
	types, strs section
	// offs(i) is the offset in the type section of type ID i+1 (ID 0 is
	// void).
	offs u32Table
	// named holds the IDs of the named structures and unions, sorted by
	// name, then ID.
	named u32Table
	// blocks caches blocks of the string section.
	blocks blockCache
}

// u32Table is a table of uint32s, in memory or in a file.
type u32Table struct {
	mem []uint32
	r   io.ReaderAt // if mem is nil: n little-endian uint32s at off
	off int64
	n   int
}

func (t *u32Table) len() int {
	if t.mem != nil {
		return len(t.mem)
	}
	return t.n
}

// at returns entry i; ok is false if i is out of range or unreadable.
func (t *u32Table) at(i int) (uint32, bool) {
	if i < 0 || i >= t.len() {
		return 0, false
	}
	if t.mem != nil {
		return t.mem[i], true
	}
	var b [4]byte
	if _, err := t.r.ReadAt(b[:], t.off+4*int64(i)); err != nil {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b[:]), true
}

// blockCache keeps the last few blocks read of a string section.
type blockCache struct {
	mu   sync.Mutex
	next int // the slot the next block replaces
	blk  [btfCacheBlocks]struct {
		start int64 // offset in src; -1 if empty
		b     []byte
	}
}

const (
	btfBlockSize   = 4 << 10
	btfCacheBlocks = 8
)

// readAt reads n bytes at off in the section.
func (b *BTF) readAt(off, n uint64) ([]byte, error) {
	if n > b.size || off > b.size-n {
		return nil, fmt.Errorf("%w: %d bytes at %d out of bounds", ErrBadBTF, n, off)
	}
	buf := make([]byte, n)
	if _, err := b.src.ReadAt(buf, int64(off)); err != nil {
		return nil, fmt.Errorf("linux: read BTF: %w", err)
	}
	return buf, nil
}

// Raw returns the section as it is.
func (b *BTF) Raw() ([]byte, error) { return b.readAt(0, b.size) }

// BTF type kinds (include/uapi/linux/btf.h).
const (
	btfKindInt      = 1
	btfKindPtr      = 2
	btfKindArray    = 3
	btfKindStruct   = 4
	btfKindUnion    = 5
	btfKindEnum     = 6
	btfKindFwd      = 7
	btfKindTypedef  = 8
	btfKindVolatile = 9
	btfKindConst    = 10
	btfKindRestrict = 11
	btfKindFunc     = 12
	btfKindProto    = 13
	btfKindVar      = 14
	btfKindDatasec  = 15
	btfKindFloat    = 16
	btfKindDeclTag  = 17
	btfKindTypeTag  = 18
	btfKindEnum64   = 19
)

const (
	btfMagic     = 0xeb9f
	btfHeaderLen = 24
	btfTypeLen   = 12 // struct btf_type: name_off, info, size/type
	// maxBTFTypes bounds the type count (a distribution kernel has
	// ~130,000; the kernel's own limit is 2^31).
	maxBTFTypes = 1 << 22
	// maxBTFDepth bounds chains of typedefs, qualifiers, arrays and
	// anonymous members, as cilium/ebpf's maxResolveDepth does.
	maxBTFDepth = 32
)

// ErrBadBTF means the .BTF section is malformed.
var ErrBadBTF = errors.New("linux: malformed .BTF section")

// btfSections checks the header of a section of size bytes, hdr its
// first btfHeaderLen bytes, and returns its type and string sections.
func btfSections(hdr []byte, size uint64) (types, strs section, err error) {
	if len(hdr) < btfHeaderLen || size < btfHeaderLen {
		return types, strs, fmt.Errorf("%w: %d bytes", ErrBadBTF, size)
	}
	if m := binary.LittleEndian.Uint16(hdr); m != btfMagic {
		if binary.BigEndian.Uint16(hdr) == btfMagic {
			return types, strs, fmt.Errorf("%w: big-endian BTF is not supported", ErrBadBTF)
		}
		return types, strs, fmt.Errorf("%w: magic %#x", ErrBadBTF, m)
	}
	le := binary.LittleEndian
	hdrLen := uint64(le.Uint32(hdr[4:]))
	typeOff, typeLen := uint64(le.Uint32(hdr[8:])), uint64(le.Uint32(hdr[12:]))
	strOff, strLen := uint64(le.Uint32(hdr[16:])), uint64(le.Uint32(hdr[20:]))
	if hdrLen < btfHeaderLen || hdrLen > size {
		return types, strs, fmt.Errorf("%w: header length %d", ErrBadBTF, hdrLen)
	}
	body := size - hdrLen
	if typeOff+typeLen > body || strOff+strLen > body {
		return types, strs, fmt.Errorf("%w: sections out of bounds", ErrBadBTF)
	}
	return section{hdrLen + typeOff, typeLen}, section{hdrLen + strOff, strLen}, nil
}

// btfExtra is the length of the data that follows a btf_type of kind with
// vlen entries.
func btfExtra(kind, vlen uint32) (uint64, bool) {
	v := uint64(vlen)
	switch kind {
	case btfKindPtr, btfKindFwd, btfKindTypedef, btfKindVolatile, btfKindConst, btfKindRestrict,
		btfKindFunc, btfKindFloat, btfKindTypeTag:
		return 0, true
	case btfKindInt, btfKindVar, btfKindDeclTag:
		return 4, true
	case btfKindArray:
		return 12, true
	case btfKindStruct, btfKindUnion, btfKindDatasec, btfKindEnum64:
		return 12 * v, true
	case btfKindEnum, btfKindProto:
		return 8 * v, true
	}
	return 0, false
}

// ParseBTF reads a .BTF section: it checks every type record's bounds and
// indexes them. It keeps raw, not a copy.
func ParseBTF(raw []byte) (*BTF, error) {
	hdr := raw[:min(len(raw), btfHeaderLen)]
	ts, ss, err := btfSections(hdr, uint64(len(raw)))
	if err != nil {
		return nil, err
	}
	types, strs := raw[ts.Off:ts.Off+ts.Len], raw[ss.Off:ss.Off+ss.Len]
	if len(strs) > 0 && (strs[0] != 0 || strs[len(strs)-1] != 0) {
		return nil, fmt.Errorf("%w: string section is not NUL-delimited", ErrBadBTF)
	}
	b := &BTF{src: bytes.NewReader(raw), size: uint64(len(raw)), types: ts, strs: ss, offs: u32Table{mem: []uint32{}},
		named: u32Table{mem: []uint32{}}}
	b.blocks.reset()
	le := binary.LittleEndian
	var offs, named []uint32
	for off := uint64(0); off < uint64(len(types)); {
		if len(offs) >= maxBTFTypes {
			return nil, fmt.Errorf("%w: over %d types", ErrBadBTF, maxBTFTypes)
		}
		if off+btfTypeLen > uint64(len(types)) {
			return nil, fmt.Errorf("%w: truncated type %d", ErrBadBTF, len(offs)+1)
		}
		info := le.Uint32(types[off+4:])
		kind, vlen := info>>24&0x1f, info&0xffff
		n, ok := btfExtra(kind, vlen)
		if !ok {
			return nil, fmt.Errorf("%w: type %d has unknown kind %d", ErrBadBTF, len(offs)+1, kind)
		}
		if off+btfTypeLen+n > uint64(len(types)) {
			return nil, fmt.Errorf("%w: truncated type %d", ErrBadBTF, len(offs)+1)
		}
		offs = append(offs, uint32(off))
		if (kind == btfKindStruct || kind == btfKindUnion) && le.Uint32(types[off:]) != 0 {
			named = append(named, uint32(len(offs)))
		}
		off += btfTypeLen + n
	}
	b.offs.mem = offs
	if b.offs.mem == nil {
		b.offs.mem = []uint32{}
	}
	nameOf := func(id uint32) []byte {
		o := le.Uint32(types[offs[id-1]:])
		if uint64(o) >= uint64(len(strs)) {
			return nil
		}
		s := strs[o:]
		return s[:bytes.IndexByte(s, 0)]
	}
	sort.Slice(named, func(i, j int) bool {
		c := bytes.Compare(nameOf(named[i]), nameOf(named[j]))
		return c < 0 || c == 0 && named[i] < named[j]
	})
	if named != nil {
		b.named.mem = named
	}
	return b, nil
}

// btfFromIndex is the BTF section of size bytes at off in r, whose index
// ParseBTF built earlier and the cache keeps beside it: nOffs entries at
// offsAt, nNamed at namedAt. The index is trusted for order only; every
// ID and offset in it is checked when used.
func btfFromIndex(r io.ReaderAt, off, size uint64, offsAt int64, nOffs int, namedAt int64, nNamed int) (*BTF, error) {
	if nOffs > maxBTFTypes || nNamed > nOffs {
		return nil, fmt.Errorf("%w: %d types", ErrBadBTF, nOffs)
	}
	src := io.NewSectionReader(r, int64(off), int64(size))
	var hdr [btfHeaderLen]byte
	if _, err := src.ReadAt(hdr[:], 0); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadBTF, err)
	}
	ts, ss, err := btfSections(hdr[:], size)
	if err != nil {
		return nil, err
	}
	b := &BTF{src: src, size: size, types: ts, strs: ss,
		offs: u32Table{r: r, off: offsAt, n: nOffs}, named: u32Table{r: r, off: namedAt, n: nNamed}}
	b.blocks.reset()
	return b, nil
}

// btfType is one type record: its header fields and the data after it.
type btfType struct {
	id      uint32
	nameOff uint32
	kind    uint32
	vlen    uint32
	kflag   bool
	// sizeType is the size (int, struct, union, enum, datasec, float) or
	// the referenced type ID (ptr, typedef, qualifiers, func, var).
	sizeType uint32
	data     []byte
}

// typ returns the record of type id; id 0 (void) has none.
func (b *BTF) typ(id uint32) (btfType, error) {
	o, ok := b.offs.at(int(id) - 1)
	if id == 0 || !ok {
		return btfType{}, fmt.Errorf("%w: no type %d", ErrBadBTF, id)
	}
	off := uint64(o)
	if off+btfTypeLen > b.types.Len {
		return btfType{}, fmt.Errorf("%w: type %d out of bounds", ErrBadBTF, id)
	}
	r, err := b.readAt(b.types.Off+off, btfTypeLen)
	if err != nil {
		return btfType{}, err
	}
	le := binary.LittleEndian
	info := le.Uint32(r[4:])
	t := btfType{id: id, nameOff: le.Uint32(r), kind: info >> 24 & 0x1f, vlen: info & 0xffff,
		kflag: info>>31 != 0, sizeType: le.Uint32(r[8:])}
	n, ok := btfExtra(t.kind, t.vlen)
	if !ok || off+btfTypeLen+n > b.types.Len {
		return btfType{}, fmt.Errorf("%w: type %d out of bounds", ErrBadBTF, id)
	}
	if n > 0 {
		if t.data, err = b.readAt(b.types.Off+off+btfTypeLen, n); err != nil {
			return btfType{}, err
		}
	}
	return t, nil
}

// name returns the name of type id (nil if it has none or is out of
// bounds).
func (b *BTF) name(id uint32) []byte {
	t, err := b.typ(id)
	if err != nil {
		return nil
	}
	return b.str(t.nameOff)
}

// str returns the NUL-terminated string at off in the string section (nil
// if it is out of bounds, unterminated or longer than a block).
func (b *BTF) str(off uint32) []byte {
	if uint64(off) >= b.strs.Len {
		return nil
	}
	at := int64(b.strs.Off) + int64(off)
	for _, start := range []int64{at &^ (btfBlockSize - 1), at} {
		blk := b.blocks.get(b, start)
		if i := at - start; i < int64(len(blk)) {
			if j := bytes.IndexByte(blk[i:], 0); j >= 0 {
				return blk[i : i+int64(j)]
			}
		}
	}
	return nil
}

func (c *blockCache) reset() {
	for i := range c.blk {
		c.blk[i].start = -1
	}
}

// get returns the block of up to btfBlockSize bytes of b's string section
// at start (an offset in b's section): the string section's end bounds it.
func (c *blockCache) get(b *BTF, start int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.blk {
		if c.blk[i].start == start {
			return c.blk[i].b
		}
	}
	end := min(start+btfBlockSize, int64(b.strs.Off+b.strs.Len))
	if end <= start {
		return nil
	}
	buf, err := b.readAt(uint64(start), uint64(end-start))
	if err != nil {
		return nil
	}
	c.blk[c.next].start, c.blk[c.next].b = start, buf
	c.next = (c.next + 1) % len(c.blk)
	return buf
}

// NumTypes returns the number of types, void not counted.
func (b *BTF) NumTypes() int { return b.offs.len() }

// lookup returns the ID of the structure called name, or else of the
// union called name. More than one of the kind found first is an error,
// as with cilium/ebpf's Spec.TypeByName.
func (b *BTF) lookup(name string) (uint32, error) {
	key := []byte(name)
	namedAt := func(i int) uint32 { id, _ := b.named.at(i); return id }
	n := b.named.len()
	i := sort.Search(n, func(i int) bool { return bytes.Compare(b.name(namedAt(i)), key) >= 0 })
	var structs, unions []uint32
	for ; i < n && bytes.Equal(b.name(namedAt(i)), key); i++ {
		t, err := b.typ(namedAt(i))
		if err != nil {
			return 0, err
		}
		switch t.kind {
		case btfKindStruct:
			structs = append(structs, t.id)
		case btfKindUnion:
			unions = append(unions, t.id)
		}
		if len(structs)+len(unions) > 64 {
			break
		}
	}
	for _, ids := range [][]uint32{structs, unions} {
		switch len(ids) {
		case 0:
			continue
		case 1:
			return ids[0], nil
		default:
			return 0, fmt.Errorf("%s: %d types of that name", name, len(ids))
		}
	}
	return 0, fmt.Errorf("%s: not found", name)
}

// resolve skips typedefs and qualifiers (const, volatile, restrict, type
// tags) from id, as btf.UnderlyingType does. Void resolves to itself
// (a zero btfType).
func (b *BTF) resolve(id uint32) (btfType, error) { return resolveBTF(b.typ, id) }

// resolveBTF follows typedefs and qualifiers from id through typ (a
// kernel's or a module's type table), at most maxBTFDepth steps.
func resolveBTF(typ func(uint32) (btfType, error), id uint32) (btfType, error) {
	for range maxBTFDepth {
		if id == 0 {
			return btfType{}, nil
		}
		t, err := typ(id)
		if err != nil {
			return t, err
		}
		switch t.kind {
		case btfKindTypedef, btfKindVolatile, btfKindConst, btfKindRestrict, btfKindTypeTag:
			id = t.sizeType
		default:
			return t, nil
		}
	}
	return btfType{}, fmt.Errorf("%w: type %d: typedef chain over %d", ErrBadBTF, id, maxBTFDepth)
}

// sizeof returns the size of type id in bytes, as btf.Sizeof does.
func (b *BTF) sizeof(id uint32) (uint64, error) {
	n := uint64(1)
	for range maxBTFDepth {
		t, err := b.resolve(id)
		if err != nil {
			return 0, err
		}
		var size uint64
		switch t.kind {
		case btfKindInt, btfKindStruct, btfKindUnion, btfKindEnum, btfKindEnum64, btfKindDatasec, btfKindFloat:
			size = uint64(t.sizeType)
		case btfKindPtr:
			size = 8
		case btfKindArray:
			elem, nelems := binary.LittleEndian.Uint32(t.data), uint64(binary.LittleEndian.Uint32(t.data[8:]))
			if nelems != 0 && n > (1<<40)/nelems {
				return 0, fmt.Errorf("%w: type %d: array too large", ErrBadBTF, id)
			}
			n *= nelems
			id = elem
			continue
		default:
			return 0, fmt.Errorf("type %d of kind %d has no size", t.id, t.kind)
		}
		if size > 1<<40/max(n, 1) {
			return 0, fmt.Errorf("%w: type %d: too large", ErrBadBTF, id)
		}
		return n * size, nil
	}
	return 0, fmt.Errorf("%w: type %d: array chain over %d", ErrBadBTF, id, maxBTFDepth)
}

// btfMember is one member of a structure or union.
type btfMember struct {
	name uint32 // string offset
	typ  uint32
	// bitOff is the member's offset in bits; bitSize is its width if it
	// is a bitfield, else 0.
	bitOff, bitSize uint32
}

// member returns member i of struct or union t. Preconditions: i < t.vlen.
func (b *BTF) member(t btfType, i uint32) btfMember {
	le := binary.LittleEndian
	r := t.data[12*i:]
	m := btfMember{name: le.Uint32(r), typ: le.Uint32(r[4:]), bitOff: le.Uint32(r[8:])}
	if t.kflag {
		m.bitSize, m.bitOff = m.bitOff>>24, m.bitOff&0xffffff
		return m
	}
	// Without kind_flag a bitfield is an int type at a bit offset, or
	// whose bits fill other than its size (BTF before kind_flag;
	// cilium/ebpf's legacy bitfields).
	if it, err := b.typ(m.typ); err == nil && it.kind == btfKindInt {
		enc := le.Uint32(it.data)
		bits, off := enc&0xff, enc>>16&0xff
		if off != 0 || (bits+7)/8 != it.sizeType {
			m.bitSize, m.bitOff = bits, m.bitOff+off
		}
	}
	return m
}

// findMember finds name among the members of t (a struct or union),
// descending into anonymous members; it returns the member and its bit
// offset from t's start.
func (b *BTF) findMember(t btfType, name []byte, depth int) (btfMember, uint64, bool) {
	if depth > maxBTFDepth || t.kind != btfKindStruct && t.kind != btfKindUnion {
		return btfMember{}, 0, false
	}
	for i := range t.vlen {
		if m := b.member(t, i); bytes.Equal(b.str(m.name), name) && m.name != 0 {
			return m, uint64(m.bitOff), true
		}
	}
	for i := range t.vlen {
		m := b.member(t, i)
		if m.name != 0 && len(b.str(m.name)) > 0 {
			continue
		}
		inner, err := b.resolve(m.typ)
		if err != nil {
			continue
		}
		if im, off, ok := b.findMember(inner, name, depth+1); ok {
			return im, uint64(m.bitOff) + off, true
		}
	}
	return btfMember{}, 0, false
}

// TypeKind is the kind of a field's type, typedefs and qualifiers
// resolved.
type TypeKind uint8

// The kinds FieldType distinguishes.
const (
	KindOther TypeKind = iota
	KindInt
	KindPointer
	KindArray
	KindStruct
	KindUnion
	KindEnum
)

// FieldType describes the type of a structure field, typedefs and
// qualifiers resolved.
type FieldType struct {
	Kind TypeKind
	// Size is the type's size in bytes (0 if it has none).
	Size uint64
	// Nelems and ElemSize describe an array: its element count and the
	// size of one element.
	Nelems, ElemSize uint64
	// id is the resolved type's ID in its BTF.
	id uint32
}

// fieldType describes type id.
func (b *BTF) fieldType(id uint32) FieldType {
	t, err := b.resolve(id)
	if err != nil || t.id == 0 {
		return FieldType{}
	}
	ft := FieldType{id: t.id}
	switch t.kind {
	case btfKindInt:
		ft.Kind = KindInt
	case btfKindPtr:
		ft.Kind = KindPointer
	case btfKindArray:
		ft.Kind = KindArray
		ft.Nelems = uint64(binary.LittleEndian.Uint32(t.data[8:]))
		ft.ElemSize, _ = b.sizeof(binary.LittleEndian.Uint32(t.data))
	case btfKindStruct:
		ft.Kind = KindStruct
	case btfKindUnion:
		ft.Kind = KindUnion
	case btfKindEnum, btfKindEnum64:
		ft.Kind = KindEnum
	}
	ft.Size, _ = b.sizeof(t.id)
	return ft
}

// enumValue returns the value of the enumerator called name, from any
// enum: every type is read (~0.1 s on a distribution kernel).
func (b *BTF) enumValue(name string) (uint64, bool) {
	key := []byte(name)
	le := binary.LittleEndian
	for id := uint32(1); int(id) <= b.offs.len(); id++ {
		t, err := b.typ(id)
		if err != nil {
			return 0, false
		}
		switch t.kind {
		case btfKindEnum:
			for i := range t.vlen {
				if r := t.data[8*i:]; bytes.Equal(b.str(le.Uint32(r)), key) {
					v := uint64(le.Uint32(r[4:]))
					if t.kflag { // signed
						v = uint64(int64(int32(le.Uint32(r[4:]))))
					}
					return v, true
				}
			}
		case btfKindEnum64:
			for i := range t.vlen {
				if r := t.data[12*i:]; bytes.Equal(b.str(le.Uint32(r)), key) {
					return uint64(le.Uint32(r[4:])) | uint64(le.Uint32(r[8:]))<<32, true
				}
			}
		}
	}
	return 0, false
}
