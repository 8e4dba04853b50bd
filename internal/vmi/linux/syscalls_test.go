package linux

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/vmi"
)

// A synthetic kernel for the syscall checks: symbols at these offsets from
// _text, the image mapped by kaslrMem (2 MiB pages at testText+scSlide,
// physical scPhys).
const (
	scPhys  = 0x600000
	scSlide = 0x1e00000

	offRead, offWrite, offGetpid = 0x1000, 0x1100, 0x1200
	offSysCall, offSysCallEnd    = 0x1300, 0x1400
	offDoSyscall, offDoEnd       = 0x1600, 0x1700
	offFentry, offThunk, offRet  = 0x1800, 0x1900, 0x1a00
	offFtraceCaller, offEtext    = 0x1b00, 0x2000
	offTable, offSockOps         = 0x3000, 0x3100
	offPageOffsetBase            = 0x3200
	offObjects                   = 0x400000 // heap objects for the socket tests
	offEnd                       = 0x500000
)

// scProfile is the synthetic kernel's profile; btf may be nil.
func scProfile(extra ...Symbol) *Profile {
	syms := []Symbol{
		{"_text", testText, 'T'},
		{"_stext", testText, 'T'},
		{"__x64_sys_read", testText + offRead, 'T'},
		{"__x64_sys_write", testText + offWrite, 'T'},
		{"__do_sys_getpid", testText + offGetpid, 't'},
		{"__x64_sys_getpid", testText + offGetpid, 'T'},
		{"x64_sys_call", testText + offSysCall, 'T'},
		{"after_sys_call", testText + offSysCallEnd, 'T'},
		{"do_syscall_64", testText + offDoSyscall, 'T'},
		{"after_do_syscall", testText + offDoEnd, 'T'},
		{"__fentry__", testText + offFentry, 'T'},
		{"__x86_indirect_thunk_rax", testText + offThunk, 'T'},
		{"__x86_return_thunk", testText + offRet, 'T'},
		{"ftrace_caller", testText + offFtraceCaller, 'T'},
		{"_etext", testText + offEtext, 'T'},
		{"sys_call_table", testText + offTable, 'D'},
		{"socket_file_ops", testText + offSockOps, 'd'},
		{"page_offset_base", testText + offPageOffsetBase, 'D'},
		{"linux_banner", testText + bannerOff, 'D'},
		{"init_top_pgt", testText + 0x300000, 'D'},
		{"_end", testText + offEnd, 'B'},
	}
	syms = append(syms, extra...)
	sortSymbols(syms)
	return &Profile{Banner: testBanner, Symbols: kallsymsOf(syms)}
}

func sortSymbols(s []Symbol) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].Addr < s[j-1].Addr; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// branch encodes a 5-byte call (0xe8) or jmp (0xe9) at from to to.
func branch(op byte, from, to uint64) []byte {
	b := []byte{op, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(int64(to-(from+5)))))
	return b
}

var (
	nop5     = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	callRAX  = []byte{0x0f, 0xae, 0xe8, 0xff, 0xd0} // lfence; call *%rax
	retInt3  = []byte{0xc3, 0xcc, 0xcc, 0xcc, 0xcc}
	cmpJumps = []byte{0x83, 0xfe, 0x01, 0x74, 0x05} // cmp $1,%esi; je +5
)

// sysCallCode returns x64_sys_call's code at base (link- or run-time):
// __fentry__ call, a two-way switch, a retpoline call and a return thunk.
// live applies the boot-time patching: nop, plain indirect call, ret.
func sysCallCode(base uint64, live bool) []byte {
	sym := func(off uint64) uint64 { return base - offSysCall + off }
	var c []byte
	if live {
		c = append(c, nop5...)
	} else {
		c = append(c, branch(0xe8, base, sym(offFentry))...)
	}
	c = append(c, cmpJumps...)
	c = append(c, branch(0xe9, base+10, sym(offRead))...)
	c = append(c, branch(0xe9, base+15, sym(offWrite))...)
	if live {
		c = append(c, callRAX...)
		c = append(c, retInt3...)
	} else {
		c = append(c, branch(0xe8, base+20, sym(offThunk))...)
		c = append(c, branch(0xe9, base+25, sym(offRet))...)
	}
	for len(c) < offSysCallEnd-offSysCall {
		c = append(c, 0xcc)
	}
	return c
}

func doSyscallCode(base uint64) []byte {
	c := branch(0xe8, base+0, base-offDoSyscall+offSysCall)
	c = append(c, 0xc3)
	for len(c) < offDoEnd-offDoSyscall {
		c = append(c, 0xcc)
	}
	return c
}

