package linux

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/ulikunitz/xz"
)

// ISF is a kernel's structure layouts from a Volatility 3 symbol table
// (its "Intermediate Symbol Format", the JSON that dwarf2json writes from
// a vmlinux's DWARF), for kernels built without .BTF. It answers the same
// questions as BTF (a field's offset and type, a structure's size, an
// enumerator's value); Profile asks it only when it has no BTF.
//
// An ISF file is input: ParseISF reads at most MaxISFSize bytes, caps the
// number of types, fields, enumerators and symbols and the nesting of
// type references, and checks that every size, offset and count is one a
// kernel structure can have. A malformed file gives an error, never a
// panic.
//
// The symbols of the file (link-time addresses, as kallsyms gives them
// before KASLR) are not used for introspection: addresses still come from
// the image's kallsyms. Profile cross-checks a few of them against
// kallsyms, and the banner when the file has it (CheckAgainst), so that a
// symbol table of another build is refused.
//
// An ISF is immutable; any number of goroutines may query it.
type ISF struct {
	ptrSize uint64
	base    map[string]isfBase
	user    map[string]*isfStruct
	enums   map[string]*isfEnum
	// enumNames lists the enums in name order, for a deterministic
	// enumerator search.
	enumNames []string
	// symbols are the link-time addresses of the file's symbols.
	symbols map[string]uint64
	// banner is linux_banner's constant data, if the file has it.
	banner string
}

type isfBase struct {
	size uint64
	kind string // "int", "char", "bool", "float", "void"
}

type isfStruct struct {
	union  bool
	size   uint64
	fields map[string]isfField
	// anon are the anonymous members, in offset order (then name).
	anon []string
}

type isfField struct {
	off  uint64
	typ  *isfType
	anon bool
}

type isfEnum struct {
	size      uint64
	constants map[string]uint64 // as the enum's bits, sign-extended
}

// isfType is a type reference: {"kind": "pointer", "subtype": {...}},
// {"kind": "struct", "name": "list_head"}, {"kind": "array", "count": 16,
// "subtype": {...}}, {"kind": "bitfield", "bit_position": 3, "bit_length":
// 1, "type": {...}}, {"kind": "base", "name": "int"}, {"kind": "enum",
// ...}, {"kind": "union", ...}, {"kind": "function"}.
type isfType struct {
	Kind        string   `json:"kind"`
	Name        string   `json:"name"`
	Count       uint64   `json:"count"`
	Subtype     *isfType `json:"subtype"`
	Type        *isfType `json:"type"`
	BitPosition uint64   `json:"bit_position"`
	BitLength   uint64   `json:"bit_length"`
}

// Limits on an ISF file. A distribution kernel's table (all types and
// symbols, from dwarf2json) is about 30 MB of JSON with ~10,000 user types
// and ~150,000 symbols; a structure has at most a few hundred fields.
const (
	// MaxISFSize caps the JSON read (after xz decompression).
	MaxISFSize = 256 << 20
	// maxISFTypes caps user types, base types and enums, each.
	maxISFTypes = 1 << 20
	// maxISFFields caps one structure's fields and one enum's constants
	// (BTF's own limit is 65535).
	maxISFFields = 1 << 16
	// maxISFSymbols caps the symbols.
	maxISFSymbols = 1 << 22
	// maxISFDepth caps the nesting of type references (an array of
	// arrays of pointers...) and of anonymous members.
	maxISFDepth = 32
	// maxISFObject caps a size, an offset or an array's total size.
	maxISFObject = 1 << 40
)

// ErrBadISF means a symbol table is not a valid ISF file.
var ErrBadISF = errors.New("linux: malformed ISF symbol table")

// isfFile is the JSON of an ISF file, as decoded (or as built from
// DWARF by ISFFromDWARF).
type isfFile struct {
	Metadata *struct {
		Format string `json:"format"`
	} `json:"metadata"`
	BaseTypes map[string]isfFileBase   `json:"base_types"`
	UserTypes map[string]isfFileUser   `json:"user_types"`
	Enums     map[string]isfFileEnum   `json:"enums"`
	Symbols   map[string]isfFileSymbol `json:"symbols"`
}

type isfFileBase struct {
	Size   *uint64 `json:"size"`
	Kind   string  `json:"kind"`
	Endian string  `json:"endian"`
}

type isfFileUser struct {
	Kind   string                  `json:"kind"`
	Size   *uint64                 `json:"size"`
	Fields map[string]isfFileField `json:"fields"`
}

type isfFileField struct {
	Offset    *uint64  `json:"offset"`
	Type      *isfType `json:"type"`
	Anonymous bool     `json:"anonymous"`
}

