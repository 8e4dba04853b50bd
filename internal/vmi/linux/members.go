package linux

import (
	"fmt"
	"sort"
)

// Member is one named member of a structure: its name, its byte offset
// from the structure's start and its type.
type Member struct {
	Name   string
	Offset uint64
	Type   FieldType
}

// maxMembers bounds the members StructMembers returns (BTF's own limit
// per structure is 65535; anonymous members add theirs).
const maxMembers = 1 << 16

// StructMembers returns the named members of structure name in offset
// order, the members of its anonymous members included as if they were
// its own (as FieldOffset finds them); bitfields are left out. It is how a
// walk learns a structure whose members are generated, such as
// security_hook_heads (one list head per LSM hook).
func (p *Profile) StructMembers(name string) ([]Member, error) {
	src, err := p.layouts()
	if err != nil {
		return nil, fmt.Errorf("%w: struct %s: %w", ErrNoField, name, err)
	}
	return src.members(name)
}

// members answers Profile.StructMembers from BTF.
func (b *BTF) members(name string) ([]Member, error) {
	id, err := b.lookup(name)
	if err != nil {
		return nil, fmt.Errorf("%w: struct %s: %v", ErrNoField, name, err)
	}
	t, err := b.typ(id)
	if err != nil {
		return nil, fmt.Errorf("%w: struct %s: %v", ErrNoField, name, err)
	}
	if t.kind != btfKindStruct {
		return nil, fmt.Errorf("%w: struct %s: not found (a union)", ErrNoField, name)
	}
	var out []Member
	if err := b.appendMembers(&out, t, 0, 0); err != nil {
		return nil, fmt.Errorf("%w: struct %s: %v", ErrNoField, name, err)
	}
	sortMembers(out)
	return out, nil
}

// appendMembers appends t's named members at byte offset base, descending
// into anonymous members.
func (b *BTF) appendMembers(out *[]Member, t btfType, base uint64, depth int) error {
	if depth > maxBTFDepth {
		return fmt.Errorf("anonymous members nested over %d", maxBTFDepth)
	}
	for i := range t.vlen {
		m := b.member(t, i)
		if m.bitSize != 0 || m.bitOff%8 != 0 {
			continue
		}
		off := base + uint64(m.bitOff)/8
		if name := b.str(m.name); len(name) > 0 {
			if len(*out) >= maxMembers {
				return fmt.Errorf("over %d members", maxMembers)
			}
			*out = append(*out, Member{Name: string(name), Offset: off, Type: b.fieldType(m.typ)})
			continue
		}
		inner, err := b.resolve(m.typ)
		if err != nil {
			return err
		}
		if inner.kind == btfKindStruct || inner.kind == btfKindUnion {
			if err := b.appendMembers(out, inner, off, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// members answers Profile.StructMembers from the file.
func (s *ISF) members(name string) ([]Member, error) {
	st, ok := s.user[name]
	if !ok || st.union {
		return nil, fmt.Errorf("%w: struct %s: %s: not found", ErrNoField, name, name)
	}
	var out []Member
	if err := s.appendMembers(&out, st, 0, 0); err != nil {
		return nil, fmt.Errorf("%w: struct %s: %v", ErrNoField, name, err)
	}
	sortMembers(out)
	return out, nil
}

// appendMembers appends st's named members at byte offset base, descending
// into anonymous members.
func (s *ISF) appendMembers(out *[]Member, st *isfStruct, base uint64, depth int) error {
	if depth > maxISFDepth {
		return fmt.Errorf("anonymous members nested over %d", maxISFDepth)
	}
	for name, f := range st.fields {
		if f.typ.Kind == "bitfield" {
			continue
		}
		if !f.anon {
			if len(*out) >= maxMembers {
				return fmt.Errorf("over %d members", maxMembers)
			}
			*out = append(*out, Member{Name: name, Offset: base + f.off, Type: s.fieldType(f.typ)})
			continue
		}
		if inner, ok := s.userOf(f.typ); ok {
			if err := s.appendMembers(out, inner, base+f.off, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// sortMembers orders members by offset, then name (a union's members
// share an offset).
func sortMembers(ms []Member) {
	sort.Slice(ms, func(a, b int) bool {
		if ms[a].Offset != ms[b].Offset {
			return ms[a].Offset < ms[b].Offset
		}
		return ms[a].Name < ms[b].Name
	})
}
