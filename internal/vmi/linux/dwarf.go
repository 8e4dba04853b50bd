package linux

import (
	"debug/dwarf"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
)

// LoadSymbols reads a symbol table for a kernel without BTF: a vmlinux
// with DWARF (LoadDWARF) if it is an ELF file, else a Volatility 3 ISF
// (LoadISF).
func LoadSymbols(path string) (*ISF, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("linux: symbol table: %w", err)
	}
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	f.Close()
	if err == nil && string(magic[:]) == elf.ELFMAG {
		return LoadDWARF(path)
	}
	return LoadISF(path)
}

// LoadDWARF reads the structure layouts of a vmlinux with DWARF (such as
// Debian's -dbg package's) into an ISF, as dwarf2json would write them
// (see ISFFromDWARF), with the addresses of its symbol table's _text,
// init_task and the others CheckAgainst compares with kallsyms. All of
// the file's DWARF is read into memory (debug/dwarf): for a distribution
// kernel's ~500 MB of it, converting it once with dwarf2json and giving
// the ISF is lighter.
func LoadDWARF(path string) (*ISF, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("linux: symbol table %s: %w", path, err)
	}
	defer f.Close()
	j, err := isfFileFromVmlinux(f, path, false)
	if err != nil {
		return nil, err
	}
	isf, err := newISF(j)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// The symbols CheckAgainst compares with kallsyms, from the symbol
	// table (a vmlinux has one).
	if syms, err := f.Symbols(); err == nil {
		for _, s := range syms {
			for _, name := range isfCheckSymbols {
				if s.Name == name && s.Value != 0 {
					isf.symbols[name] = s.Value
				}
			}
		}
	}
	return isf, nil
}

// elfDWARF reads f's DWARF; debug/elf and debug/dwarf are not hardened
// against every malformed input, so a panic in them becomes an error.
func elfDWARF(f *elf.File) (d *dwarf.Data, err error) {
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("malformed DWARF: %v", r)
		}
	}()
	return f.DWARF()
}

// ISFFromDWARF builds the layouts of DWARF's named structures, unions and
// enums the way dwarf2json lays them out in an ISF: typedefs and
// qualifiers resolved, the first complete definition of a name kept (a
// kernel's compilation units repeat them), anonymous types named
// unnamed_<n>, anonymous members unnamed_field_<n> marked anonymous,
// bitfields as bitfield types, the enumerators of anonymous enums kept
// too. The result is checked as an ISF file is (limits included).
func ISFFromDWARF(d *dwarf.Data) (isf *ISF, err error) {
	j, err := isfFileFromDWARF(d, 8)
	if err != nil {
		return nil, err
	}
	return newISF(j)
}

// isfFileFromDWARF is ISFFromDWARF's file, for a kernel whose pointers
// are ptrSize bytes (8, or 4 on 32-bit ARM).
func isfFileFromDWARF(d *dwarf.Data, ptrSize uint64) (j *isfFile, err error) {
	defer func() {
		if r := recover(); r != nil {
			j, err = nil, fmt.Errorf("%w: malformed DWARF: %v", ErrBadISF, r)
		}
	}()
	c := &dwarfConv{d: d, j: &isfFile{
		BaseTypes: map[string]isfFileBase{}, UserTypes: map[string]isfFileUser{}, Enums: map[string]isfFileEnum{},
	}}
	c.j.Metadata = &struct {
		Format string `json:"format"`
	}{Format: "6.2.0"}
	size0 := uint64(0)
	c.j.BaseTypes["void"] = isfFileBase{Size: &size0, Kind: "void", Endian: "little"}
	c.j.BaseTypes["pointer"] = isfFileBase{Size: &ptrSize, Kind: "int", Endian: "little"}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return nil, fmt.Errorf("%w: DWARF: %v", ErrBadISF, err)
		}
		if e == nil {
			break
		}
		switch e.Tag {
		case dwarf.TagCompileUnit, dwarf.TagPartialUnit:
			continue // its children are the unit's types
		case dwarf.TagStructType, dwarf.TagUnionType, dwarf.TagClassType, dwarf.TagEnumerationType:
			name, _ := e.Val(dwarf.AttrName).(string)
			decl, _ := e.Val(dwarf.AttrDeclaration).(bool)
			_, named := c.j.UserTypes[name]
			if _, ok := c.j.Enums[name]; ok {
				named = true
			}
			if decl || name != "" && named {
				break
			}
			if name == "" && e.Tag != dwarf.TagEnumerationType {
				break // reached through the member that has it
			}
			t, err := d.Type(e.Offset)
			if err != nil {
				return nil, fmt.Errorf("%w: DWARF type at %#x: %v", ErrBadISF, e.Offset, err)
			}
			if _, err := c.ref(t, 0); err != nil {
				return nil, err
			}
			if err := c.drain(); err != nil {
				return nil, err
			}
		}
		if len(c.j.UserTypes) > maxISFTypes || len(c.j.Enums) > maxISFTypes {
			return nil, fmt.Errorf("%w: over %d types", ErrBadISF, maxISFTypes)
		}
		if e.Children {
			r.SkipChildren()
		}
	}
	return c.j, nil
}

