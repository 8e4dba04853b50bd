package linux

import (
	"debug/elf"
	"os"
	"path/filepath"
	"testing"
)

// TestDWARFAgreesWithBTF reads testdata/dwarf/layouts.o (gcc's DWARF and
// BTF of structures in the kernel's shapes: anonymous structures and
// unions, bitfields, typedefs, qualifiers, arrays of arrays, a flexible
// array, anonymous enums) both ways and checks that every field, nested
// path, structure size and enumerator agrees.
func TestDWARFAgreesWithBTF(t *testing.T) {
	path := filepath.Join("testdata", "dwarf", "layouts.o")
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw, err := f.Section(".BTF").Data()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseBTF(raw)
	if err != nil {
		t.Fatal(err)
	}
	isf, err := LoadDWARF(path)
	if err != nil {
		t.Fatal(err)
	}
	btfProf, dwarfProf := &Profile{BTF: b}, &Profile{ISF: isf}
	// Not task_struct.u.raw (long [2][3]): gcc 12 writes its BTF as
	// [3][2]; DWARF has it right (checked below). Not NEG: gcc 12's BTF
	// does not mark signed enums (kind_flag, which pahole 1.24+ sets), so
	// BTF reads -2 as 0xfffffffe.
	paths := []string{"task_struct.se.vruntime", "task_struct.u.pair.b", "task_struct.node.pprev",
		"task_struct.flags", "task_struct.p", "mm_struct.rss_stat", "mm_struct.arg_start", "mm_struct.cpu_bitmap",
		"dentry.d_name.len", "dentry.d_name.hash_len", "dentry.d_name.name", "task_struct.named_anon.x",
		"task_struct.sched_contributes_to_load", "task_struct.named_anon.y", "percpu_counter.count", "rb_node.rb_left"}
	n := compareLayouts(t, btfProf, dwarfProf, specOf(t, b), paths, []string{"task_struct", "mm_struct", "qstr", "path"})
	if n < 60 {
		t.Errorf("only %d answers compared", n)
	}
	t.Logf("%d answers compared", n)
	for _, e := range []string{"MM_ANONPAGES", "MM_SHMEMPAGES", "PIDTYPE_SID", "POS", "NONE"} {
		want, wok := b.enumValue(e)
		got, gok := isf.enumValue(e)
		if got != want || gok != wok {
			t.Errorf("enumValue(%s): DWARF %d %v, BTF %d %v", e, got, gok, want, wok)
		}
	}
	uOff, _ := btfProf.FieldOffset("task_struct.u")
	off, typ, err := dwarfProf.Field("task_struct.u.raw")
	if want := (FieldType{Kind: KindArray, Size: 48, Nelems: 2, ElemSize: 24}); err != nil || off != uOff || typ != want {
		t.Errorf("task_struct.u.raw: %d %+v %v; want %d %+v", off, typ, err, uOff, want)
	}
	if v, ok := isf.enumValue("NEG"); !ok || int64(v) != -2 {
		t.Errorf("NEG = %d %v, want -2", int64(v), ok)
	}
}

// TestDWARFRefuses: a file that is not an ELF with DWARF is an error.
func TestDWARFRefuses(t *testing.T) {
	dir := t.TempDir()
	for name, b := range map[string][]byte{"empty": nil, "text": []byte("{}"), "elf header only": []byte("\x7fELF\x02\x01\x01")} {
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadDWARF(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestLoadSymbols: an ELF is read for its DWARF, anything else as ISF.
func TestLoadSymbols(t *testing.T) {
	isf, err := LoadSymbols(filepath.Join("testdata", "dwarf", "layouts.o"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&Profile{ISF: isf}).FieldOffset("task_struct.comm"); err != nil {
		t.Error(err)
	}
	p := filepath.Join(t.TempDir(), "t.json")
	if err := os.WriteFile(p, []byte(`{"metadata":{"format":"6.2.0"},"user_types":{"a":{"kind":"struct","size":4,"fields":{}}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if isf, err := LoadSymbols(p); err != nil || isf.NumTypes() != 1 {
		t.Errorf("ISF: %v", err)
	}
}