type isfFileEnum struct {
	Size      uint64                 `json:"size"`
	Constants map[string]json.Number `json:"constants"`
}

type isfFileSymbol struct {
	Address      *uint64 `json:"address"`
	ConstantData string  `json:"constant_data"`
}

// LoadISF reads an ISF file: JSON, or JSON compressed with xz (a name
// ending in .xz, or the xz magic).
func LoadISF(path string) (*ISF, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("linux: symbol table: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	var magic [6]byte
	n, _ := io.ReadFull(f, magic[:])
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("linux: symbol table: %w", err)
	}
	if n == len(magic) && string(magic[:]) == "\xfd7zXZ\x00" {
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: xz: %v", ErrBadISF, path, err)
		}
		r = xr
	} else if strings.HasSuffix(path, ".xz") {
		return nil, fmt.Errorf("%w: %s: not xz data", ErrBadISF, path)
	}
	isf, err := ParseISF(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return isf, nil
}

// ParseISF reads an ISF file's JSON from r (at most MaxISFSize bytes) and
// checks it. It does no other I/O.
func ParseISF(r io.Reader) (*ISF, error) {
	raw, err := io.ReadAll(io.LimitReader(r, MaxISFSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read: %v", ErrBadISF, err)
	}
	if len(raw) > MaxISFSize {
		return nil, fmt.Errorf("%w: over %d MiB", ErrBadISF, MaxISFSize>>20)
	}
	var j isfFile
	if err := json.Unmarshal(raw, &j); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadISF, err)
	}
	return newISF(&j)
}

// newISF checks a decoded file and builds its lookup tables.
func newISF(j *isfFile) (*ISF, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadISF, fmt.Sprintf(format, a...))
	}
	if j.Metadata == nil || j.Metadata.Format == "" {
		return nil, bad("no metadata.format: not a Volatility 3 symbol table")
	}
	if len(j.UserTypes) == 0 {
		return nil, bad("no user_types")
	}
	if len(j.BaseTypes) > maxISFTypes || len(j.UserTypes) > maxISFTypes || len(j.Enums) > maxISFTypes {
		return nil, bad("over %d types", maxISFTypes)
	}
	if len(j.Symbols) > maxISFSymbols {
		return nil, bad("over %d symbols", maxISFSymbols)
	}
	s := &ISF{ptrSize: 8, base: make(map[string]isfBase, len(j.BaseTypes)),
		user: make(map[string]*isfStruct, len(j.UserTypes)), enums: make(map[string]*isfEnum, len(j.Enums))}
	for name, b := range j.BaseTypes {
		if b.Size == nil || *b.Size > 64 {
			return nil, bad("base type %q: size missing or over 64", name)
		}
		if b.Endian != "" && b.Endian != "little" {
			return nil, bad("base type %q: %s-endian (only little-endian kernels are read)", name, b.Endian)
		}
		s.base[name] = isfBase{size: *b.Size, kind: b.Kind}
	}
	if p, ok := s.base["pointer"]; ok {
		if p.size != 8 && p.size != 4 {
			return nil, bad("pointer size %d", p.size)
		}
		s.ptrSize = p.size
	}
	for name, e := range j.Enums {
		if e.Size > 8 || len(e.Constants) > maxISFFields {
			return nil, bad("enum %q: size %d, %d constants", name, e.Size, len(e.Constants))
		}
		en := &isfEnum{size: e.Size, constants: make(map[string]uint64, len(e.Constants))}
		for c, v := range e.Constants {
			if i, err := v.Int64(); err == nil {
				en.constants[c] = uint64(i)
			} else if u, err := strconv.ParseUint(v.String(), 10, 64); err == nil {
				en.constants[c] = u
			} else {
				return nil, bad("enum %q: constant %s = %s", name, c, v)
			}
		}
		s.enums[name] = en
		s.enumNames = append(s.enumNames, name)
	}
	sort.Strings(s.enumNames)
	for name, u := range j.UserTypes {
		if u.Kind != "struct" && u.Kind != "union" && u.Kind != "class" {
			return nil, bad("user type %q of kind %q", name, u.Kind)
		}
		if u.Size == nil || *u.Size > maxISFObject {
			return nil, bad("user type %q: size missing or too large", name)
		}
		if len(u.Fields) > maxISFFields {
			return nil, bad("user type %q: %d fields", name, len(u.Fields))
		}
		st := &isfStruct{union: u.Kind == "union", size: *u.Size, fields: make(map[string]isfField, len(u.Fields))}
		for fname, f := range u.Fields {
			if f.Offset == nil || f.Type == nil {
				return nil, bad("%s.%s: offset or type missing", name, fname)
			}
			if *f.Offset > *u.Size {
				return nil, bad("%s.%s: offset %d beyond the size %d", name, fname, *f.Offset, *u.Size)
			}
			if err := checkISFType(f.Type, 0); err != nil {
				return nil, bad("%s.%s: %v", name, fname, err)
			}
			anon := f.Anonymous || strings.HasPrefix(fname, "unnamed_field")
			st.fields[fname] = isfField{off: *f.Offset, typ: f.Type, anon: anon}
			if anon {
				st.anon = append(st.anon, fname)
			}
		}
		sort.Slice(st.anon, func(a, b int) bool {
			fa, fb := st.fields[st.anon[a]], st.fields[st.anon[b]]
			if fa.off != fb.off {
				return fa.off < fb.off
			}
			return st.anon[a] < st.anon[b]
		})
		s.user[name] = st
	}
	s.symbols = make(map[string]uint64, len(j.Symbols))
	for name, sym := range j.Symbols {
		if sym.Address != nil {
			s.symbols[name] = *sym.Address
		}
		if name == "linux_banner" && sym.ConstantData != "" {
			if b, err := base64.StdEncoding.DecodeString(sym.ConstantData); err == nil {
				if i := bytes.IndexByte(b, 0); i >= 0 {
					b = b[:i]
				}
				s.banner = string(b)
			}
		}
	}
	return s, nil
}

