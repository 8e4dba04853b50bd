package linux

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// builtBTF is the BTF section b marshals, read by ParseBTF.
func builtBTF(t testing.TB, b *btf.Builder) *BTF {
	t.Helper()
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseBTF(raw)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// rawOf returns b's section.
func rawOf(t testing.TB, b *BTF) []byte {
	t.Helper()
	raw, err := b.Raw()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// specField is the reference for BTF field lookups: the same walk over
// cilium/ebpf's decoded types (what Profile used before it read BTF in
// place).
func specField(spec *btf.Spec, path string) (uint64, btf.Type, bool) {
	parts := strings.Split(path, ".")
	var typ btf.Type
	var s *btf.Struct
	if err := spec.TypeByName(parts[0], &s); err != nil {
		var u *btf.Union
		if err := spec.TypeByName(parts[0], &u); err != nil {
			return 0, nil, false
		}
		typ = u
	} else {
		typ = s
	}
	var off uint64
	for _, name := range parts[1:] {
		m, moff, ok := specMember(typ, name, 0)
		if !ok || m.BitfieldSize != 0 || moff%8 != 0 {
			return 0, nil, false
		}
		off += moff / 8
		typ = btf.UnderlyingType(m.Type)
	}
	return off, typ, true
}

func specMember(typ btf.Type, name string, depth int) (btf.Member, uint64, bool) {
	if depth > 16 {
		return btf.Member{}, 0, false
	}
	var members []btf.Member
	switch t := btf.UnderlyingType(typ).(type) {
	case *btf.Struct:
		members = t.Members
	case *btf.Union:
		members = t.Members
	default:
		return btf.Member{}, 0, false
	}
	for _, m := range members {
		if m.Name == name {
			return m, uint64(m.Offset), true
		}
	}
	for _, m := range members {
		if m.Name == "" {
			if inner, off, ok := specMember(m.Type, name, depth+1); ok {
				return inner, uint64(m.Offset) + off, true
			}
		}
	}
	return btf.Member{}, 0, false
}

// specFieldType is FieldType from a cilium/ebpf type.
func specFieldType(typ btf.Type) FieldType {
	var ft FieldType
	switch t := typ.(type) {
	case *btf.Int:
		ft.Kind = KindInt
	case *btf.Pointer:
		ft.Kind = KindPointer
	case *btf.Array:
		ft.Kind, ft.Nelems = KindArray, uint64(t.Nelems)
		if sz, err := btf.Sizeof(t.Type); err == nil {
			ft.ElemSize = uint64(sz)
		}
	case *btf.Struct:
		ft.Kind = KindStruct
	case *btf.Union:
		ft.Kind = KindUnion
	case *btf.Enum:
		ft.Kind = KindEnum
	}
	if sz, err := btf.Sizeof(typ); err == nil {
		ft.Size = uint64(sz)
	}
	return ft
}

// checkAgainstSpec compares every member path of the named structs and
// unions of raw (one level, and through anonymous members) as Profile
// reads them with the reference walk over cilium/ebpf's types.
func checkAgainstSpec(t *testing.T, b *BTF, limit int) {
	t.Helper()
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(rawOf(t, b)))
	if err != nil {
		t.Skipf("cilium/ebpf does not load it: %v", err)
	}
	p := &Profile{BTF: b}
	n := 0
	for typ, err := range spec.All() {
		if err != nil {
			t.Fatal(err)
		}
		var members []btf.Member
		name := typ.TypeName()
		switch x := typ.(type) {
		case *btf.Struct:
			members = x.Members
			if name == "" {
				break
			}
			var s *btf.Struct
			wantErr := spec.TypeByName(name, &s)
			got, err := p.StructSize(name)
			if (err == nil) != (wantErr == nil) || err == nil && got != uint64(s.Size) {
				t.Errorf("StructSize(%s) = %d, %v; reference: %v", name, got, err, wantErr)
			}
		case *btf.Union:
			members = x.Members
		default:
			continue
		}
		if name == "" {
			continue
		}
		for _, m := range members {
			if m.Name == "" {
				continue
			}
			path := name + "." + m.Name
			wantOff, wantTyp, ok := specField(spec, path)
			gotOff, gotTyp, err := p.Field(path)
			if ok != (err == nil) {
				t.Errorf("Field(%s): err %v; reference found it: %v", path, err, ok)
				continue
			}
			if !ok {
				continue
			}
			want := specFieldType(wantTyp)
			want.id = gotTyp.id
			if gotOff != wantOff || gotTyp != want {
				t.Errorf("Field(%s) = %d, %+v; want %d, %+v", path, gotOff, gotTyp, wantOff, want)
			}
			if n++; n >= limit {
				return
			}
		}
	}
	if n == 0 {
		t.Error("no field compared")
	}
	t.Logf("%d fields agree", n)
}

// TestBTFAgreesWithCilium checks the in-place BTF reader against
// cilium/ebpf's decoder on the synthetic kernels' types and on the default
// kit's kernel (every member of every named structure and union; the first
// 5000 again as read from the profile cache).
func TestBTFAgreesWithCilium(t *testing.T) {
	t.Run("synthetic", func(t *testing.T) {
		for _, b := range []*BTF{synthBTF(t), netBTF(t), detailBTF(t, rssStruct), detailBTF(t, rssPercpu), detailBTF(t, rssEnum)} {
			checkAgainstSpec(t, b, 1<<30)
		}
	})
	t.Run("kit kernel", func(t *testing.T) {
		k := testvm.Kit(t)
		img, err := os.ReadFile(k.Kernel)
		if err != nil {
			t.Fatal(err)
		}
		p, err := NewProfile(img)
		if err != nil {
			t.Fatal(err)
		}
		checkAgainstSpec(t, p.BTF, 1<<30)
		// The same section read from the profile cache, with pread.
		dir := t.TempDir()
		if err := p.store(dir); err != nil {
			t.Fatal(err)
		}
		cached, err := LoadCachedProfile(dir, BannerKey(p.Banner))
		if err != nil {
			t.Fatal(err)
		}
		checkAgainstSpec(t, cached.BTF, 5000)
		for _, path := range []string{"task_struct.comm", "task_struct.se.vruntime", "mm_struct.rss_stat", "sock.__sk_common.skc_family"} {
			if _, _, err := p.Field(path); err != nil {
				t.Errorf("Field(%s): %v", path, err)
			}
		}
	})
}

// FuzzBTF checks that no .BTF section makes the reader panic or loop.
func FuzzBTF(f *testing.F) {
	f.Add(rawOf(f, synthBTF(f)))
	f.Add(rawOf(f, netBTF(f)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := ParseBTF(raw)
		if err != nil {
			return
		}
		p := &Profile{BTF: b}
		for _, path := range []string{"task_struct.comm", "task_struct.signal", "sock.__sk_common.skc_family",
			"mm_struct.rss_stat", "module.name"} {
			_, _, _ = p.Field(path)
		}
		_, _ = p.StructSize("task_struct")
		_, _ = b.enumValue("MM_ANONPAGES")
		for id := uint32(0); id <= uint32(min(b.NumTypes(), 64)); id++ {
			_ = b.fieldType(id)
			_, _ = b.sizeof(id)
		}
	})
}
