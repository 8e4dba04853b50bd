package gate

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// Whole LSM wrappers of the default kit's guest (Debian 6.1.0-57), as
// they run (alternatives applied), at their run-time addresses in one
// boot (KASLR slide 0x1d400000): written with `gatevisor dump VM -o F`
// from a VM booted with `run --policy policies/iot-default.policy`, and
// read from the dump through linux.Locate and Kernel.AS.ReadVirtual from
// each symbol to the next one, trailing int3 padding cut.
var (
	// security_file_open at 0xffffffff9e84b640
	ownFileOpenCode = []byte{0xf, 0x1f, 0x44, 0x0, 0x0, 0x55, 0x48, 0x89, 0xfd, 0x53, 0x48, 0x8b, 0x1d, 0x6f, 0x34, 0xfe, 0x0, 0x48, 0x85, 0xdb, 0x75, 0xa, 0xeb, 0x1f, 0x48, 0x8b, 0x1b, 0x48, 0x85, 0xdb, 0x74, 0x17, 0x48, 0x8b, 0x43, 0x18, 0x48, 0x89, 0xef, 0xe8, 0x14, 0x5f, 0x9b, 0x0, 0x85, 0xc0, 0x74, 0xe8, 0x5b, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x48, 0x89, 0xef, 0x5b, 0xbe, 0x20, 0x0, 0x0, 0x0, 0x5d, 0xe9, 0x4a, 0xe2, 0xff, 0xff, 0x66, 0x2e, 0xf, 0x1f, 0x84, 0x0, 0x0, 0x0, 0x0, 0x0}
	// security_capable at 0xffffffff9e849bc0
	ownCapableCode = []byte{0xf, 0x1f, 0x44, 0x0, 0x0, 0x41, 0x56, 0x4c, 0x8b, 0x35, 0x32, 0x4c, 0xfe, 0x0, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53, 0x4d, 0x85, 0xf6, 0x74, 0x38, 0x49, 0x89, 0xfd, 0x49, 0x89, 0xf4, 0x89, 0xd5, 0x89, 0xcb, 0xeb, 0x8, 0x4d, 0x8b, 0x36, 0x4d, 0x85, 0xf6, 0x74, 0x24, 0x49, 0x8b, 0x46, 0x18, 0x89, 0xd9, 0x89, 0xea, 0x4c, 0x89, 0xe6, 0x4c, 0x89, 0xef, 0xe8, 0x80, 0x79, 0x9b, 0x0, 0x85, 0xc0, 0x74, 0xe1, 0x5b, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x5b, 0x31, 0xc0, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0xc3}
	// security_mmap_file at 0xffffffff9e84b360
	ownMmapFileCode = []byte{0xf, 0x1f, 0x44, 0x0, 0x0, 0x48, 0x89, 0xf0, 0x41, 0x56, 0x83, 0xe0, 0x5, 0x41, 0x55, 0x49, 0x89, 0xd5, 0x41, 0x54, 0x49, 0x89, 0xfc, 0x55, 0x48, 0x89, 0xf5, 0x53, 0x48, 0x83, 0xf8, 0x1, 0x75, 0x24, 0x65, 0x48, 0x8b, 0x4, 0x25, 0x80, 0xfb, 0x1, 0x0, 0xf6, 0x80, 0x22, 0x9, 0x0, 0x0, 0x40, 0x74, 0x12, 0x48, 0x85, 0xff, 0x74, 0x65, 0x48, 0x8d, 0x7f, 0x10, 0xe8, 0x4e, 0x65, 0xf2, 0xff, 0x84, 0xc0, 0x74, 0x58, 0x49, 0x89, 0xee, 0x48, 0x8b, 0x1d, 0xd8, 0x36, 0xfe, 0x0, 0x48, 0x85, 0xdb, 0x75, 0xa, 0xeb, 0x2e, 0x48, 0x8b, 0x1b, 0x48, 0x85, 0xdb, 0x74, 0x26, 0x48, 0x8b, 0x43, 0x18, 0x4c, 0x89, 0xe9, 0x4c, 0x89, 0xf2, 0x48, 0x89, 0xee, 0x4c, 0x89, 0xe7, 0xe8, 0xac, 0x61, 0x9b, 0x0, 0x85, 0xc0, 0x74, 0xdf, 0x5b, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x5b, 0x4c, 0x89, 0xe9, 0x4c, 0x89, 0xf2, 0x48, 0x89, 0xee, 0x4c, 0x89, 0xe7, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0xe9, 0x62, 0x2b, 0x6, 0x0, 0x49, 0x89, 0xee, 0x49, 0x83, 0xce, 0x4, 0xeb, 0xa2, 0x66, 0xf, 0x1f, 0x84, 0x0, 0x0, 0x0, 0x0, 0x0}
	// security_path_rename at 0xffffffff9e849250
	ownRenameCode = []byte{0xf, 0x1f, 0x44, 0x0, 0x0, 0x48, 0x8b, 0x46, 0x30, 0xf6, 0x40, 0xd, 0x2, 0x75, 0x7d, 0x41, 0x57, 0x41, 0x56, 0x45, 0x89, 0xc6, 0x41, 0x55, 0x49, 0x89, 0xd5, 0x41, 0x54, 0x49, 0x89, 0xfc, 0x55, 0x48, 0x89, 0xcd, 0x53, 0x48, 0x89, 0xf3, 0xf7, 0x1, 0x0, 0x0, 0x70, 0x0, 0x75, 0x41, 0x4c, 0x8b, 0x3d, 0xb1, 0x56, 0xfe, 0x0, 0x4d, 0x85, 0xff, 0x75, 0xa, 0xeb, 0x3d, 0x4d, 0x8b, 0x3f, 0x4d, 0x85, 0xff, 0x74, 0x35, 0x49, 0x8b, 0x47, 0x18, 0x45, 0x89, 0xf0, 0x48, 0x89, 0xe9, 0x4c, 0x89, 0xea, 0x48, 0x89, 0xde, 0x4c, 0x89, 0xe7, 0xe8, 0xd2, 0x82, 0x9b, 0x0, 0x85, 0xc0, 0x74, 0xdc, 0x5b, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0x41, 0x5f, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x48, 0x8b, 0x41, 0x30, 0xf6, 0x40, 0xd, 0x2, 0x74, 0xb5, 0x5b, 0x31, 0xc0, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0x41, 0x5f, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x31, 0xc0, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x66, 0x66, 0x2e, 0xf, 0x1f, 0x84, 0x0, 0x0, 0x0, 0x0, 0x0, 0x66, 0x90}
)