// dwarfConv converts DWARF types into an isfFile.
type dwarfConv struct {
	d *dwarf.Data
	j *isfFile
	// names are the names given to DWARF's anonymous structures, unions
	// and enums (debug/dwarf returns one value per type entry).
	names map[dwarf.Type]string
	// pending are named structures whose fields are still to be filled
	// (user, drain).
	pending []pendingUser
}

var errDWARFDepth = fmt.Errorf("%w: DWARF types nested over %d", ErrBadISF, maxISFDepth)

// ref returns the ISF type reference of t, adding the structures, unions,
// enums and base types it names to the file.
func (c *dwarfConv) ref(t dwarf.Type, depth int) (*isfType, error) {
	if depth > maxISFDepth {
		return nil, errDWARFDepth
	}
	for range maxISFDepth {
		switch x := t.(type) {
		case *dwarf.TypedefType:
			t = x.Type
			continue
		case *dwarf.QualType:
			t = x.Type
			continue
		}
		break
	}
	switch x := t.(type) {
	case nil, *dwarf.VoidType, *dwarf.UnspecifiedType:
		return &isfType{Kind: "base", Name: "void"}, nil
	case *dwarf.TypedefType, *dwarf.QualType:
		return nil, errDWARFDepth
	case *dwarf.PtrType:
		sub, err := c.ref(x.Type, depth+1)
		if err != nil {
			return nil, err
		}
		return &isfType{Kind: "pointer", Subtype: sub}, nil
	case *dwarf.ArrayType:
		sub, err := c.ref(x.Type, depth+1)
		if err != nil {
			return nil, err
		}
		return &isfType{Kind: "array", Count: uint64(max(x.Count, 0)), Subtype: sub}, nil
	case *dwarf.FuncType:
		return &isfType{Kind: "function"}, nil
	case *dwarf.StructType:
		return c.user(x, depth)
	case *dwarf.EnumType:
		name := c.nameOf(x, x.EnumName)
		if _, ok := c.j.Enums[name]; !ok {
			en := isfFileEnum{Size: uint64(max(x.ByteSize, 0)), Constants: make(map[string]json.Number, len(x.Val))}
			for _, v := range x.Val {
				en.Constants[v.Name] = json.Number(strconv.FormatInt(v.Val, 10))
			}
			c.j.Enums[name] = en
		}
		return &isfType{Kind: "enum", Name: name}, nil
	}
	// A base type: int, unsigned int, char, _Bool, float...
	kind := "int"
	switch t.(type) {
	case *dwarf.CharType, *dwarf.UcharType:
		kind = "char"
	case *dwarf.BoolType:
		kind = "bool"
	case *dwarf.FloatType, *dwarf.ComplexType:
		kind = "float"
	case *dwarf.IntType, *dwarf.UintType, *dwarf.AddrType:
	default:
		return &isfType{Kind: "function"}, nil // no size, as a function's
	}
	name, size := t.String(), t.Size()
	if size < 0 || size > 64 {
		return nil, fmt.Errorf("%w: base type %s of size %d", ErrBadISF, name, size)
	}
	if _, ok := c.j.BaseTypes[name]; !ok {
		u := uint64(size)
		c.j.BaseTypes[name] = isfFileBase{Size: &u, Kind: kind, Endian: "little"}
	}
	return &isfType{Kind: "base", Name: name}, nil
}

