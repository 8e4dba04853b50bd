package linux

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ModuleBTF is a kernel module's split BTF (the .BTF section of its .ko,
// built with CONFIG_DEBUG_INFO_BTF_MODULES): its type IDs continue after
// the kernel's last one and its string offsets after the kernel's string
// section, so names and member types may live in either. Only what
// structure layouts need is read: struct and union members by name.
//
// Every read is bounds-checked; a malformed section gives errors, never a
// panic. A ModuleBTF is immutable once parsed.
type ModuleBTF struct {
	base   *BTF
	nBase  uint32 // the kernel's type count: module IDs start at nBase+1
	strLen uint64 // the kernel's string section length
	types  []byte // the module's type section
	strs   []byte // the module's string section
	offs   []uint32
}

// maxModuleBTF bounds a module's .BTF section (9p's is ~40 KiB).
const maxModuleBTF = 16 << 20

// ParseModuleBTF reads the .BTF section of the module image ko against
// base, its kernel's BTF.
func ParseModuleBTF(base *BTF, ko []byte) (*ModuleBTF, error) {
	raw, err := ModuleBTFSection(ko)
	if err != nil {
		return nil, err
	}
	return ParseSplitBTF(base, raw)
}

// ModuleBTFSection returns the .BTF section of the module image ko.
func ModuleBTFSection(ko []byte) ([]byte, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("linux: module BTF: %w", err)
	}
	sec := f.Section(".BTF")
	if sec == nil || sec.Type == elf.SHT_NOBITS {
		return nil, fmt.Errorf("%w: the module has no .BTF section (a kernel without CONFIG_DEBUG_INFO_BTF_MODULES)", ErrBadBTF)
	}
	if sec.Size > maxModuleBTF {
		return nil, fmt.Errorf("%w: module .BTF is %d bytes", ErrBadBTF, sec.Size)
	}
	raw, err := io.ReadAll(io.LimitReader(sec.Open(), maxModuleBTF))
	if err != nil {
		return nil, fmt.Errorf("linux: module BTF: %w", err)
	}
	return raw, nil
}

// ParseSplitBTF reads a module's .BTF section (ModuleBTFSection) against
// base, its kernel's BTF.
func ParseSplitBTF(base *BTF, raw []byte) (*ModuleBTF, error) {
	if base == nil {
		return nil, errors.New("linux: module BTF: no kernel BTF to split from")
	}
	return parseSplitBTF(base, raw)
}

func parseSplitBTF(base *BTF, raw []byte) (*ModuleBTF, error) {
	if len(raw) < 24 {
		return nil, fmt.Errorf("%w: module .BTF too short", ErrBadBTF)
	}
	le := binary.LittleEndian
	if le.Uint16(raw) != 0xeb9f {
		return nil, fmt.Errorf("%w: module .BTF: bad magic (only little-endian BTF is read)", ErrBadBTF)
	}
	hdrLen := uint64(le.Uint32(raw[4:]))
	typeOff, typeLen := uint64(le.Uint32(raw[8:])), uint64(le.Uint32(raw[12:]))
	strOff, strLen := uint64(le.Uint32(raw[16:])), uint64(le.Uint32(raw[20:]))
	size := uint64(len(raw))
	if hdrLen < 24 || hdrLen > size || hdrLen+typeOff+typeLen > size || hdrLen+strOff+strLen > size {
		return nil, fmt.Errorf("%w: module .BTF sections out of bounds", ErrBadBTF)
	}
	m := &ModuleBTF{base: base, nBase: uint32(base.NumTypes()), strLen: base.strs.Len,
		types: raw[hdrLen+typeOff : hdrLen+typeOff+typeLen], strs: raw[hdrLen+strOff : hdrLen+strOff+strLen]}
	for off := uint64(0); off < uint64(len(m.types)); {
		if off+btfTypeLen > uint64(len(m.types)) || len(m.offs) >= 1<<20 {
			return nil, fmt.Errorf("%w: module type %d out of bounds", ErrBadBTF, len(m.offs)+1)
		}
		info := le.Uint32(m.types[off+4:])
		n, ok := btfExtra(info>>24&0x1f, info&0xffff)
		if !ok || off+btfTypeLen+n > uint64(len(m.types)) {
			return nil, fmt.Errorf("%w: module type %d out of bounds", ErrBadBTF, len(m.offs)+1)
		}
		m.offs = append(m.offs, uint32(off))
		off += btfTypeLen + n
	}
	return m, nil
}

