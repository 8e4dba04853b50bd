package gate

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi"
)

// arm64PtRegs are the offsets of Debian bookworm's arm64 6.1 kernel's BTF.
var arm64PtRegs = map[string]uint64{"regs": 0, "orig_x0": 272, "syscallno": 280}

func TestARM64PtRegsDecode(t *testing.T) {
	l, err := armPtRegsLayout(func(f string) (uint64, error) { return arm64PtRegs[f], nil })
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 336)
	le := binary.LittleEndian
	le.PutUint64(b[0:], 0xdead)       // regs[0]: the return value's slot, not the argument
	le.PutUint64(b[272:], 0xffffff9c) // orig_x0: AT_FDCWD as the task passed it
	for i := 1; i < 6; i++ {
		le.PutUint64(b[8*i:], uint64(0x1000+i))
	}
	le.PutUint32(b[280:], 56)         // syscallno: openat
	le.PutUint32(b[284:], 0xffffffff) // unused2: not part of the number
	p, err := l.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := PtRegs{Args: [6]uint64{0xffffff9c, 0x1001, 0x1002, 0x1003, 0x1004, 0x1005}, OrigAX: 56}
	want.CompatArgs = want.Args
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("Decode (-want +got):\n%s", diff)
	}
	if _, err := l.Decode(b[:200]); err == nil {
		t.Error("Decode of a short buffer succeeded")
	}
	if _, err := armPtRegsLayout(func(string) (uint64, error) { return 1 << 20, nil }); err == nil {
		t.Error("implausible offsets accepted")
	}
}

func TestARM64SyscallNumbers(t *testing.T) {
	open := families["open"]
	for _, c := range []struct {
		nr     uint64
		compat bool
		want   string
	}{
		{56, false, "openat"}, {437, false, "openat2"}, {5, true, "open"}, {8, true, "creat"},
		{322, true, "openat"}, {2, false, ""}, {85, false, ""}, {257, false, ""},
		{0x40000000 | 56, false, ""}, // no x32 ABI on arm64
	} {
		m, ok := isaARM64.memberFor(open, c.nr, c.compat)
		if got := map[bool]string{true: m.Name}[ok]; got != c.want {
			t.Errorf("memberFor(open, %#x, compat=%v) = %q, want %q", c.nr, c.compat, got, c.want)
		}
	}
	if !isaARM64.isExecCall(221, false) || !isaARM64.isExecCall(281, false) || !isaARM64.isExecCall(11, true) || isaARM64.isExecCall(59, false) {
		t.Error("isExecCall: arm64 execve is 221, execveat 281, AArch32 execve 11; 59 is x86-64's")
	}
	if isaARM64.handler("openat") != "__arm64_sys_openat" || isaARM64.compatHandlers("openat")[0] != "__arm64_compat_sys_openat" {
		t.Errorf("handlers: %s %v", isaARM64.handler("openat"), isaARM64.compatHandlers("openat"))
	}
}

func TestSkipARM64(t *testing.T) {
	le := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	for _, c := range []struct {
		insn []byte
		want int
	}{
		{le(0xd503201f), 4}, // nop: ftrace's patchable entry
		{le(0xd503245f), 4}, // bti c
		{le(0xd503233f), 0}, // paciasp: changes x30 under PAC, stepped
		{le(0xa9be7bfd), 0}, // stp x29, x30, [sp, #-32]!
		{[]byte{0x1f, 0x20}, 0},
	} {
		if got := skipARM64(c.insn); got != c.want {
			t.Errorf("skipARM64(% x) = %d, want %d", c.insn, got, c.want)
		}
	}
}

