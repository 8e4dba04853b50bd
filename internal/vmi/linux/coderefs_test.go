package linux

import (
	"encoding/binary"
	"testing"
)

// Functions of the synthetic kernel that refer to others in ways a call
// site scan must tell apart (offsets from _text, in the gap before _etext).
const (
	offTaker       = 0x1c00 // takes __x64_sys_getpid's address twice
	offJunk        = 0x1d00 // undecodable, then a call to __x64_sys_getpid
	offCoincidence = 0x1e00 // an immediate whose bytes look like a rel32 to do_syscall_64
)

// refsKernel is the synthetic kernel with the functions above and a
// .rodata holding sys_call_table.
func refsKernel(t testing.TB) (*Kernel, flatMem) {
	k, m := scKernel(t)
	k.Profile = scProfile(
		Symbol{"taker", testText + offTaker, 't'},
		Symbol{"junk", testText + offJunk, 't'},
		Symbol{"coincidence", testText + offCoincidence, 't'},
		Symbol{"__start_rodata", testText + offTable - 0x100, 'D'},
		Symbol{"__end_rodata", testText + offTable + 0x100, 'D'},
	)
	run := func(off uint64) uint64 { return testText + scSlide + off }
	rel := func(field, target uint64, after int) []byte {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(int32(int64(target-(field+4+uint64(after))))))
		return b[:]
	}
	// lea __x64_sys_getpid(%rip),%rax; mov $__x64_sys_getpid,%rax; ret
	c := append([]byte{0x48, 0x8d, 0x05}, rel(run(offTaker+3), run(offGetpid), 0)...)
	var imm [4]byte
	binary.LittleEndian.PutUint32(imm[:], uint32(run(offGetpid)))
	c = append(c, 0x48, 0xc7, 0xc0)
	c = append(c, imm[:]...)
	c = append(c, 0xc3)
	copy(m[scPhys+offTaker:], c)
	// An opcode invalid in 64-bit mode, then call __x64_sys_getpid.
	m[scPhys+offJunk] = 0x06
	copy(m[scPhys+offJunk+1:], branch(0xe8, run(offJunk+1), run(offGetpid)))
	// mov $imm32,%eax whose immediate reads as a rel32 to do_syscall_64;
	// ret.
	m[scPhys+offCoincidence] = 0xb8
	copy(m[scPhys+offCoincidence+1:], rel(run(offCoincidence+1), run(offDoSyscall), 0))
	m[scPhys+offCoincidence+5] = 0xc3
	return k, m
}

func TestCodeRefs(t *testing.T) {
	k, _ := refsKernel(t)
	run := func(off uint64) uint64 { return testText + scSlide + off }
	targets := []uint64{run(offSysCall), run(offRead), run(offWrite), run(offGetpid), run(offDoSyscall)}
	refs, err := k.CodeRefs(targets)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64][]CodeRef{
		run(offSysCall): {{RefCall, run(offDoSyscall), 5, "do_syscall_64"}},
		run(offRead): {
			{RefJump, run(offSysCall + 10), 5, "x64_sys_call+0xa"},
			{RefOther, run(offTable), 8, "sys_call_table"},
		},
		run(offWrite): {
			{RefJump, run(offSysCall + 15), 5, "x64_sys_call+0xf"},
			{RefOther, run(offTable + 8), 8, "sys_call_table+0x8"},
		},
		run(offGetpid): {
			{RefOther, run(offTaker), 7, "taker"},
			{RefOther, run(offTaker + 7), 7, "taker+0x7"},
			{RefUnknown, run(offJunk + 2), 4, "junk+0x2"},
			{RefOther, run(offTable + 16), 8, "sys_call_table+0x10"},
		},
		run(offDoSyscall): nil, // the coincidence is not a reference
	}
	for target, w := range want {
		got := refs[target]
		if len(got) != len(w) {
			t.Errorf("refs to %s: %+v; want %+v", k.symbolName(target), got, w)
			continue
		}
		for i := range w {
			if got[i] != w[i] {
				t.Errorf("refs to %s [%d]: %+v; want %+v", k.symbolName(target), i, got[i], w[i])
			}
		}
	}
}

func TestCodeRefsNoText(t *testing.T) {
	k, _ := scKernel(t)
	k.Profile = scProfile()
	k.Profile.Symbols = k.Profile.Symbols.without("_etext")
	if _, err := k.CodeRefs([]uint64{testText + scSlide + offRead}); err == nil {
		t.Fatal("CodeRefs without _etext: no error")
	}
}

// FuzzCodeRefs runs the scan over arbitrary bytes as the kernel's text:
// it must not panic, and every reference must lie in the text or data it
// read and refer to a target. The decoder finds new paths often: run it
// with -fuzzminimizetime 0s, or minimisation takes most of the time.
func FuzzCodeRefs(f *testing.F) {
	k, m := refsKernel(f)
	f.Add(append([]byte(nil), m[scPhys+offSysCall:scPhys+offSysCall+0x100]...))
	f.Add([]byte{0xe8, 0, 0, 0, 0, 0x0f, 0x84, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, text []byte) {
		k := k.withPatches(patch{scPhys + offRead, text[:min(len(text), offEtext-offRead)]})
		lo, hi := uint64(testText+scSlide), uint64(testText+scSlide+offEtext)
		targets := []uint64{lo + offRead, lo + offGetpid, lo + offDoSyscall}
		refs, err := k.CodeRefs(targets)
		if err != nil {
			t.Fatal(err)
		}
		for target, rs := range refs {
			for _, r := range rs {
				inText := r.Addr >= lo && r.Addr < hi
				inData := r.Addr >= lo+offTable-0x100 && r.Addr < lo+offTable+0x100
				if !inText && !inData || r.Len <= 0 || r.Len > 15 || r.Kind < RefCall || r.Kind > RefUnknown {
					t.Fatalf("ref to %#x: %+v", target, r)
				}
			}
		}
	})
}