// ownThunkRAX is __x86_indirect_thunk_rax in the same boot.
const ownThunkRAX = 0xffffffff9f201580

var ownThunks = map[uint64]string{ownThunkRAX: "rax"}

func TestModelCallSites(t *testing.T) {
	for _, tc := range []struct {
		name string
		code []byte
		fn   uint64
		want []callSite
	}{
		// mov 0x18(%rbx),%rax; mov %rbp,%rdi; call thunk_rax
		{"security_file_open", ownFileOpenCode, 0xffffffff9e84b640, []callSite{
			{Stop: 0xffffffff9e84b664, Next: 0xffffffff9e84b66c, Entry: "rbx", Fn: "rax", Args: [6]string{"rbp", "rsi", "rdx", "rcx", "r8", "r9"}, Thunk: ownThunkRAX}}},
		// mov 0x18(%r14),%rax; mov %ebx,%ecx; mov %ebp,%edx; mov %r12,%rsi; mov %r13,%rdi; call
		{"security_capable", ownCapableCode, 0xffffffff9e849bc0, []callSite{
			{Stop: 0xffffffff9e849bf1, Next: 0xffffffff9e849c00, Entry: "r14", Fn: "rax", Args: [6]string{"r13", "r12", "rbp", "rbx", "r8", "r9"}, Thunk: ownThunkRAX}}},
		// mmap_file's hook gets (file, reqprot, prot, flags)
		{"security_mmap_file", ownMmapFileCode, 0xffffffff9e84b360, []callSite{
			{Stop: 0xffffffff9e84b3c3, Next: 0xffffffff9e84b3d4, Entry: "rbx", Fn: "rax", Args: [6]string{"r12", "rbp", "r14", "r13", "r8", "r9"}, Thunk: ownThunkRAX}}},
		// five arguments, one a 32-bit move
		{"security_path_rename", ownRenameCode, 0xffffffff9e849250, []callSite{
			{Stop: 0xffffffff9e84929a, Next: 0xffffffff9e8492ae, Entry: "r15", Fn: "rax", Args: [6]string{"r12", "rbx", "r13", "rbp", "r14", "r9"}, Thunk: ownThunkRAX}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := modelCallSites(tc.code, tc.fn, 0x18, ownThunks)
			if err != nil {
				t.Fatal(err)
			}
			// A stop between the load and the call: each instruction's
			// address, the arguments all in place at the call itself.
			for i := range got {
				mids := got[i].Mids
				if len(mids) == 0 || mids[len(mids)-1].Args != argRegs || mids[len(mids)-1].Addr != got[i].Next-5 {
					t.Errorf("site %d: mids %+v; the last at the call with the arguments in their registers", i, mids)
				}
				for j, m := range mids {
					if m.Addr <= got[i].Stop || j > 0 && m.Addr <= mids[j-1].Addr {
						t.Errorf("site %d: mid %#x out of order", i, m.Addr)
					}
				}
				got[i].Mids = nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("sites (-want +got):\n-%+v\n+%+v", tc.want, got)
			}
			// Every site's call goes through the thunk, and its next
			// instruction tests the result.
			for _, s := range got {
				off := s.Next - tc.fn
				inst, err := x86asm.Decode(tc.code[off:], 64)
				if err != nil || inst.Op != x86asm.TEST {
					t.Errorf("after the call at %#x: %v %v; want the loop's test", s.Next, inst, err)
				}
			}
		})
	}
}