// checkISFType checks a type reference's kind and nesting.
func checkISFType(t *isfType, depth int) error {
	if depth >= maxISFDepth {
		return fmt.Errorf("type references nested over %d", maxISFDepth)
	}
	switch t.Kind {
	case "base", "struct", "union", "class", "enum":
		if t.Name == "" {
			return fmt.Errorf("%s type without a name", t.Kind)
		}
	case "pointer":
		if t.Subtype == nil {
			return errors.New("pointer without a subtype")
		}
		return checkISFType(t.Subtype, depth+1)
	case "array":
		if t.Subtype == nil || t.Count > maxISFObject {
			return errors.New("array without a subtype or too long")
		}
		return checkISFType(t.Subtype, depth+1)
	case "bitfield":
		if t.Type == nil || t.BitLength == 0 || t.BitLength > 64 || t.BitPosition >= 64 {
			return errors.New("bitfield without a type, or of a bad width or position")
		}
		return checkISFType(t.Type, depth+1)
	case "function":
	default:
		return fmt.Errorf("type of kind %q", t.Kind)
	}
	return nil
}

// NumTypes returns the number of user types (structures and unions).
func (s *ISF) NumTypes() int { return len(s.user) }

// Banner returns linux_banner as the file records it ("" if it does not).
func (s *ISF) Banner() string { return s.banner }

// Symbol returns a symbol's link-time address from the file.
func (s *ISF) Symbol(name string) (uint64, bool) {
	a, ok := s.symbols[name]
	return a, ok
}

// isfCheckSymbols are the symbols CheckAgainst compares with kallsyms.
var isfCheckSymbols = []string{"_text", "_stext", "linux_banner", "init_task", "sys_call_table", "init_mm"}

// CheckAgainst refuses a symbol table of another kernel build than the one
// profiled: its banner, when the file records it, must be the image's,
// and every symbol of a few the file and kallsyms both have must be at the
// same link-time address (both are before KASLR, so no slide is involved).
func (s *ISF) CheckAgainst(banner string, syms *Kallsyms) error {
	if s.banner != "" && banner != "" && strings.TrimSpace(s.banner) != strings.TrimSpace(banner) {
		return fmt.Errorf("linux: the symbol table is of another kernel: its banner is %q, the image's %q",
			strings.TrimSpace(s.banner), strings.TrimSpace(banner))
	}
	if syms == nil {
		return nil
	}
	for _, name := range isfCheckSymbols {
		a, ok := s.symbols[name]
		if !ok {
			continue
		}
		if k, ok := syms.Lookup(name); ok && k != a {
			return fmt.Errorf("linux: the symbol table is of another kernel build: %s at %#x, kallsyms has it at %#x", name, a, k)
		}
	}
	return nil
}

