package linux

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// A synthetic kernel's LSM hook lists: security_hook_heads with four
// hooks, struct security_hook_list at offsets unlike the real kernel's
// (its list node not first), and the "image" in the direct map: text at
// 1 MiB, read-only data at 2 MiB, .data at 2.5 MiB; objects allocated
// after 3 MiB are heap, the module area is module space.

const (
	lsmText    = 0x100000
	lsmRodata  = 0x200000
	lsmData    = 0x280000
	lsmDataEnd = 0x300000
)

var lsmHookNames = []string{"bprm_check_security", "file_open", "mmap_file", "task_kill"}

// lsmBTF builds the two structures; security_hook_heads's members are at
// 8-byte steps from offset 16 (a hole first).
func lsmBTF(t testing.TB) *BTF {
	u64 := &btf.Int{Name: "long unsigned int", Size: 8}
	ptr := &btf.Pointer{Target: &btf.Void{}}
	hlistNode := &btf.Struct{Name: "hlist_node", Size: 16, Members: []btf.Member{{Name: "next", Type: ptr}, {Name: "pprev", Type: ptr, Offset: 64}}}
	hlistHead := &btf.Struct{Name: "hlist_head", Size: 8, Members: []btf.Member{{Name: "first", Type: ptr}}}
	heads := &btf.Struct{Name: "security_hook_heads", Size: uint32(16 + 8*len(lsmHookNames))}
	for i, n := range lsmHookNames {
		heads.Members = append(heads.Members, btf.Member{Name: n, Type: hlistHead, Offset: btf.Bits(8 * (16 + 8*i))})
	}
	opts := &btf.Union{Name: "security_list_options", Size: 8, Members: []btf.Member{{Name: "file_open", Type: ptr}, {Name: "task_kill", Type: ptr}}}
	list := &btf.Struct{Name: "security_hook_list", Size: 48, Members: []btf.Member{
		{Name: "hook", Type: opts}, {Name: "list", Type: hlistNode, Offset: 8 * 8}, {Name: "lsm", Type: ptr, Offset: 8 * 24},
		{Name: "head", Type: &btf.Pointer{Target: hlistHead}, Offset: 8 * 32}}}
	b, err := btf.NewBuilder([]btf.Type{heads, list, hlistNode, hlistHead, opts, u64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return builtBTF(t, b)
}

// lsmScene is the synthetic kernel with its lists.
type lsmScene struct {
	*synth
	heads   uint64
	rodata  uint64 // next free read-only data address
	text    uint64 // next free text address
	entries map[string][]uint64
	funcs   map[string]uint64
	lsms    map[string]uint64 // LSM name -> its string
}

func (s *lsmScene) list(hook string) uint64 {
	for i, n := range lsmHookNames {
		if n == hook {
			return s.heads + 16 + 8*uint64(i)
		}
	}
	s.t.Fatalf("no hook %s", hook)
	return 0
}

// fn returns the address of a text symbol, made on first use.
func (s *lsmScene) fn(name string) uint64 {
	if a, ok := s.funcs[name]; ok {
		return a
	}
	a := s.text
	s.text += 0x40
	s.funcs[name] = a
	s.syms[name] = a
	return a
}

// entryAt writes a security_hook_list at e for hook, calling fn, of lsm,
// and links it last on the hook's list (hlist_add_tail_rcu).
func (s *lsmScene) entryAt(e uint64, hook string, fn uint64, lsm string) {
	if _, ok := s.lsms[lsm]; !ok {
		a := s.rodata
		s.rodata += 64
		s.putBytes(a, append([]byte(lsm), 0))
		s.lsms[lsm] = a
	}
	head := s.list(hook)
	s.put64(e+s.off("security_hook_list.hook"), fn)
	s.put64(e+s.off("security_hook_list.lsm"), s.lsms[lsm])
	s.put64(e+s.off("security_hook_list.head"), head)
	node := e + s.off("security_hook_list.list")
	pprev := head
	for n := s.get64(head); n != 0; n = s.get64(n) {
		pprev = n
	}
	s.put64(node, 0)
	s.put64(node+8, pprev)
	s.put64(pprev, node)
	s.entries[hook] = append(s.entries[hook], e)
}

// array places n entries of an LSM's static array in read-only data.
func (s *lsmScene) array(lsm string, hooks ...string) {
	for _, h := range hooks {
		e := s.rodata
		s.rodata += 48
		s.entryAt(e, h, s.fn(lsm+"_"+h), lsm)
	}
}

// buildLSMScene makes capability and apparmor entries, as a kernel links
// them at boot: every one in core data, calling core text.
func buildLSMScene(t testing.TB) *lsmScene {
	s := &lsmScene{synth: newSynth(t), entries: map[string][]uint64{}, funcs: map[string]uint64{}, lsms: map[string]uint64{}}
	s.prof.BTF = lsmBTF(t)
	s.next = lsmDataEnd
	s.text, s.rodata = s.va(lsmText), s.va(lsmRodata)
	for name, pa := range map[string]uint64{"_stext": lsmText, "_etext": lsmRodata - 0x1000, "__start_rodata": lsmRodata,
		"__end_rodata": lsmData, "_sdata": lsmData, "_edata": lsmDataEnd} {
		s.syms[name] = s.va(pa)
	}
	s.heads = s.va(lsmData + 0x100)
	s.syms["security_hook_heads"] = s.heads
	s.array("capability", "bprm_check_security", "file_open", "task_kill")
	s.array("apparmor", "file_open", "bprm_check_security", "mmap_file")
	return s
}

// want is what LSMHooks must return for the scene as built.
func (s *lsmScene) want() []LSMHook {
	var out []LSMHook
	for _, hook := range lsmHookNames {
		for _, e := range s.entries[hook] {
			fn := s.get64(e + s.off("security_hook_list.hook"))
			lsm := s.get64(e + s.off("security_hook_list.lsm"))
			name := strings.TrimRight(string(s.mem[s.pa(lsm):s.pa(lsm)+16]), "\x00")
			out = append(out, LSMHook{Addr: e, Hook: hook, List: s.list(hook), Head: s.get64(e + s.off("security_hook_list.head")), Func: fn,
				LSM: name, LSMAddr: lsm,
				InCoreData: e >= s.va(lsmRodata) && e < s.va(lsmDataEnd), InCoreText: fn >= s.va(lsmText) && fn < s.va(lsmRodata-0x1000)})
		}
	}
	return out
}

func (s *lsmScene) k() *Kernel { return s.kernel() }

func TestLSMHooks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(s *lsmScene)
		broken []string // hook: reason fragment
	}{
		{name: "clean"},
		{name: "an entry in a module calling module code", change: func(s *lsmScene) {
			e := s.allocModule(48)
			s.entryAt(e, "file_open", s.allocModule(16), "rk")
		}},
		{name: "a core entry calling module code", change: func(s *lsmScene) {
			e := s.entries["task_kill"][0]
			s.put64(e+s.off("security_hook_list.hook"), s.allocModule(16))
		}},
		{name: "a heap entry calling core text", change: func(s *lsmScene) {
			s.entryAt(s.alloc(48), "mmap_file", s.fn("cap_mmap_file"), "capability")
		}},
		{name: "a wrong head back-pointer", change: func(s *lsmScene) {
			e := s.entries["file_open"][1]
			s.put64(e+s.off("security_hook_list.head"), s.list("task_kill"))
		}},
		{name: "a loop", change: func(s *lsmScene) {
			es := s.entries["file_open"]
			s.put64(es[1]+s.off("security_hook_list.list"), es[0]+s.off("security_hook_list.list"))
		}, broken: []string{"file_open: it loops: entry"}},
		{name: "a pointer outside RAM", change: func(s *lsmScene) {
			es := s.entries["task_kill"]
			s.put64(es[0]+s.off("security_hook_list.list"), s.va(synthMemSize+0x1000))
		}, broken: []string{"task_kill: entry 1 at", "cannot be read"}},
		{name: "a user-space pointer", change: func(s *lsmScene) {
			s.put64(s.list("mmap_file"), 0x400000)
		}, broken: []string{"mmap_file: entry 0's link 0x400000 is not a kernel address"}},
		{name: "a list too long", change: func(s *lsmScene) {
			for range maxLSMPerList {
				s.entryAt(s.alloc(48), "bprm_check_security", s.fn("x"), "x")
			}
		}, broken: []string{"bprm_check_security: more than 64 entries"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := buildLSMScene(t)
			if tc.change != nil {
				tc.change(s)
			}
			k := s.k()
			got, err := k.LSMHooks()
			if err != nil {
				t.Fatal(err)
			}
			if got.Heads != s.heads || got.Hooks != len(lsmHookNames) {
				t.Errorf("heads %#x, %d hooks; want %#x, %d", got.Heads, got.Hooks, s.heads, len(lsmHookNames))
			}
			if len(tc.broken) == 0 {
				if diff := cmp.Diff(s.want(), got.Entries); diff != "" || len(got.Broken) > 0 {
					t.Errorf("entries (-want +got):\n%s\nbroken: %+v", diff, got.Broken)
				}
				return
			}
			if len(got.Broken) != 1 {
				t.Fatalf("broken lists %+v, want one", got.Broken)
			}
			b := got.Broken[0]
			text := b.Hook + ": " + b.Reason
			for _, frag := range tc.broken {
				if !strings.Contains(text, frag) {
					t.Errorf("broken list %q, want %q in it", text, frag)
				}
			}
			if b.List != s.list(b.Hook) {
				t.Errorf("broken list at %#x, want %#x", b.List, s.list(b.Hook))
			}
			// The other lists are still walked, and the entries before the break listed.
			hooks := map[string]int{}
			for _, e := range got.Entries {
				hooks[e.Hook]++
			}
			for _, h := range lsmHookNames {
				if h != b.Hook && hooks[h] != len(s.entries[h]) {
					t.Errorf("%s: %d entries listed, want %d", h, hooks[h], len(s.entries[h]))
				}
			}
		})
	}
}

