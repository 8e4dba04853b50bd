package testvm

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/cilium/ebpf/btf"
)

// ISF writes the types of a kernel's BTF (raw: its .BTF section) as a
// Volatility 3 symbol table (ISF JSON), the way dwarf2json writes a
// vmlinux's DWARF, for the tests of kernels without BTF: typedefs and qualifiers
// resolved, anonymous structures and unions named unnamed_N, anonymous
// members unnamed_field_N with "anonymous": true, bitfields as "bitfield"
// types. syms (name -> link-time address) become its symbols, and banner
// linux_banner's constant data.
func ISF(raw []byte, syms map[string]uint64, banner string) ([]byte, error) {
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	type field struct {
		Offset    uint64 `json:"offset"`
		Type      any    `json:"type"`
		Anonymous bool   `json:"anonymous,omitempty"`
	}
	type user struct {
		Kind   string           `json:"kind"`
		Size   uint32           `json:"size"`
		Fields map[string]field `json:"fields"`
	}
	type enum struct {
		Size      uint32         `json:"size"`
		Base      string         `json:"base"`
		Constants map[string]any `json:"constants"`
	}
	type base struct {
		Size   uint32 `json:"size"`
		Signed bool   `json:"signed"`
		Kind   string `json:"kind"`
		Endian string `json:"endian"`
	}
	bases := map[string]base{"void": {Kind: "void", Endian: "little"}, "pointer": {Size: 8, Kind: "int", Endian: "little"}}
	users := map[string]user{}
	enums := map[string]enum{}
	names := map[btf.Type]string{}
	// A structure keeps its name when a union has it too (BTF.lookup
	// prefers it): reserve the structures' names first.
	taken, structs := map[string]bool{}, map[string]bool{}
	for typ := range spec.All() {
		if _, ok := typ.(*btf.Struct); ok && typ.TypeName() != "" {
			structs[typ.TypeName()] = true
		}
	}
	n := 0
	nameOf := func(typ btf.Type) string {
		if s, ok := names[typ]; ok {
			return s
		}
		s := typ.TypeName()
		if _, isStruct := typ.(*btf.Struct); !isStruct && structs[s] {
			s = ""
		}
		if s == "" || taken[s] {
			n++
			s = fmt.Sprintf("unnamed_%d", n)
		}
		taken[s], names[typ] = true, s
		return s
	}
	var ref func(typ btf.Type) any
	ref = func(typ btf.Type) any {
		typ = btf.UnderlyingType(typ) // typedefs and qualifiers, as dwarf2json resolves them
		switch x := typ.(type) {
		case *btf.Void:
			return map[string]any{"kind": "base", "name": "void"}
		case *btf.Int:
			kind := "int"
			switch {
			case x.Encoding&btf.Bool != 0:
				kind = "bool"
			case x.Encoding&btf.Char != 0:
				kind = "char"
			}
			bases[x.Name] = base{Size: x.Size, Signed: x.Encoding&btf.Signed != 0, Kind: kind, Endian: "little"}
			return map[string]any{"kind": "base", "name": x.Name}
		case *btf.Float:
			bases[x.Name] = base{Size: x.Size, Signed: true, Kind: "float", Endian: "little"}
			return map[string]any{"kind": "base", "name": x.Name}
		case *btf.Pointer:
			return map[string]any{"kind": "pointer", "subtype": ref(x.Target)}
		case *btf.Array:
			return map[string]any{"kind": "array", "count": x.Nelems, "subtype": ref(x.Type)}
		case *btf.Struct:
			return map[string]any{"kind": "struct", "name": nameOf(x)}
		case *btf.Union:
			return map[string]any{"kind": "union", "name": nameOf(x)}
		case *btf.Enum:
			return map[string]any{"kind": "enum", "name": nameOf(x)}
		case *btf.Fwd:
			kind := "struct"
			if x.Kind == btf.FwdUnion {
				kind = "union"
			}
			return map[string]any{"kind": kind, "name": "fwd " + x.Name}
		default:
			return map[string]any{"kind": "function"}
		}
	}
	for typ, err := range spec.All() {
		if err != nil {
			return nil, err
		}
		var members []btf.Member
		var u user
		switch x := typ.(type) {
		case *btf.Struct:
			members, u = x.Members, user{Kind: "struct", Size: x.Size}
		case *btf.Union:
			members, u = x.Members, user{Kind: "union", Size: x.Size}
		case *btf.Enum:
			e := enum{Size: x.Size, Base: "int", Constants: map[string]any{}}
			for _, v := range x.Values {
				if x.Signed {
					e.Constants[v.Name] = int64(v.Value)
				} else {
					e.Constants[v.Name] = v.Value
				}
			}
			enums[nameOf(x)] = e
			continue
		default:
			continue
		}
		u.Fields = map[string]field{}
		for i, m := range members {
			f := field{Offset: uint64(m.Offset) / 8, Type: ref(m.Type)}
			if m.BitfieldSize != 0 || m.Offset%8 != 0 {
				f.Type = map[string]any{"kind": "bitfield", "bit_position": uint64(m.Offset) % 8,
					"bit_length": max(uint64(m.BitfieldSize), 1), "type": f.Type}
			}
			name := m.Name
			if name == "" {
				name, f.Anonymous = fmt.Sprintf("unnamed_field_%x", i), true
			}
			u.Fields[name] = f
		}
		users[nameOf(typ)] = u
	}
	symbols := map[string]any{}
	for name, a := range syms {
		s := map[string]any{"address": a}
		if name == "linux_banner" && banner != "" {
			s["constant_data"] = base64.StdEncoding.EncodeToString(append([]byte(banner), 0))
		}
		symbols[name] = s
	}
	return json.Marshal(map[string]any{
		"metadata":   map[string]any{"format": "6.2.0", "producer": map[string]any{"name": "gatevisor testvm.ISF", "version": "0"}},
		"base_types": bases, "user_types": users, "enums": enums, "symbols": symbols,
	})
}