// field answers Profile.Field from the file, as BTF.field does from BTF.
func (s *ISF) field(parts []string) (uint64, FieldType, error) {
	st, ok := s.user[parts[0]]
	if !ok {
		return 0, FieldType{}, fmt.Errorf("%w: %s: not found", ErrNoField, parts[0])
	}
	var off uint64
	var f isfField
	for i, name := range parts[1:] {
		var foff uint64
		if f, foff, ok = s.findMember(st, name, 0); !ok {
			return 0, FieldType{}, fmt.Errorf("%w: %s has no member %q", ErrNoField, strings.Join(parts[:i+1], "."), name)
		}
		if f.typ.Kind == "bitfield" {
			return 0, FieldType{}, fmt.Errorf("%w: %s is a bitfield", ErrNoField, strings.Join(parts[:i+2], "."))
		}
		off += foff
		if i+2 < len(parts) {
			if st, ok = s.userOf(f.typ); !ok {
				return 0, FieldType{}, fmt.Errorf("%w: %s has no member %q", ErrNoField, strings.Join(parts[:i+2], "."), parts[i+2])
			}
		}
	}
	return off, s.fieldType(f.typ), nil
}

// userOf returns the structure or union t refers to.
func (s *ISF) userOf(t *isfType) (*isfStruct, bool) {
	if t.Kind != "struct" && t.Kind != "union" && t.Kind != "class" {
		return nil, false
	}
	st, ok := s.user[t.Name]
	return st, ok
}

// findMember finds name among st's fields, descending into anonymous
// members; it returns the field and its offset from st's start.
func (s *ISF) findMember(st *isfStruct, name string, depth int) (isfField, uint64, bool) {
	if depth > maxISFDepth {
		return isfField{}, 0, false
	}
	if f, ok := st.fields[name]; ok && !f.anon {
		return f, f.off, true
	}
	for _, a := range st.anon {
		f := st.fields[a]
		inner, ok := s.userOf(f.typ)
		if !ok {
			continue
		}
		if im, off, ok := s.findMember(inner, name, depth+1); ok {
			return im, f.off + off, true
		}
	}
	return isfField{}, 0, false
}

// fieldType describes t as BTF.fieldType describes a BTF type.
func (s *ISF) fieldType(t *isfType) FieldType {
	var ft FieldType
	switch t.Kind {
	case "base":
		b, ok := s.base[t.Name]
		if !ok || b.kind == "void" || b.size == 0 {
			return FieldType{}
		}
		if b.kind != "float" {
			ft.Kind = KindInt
		}
	case "pointer":
		ft.Kind = KindPointer
	case "array":
		ft.Kind = KindArray
		ft.Nelems = t.Count
		ft.ElemSize, _ = s.sizeof(t.Subtype)
	case "struct", "class":
		if _, ok := s.user[t.Name]; !ok {
			return FieldType{} // a declaration only
		}
		ft.Kind = KindStruct
	case "union":
		if _, ok := s.user[t.Name]; !ok {
			return FieldType{}
		}
		ft.Kind = KindUnion
	case "enum":
		ft.Kind = KindEnum
	}
	ft.Size, _ = s.sizeof(t)
	return ft
}

// sizeof returns the size of t in bytes.
func (s *ISF) sizeof(t *isfType) (uint64, error) {
	n := uint64(1)
	for range maxISFDepth {
		var size uint64
		switch t.Kind {
		case "base":
			b, ok := s.base[t.Name]
			if !ok {
				return 0, fmt.Errorf("base type %q not in the table", t.Name)
			}
			size = b.size
		case "pointer":
			size = s.ptrSize
		case "struct", "union", "class":
			st, ok := s.user[t.Name]
			if !ok {
				return 0, fmt.Errorf("%s %q not in the table", t.Kind, t.Name)
			}
			size = st.size
		case "enum":
			e, ok := s.enums[t.Name]
			if !ok {
				return 0, fmt.Errorf("enum %q not in the table", t.Name)
			}
			size = e.size
		case "array":
			if t.Count != 0 && n > maxISFObject/t.Count {
				return 0, fmt.Errorf("%w: array too large", ErrBadISF)
			}
			n *= t.Count
			t = t.Subtype
			continue
		default:
			return 0, fmt.Errorf("type of kind %q has no size", t.Kind)
		}
		if size > maxISFObject/max(n, 1) {
			return 0, fmt.Errorf("%w: type too large", ErrBadISF)
		}
		return n * size, nil
	}
	return 0, fmt.Errorf("%w: array chain over %d", ErrBadISF, maxISFDepth)
}

// structSize answers Profile.StructSize from the file.
func (s *ISF) structSize(name string) (uint64, error) {
	st, ok := s.user[name]
	if !ok || st.union {
		return 0, fmt.Errorf("%w: struct %s: %s: not found", ErrNoField, name, name)
	}
	return st.size, nil
}

// enumValue returns the value of the enumerator called name, from any
// enum.
func (s *ISF) enumValue(name string) (uint64, bool) {
	for _, en := range s.enumNames {
		if v, ok := s.enums[en].constants[name]; ok {
			return v, true
		}
	}
	return 0, false
}