// The flags LSMHooks sets are what the check judges by.
func TestLSMHooksFlags(t *testing.T) {
	s := buildLSMScene(t)
	mod := s.allocModule(48)
	s.entryAt(mod, "file_open", s.allocModule(16), "rk")
	s.put64(s.entries["task_kill"][0]+s.off("security_hook_list.head"), s.list("file_open"))
	got, err := s.k().LSMHooks()
	if err != nil {
		t.Fatal(err)
	}
	flagged := map[uint64]string{}
	for _, e := range got.Entries {
		var why []string
		if !e.InCoreData {
			why = append(why, "data")
		}
		if !e.InCoreText {
			why = append(why, "text")
		}
		if !e.HeadOK() {
			why = append(why, "head")
		}
		if len(why) > 0 {
			flagged[e.Addr] = strings.Join(why, ",")
		}
		if e.LSM == "" || e.LSMError != "" {
			t.Errorf("entry %#x: lsm %q, %s", e.Addr, e.LSM, e.LSMError)
		}
	}
	want := map[uint64]string{mod: "data,text", s.entries["task_kill"][0]: "head"}
	if diff := cmp.Diff(want, flagged); diff != "" {
		t.Errorf("flagged entries (-want +got):\n%s", diff)
	}
}

func TestLSMHooksNotAvailable(t *testing.T) {
	for _, tc := range []struct {
		name, release string
		syms          map[string]uint64
		want          string
	}{
		{"static calls", "6.12.38+deb12-amd64", map[string]uint64{"static_calls_table": synthDirectMap + lsmData}, "static calls"},
		{"a 6.9+ release", "6.9.0", map[string]uint64{"_stext": synthDirectMap + lsmText}, "static calls"},
		{"no LSM at all", "6.1.0-57-amd64", map[string]uint64{"_stext": synthDirectMap + lsmText}, "neither security_hook_heads nor static_calls_table"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSynth(t)
			s.prof.BTF = lsmBTF(t)
			s.prof.Release = tc.release
			for n, a := range tc.syms {
				s.syms[n] = a
			}
			_, err := s.kernel().LSMHooks()
			if !errors.Is(err, ErrLSMNotAvailable) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LSMHooks: %v; want ErrLSMNotAvailable saying %q", err, tc.want)
			}
		})
	}
}