// scKernel builds the synthetic kernel: memory with a clean table and
// patched live code, and the image facts.
func scKernel(t testing.TB) (*Kernel, flatMem) {
	m, root := kaslrMem(scPhys, scSlide, false)
	prof := scProfile()
	facts := &ImageFacts{
		Banner:       testBanner,
		SyscallTable: []uint64{testText + offRead, testText + offWrite, testText + offGetpid},
		Code: []ImageCode{
			{Name: "do_syscall_64", Addr: testText + offDoSyscall, Bytes: doSyscallCode(testText + offDoSyscall)},
			{Name: "x64_sys_call", Addr: testText + offSysCall, Bytes: sysCallCode(testText+offSysCall, false)},
		},
	}
	if err := prof.SetImage(facts); err != nil {
		t.Fatal(err)
	}
	for i, v := range facts.SyscallTable {
		binary.LittleEndian.PutUint64(m[scPhys+offTable+8*i:], v+scSlide)
	}
	binary.LittleEndian.PutUint64(m[scPhys+offPageOffsetBase:], 0xffff888000000000)
	copy(m[scPhys+offSysCall:], sysCallCode(testText+scSlide+offSysCall, true))
	copy(m[scPhys+offDoSyscall:], doSyscallCode(testText+scSlide+offDoSyscall))
	k := &Kernel{Profile: prof, Mem: m, AS: &vmi.AddressSpace{Mem: m, CR3: root}, PhysBase: scPhys, Slide: scSlide}
	return k, m
}

func TestSyscallTable(t *testing.T) {
	run := uint64(testText + scSlide)
	for _, tc := range []struct {
		name   string
		slot1  uint64 // live value of slot 1 (write); 0 keeps it
		hooked bool
		reason string
		symbol string
	}{
		{name: "clean", symbol: "__x64_sys_write"},
		{"module space", 0xffffffffc0123000, true, "points into module space, outside core kernel text; the image has __x64_sys_write", ""},
		{"direct map", 0xffff888000123000, true, "points into the direct map", ""},
		{"user space", 0x401000, true, "points into user space", ""},
		{"non-canonical", 0x8000000000000000, true, "non-canonical", ""},
		{"kernel data", run + offTable, true, "points into the kernel image (sys_call_table)", "sys_call_table"},
		{"another handler", run + offRead, true, "points at __x64_sys_read; the image has __x64_sys_write", "__x64_sys_read"},
		{"alias preferred", run + offGetpid, true, "points at __x64_sys_getpid", "__x64_sys_getpid"},
		{"inside the handler", run + offWrite + 3, true, "points at __x64_sys_write+0x3", "__x64_sys_write+0x3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, m := scKernel(t)
			if tc.slot1 != 0 {
				binary.LittleEndian.PutUint64(m[scPhys+offTable+8:], tc.slot1)
			}
			got, err := k.SyscallTable()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 {
				t.Fatalf("%d entries; want 3", len(got))
			}
			e := got[1]
			if e.Nr != 1 || e.Name != "__x64_sys_write" || e.SlotAddr != run+offTable+8 || e.SlotPhys != scPhys+offTable+8 {
				t.Errorf("entry %+v", e)
			}
			if e.Hooked != tc.hooked || !strings.Contains(e.Reason, tc.reason) || e.Symbol != tc.symbol {
				t.Errorf("entry %+v; want hooked %v, reason %q, symbol %q", e, tc.hooked, tc.reason, tc.symbol)
			}
			if got[0].Hooked || got[2].Hooked || got[2].Name != "__x64_sys_getpid" {
				t.Errorf("other entries %+v %+v", got[0], got[2])
			}
		})
	}
}

func TestSyscallTableErrors(t *testing.T) {
	t.Run("no image", func(t *testing.T) {
		k, _ := scKernel(t)
		k.Profile = scProfile()
		if _, err := k.SyscallTable(); !errors.Is(err, ErrNoImage) {
			t.Errorf("err = %v; want ErrNoImage", err)
		}
		if _, err := k.CheckDispatch(); !errors.Is(err, ErrNoImage) {
			t.Errorf("CheckDispatch err = %v; want ErrNoImage", err)
		}
	})
	t.Run("facts of another build", func(t *testing.T) {
		if err := scProfile().SetImage(&ImageFacts{Banner: "Linux version 0\n"}); err == nil {
			t.Error("SetImage accepted another build's facts")
		}
	})
	t.Run("unreadable slot", func(t *testing.T) {
		k, _ := scKernel(t)
		f := cloneFacts(k.Profile.Image())
		// A table that runs off the mapped image: slots beyond it are unreadable.
		p := scProfile()
		p.Symbols = p.Symbols.withAddr("sys_call_table", testText+6<<20-8)
		f.SyscallTable = append(f.SyscallTable, testText+offRead)
		if err := p.SetImage(f); err != nil {
			t.Fatal(err)
		}
		k.Profile = p
		got, err := k.SyscallTable()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 4 || got[1].Hooked == false || !strings.Contains(got[1].Reason, "unreadable") {
			t.Errorf("entries %+v; want slot 1 onwards unreadable and hooked", got)
		}
	})
	t.Run("no x64_sys_call", func(t *testing.T) {
		k, _ := scKernel(t)
		p := scProfile()
		p.Symbols = p.Symbols.without("x64_sys_call")
		k.Profile = p
		if f, err := k.CheckDispatch(); f != nil || err != nil {
			t.Errorf("CheckDispatch = %v, %v; want nil, nil", f, err)
		}
	})
}