// siteCode is a wrapper fragment: a load of the hook field at 0x18 of
// rbx into rax, then between, then a call through the thunk (rel32 from
// fn+len).
func siteCode(fn uint64, load, between []byte) []byte {
	b := append(append([]byte{}, load...), between...)
	rel := int32(uint32(uint64(ownThunkRAX) - (fn + uint64(len(b)) + 5)))
	b = append(b, 0xe8, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[len(b)-4:], uint32(rel))
	return append(b, 0x85, 0xc0) // test %eax,%eax
}

func TestModelCallSitesRefuses(t *testing.T) {
	const fn = 0xffffffff81000000
	load := []byte{0x48, 0x8b, 0x43, 0x18} // mov 0x18(%rbx),%rax
	for _, tc := range []struct {
		name string
		code []byte
		want string
	}{
		{"a store between", siteCode(fn, load, []byte{0x48, 0x89, 0x3b}), "not modelled"},                     // mov %rdi,(%rbx)
		{"a move into a callee-saved register", siteCode(fn, load, []byte{0x48, 0x89, 0xfd}), "not modelled"}, // mov %rdi,%rbp
		{"the loaded register overwritten", siteCode(fn, load, []byte{0x48, 0x89, 0xf8}), "not modelled"},     // mov %rdi,%rax
		{"a call through another register", append(append([]byte{}, load...), 0xff, 0xd1), "not a call through rax"},
		{"a 32-bit load at the offset", []byte{0x8b, 0x43, 0x18, 0xc3}, "not a load of it"},
		{"no call after the load", append(append([]byte{}, load...), 0xc3), "not modelled"},
		{"no load at all", []byte{0x31, 0xc0, 0xc3}, "no load"},
		{"undecodable", append(append([]byte{}, load...), 0x48, 0x8b), "undecodable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := modelCallSites(tc.code, fn, 0x18, ownThunks)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want one saying %q", err, tc.want)
			}
		})
	}
	// A direct "call *%rax" and an lfence before the call are modelled.
	code := append(append([]byte{}, load...), 0x0f, 0xae, 0xe8, 0xff, 0xd0, 0x85, 0xc0)
	got, err := modelCallSites(code, fn, 0x18, ownThunks)
	if err != nil || len(got) != 1 || got[0].Next != fn+9 {
		t.Fatalf("lfence; call *%%rax: %+v %v", got, err)
	}
}

// fakePhys is guest memory at identity-mapped addresses (va == gpa).
type fakePhys struct{ mem map[int64]byte }