func TestStructMembers(t *testing.T) {
	p := &Profile{BTF: lsmBTF(t)}
	ms, err := p.StructMembers("security_hook_heads")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		if m.Type.Kind != KindStruct || m.Type.Size != 8 {
			got = append(got, m.Name+": not an 8-byte struct")
		}
		got = append(got, m.Name)
		if off, err := p.FieldOffset("security_hook_heads." + m.Name); err != nil || off != m.Offset {
			t.Errorf("%s at %d; FieldOffset %d, %v", m.Name, m.Offset, off, err)
		}
	}
	want := append([]string{}, lsmHookNames...)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	if _, err := p.StructMembers("security_list_options"); !errors.Is(err, ErrNoField) {
		t.Errorf("members of a union: %v, want ErrNoField", err)
	}
	isf, err := ParseISF(strings.NewReader(`{"metadata": {"format": "6.2.0"}, "base_types": {"long unsigned int": {"size": 8, "kind": "int", "signed": false, "endian": "little"}, "pointer": {"size": 8, "kind": "int", "signed": false, "endian": "little"}},
		"user_types": {"hlist_head": {"kind": "struct", "size": 8, "fields": {"first": {"offset": 0, "type": {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}}}},
		"security_hook_heads": {"kind": "struct", "size": 24, "fields": {"task_kill": {"offset": 16, "type": {"kind": "struct", "name": "hlist_head"}},
			"file_open": {"offset": 8, "type": {"kind": "struct", "name": "hlist_head"}}, "unnamed_field_0": {"offset": 0, "anonymous": true, "type": {"kind": "struct", "name": "inner"}}}},
		"inner": {"kind": "struct", "size": 8, "fields": {"bprm_check_security": {"offset": 0, "type": {"kind": "struct", "name": "hlist_head"}}}}}, "enums": {}, "symbols": {}}`))
	if err != nil {
		t.Fatal(err)
	}
	ms, err = (&Profile{ISF: isf}).StructMembers("security_hook_heads")
	if err != nil {
		t.Fatal(err)
	}
	want2 := []Member{{"bprm_check_security", 0, FieldType{Kind: KindStruct, Size: 8}}, {"file_open", 8, FieldType{Kind: KindStruct, Size: 8}},
		{"task_kill", 16, FieldType{Kind: KindStruct, Size: 8}}}
	if diff := cmp.Diff(want2, ms, cmp.AllowUnexported(FieldType{})); diff != "" {
		t.Errorf("ISF members (-want +got):\n%s", diff)
	}
}