func TestCheckDispatch(t *testing.T) {
	run := uint64(testText + scSlide)
	site := run + offSysCall
	for _, tc := range []struct {
		name   string
		at     uint64 // run-time address of the patch
		patch  []byte
		reason string // "" means no finding
		target uint64
	}{
		{name: "clean"},
		{name: "unpatched image code", at: site, patch: sysCallCode(site, false)},
		{"jmp to module space", site + 10, branch(0xe9, site+10, 0xffffffffc0001000), "jmp into module space", 0xffffffffc0001000},
		{"jmp to another handler", site + 10, branch(0xe9, site+10, run+offGetpid), "jmp __x64_sys_getpid where the image branches to __x64_sys_read", run + offGetpid},
		{"jmp into a handler", site + 15, branch(0xe9, site+15, run+offWrite+8), "__x64_sys_write+0x8 where the image branches to __x64_sys_write", run + offWrite + 8},
		{"call to module space", run + offDoSyscall, branch(0xe8, run+offDoSyscall, 0xffffffffc0001000), "call into module space", 0xffffffffc0001000},
		{"ftrace attached", site, branch(0xe8, site, run+offFtraceCaller), "ftrace is attached: the __fentry__ site calls ftrace_caller", run + offFtraceCaller},
		{"trampoline at __fentry__", site, branch(0xe8, site, 0xffffffffc0002000), "at the __fentry__ site", 0xffffffffc0002000},
		{"jmp at __fentry__", site, branch(0xe9, site, run+offGetpid), "jmp __x64_sys_getpid replaces the __fentry__ call", run + offGetpid},
		{"indirect jmp in the switch", site + 5, []byte{0xff, 0xe0, 0x90, 0x90, 0x90}, "indirect jmp where the image has cmp", 0},
		{"return thunk swapped", site + 25, branch(0xe9, site+25, run+offThunk), "", 0},
		{"intra-function jump", site, branch(0xe9, site, site+30), "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, m := scKernel(t)
			if tc.patch != nil {
				copy(m[tc.at-run+scPhys:], tc.patch)
			}
			got, err := k.CheckDispatch()
			if err != nil {
				t.Fatal(err)
			}
			if tc.reason == "" {
				if len(got) != 0 {
					t.Errorf("findings %+v; want none", got)
				}
				return
			}
			if len(got) != 1 || !strings.Contains(got[0].Reason, tc.reason) || got[0].Addr != tc.at || got[0].Target != tc.target {
				t.Errorf("findings %+v; want one at %#x to %#x with %q", got, tc.at, tc.target, tc.reason)
			}
		})
	}
}

func TestCheckDispatchAlternatives(t *testing.T) {
	// An alternative may replace the __fentry__ site's 5 bytes with a call
	// to __x64_sys_getpid: that branch is then not a finding.
	k, m := scKernel(t)
	run := uint64(testText + scSlide)
	f := cloneFacts(k.Profile.Image())
	const repl = testText + 0x2800
	f.Alternatives = []Alternative{{Site: testText + offSysCall, Len: 5, ReplAddr: repl, Repl: branch(0xe8, repl, testText+offGetpid)}}
	p := scProfile()
	if err := p.SetImage(f); err != nil {
		t.Fatal(err)
	}
	copy(m[scPhys+offSysCall:], branch(0xe8, run+offSysCall, run+offGetpid))
	if got, err := k.CheckDispatch(); err != nil || len(got) != 1 {
		t.Fatalf("without the alternative: %+v, %v; want one finding", got, err)
	}
	k.Profile = p
	if got, err := k.CheckDispatch(); err != nil || len(got) != 0 {
		t.Errorf("with the alternative: %+v, %v; want none", got, err)
	}
}

