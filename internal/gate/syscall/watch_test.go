package gate

import (
	"encoding/binary"
	"reflect"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// The first bytes of three LSM hooks of Debian's 6.1.0-56 kernel as they
// run (the __fentry__ call patched to a 5-byte nop), at their link-time
// addresses, and the list heads they read.
var (
	fileOpenCode = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55, 0x48, 0x89, 0xfd, 0x53, 0x48, 0x8b, 0x1d, 0x6f, 0x34, 0xfe, 0x00, 0x48, 0x85, 0xdb, 0x75, 0x0a, 0xeb, 0x1f, 0x48, 0x8b, 0x1b, 0x48, 0x85, 0xdb, 0x74, 0x17}
	mknodCode    = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0x8b, 0x47, 0x08, 0x48, 0x8b, 0x40, 0x30, 0xf6, 0x40, 0x0d, 0x02, 0x75, 0x5e, 0x41, 0x56, 0x4c, 0x8b, 0x35, 0x0c, 0x58, 0xfe, 0x00, 0x41, 0x55, 0x41, 0x54}
	bprmCode     = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55, 0x53, 0x48, 0x8b, 0x1d, 0x62, 0x4a, 0xfe, 0x00, 0x48, 0x85, 0xdb, 0x74, 0x24, 0x48}
	// Debian 6.1.0-57: __do_sys_delete_module up to its 4-byte read of
	// modules_disabled (a stack frame, a canary store, rep stos, a call
	// to capable), and security_mmap_file up to its list head (a call to
	// path_noexec on the way).
	deleteModuleCode = []byte{0x41, 0x54, 0xb9, 0x7, 0x0, 0x0, 0x0, 0x49, 0x89, 0xfc, 0x55, 0x89, 0xf5, 0x53, 0x48, 0x83, 0xec, 0x58, 0x65, 0x48, 0x8b, 0x4, 0x25, 0x28, 0x0, 0x0, 0x0, 0x48, 0x89, 0x44, 0x24, 0x50, 0x31, 0xc0, 0x48, 0x8d, 0x5c, 0x24, 0x18, 0x48, 0xc7, 0x44, 0x24, 0x9, 0x0, 0x0, 0x0, 0x0, 0x48, 0xc7, 0x44, 0x24, 0x1, 0x0, 0x0, 0x0, 0x0, 0x48, 0x89, 0xdf, 0x48, 0xc7, 0x44, 0x24, 0x10, 0x0, 0x0, 0x0, 0x0, 0xf3, 0x48, 0xab, 0xbf, 0x10, 0x0, 0x0, 0x0, 0xe8, 0xce, 0x2e, 0xf6, 0xff, 0x84, 0xc0, 0xf, 0x84, 0x9f, 0x2, 0x0, 0x0, 0x8b, 0xd, 0xe0, 0x87, 0xe8, 0x2, 0x85, 0xc9, 0xf, 0x85, 0x91, 0x2, 0x0, 0x0, 0xba, 0x38, 0x0, 0x0, 0x0, 0x4c, 0x89, 0xe6}
	// Debian 6.1.0-57: the hooks ptrace and module unload are decided
	// at (issue 19).
	ptraceAccessCode  = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x41, 0x54, 0x55, 0x53, 0x48, 0x8b, 0x1d, 0x80, 0x4d, 0xfe, 0x00, 0x48, 0x85, 0xdb, 0x74, 0x2a, 0x49, 0x89, 0xfc, 0x89, 0xf5, 0xeb, 0x08, 0x48, 0x8b, 0x1b, 0x48}
	ptraceTracemeCode = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55, 0x53, 0x48, 0x8b, 0x1d, 0x3a, 0x4d, 0xfe, 0x00, 0x48, 0x85, 0xdb, 0x74, 0x24, 0x48, 0x89, 0xfd, 0xeb, 0x08, 0x48, 0x8b, 0x1b, 0x48, 0x85, 0xdb, 0x74, 0x17}
	capableCode       = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x41, 0x56, 0x4c, 0x8b, 0x35, 0x32, 0x4c, 0xfe, 0x00, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53, 0x4d, 0x85, 0xf6, 0x74, 0x38, 0x49, 0x89, 0xfd, 0x49, 0x89, 0xf4, 0x89}
	mmapFileCode      = []byte{0xf, 0x1f, 0x44, 0x0, 0x0, 0x48, 0x89, 0xf0, 0x41, 0x56, 0x83, 0xe0, 0x5, 0x41, 0x55, 0x49, 0x89, 0xd5, 0x41, 0x54, 0x49, 0x89, 0xfc, 0x55, 0x48, 0x89, 0xf5, 0x53, 0x48, 0x83, 0xf8, 0x1, 0x75, 0x24, 0x65, 0x48, 0x8b, 0x4, 0x25, 0x80, 0xfb, 0x1, 0x0, 0xf6, 0x80, 0x22, 0x9, 0x0, 0x0, 0x40, 0x74, 0x12, 0x48, 0x85, 0xff, 0x74, 0x65, 0x48, 0x8d, 0x7f, 0x10, 0xe8, 0x4e, 0x65, 0xf2, 0xff, 0x84, 0xc0, 0x74, 0x58, 0x49, 0x89, 0xee, 0x48, 0x8b, 0x1d, 0xd8, 0x36, 0xfe, 0x0, 0x48, 0x85, 0xdb, 0x75, 0xa, 0xeb, 0x2e}
)