// BenchmarkLSMHooks walks the LSM hook lists of a dump of the default kit's
// guest (GATEVISOR_VMI_DUMP: any `gatevisor dump` of it), RAM copied into
// host memory: the lsm-hook check's reading, at every scan.
func BenchmarkLSMHooks(b *testing.B) {
	kern := dumpKernel(b, "needs a dump of the default kit's guest: GATEVISOR_VMI_DUMP=FILE (gatevisor dump VM -o FILE)")
	r, err := kern.LSMHooks()
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range r.Entries {
		if !e.InCoreData || !e.InCoreText || !e.HeadOK() {
			b.Errorf("the default guest's entry %+v is not the kernel's own", e)
		}
	}
	for b.Loop() {
		if _, err := kern.LSMHooks(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(r.Entries)), "entries")
	b.ReportMetric(float64(r.Hooks), "lists")
}

var (
	lsmFuzzOnce  sync.Once
	lsmFuzzScene *lsmScene
)

// FuzzLSMHooks walks the LSM hook lists over the synthetic scene's memory
// patched by data (fuzzKernel's records): it must return, without
// panicking, with every entry on a list the kernel has and no more than
// maxLSMPerList entries a list.
func FuzzLSMHooks(f *testing.F) {
	s := buildLSMScene(f)
	node := s.off("security_hook_list.list")
	fo, tk := s.entries["file_open"], s.entries["task_kill"]
	f.Add([]byte{})
	// A loop, a list head into unmapped memory, an entry's next pointing
	// at a list head, a module-area hole, a head pointing into itself.
	f.Add(fuzzPatch(s.pa(fo[1]+node), fo[0]+node))
	f.Add(fuzzPatch(s.pa(s.list("mmap_file")), s.va(synthMemSize-8)))
	f.Add(append(fuzzPatch(s.pa(tk[0]+node), s.list("file_open")), fuzzPatch(s.pa(s.list("bprm_check_security")), modulesVAddr+300<<12)...))
	f.Add(fuzzPatch(s.pa(s.list("task_kill")), s.list("task_kill")+node))
	f.Fuzz(func(t *testing.T, data []byte) {
		lsmFuzzOnce.Do(func() { lsmFuzzScene = buildLSMScene(t); lsmFuzzScene.kernel() })
		sc := lsmFuzzScene
		mem := append(flatMem(nil), sc.mem...)
		for len(data) >= 12 && len(data) <= 12*256 {
			off := uint64(binary.LittleEndian.Uint32(data)) % (synthMemSize - 8)
			binary.LittleEndian.PutUint64(mem[off:], binary.LittleEndian.Uint64(data[4:]))
			data = data[12:]
		}
		k := &Kernel{Profile: sc.prof, Mem: mem, AS: &vmi.AddressSpace{Mem: mem, CR3: 0x1000, Cache: vmi.NewTranslationCache()}}
		got, err := k.LSMHooks()
		if err != nil {
			return // security_hook_heads itself unreadable
		}
		per := map[string]int{}
		for _, e := range got.Entries {
			per[e.Hook]++
			if e.List != sc.list(e.Hook) || per[e.Hook] > maxLSMPerList || len(e.LSM) > maxLSMNameLen {
				t.Fatalf("entry %+v: on list %#x, %d on its list", e, sc.list(e.Hook), per[e.Hook])
			}
		}
		if len(got.Broken) > len(lsmHookNames) {
			t.Fatalf("%d broken lists of %d", len(got.Broken), len(lsmHookNames))
		}
	})
}