func (f *fakePhys) ReadAt(p []byte, gpa int64) (int, error) {
	for i := range p {
		b, ok := f.mem[gpa+int64(i)]
		if !ok {
			return i, fmt.Errorf("no memory at %#x", gpa+int64(i))
		}
		p[i] = b
	}
	return len(p), nil
}

func (f *fakePhys) WriteAt(p []byte, gpa int64) (int, error) {
	for i, b := range p {
		if _, ok := f.mem[gpa+int64(i)]; !ok {
			return i, fmt.Errorf("no memory at %#x", gpa+int64(i))
		}
		f.mem[gpa+int64(i)] = b
	}
	return len(p), nil
}

func (f *fakePhys) u64(a uint64) uint64 {
	var b [8]byte
	_, _ = f.ReadAt(b[:], int64(a))
	return binary.LittleEndian.Uint64(b[:])
}

type identity struct{}

func (identity) Translate(va uint64) (uint64, uint64, error) { return va, 4096, nil }

// Debian 6.1's layout (BTF): list {next, pprev}, head, hook, lsm.
var testLayout = hookListLayout{Size: 40, Next: 0, Pprev: 8, Head: 16, Hook: 24, L: 32}

func TestEntryBytes(t *testing.T) {
	// A randomized layout: every field where the layout says.
	l := hookListLayout{Size: 48, Next: 24, Pprev: 32, Head: 0, Hook: 8, L: 40}
	b := l.entryBytes(0x1000, 0x2000, 0x3000, 0x4000, 0x5000)
	for _, f := range []struct {
		off, want uint64
	}{{24, 0x2000}, {32, 0x3000}, {0, 0x3000}, {8, 0x4000}, {40, 0x5000}} {
		if got := binary.LittleEndian.Uint64(b[f.off:]); got != f.want {
			t.Errorf("at %d: %#x, want %#x", f.off, got, f.want)
		}
	}
	if len(b) != 48 || binary.LittleEndian.Uint64(b[16:]) != 0 {
		t.Errorf("entry %x", b)
	}
}

func TestLinkUnlink(t *testing.T) {
	const (
		head   = 0x10000 // security_hook_heads.file_open
		first  = 0x20000 // an LSM's entry
		second = 0x20100
		entry  = 0x30040 // the gate's
		hook   = 0x40000
		lsm    = 0x30000
	)
	f := &fakePhys{mem: map[int64]byte{}}
	for _, r := range [][2]int64{{head, 8}, {first, 40}, {second, 40}, {0x30000, 4096}} {
		for i := int64(0); i < r[1]; i++ {
			f.mem[r[0]+i] = 0
		}
	}
	m := listMem{identity{}, f}
	put := func(a, v uint64) {
		if err := m.write64(a, v); err != nil {
			t.Fatal(err)
		}
	}
	// head -> first -> second
	put(head, first)
	put(first+testLayout.Next, second)
	put(first+testLayout.Pprev, head)
	put(second+testLayout.Pprev, first+testLayout.Next)
	if err := linkEntry(m, testLayout, entry, head, hook, lsm); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		at, want uint64
	}{
		{"head.first", head, entry},
		{"entry.next", entry + testLayout.Next, first},
		{"entry.pprev", entry + testLayout.Pprev, head},
		{"entry.head", entry + testLayout.Head, head},
		{"entry.hook", entry + testLayout.Hook, hook},
		{"entry.lsm", entry + testLayout.L, lsm},
		{"first.pprev", first + testLayout.Pprev, entry + testLayout.Next},
		{"second.pprev (unchanged)", second + testLayout.Pprev, first + testLayout.Next},
	} {
		if got := f.u64(c.at); got != c.want {
			t.Errorf("linked: %s = %#x, want %#x", c.name, got, c.want)
		}
	}
	// Linking again (an upgrade's re-arm) changes nothing.
	put(entry+testLayout.Hook, 0xdead) // would be rewritten by a second link
	if err := linkEntry(m, testLayout, entry, head, hook, lsm); err != nil || f.u64(entry+testLayout.Hook) != 0xdead {
		t.Fatalf("second link: %v, hook %#x", err, f.u64(entry+testLayout.Hook))
	}
	put(entry+testLayout.Hook, hook)
	if err := unlinkEntry(m, testLayout, entry, head); err != nil {
		t.Fatal(err)
	}
	if f.u64(head) != first || f.u64(first+testLayout.Pprev) != head {
		t.Errorf("unlinked: head.first %#x first.pprev %#x; want %#x %#x", f.u64(head), f.u64(first+testLayout.Pprev), first, head)
	}
	// The entry is left as it was: a vCPU in the loop goes on from it.
	if f.u64(entry+testLayout.Next) != first || f.u64(entry+testLayout.Hook) != hook {
		t.Errorf("unlink changed the entry")
	}
	// Unlinking an entry no longer in the list does nothing.
	if err := unlinkEntry(m, testLayout, entry, head); err != nil || f.u64(head) != first {
		t.Errorf("second unlink: %v, head %#x", err, f.u64(head))
	}
	// An entry that another entry was put before is not unlinked.
	if err := linkEntry(m, testLayout, entry, head, hook, lsm); err != nil {
		t.Fatal(err)
	}
	put(head, second)
	put(entry+testLayout.Pprev, second+testLayout.Next)
	if err := unlinkEntry(m, testLayout, entry, head); err == nil {
		t.Error("unlink of an entry not first in its list: no error")
	}
	// An empty list: the entry is the only one.
	put(head, 0)
	put(entry+testLayout.Pprev, 0)
	if err := linkEntry(m, testLayout, entry, head, hook, lsm); err != nil || f.u64(head) != entry || f.u64(entry+testLayout.Next) != 0 {
		t.Fatalf("link into an empty list: %v", err)
	}
	if err := unlinkEntry(m, testLayout, entry, head); err != nil || f.u64(head) != 0 {
		t.Fatalf("unlink from a list of one: %v, head %#x", err, f.u64(head))
	}
	// Unwritable memory is an error, not a half-done link.
	delete(f.mem, int64(head))
	if err := linkEntry(m, testLayout, entry, head, hook, lsm); err == nil {
		t.Error("link with the head unreadable: no error")
	}
}

