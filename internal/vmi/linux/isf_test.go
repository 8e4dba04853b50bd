package linux

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/ulikunitz/xz"
)

// isfOf writes b's types as a Volatility 3 symbol table (testvm.ISF).
func isfOf(t testing.TB, b *BTF, syms map[string]uint64, banner string) []byte {
	t.Helper()
	js, err := testvm.ISF(rawOf(t, b), syms, banner)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// specOf loads b into cilium/ebpf.
func specOf(t testing.TB, b *BTF) *btf.Spec {
	t.Helper()
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(rawOf(t, b)))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// introspectionPaths returns the field paths ("s.f.g") and structure names
// the introspection asks its profile about: the string literals of the
// packages that read kernel structures that name a structure of p, and the
// paths that computing every layout asked p (its memo).
func introspectionPaths(t *testing.T, p *Profile) (paths, structs []string) {
	t.Helper()
	layoutForTasks(p)
	layoutForModules(p)
	layoutForFiles(p)
	layoutForSockets(p)
	newArgsLayout(p)
	_, _ = newCredLayout(p)
	newFDLayout(p)
	newUsageLayout(p, 4)
	seen := map[string]bool{}
	c := p.caches()
	c.fieldsMu.Lock()
	for key := range c.fields {
		seen[key] = true
	}
	c.fieldsMu.Unlock()
	lit := regexp.MustCompile(`"([a-z_][a-z0-9_]*)(\.[a-z_][a-z0-9_]*)*\.?"`)
	for _, dir := range []string{".", "../../ids", "../../gate/syscall", "../../monitor"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range lit.FindAll(src, -1) {
				s := strings.Trim(string(m), `"`)
				first, _, _ := strings.Cut(s, ".")
				if _, err := p.BTF.lookup(first); err != nil {
					continue
				}
				if strings.HasSuffix(s, ".") || !strings.Contains(s, ".") {
					seen["sizeof "+first] = true // a prefix built on, or a name
					continue
				}
				seen[s] = true
			}
		}
	}
	for key := range seen {
		if name, ok := strings.CutPrefix(key, "sizeof "); ok {
			structs = append(structs, name)
		} else {
			paths = append(paths, key)
		}
	}
	sort.Strings(paths)
	sort.Strings(structs)
	return paths, structs
}

// compareLayouts checks that isf answers every field and structure-size
// question as b does: every member of every named structure and union,
// and the paths the introspection uses. It returns how many it compared.
func compareLayouts(t *testing.T, btfProf, isfProf *Profile, spec *btf.Spec, paths, structs []string) int {
	t.Helper()
	n := 0
	check := func(path string) {
		wantOff, wantTyp, wantErr := btfProf.Field(path)
		gotOff, gotTyp, gotErr := isfProf.Field(path)
		n++
		if (wantErr == nil) != (gotErr == nil) {
			t.Errorf("Field(%s): ISF err %v, BTF err %v", path, gotErr, wantErr)
			return
		}
		wantTyp.id = 0
		if gotOff != wantOff || gotTyp != wantTyp {
			t.Errorf("Field(%s): ISF %d %+v, BTF %d %+v", path, gotOff, gotTyp, wantOff, wantTyp)
		}
	}
	checkSize := func(name string) {
		want, wantErr := btfProf.StructSize(name)
		got, gotErr := isfProf.StructSize(name)
		n++
		if (wantErr == nil) != (gotErr == nil) || got != want {
			t.Errorf("StructSize(%s): ISF %d, %v; BTF %d, %v", name, got, gotErr, want, wantErr)
		}
	}
	for typ, err := range spec.All() {
		if err != nil {
			t.Fatal(err)
		}
		var members []btf.Member
		switch x := typ.(type) {
		case *btf.Struct:
			members = x.Members
		case *btf.Union:
			members = x.Members
		default:
			continue
		}
		name := typ.TypeName()
		if name == "" {
			continue
		}
		if _, err := btfProf.BTF.lookup(name); err != nil {
			continue // several types of that name: BTF refuses, ISF keeps one
		}
		checkSize(name)
		for _, m := range members {
			if m.Name != "" {
				check(name + "." + m.Name)
			}
		}
	}
	for _, p := range paths {
		check(p)
	}
	for _, s := range structs {
		checkSize(s)
	}
	return n
}

