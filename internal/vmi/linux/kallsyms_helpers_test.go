package linux

import (
	"slices"
	"sort"
	"testing"
)

// kallsymsOf builds a symbol table from syms (sorted by address here,
// stably).
func kallsymsOf(syms []Symbol) *Kallsyms {
	syms = slices.Clone(syms)
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].Addr < syms[j].Addr })
	var names []string
	var addrs []uint64
	var types []byte
	for _, s := range syms {
		names, addrs, types = append(names, s.Name), append(addrs, s.Addr), append(types, s.Type)
	}
	k, err := newKallsyms(KallsymsLayout{}, names, addrs, types)
	if err != nil {
		panic(err)
	}
	return k
}

// without returns k without the symbols called name.
func (k *Kallsyms) without(name string) *Kallsyms {
	return kallsymsOf(slices.DeleteFunc(k.Symbols(), func(s Symbol) bool { return s.Name == name }))
}

// withAddr returns k with the first symbol called name moved to addr.
func (k *Kallsyms) withAddr(name string, addr uint64) *Kallsyms {
	syms := k.Symbols()
	if i := slices.IndexFunc(syms, func(s Symbol) bool { return s.Name == name }); i >= 0 {
		syms[i].Addr = addr
	}
	return kallsymsOf(syms)
}

func TestKallsymsColumns(t *testing.T) {
	k := kallsymsOf([]Symbol{{"b", 0x2000, 'T'}, {"a", 0x1000, 'T'}, {"dup", 0x3000, 'D'}, {"alias", 0x2000, 't'}, {"dup", 0x4000, 'D'}})
	for _, tc := range []struct {
		name string
		addr uint64
		ok   bool
	}{{"a", 0x1000, true}, {"b", 0x2000, true}, {"alias", 0x2000, true}, {"dup", 0x3000, true}, {"c", 0, false}, {"", 0, false}} {
		if addr, ok := k.Lookup(tc.name); addr != tc.addr || ok != tc.ok {
			t.Errorf("Lookup(%q) = %#x, %v", tc.name, addr, ok)
		}
	}
	if s, off, ok := k.Symbol(0x2010); !ok || s.Name != "b" || off != 0x10 {
		t.Errorf("Symbol(0x2010) = %+v, %#x, %v", s, off, ok)
	}
	if k.Len() != 5 || len(k.Symbols()) != 5 || k.Symbols()[0].Name != "a" {
		t.Errorf("Len %d, Symbols %+v", k.Len(), k.Symbols())
	}
	if _, err := newKallsyms(KallsymsLayout{}, []string{"a"}, nil, nil); err == nil {
		t.Error("newKallsyms accepted columns of different lengths")
	}
}