// str resolves a string offset of the split section.
func (m *ModuleBTF) str(off uint32) []byte {
	if uint64(off) < m.strLen {
		return m.base.str(off)
	}
	o := uint64(off) - m.strLen
	if o >= uint64(len(m.strs)) {
		return nil
	}
	if j := bytes.IndexByte(m.strs[o:], 0); j >= 0 {
		return m.strs[o : o+uint64(j)]
	}
	return nil
}

// typ returns the record of type id, the kernel's or the module's.
func (m *ModuleBTF) typ(id uint32) (btfType, error) {
	if id <= m.nBase {
		return m.base.typ(id)
	}
	i := id - m.nBase - 1
	if int(i) >= len(m.offs) {
		return btfType{}, fmt.Errorf("%w: no type %d", ErrBadBTF, id)
	}
	le := binary.LittleEndian
	off := uint64(m.offs[i])
	r := m.types[off:]
	info := le.Uint32(r[4:])
	t := btfType{id: id, nameOff: le.Uint32(r), kind: info >> 24 & 0x1f, vlen: info & 0xffff, kflag: info>>31 != 0, sizeType: le.Uint32(r[8:])}
	n, _ := btfExtra(t.kind, t.vlen) // checked by parseSplitBTF
	t.data = r[btfTypeLen : btfTypeLen+n]
	return t, nil
}

func (m *ModuleBTF) resolve(id uint32) (btfType, error) { return resolveBTF(m.typ, id) }

// lookup finds the module's own structure called name (exactly one).
func (m *ModuleBTF) lookup(name string) (btfType, error) {
	var found []btfType
	for i := range m.offs {
		t, err := m.typ(m.nBase + 1 + uint32(i))
		if err != nil {
			return btfType{}, err
		}
		if (t.kind == btfKindStruct || t.kind == btfKindUnion) && t.vlen > 0 && string(m.str(t.nameOff)) == name {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return btfType{}, fmt.Errorf("linux: module BTF: struct %s: not found", name)
	}
	return btfType{}, fmt.Errorf("linux: module BTF: struct %s: %d types of that name", name, len(found))
}

// member finds name among t's members, descending into anonymous ones;
// it returns the member's type and byte offset.
func (m *ModuleBTF) member(t btfType, name string, depth int) (uint32, uint64, bool) {
	if depth > maxBTFDepth || t.kind != btfKindStruct && t.kind != btfKindUnion {
		return 0, 0, false
	}
	le := binary.LittleEndian
	for pass := range 2 {
		for i := range t.vlen {
			r := t.data[12*i:]
			nameOff, typ, bitOff := le.Uint32(r), le.Uint32(r[4:]), le.Uint32(r[8:])
			if t.kflag {
				bitOff &= 0xffffff
			}
			n := m.str(nameOff)
			if pass == 0 && len(n) > 0 && string(n) == name && bitOff%8 == 0 {
				return typ, uint64(bitOff / 8), true
			}
			if pass == 1 && len(n) == 0 {
				inner, err := m.resolve(typ)
				if err != nil {
					continue
				}
				if ityp, off, ok := m.member(inner, name, depth+1); ok {
					return ityp, uint64(bitOff/8) + off, true
				}
			}
		}
	}
	return 0, 0, false
}

// FieldOffset returns the byte offset of a dotted field path ("p9_req_t.tc.tag")
// in a structure the module defines; the path may pass through members
// whose types are the module's or the kernel's.
func (m *ModuleBTF) FieldOffset(path string) (uint64, error) {
	parts := strings.Split(path, ".")
	if len(parts) < 2 {
		return 0, fmt.Errorf("linux: module BTF: field path %q", path)
	}
	t, err := m.lookup(parts[0])
	if err != nil {
		return 0, err
	}
	var total uint64
	for i, p := range parts[1:] {
		typ, off, ok := m.member(t, p, 0)
		if !ok {
			return 0, fmt.Errorf("linux: module BTF: %s: no member %s", strings.Join(parts[:i+1], "."), p)
		}
		total += off
		if i == len(parts)-2 {
			break
		}
		if t, err = m.resolve(typ); err != nil {
			return 0, err
		}
	}
	return total, nil
}