// TestISFAgreesWithBTF writes the default kit's kernel's BTF as a
// Volatility 3 symbol table (xz-compressed, as users keep them), profiles
// the kernel image with its BTF ignored and that table given, and checks
// that every layout answer is the BTF profile's: every member of every
// named structure and union, every path the introspection asks (nested
// ones included), structure sizes, and the mm counter enumerators.
func TestISFAgreesWithBTF(t *testing.T) {
	k := testvm.Kit(t)
	img, err := os.ReadFile(k.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	btfProf, err := NewProfile(img)
	if err != nil {
		t.Fatal(err)
	}
	spec := specOf(t, btfProf.BTF)
	syms := map[string]uint64{}
	for _, name := range isfCheckSymbols {
		if a, ok := btfProf.Symbols.Lookup(name); ok {
			syms[name] = a
		}
	}
	js := isfOf(t, btfProf.BTF, syms, btfProf.Banner)
	path := filepath.Join(t.TempDir(), "vmlinux.json.xz")
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(js); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("ISF: %d bytes of JSON, %d xz-compressed", len(js), buf.Len())
	isf, err := LoadISF(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewProfileWith(img, ProfileOptions{IgnoreBTF: true}); !errors.Is(err, ErrNoBTF) {
		t.Fatalf("BTF ignored, no symbols: err %v, want ErrNoBTF", err)
	}
	isfProf, err := NewProfileWith(img, ProfileOptions{Symbols: isf, IgnoreBTF: true})
	if err != nil {
		t.Fatal(err)
	}
	if isfProf.BTF != nil || isfProf.ISF == nil {
		t.Fatal("the profile does not read its layouts from the ISF")
	}
	paths, structs := introspectionPaths(t, btfProf)
	if len(paths) < 100 {
		t.Fatalf("only %d introspection paths found", len(paths))
	}
	n := compareLayouts(t, btfProf, isfProf, spec, paths, structs)
	t.Logf("%d answers compared (%d introspection paths, %d structure sizes)", n, len(paths), len(structs))
	for _, e := range []string{"MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES", "MM_SWAPENTS"} {
		want, wok := btfProf.BTF.enumValue(e)
		got, gok := isfProf.ISF.enumValue(e)
		if got != want || gok != wok {
			t.Errorf("enumValue(%s): ISF %d %v, BTF %d %v", e, got, gok, want, wok)
		}
	}
	// The layouts the walks use come out the same.
	for name, eq := range map[string]func() bool{
		"tasks":   func() bool { return fmt.Sprint(*layoutForTasks(btfProf)) == fmt.Sprint(*layoutForTasks(isfProf)) },
		"modules": func() bool { return fmt.Sprint(*layoutForModules(btfProf)) == fmt.Sprint(*layoutForModules(isfProf)) },
		"files":   func() bool { return fmt.Sprint(*layoutForFiles(btfProf)) == fmt.Sprint(*layoutForFiles(isfProf)) },
		"sockets": func() bool { return fmt.Sprint(*layoutForSockets(btfProf)) == fmt.Sprint(*layoutForSockets(isfProf)) },
	} {
		if !eq() {
			t.Errorf("the %s layout differs between BTF and ISF", name)
		}
	}

	t.Run("another build", func(t *testing.T) {
		other := map[string]uint64{}
		for k, v := range syms {
			other[k] = v + 0x1000
		}
		isf, err := ParseISF(bytes.NewReader(isfOf(t, btfProf.BTF, other, "")))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewProfileWith(img, ProfileOptions{Symbols: isf, IgnoreBTF: true}); err == nil || !strings.Contains(err.Error(), "another kernel build") {
			t.Errorf("symbols at other addresses: err %v", err)
		}
		isf, err = ParseISF(bytes.NewReader(isfOf(t, btfProf.BTF, nil, "Linux version 0.0.1 (nobody) #1\n")))
		if err != nil {
			t.Fatal(err)
		}
		isf.banner = "Linux version 0.0.1 (nobody) #1\n"
		if _, err := NewProfileWith(img, ProfileOptions{Symbols: isf, IgnoreBTF: true}); err == nil || !strings.Contains(err.Error(), "another kernel") {
			t.Errorf("another banner: err %v", err)
		}
	})
}

// TestISFSynthetic checks the ISF reader against the synthetic kernels'
// BTF, as TestISFAgreesWithBTF does on the kit's kernel, without a kit.
func TestISFSynthetic(t *testing.T) {
	for i, b := range []*BTF{synthBTF(t), netBTF(t), detailBTF(t, rssStruct), detailBTF(t, rssPercpu), detailBTF(t, rssEnum)} {
		spec := specOf(t, b)
		isf, err := ParseISF(bytes.NewReader(isfOf(t, b, nil, "")))
		if err != nil {
			t.Fatal(err)
		}
		if n := compareLayouts(t, &Profile{BTF: b}, &Profile{ISF: isf}, spec, nil, nil); n == 0 {
			t.Errorf("kernel %d: nothing compared", i)
		}
	}
}

// TestISFRefuses checks that malformed or hostile tables are errors.
func TestISFRefuses(t *testing.T) {
	deep := `{"kind":"base","name":"int"}`
	for range maxISFDepth + 1 {
		deep = `{"kind":"pointer","subtype":` + deep + `}`
	}
	for name, js := range map[string]string{
		"not json":       `{"metadata":`,
		"no metadata":    `{"user_types":{"a":{"kind":"struct","size":4,"fields":{}}}}`,
		"no user types":  `{"metadata":{"format":"6.2.0"},"user_types":{}}`,
		"bad kind":       `{"metadata":{"format":"6.2.0"},"user_types":{"a":{"kind":"typedef","size":4,"fields":{}}}}`,
		"no size":        `{"metadata":{"format":"6.2.0"},"user_types":{"a":{"kind":"struct","fields":{}}}}`,
		"huge size":      `{"metadata":{"format":"6.2.0"},"user_types":{"a":{"kind":"struct","size":1e30,"fields":{}}}}`,
		"offset outside": `{"metadata":{"format":"6.2.0"},"user_types":{"a":{"kind":"struct","size":4,"fields":{"x":{"offset":8,"type":{"kind":"base","name":"int"}}}}}}`,
		"field no type":  `{"metadata":{"format":"6.2.0"},"user_types":{"a":{"kind":"struct","size":4,"fields":{"x":{"offset":0}}}}}`,
		"deep type":      `{"metadata":{"format":"6.2.0"},"user_types":{"a":{"kind":"struct","size":8,"fields":{"x":{"offset":0,"type":` + deep + `}}}}}`,
		"big endian":     `{"metadata":{"format":"6.2.0"},"base_types":{"int":{"size":4,"kind":"int","endian":"big"}},"user_types":{"a":{"kind":"struct","size":4,"fields":{}}}}`,
		"bad enum":       `{"metadata":{"format":"6.2.0"},"enums":{"e":{"size":4,"constants":{"A":1.5}}},"user_types":{"a":{"kind":"struct","size":4,"fields":{}}}}`,
	} {
		if _, err := ParseISF(strings.NewReader(js)); !errors.Is(err, ErrBadISF) {
			t.Errorf("%s: err %v, want ErrBadISF", name, err)
		}
	}
	// Size cap: the reader stops after MaxISFSize bytes.
	if _, err := ParseISF(&zeroes{n: MaxISFSize + 10}); err == nil || !strings.Contains(err.Error(), "MiB") {
		t.Errorf("oversized: err %v", err)
	}
	// A bitfield or a field of an array of arrays.
	js := `{"metadata":{"format":"6.2.0"},"base_types":{"int":{"size":4,"kind":"int","endian":"little"}},
	"user_types":{"a":{"kind":"struct","size":28,"fields":{
		"b":{"offset":0,"type":{"kind":"bitfield","bit_position":1,"bit_length":3,"type":{"kind":"base","name":"int"}}},
		"m":{"offset":4,"type":{"kind":"array","count":2,"subtype":{"kind":"array","count":3,"subtype":{"kind":"base","name":"int"}}}}}}}}`
	isf, err := ParseISF(strings.NewReader(js))
	if err != nil {
		t.Fatal(err)
	}
	p := &Profile{ISF: isf}
	if _, err := p.FieldOffset("a.b"); !errors.Is(err, ErrNoField) {
		t.Errorf("bitfield: err %v", err)
	}
	off, typ, err := p.Field("a.m")
	if want := (FieldType{Kind: KindArray, Size: 24, Nelems: 2, ElemSize: 12}); err != nil || off != 4 || typ != want {
		t.Errorf("a.m = %d %+v %v, want 4 %+v", off, typ, err, want)
	}
}

// zeroes reads n zero bytes.
type zeroes struct{ n int }

func (z *zeroes) Read(b []byte) (int, error) {
	if z.n == 0 {
		return 0, errors.New("EOF")
	}
	k := min(len(b), z.n)
	clear(b[:k])
	z.n -= k
	return k, nil
}

// FuzzISF checks that no symbol table makes the reader panic or loop, and
// that what it accepts answers every question without panicking.
func FuzzISF(f *testing.F) {
	for _, b := range []*BTF{synthBTF(f), netBTF(f)} {
		f.Add(isfOf(f, b, map[string]uint64{"_text": 0xffffffff81000000}, "Linux version 6.1.0\n"))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		isf, err := ParseISF(bytes.NewReader(raw))
		if err != nil {
			return
		}
		p := &Profile{ISF: isf}
		for _, path := range []string{"task_struct.comm", "task_struct.signal", "sock.__sk_common.skc_family",
			"mm_struct.rss_stat", "module.name", "a.b", "a.b.c"} {
			_, _, _ = p.Field(path)
		}
		_, _ = p.StructSize("task_struct")
		_, _ = isf.enumValue("MM_ANONPAGES")
		_ = isf.CheckAgainst("Linux version 6.1.0\n", kallsymsOf(nil))
		for name, st := range isf.user {
			_, _ = p.StructSize(name)
			for fname, fl := range st.fields {
				_, _, _ = p.Field(name + "." + fname)
				_ = isf.fieldType(fl.typ)
				_, _ = isf.sizeof(fl.typ)
			}
		}
	})
}