// nameOf names a structure, union or enum: its own name, or unnamed_<n>.
func (c *dwarfConv) nameOf(t dwarf.Type, name string) string {
	if name != "" {
		return name
	}
	if c.names == nil {
		c.names = map[dwarf.Type]string{}
	}
	if n, ok := c.names[t]; ok {
		return n
	}
	n := fmt.Sprintf("unnamed_%x", len(c.names))
	c.names[t] = n
	return n
}

// user adds structure or union x to the file (its first complete
// definition by name) and returns its reference.
func (c *dwarfConv) user(x *dwarf.StructType, depth int) (*isfType, error) {
	kind := x.Kind // "struct", "union" or "class"
	name := c.nameOf(x, x.StructName)
	ref := &isfType{Kind: kind, Name: name}
	if _, ok := c.j.UserTypes[name]; ok || x.Incomplete {
		return ref, nil
	}
	if len(x.Field) > maxISFFields {
		return nil, fmt.Errorf("%w: %s: %d fields", ErrBadISF, name, len(x.Field))
	}
	size := uint64(max(x.ByteSize, 0))
	u := isfFileUser{Kind: kind, Size: &size, Fields: make(map[string]isfFileField, len(x.Field))}
	// Entered before its fields: a field may point back at it.
	c.j.UserTypes[name] = u
	if x.StructName != "" && depth > 0 {
		// A named type is referred to by name, not nested: its fields
		// are filled from the work list (drain), so that a long chain of
		// structures first met through pointers does not count as depth.
		c.pending = append(c.pending, pendingUser{x, u})
		return ref, nil
	}
	return ref, c.fill(x, u, depth)
}

// pendingUser is a named structure entered by name whose fields are
// still to be filled.
type pendingUser struct {
	x *dwarf.StructType
	u isfFileUser
}

// drain fills the fields of the named structures met so far, and of
// those their fields name, until none is left.
func (c *dwarfConv) drain() error {
	for len(c.pending) > 0 {
		p := c.pending[len(c.pending)-1]
		c.pending = c.pending[:len(c.pending)-1]
		if err := c.fill(p.x, p.u, 0); err != nil {
			return err
		}
	}
	return nil
}

// fill converts x's fields into u's.
func (c *dwarfConv) fill(x *dwarf.StructType, u isfFileUser, depth int) error {
	for i, f := range x.Field {
		typ, err := c.ref(f.Type, depth+1)
		if err != nil {
			return err
		}
		off := uint64(max(f.ByteOffset, 0))
		if f.BitSize != 0 {
			// DWARF 4+ gives the bit offset from the structure's start
			// (DataBitOffset); DWARF 2/3 the big-endian offset within a
			// storage unit of ByteSize at ByteOffset.
			bit := uint64(max(f.DataBitOffset, 0))
			if f.DataBitOffset == 0 && f.BitOffset != 0 {
				bit = uint64(max(f.ByteOffset, 0))*8 + uint64(max(f.ByteSize*8-f.BitOffset-f.BitSize, 0))
			}
			off = bit / 8
			typ = &isfType{Kind: "bitfield", BitPosition: bit % 8, BitLength: uint64(max(f.BitSize, 1)), Type: typ}
		}
		fname, anon := f.Name, false
		if fname == "" {
			fname, anon = fmt.Sprintf("unnamed_field_%x", i), true
		}
		u.Fields[fname] = isfFileField{Offset: &off, Type: typ, Anonymous: anon}
	}
	return nil
}