func TestOwnEntryWrites(t *testing.T) {
	site := callSite{Stop: 0xffffffff9e84b664, Next: 0xffffffff9e84b66c, Entry: "rbx", Fn: "rax", Args: [6]string{"rbp", "rsi", "rdx", "rcx", "r8", "r9"}}
	tr := Trap{Via: ViaOwnEntry, Addr: site.Stop, Hook: AtFileOpen, own: ownTrap{site: site, entry: 0xffff888002a89040, hook: 0xffffffff9e65cf50, argOf: hookArgsOf(AtFileOpen)}}
	regs := Regs{"rbx": 0xffff888002a89040, "rax": 0xffffffff9e65cf50, "rbp": 0xffff888001234500, "rdi": 0x1, "rip": site.Stop}
	if !ownHit(tr, regs) {
		t.Fatal("the gate's entry not recognised")
	}
	other := Regs{"rbx": 0xffffffff9f82f000, "rax": 0xffffffff9e650000, "rip": site.Stop}
	if ownHit(tr, other) {
		t.Fatal("another LSM's entry taken for the gate's")
	}
	if got := ownArgs(tr, regs); got["rdi"] != 0xffff888001234500 {
		t.Errorf("the file argument: rdi %#x, want rbp's %#x", got["rdi"], regs["rbp"])
	}
	want := []RegWrite{{RegRAX, 0}, {RegRIP, site.Next}}
	if got := ownResume(tr); !reflect.DeepEqual(got, want) {
		t.Errorf("allow writes %v, want %v", got, want)
	}
	want = []RegWrite{{RegRAX, 0xfffffff3}, {RegRIP, site.Next}} // -EACCES as an int
	if got := ownDeny(tr, 13); !reflect.DeepEqual(got, want) {
		t.Errorf("deny writes %v, want %v", got, want)
	}
	// Through the gate's outcome: a deny and an allow at the site.
	var o Outcome
	o.resume(tr, regs, nil)
	if !reflect.DeepEqual(o.Writes, []RegWrite{{RegRAX, 0}, {RegRIP, site.Next}}) || o.Step || len(o.MemWrites) != 0 {
		t.Errorf("resume: %+v", o)
	}
	// Found late, at the thunk: the arguments are in their registers,
	// and the return address is popped.
	lt := tr
	lt.own.late, lt.own.rsp = true, 0xffffc90000123f00
	if got := ownArgs(lt, Regs{"rdi": 7, "rbp": 8, "rbx": lt.own.entry}); got["rdi"] != 7 {
		t.Errorf("late: rdi %#x, want the register's own 7", got["rdi"])
	}
	want = []RegWrite{{RegRAX, 0xfffffff3}, {RegRIP, site.Next}, {RegRSP, 0xffffc90000123f08}}
	if got := ownDeny(lt, 13); !reflect.DeepEqual(got, want) {
		t.Errorf("late deny writes %v, want %v", got, want)
	}
	// mmap_file: the wrapper's (file, prot, flags) are the hook's
	// arguments 0, 1 and 3.
	mt := tr
	mt.own.argOf = hookArgsOf(AtMmap)
	mt.own.site.Args = [6]string{"r12", "rbp", "r14", "r13", "r8", "r9"}
	got := ownArgs(mt, Regs{"r12": 1, "rbp": 2, "r14": 3, "r13": 4, "rbx": 0xffff888002a89040})
	if got["rdi"] != 1 || got["rsi"] != 2 || got["rdx"] != 4 {
		t.Errorf("mmap_file's arguments: %v", got)
	}
	if _, ok := got["rcx"]; ok {
		t.Error("an argument the wrapper does not have is kept")
	}
}