func TestDispatchUnreadable(t *testing.T) {
	k, _ := scKernel(t)
	f := cloneFacts(k.Profile.Image())
	f.Code = append(f.Code, ImageCode{Name: "entry_SYSCALL_64", Addr: testText + 6<<20, Bytes: []byte{0x90}})
	p := scProfile()
	if err := p.SetImage(f); err != nil {
		t.Fatal(err)
	}
	k.Profile = p
	got, err := k.CheckDispatch()
	if err != nil || len(got) != 1 || !strings.Contains(got[0].Reason, "unreadable") {
		t.Errorf("findings %+v, %v; want one for unreadable code", got, err)
	}
}

func TestNewImageFactsRejectsGarbage(t *testing.T) {
	for name, img := range map[string][]byte{
		"empty":   nil,
		"garbage": []byte("not a kernel image at all"),
		"elf":     append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 100)...),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewImageFacts(img, scProfile()); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestLoadImageCache(t *testing.T) {
	dir := t.TempDir()
	p := scProfile()
	if err := p.LoadImage("", dir); !errors.Is(err, ErrNoImage) {
		t.Errorf("empty cache: %v; want ErrNoImage", err)
	}
	if err := p.LoadImage(dir+"/missing", dir); err == nil {
		t.Error("missing image: no error")
	}
}

// FuzzSyscalls runs SyscallTable and CheckDispatch over hostile memory: the
// fuzzer's bytes replace the live table and x64_sys_call's live code, and
// the image's copy of x64_sys_call. Neither may panic or fail.
func FuzzSyscalls(f *testing.F) {
	k, m := scKernel(f)
	run := uint64(testText + scSlide)
	clean := append([]byte(nil), m[scPhys+offTable:scPhys+offTable+24]...)
	clean = append(clean, m[scPhys+offSysCall:scPhys+offSysCallEnd]...)
	f.Add(clean)
	f.Add(append(append([]byte(nil), clean[:24]...), branch(0xe9, run+offSysCall, 0xffffffffc0000000)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		live := data[:min(len(data), 24+offSysCallEnd-offSysCall)]
		img := data[len(live):]
		km := k.withPatches(patch{scPhys + offTable, live[:min(len(live), 24)]})
		if len(live) > 24 {
			km = k.withPatches(patch{scPhys + offTable, live[:24]}, patch{scPhys + offSysCall, live[24:]})
		}
		if len(img) > 0 {
			facts := cloneFacts(k.Profile.Image())
			facts.Code = []ImageCode{{Name: "x64_sys_call", Addr: testText + offSysCall, Bytes: img[:min(len(img), offSysCallEnd-offSysCall)]}}
			facts.Alternatives = []Alternative{{Site: testText + offSysCall, Len: len(img) % 16, ReplAddr: testText + 0x2800, Repl: img}}
			p := scProfile()
			if err := p.SetImage(facts); err != nil {
				t.Fatal(err)
			}
			km.Profile = p
		}
		table, err := km.SyscallTable()
		if err != nil || len(table) != 3 {
			t.Fatalf("SyscallTable: %d entries, %v", len(table), err)
		}
		if _, err := km.CheckDispatch(); err != nil {
			t.Fatalf("CheckDispatch: %v", err)
		}
	})
}

// realDumpKernel opens the dump named by $GATEVISOR_DUMP (a QMP
// dump-guest-memory ELF of the default kit's guest) with the kit's profile.
func realDumpKernel(b *testing.B) *Kernel {
	path := os.Getenv("GATEVISOR_DUMP")
	if path == "" {
		b.Skip("GATEVISOR_DUMP not set: run GATEVISOR_KEEP_DUMP=/tmp/guest.elf go test -run TestRealKernelSyscallsAndSockets ./internal/vmi/linux/ (needs QEMU) and set GATEVISOR_DUMP=/tmp/guest.elf")
	}
	kt, err := kit.EnsureDefault(context.Background(), kit.Options{})
	if err != nil {
		b.Skipf("no default kit (it is built with apt-get): %v", err)
	}
	return openRealKernel(b, kt.Kernel, "", path)
}

// BenchmarkSyscallTable reads and checks all of sys_call_table, and the
// dispatch path, in a real guest's dump.
func BenchmarkSyscallTable(b *testing.B) {
	k := realDumpKernel(b)
	b.Run("table", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.SyscallTable(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("dispatch", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.CheckDispatch(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// cloneFacts copies image facts, without their decode cache.
func cloneFacts(f *ImageFacts) *ImageFacts {
	return &ImageFacts{Banner: f.Banner, SyscallTable: f.SyscallTable, Code: f.Code, Alternatives: f.Alternatives}
}