func TestModelEntry(t *testing.T) {
	for _, tc := range []struct {
		name        string
		code        []byte
		entry, head uint64
		size        int
		want        entryModel
	}{
		// push r12; ...; sub $0x58,%rsp; canary; rep stos; call capable;
		// test; je; mov modules_disabled(%rip),%ecx
		{"__do_sys_delete_module", deleteModuleCode, 0xffffffff8114bc60, 0xffffffff83fd44a0, 4,
			entryModel{Stop: 0xffffffff8114bcc0, Args: [6]string{"r12"}, Saved: []savedReg{{"rbx", 0x58}, {"rbp", 0x60}, {"r12", 0x68}}, RetOff: 0x70}},
		{"security_mmap_file", mmapFileCode, 0xffffffff8144b360, 0xffffffff8242ea88, 8,
			entryModel{Stop: 0xffffffff8144b3b0, Args: [6]string{"r12", "rbp", "r13"}, Saved: []savedReg{{"rbx", 0}, {"rbp", 8}, {"r12", 16}, {"r13", 24}, {"r14", 32}}, RetOff: 40}},
		// nop5; push %r12; push %rbp; push %rbx; mov head,%rbx
		{"security_ptrace_access_check", ptraceAccessCode, 0xffffffff81449a50, 0xffffffff8242e7e0, 8,
			entryModel{Stop: 0xffffffff81449a60, Args: [6]string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"}, Saved: []savedReg{{"rbx", 0}}, RetOff: 24}},
		// nop5; push %rbp; push %rbx; mov head,%rbx
		{"security_ptrace_traceme", ptraceTracemeCode, 0xffffffff81449aa0, 0xffffffff8242e7e8, 8,
			entryModel{Stop: 0xffffffff81449aae, Args: [6]string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"}, Saved: []savedReg{{"rbx", 0}}, RetOff: 16}},
		// nop5; push %r14; mov head,%r14: the cap (rdx) is where the
		// stop finds it
		{"security_capable", capableCode, 0xffffffff81449bc0, 0xffffffff8242e800, 8,
			entryModel{Stop: 0xffffffff81449bce, Args: [6]string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"}, Saved: []savedReg{{"r14", 0}}, RetOff: 8}},
		// nop5; push %rbp; mov %rdi,%rbp; push %rbx; mov head,%rbx
		{"security_file_open", fileOpenCode, 0xffffffff8144b640, 0xffffffff8242eac0, 8,
			entryModel{Stop: 0xffffffff8144b651, Args: [6]string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"}, Saved: []savedReg{{"rbx", 0}, {"rbp", 8}}, RetOff: 16}},
		// nop5; three loads and a test of the dentry; jne (return 0); push %r14; mov head,%r14
		{"security_path_mknod", mknodCode, 0xffffffff814490f0, 0xffffffff8242e918, 8,
			entryModel{Stop: 0xffffffff8144910c, Args: [6]string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"}, Saved: []savedReg{{"r14", 0}}, RetOff: 8}},
		// nop5; push %rbp; push %rbx; mov head,%rbx
		{"security_bprm_creds_for_exec", bprmCode, 0xffffffff81449dc0, 0xffffffff8242e830, 8,
			entryModel{Stop: 0xffffffff81449dce, Args: [6]string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"}, Saved: []savedReg{{"rbx", 0}}, RetOff: 16}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := modelEntry(tc.code, tc.entry, tc.head, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("model = %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestModelEntryRefuses(t *testing.T) {
	const entry, head = 0xffffffff81000000, 0xffffffff82000000
	load := func(at int) []byte { // mov head(%rip),%rbx at offset at
		b := []byte{0x48, 0x8b, 0x1d, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[3:], uint32(int32(int64(head-(entry+uint64(at)+7)))))
		return b
	}
	for name, prefix := range map[string][]byte{
		"an indirect call first":         {0xff, 0xd0},             // call *%rax
		"rsp moved":                      {0x48, 0x83, 0xc4, 0x08}, // add $8,%rsp
		"rbx changed, not saved":         {0x31, 0xdb},             // xor %ebx,%ebx (then the load into rbx)
		"the first argument overwritten": {0x48, 0x8b, 0x7f, 0x08}, // mov 8(%rdi),%rdi
		"a backward jump":                {0x74, 0xfe},             // je .
		"unknown instruction":            {0x0f, 0xa2},             // cpuid
	} {
		code := append(append([]byte(nil), prefix...), load(len(prefix))...)
		if name == "rbx changed, not saved" {
			code = append([]byte{0x55}, code...) // push %rbp only
			code = append(code[:1+len(prefix)], load(1+len(prefix))...)
		}
		if m, err := modelEntry(code, entry, head, 8); err == nil {
			t.Errorf("%s: modelled as %+v", name, m)
		}
	}
	if _, err := modelEntry([]byte{0x90, 0x90}, entry, head, 8); err == nil {
		t.Error("code without the load modelled")
	}
}

func TestWatchDenyWrites(t *testing.T) {
	const rsp = 0xffffc90000013e00
	mem := fakeMem{base: rsp, b: make([]byte, 32)}
	binary.LittleEndian.PutUint64(mem.b[0:], 0x1111) // saved rbx
	binary.LittleEndian.PutUint64(mem.b[8:], 0x2222) // saved rbp
	binary.LittleEndian.PutUint64(mem.b[16:], 0xffffffff81361b68)
	tr := Trap{Via: ViaWatch, model: entryModel{Saved: []savedReg{{"rbx", 0}, {"rbp", 8}}, RetOff: 16}}
	got, err := watchDenyWrites(mem, tr, Regs{RegRSP: rsp}, 13)
	if err != nil {
		t.Fatal(err)
	}
	want := []RegWrite{{RegRAX, ^uint64(12)}, {"rbx", 0x1111}, {"rbp", 0x2222}, {RegRIP, 0xffffffff81361b68}, {RegRSP, rsp + 24}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("writes = %+v\nwant %+v", got, want)
	}
	if _, err := watchDenyWrites(mem, tr, Regs{RegRSP: rsp + 4096}, 13); err == nil {
		t.Error("an unreadable stack gave writes")
	}
	args := watchArgs(Trap{model: entryModel{Args: [6]string{"rbp", "rsi"}}}, Regs{"rbp": 7, RegRSI: 8, RegRDI: 9})
	if args[RegRDI] != 7 || args[RegRSI] != 8 {
		t.Errorf("watchArgs = %v", args)
	}
}

// FuzzModelEntry: hook code read from guest memory is untrusted; the
// model must not panic, and what it returns must be usable.
func FuzzModelEntry(f *testing.F) {
	f.Add(fileOpenCode, uint64(0xffffffff8144b640), uint64(0xffffffff8242eac0))
	f.Add(mknodCode, uint64(0xffffffff814490f0), uint64(0xffffffff8242e918))
	f.Add(bprmCode, uint64(0xffffffff81449dc0), uint64(0xffffffff8242e830))
	f.Fuzz(func(t *testing.T, code []byte, entry, head uint64) {
		if len(code) > maxEntryBytes {
			code = code[:maxEntryBytes]
		}
		m, err := modelEntry(code, entry, head, 8)
		if err != nil {
			return
		}
		if m.Args[0] == "" || m.Stop <= entry || m.Stop > entry+uint64(len(code)) || m.RetOff%8 != 0 && m.RetOff < 8 {
			t.Fatalf("model %+v of % x", m, code)
		}
		for _, s := range m.Saved {
			if s.Off >= m.RetOff {
				t.Fatalf("saved %s at %d, at or above the return address %d", s.Reg, s.Off, m.RetOff)
			}
		}
	})
}

// FuzzDecodeNext: the instruction after a watched load is read from guest
// memory; what decodeNext accepts, EmulateNext must perform without
// panicking, moving rip forward by exactly the instruction's length.
func FuzzDecodeNext(f *testing.F) {
	for _, seed := range [][]byte{{0x48, 0x85, 0xdb}, {0x85, 0xc0}, {0x41, 0x55}, {0x49, 0x89, 0xfc}, {0x66, 0x53}, {0xf0, 0x48, 0x85, 0xdb}} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, code []byte) {
		n, ok := decodeNext(code)
		if !ok {
			return
		}
		if n.len <= 0 || n.len > len(code) || n.len > 15 {
			t.Fatalf("decodeNext(% x) = %+v: bad length", code, n)
		}
		regs := Regs{RegRIP: 0x1000, RegRSP: 0x8000, "eflags": 0x202}
		for _, r := range append(calleeSaved, callerSaved...) {
			if _, ok := regs[r]; !ok {
				regs[r] = 0x1234
			}
		}
		w, _, ok := EmulateNext(Trap{Addr: 0x1000, Via: ViaWatch, next: n}, regs)
		if !ok || len(w) == 0 || w[len(w)-1] != (RegWrite{RegRIP, 0x1000 + uint64(n.len)}) {
			t.Fatalf("EmulateNext of %+v: %v %v", n, w, ok)
		}
	})
}

func TestDecodeNext(t *testing.T) {
	for _, tc := range []struct {
		name string
		code []byte
		want nextInsn
		ok   bool
	}{
		{"test %rbx,%rbx", []byte{0x48, 0x85, 0xdb}, nextInsn{op: x86asm.TEST, dst: "rbx", src: "rbx", size: 64, len: 3}, true},
		{"test %eax,%eax", []byte{0x85, 0xc0}, nextInsn{op: x86asm.TEST, dst: "rax", src: "rax", size: 32, len: 2}, true},
		{"push %r13", []byte{0x41, 0x55}, nextInsn{op: x86asm.PUSH, src: "r13", size: 64, len: 2}, true},
		{"mov %rdi,%r12", []byte{0x49, 0x89, 0xfc}, nextInsn{op: x86asm.MOV, dst: "r12", src: "rdi", size: 64, len: 3}, true},
		{"mov %esi,%ebp (32-bit)", []byte{0x89, 0xf5}, nextInsn{}, false},
		{"test %al,%al", []byte{0x84, 0xc0}, nextInsn{}, false},
		{"je", []byte{0x74, 0x2a}, nextInsn{}, false},
		{"lock prefix", []byte{0xf0, 0x48, 0x85, 0xdb}, nextInsn{}, false},
		{"a load", []byte{0x48, 0x8b, 0x1b}, nextInsn{}, false},
		{"push %rsp", []byte{0x54}, nextInsn{}, false},
		{"push %rbx", []byte{0x53}, nextInsn{op: x86asm.PUSH, src: "rbx", size: 64, len: 1}, true},
		{"push %bx (16-bit)", []byte{0x66, 0x53}, nextInsn{}, false},
	} {
		got, ok := decodeNext(tc.code)
		if ok != tc.ok || got != tc.want {
			t.Errorf("%s: %+v %v, want %+v %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestEmulateNext(t *testing.T) {
	const stop = 0xffffffff81449a60
	test := Trap{Addr: stop, Via: ViaWatch, next: nextInsn{op: x86asm.TEST, dst: "rbx", src: "rbx", size: 64, len: 3}}
	for _, tc := range []struct {
		rbx, flagsIn, flagsOut uint64
	}{
		{0, 0x246 | flagCF | flagOF | flagSF, 0x246}, // zero: ZF, PF; CF, OF, SF cleared
		{0xffff88800a1b2c00, 0x246, 0x286},           // negative, low byte 0x00: SF, PF
		{0x7, 0x202, 0x202},                          // three bits: odd parity, no PF
		{0x3, 0x202 | flagZF, 0x206},                 // two bits: PF; ZF cleared
	} {
		w, mem, ok := EmulateNext(test, Regs{RegRIP: stop, "rbx": tc.rbx, "eflags": tc.flagsIn})
		want := []RegWrite{{"eflags", tc.flagsOut}, {RegRIP, stop + 3}}
		if tc.flagsIn == tc.flagsOut {
			want = want[1:] // the flags already are the test's: rip alone
		}
		if !ok || len(mem) != 0 || !reflect.DeepEqual(w, want) {
			t.Errorf("test %#x: %v %v %v, want %v", tc.rbx, w, mem, ok, want)
		}
	}
	push := Trap{Addr: stop, Via: ViaWatch, next: nextInsn{op: x86asm.PUSH, src: "r13", size: 64, len: 2}}
	w, mem, ok := EmulateNext(push, Regs{RegRIP: stop, "r13": 42, RegRSP: 0x1000})
	if !ok || !reflect.DeepEqual(mem, []MemWrite{{0xff8, 42}}) || !reflect.DeepEqual(w, []RegWrite{{RegRSP, 0xff8}, {RegRIP, stop + 2}}) {
		t.Errorf("push: %v %v %v", w, mem, ok)
	}
	mov := Trap{Addr: stop, Via: ViaWatch, next: nextInsn{op: x86asm.MOV, dst: "r12", src: "rdi", size: 64, len: 3}}
	for _, tc := range []struct {
		regs Regs
		want []RegWrite
	}{
		{Regs{RegRIP: stop, "rdi": 7, "r12": 1}, []RegWrite{{"r12", 7}, {RegRIP, stop + 3}}},
		{Regs{RegRIP: stop, "rdi": 7, "r12": 7}, []RegWrite{{RegRIP, stop + 3}}},
		{Regs{RegRIP: stop, "rdi": 7}, []RegWrite{{"r12", 7}, {RegRIP, stop + 3}}},
	} {
		if w, mem, ok := EmulateNext(mov, tc.regs); !ok || len(mem) != 0 || !reflect.DeepEqual(w, tc.want) {
			t.Errorf("mov with %v: %v %v %v, want %v", tc.regs, w, mem, ok, tc.want)
		}
	}
	// Not at the stop address, no instruction known, or a register
	// missing: the caller steps instead.
	for _, tc := range []struct {
		t    Trap
		regs Regs
	}{
		{test, Regs{RegRIP: stop + 1, "rbx": 1, "eflags": 2}},
		{Trap{Addr: stop, Via: ViaWatch}, Regs{RegRIP: stop}},
		{test, Regs{RegRIP: stop, "rbx": 1}},
		{Trap{Addr: stop, Via: ViaCall, next: test.next}, Regs{RegRIP: stop, "rbx": 1, "eflags": 2}},
	} {
		if _, _, ok := EmulateNext(tc.t, tc.regs); ok {
			t.Errorf("EmulateNext(%+v, %v) performed it", tc.t, tc.regs)
		}
	}
}