// A deny at a function's first instruction returns to x30 with -errno in
// x0, nothing else changed; a kill at a handler calls do_group_exit(9).
func TestARM64Enforce(t *testing.T) {
	const entry, lr, sp = 0xffff8000083a9024, 0xffff800008029d40, 0xffff80000a2b3e60
	regs := Regs{"x0": 0xffff80000a2b3eb0, RegLR: lr, RegPC: entry, RegSP: sp, RegSPEL0: 0xffff000002f1c000}
	ev := event.Event{Class: event.ClassSyscall, Op: "mkdirat"}
	handler := Trap{Addr: entry, Skip: 4}
	deny := &Gate{isa: isaARM64, d: verdictOf(secserver.Decision{Verdict: secserver.Deny, Errno: 13})}
	out, err := deny.decide(handler, regs, ev, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := Apply(regs, out.Writes)
	want := Regs{"x0": uint64(0xfffffffffffffff3), RegLR: lr, RegPC: lr, RegSP: sp, RegSPEL0: regs[RegSPEL0]}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("deny (-want +got):\n%s", diff)
	}
	kill := &Gate{isa: isaARM64, doGroupExit: 0xffff800008077a40, d: verdictOf(secserver.Decision{Verdict: secserver.Kill})}
	out, err = kill.decide(handler, regs, ev, nil)
	if err != nil || !out.Kill {
		t.Fatalf("kill: %+v, %v", out, err)
	}
	if k := Apply(regs, out.Writes); k[RegPC] != 0xffff800008077a40 || k["x0"] != 9 || k[RegSP] != sp || k[RegLR] != lr {
		t.Errorf("kill = %v", k)
	}
	allow := &Gate{isa: isaARM64, d: verdictOf(secserver.Decision{Verdict: secserver.Allow})}
	if out, _ := allow.decide(handler, regs, ev, nil); len(out.Writes) != 1 || out.Writes[0] != (RegWrite{RegPC, entry + 4}) || out.Step {
		t.Errorf("allow past the NOP: %+v", out)
	}
	if out, _ := allow.decide(Trap{Addr: entry}, regs, ev, nil); !out.Step || len(out.Writes) != 0 {
		t.Errorf("allow without a NOP: %+v", out)
	}
	// A return address that is not kernel text is not jumped to: the
	// caller kills instead.
	if _, err := deny.decide(handler, Regs{"x0": 1, RegPC: entry, RegSP: sp, RegLR: 0x400000}, ev, nil); err == nil {
		t.Error("deny with a user-space x30 succeeded")
	}
}

// A fault-in calls strnlen_user(path, PATH_MAX+1) with the handler's entry
// as the return address in x30; back at the entry, the handler gets x0
// (its pt_regs) and x30 (its caller) back.
func TestARM64FaultIn(t *testing.T) {
	const entry, lr, sp, ptregs, path = 0xffff8000083a9024, 0xffff800008029d40, 0xffff80000a2b3e60, 0xffff80000a2b3eb0, 0xaaaadddd0000
	g := &Gate{isa: isaARM64, strnlenUser: 0xffff8000085f7cf0, pending: map[uint64]pendingCall{}}
	regs := Regs{"x0": ptregs, RegLR: lr, RegPC: entry, RegSP: sp}
	out, ok := g.faultIn(Trap{Addr: entry}, regs, event.Event{}, path)
	if !ok || !out.FaultIn || len(out.MemWrites) != 0 {
		t.Fatalf("faultIn: %+v", out)
	}
	got := Apply(regs, out.Writes)
	want := Regs{"x0": path, "x1": MaxPath + 1, RegLR: entry, RegPC: 0xffff8000085f7cf0, RegSP: sp}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fault-in call (-want +got):\n%s", diff)
	}
	// strnlen_user returns to the entry with its result in x0.
	back := Apply(got, []RegWrite{{"x0", 12}, {RegPC, entry}})
	saved, ok := g.takePending(back[RegSP])
	if !ok {
		t.Fatal("nothing pending at the same sp")
	}
	if r := Apply(back, g.restorePending(saved)); r["x0"] != ptregs || r[RegLR] != lr {
		t.Errorf("after the fault-in: x0 %#x x30 %#x, want %#x %#x", r["x0"], r[RegLR], uint64(ptregs), uint64(lr))
	}
}

// An arm64 user pointer may lie anywhere below 1<<48 (busybox's stack sits
// just below it); on x86-64 (4-level) the user half ends at 1<<47.
func TestUserTopARM64(t *testing.T) {
	if got := userTopOf(&vmi.AddressSpace{Paging: vmi.PagingARM64}); got != 1<<48 {
		t.Errorf("arm64 user top %#x", got)
	}
	if got := userTopOf(&vmi.AddressSpace{}); got != 1<<47 {
		t.Errorf("x86-64 user top %#x", got)
	}
	if _, err := readUserString(&vmi.AddressSpace{}, 0xfffff7fffe00, moduleNameLen); err == nil {
		t.Error("x86-64: 0xfffff7fffe00 taken as a user pointer")
	}
}