// FuzzModelCallSites decodes arbitrary wrapper code (guest memory): it
// must not panic, and every site it models lies in the code, its stop
// before its call's next instruction, with its stops between in order.
func FuzzModelCallSites(f *testing.F) {
	for _, c := range [][]byte{ownFileOpenCode, ownCapableCode, ownMmapFileCode, ownRenameCode} {
		f.Add(c)
	}
	const fn = 0xffffffff9e84b640
	f.Fuzz(func(t *testing.T, code []byte) {
		sites, err := modelCallSites(code, fn, 0x18, ownThunks)
		if err != nil {
			return
		}
		for _, s := range sites {
			if s.Stop <= fn || s.Next > fn+uint64(len(code)) || s.Stop >= s.Next {
				t.Fatalf("site %+v outside the code or out of order (%d bytes)", s, len(code))
			}
			for i, m := range s.Mids {
				if m.Addr <= s.Stop || m.Addr >= s.Next || i > 0 && m.Addr <= s.Mids[i-1].Addr {
					t.Fatalf("site %+v: mid %#x out of order", s, m.Addr)
				}
			}
			for _, a := range s.Args {
				if _, ok := regNames[strings.ToUpper(a)]; !ok && a != "" && !isArgReg(a) && !slices.Contains(calleeSaved, a) && a != "rax" && a != "r10" && a != "r11" {
					t.Fatalf("site %+v: argument in %q", s, a)
				}
			}
		}
	})
}

func TestGFPZeroIn(t *testing.T) {
	// Debian 6.1.0-57's get_zeroed_page: nop5; and $-0x3,%edi; xor
	// %esi,%esi; or $0x100,%edi; call __get_free_pages.
	code := []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x83, 0xe7, 0xfd, 0x31, 0xf6, 0x81, 0xcf, 0x00, 0x01, 0x00, 0x00, 0xe8, 0x6b, 0xaa, 0x02, 0x00}
	if z, ok := GFPZeroIn(code); !ok || z != 0x100 {
		t.Errorf("GFPZeroIn = %#x, %v; want 0x100", z, ok)
	}
	// An OR into another register, or none before the call: not found.
	for _, c := range [][]byte{
		{0x81, 0xce, 0x00, 0x01, 0x00, 0x00, 0xc3}, // or $0x100,%esi; ret
		{0xe8, 0, 0, 0, 0, 0x81, 0xcf, 0x00, 0x01, 0x00, 0x00},
		{0x48},
	} {
		if z, ok := GFPZeroIn(c); ok {
			t.Errorf("GFPZeroIn(% x) = %#x; want none", c, z)
		}
	}
}
