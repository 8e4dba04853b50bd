package gate

import (
	"reflect"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

func TestMemberForABIs(t *testing.T) {
	open := families["open"]
	for _, c := range []struct {
		nr     uint64
		compat bool
		want   string // "" = none
	}{
		{2, false, "open"}, {257, false, "openat"}, {85, false, "creat"}, {437, false, "openat2"},
		{5, true, "open"}, {295, true, "openat"}, {8, true, "creat"}, {437, true, "openat2"},
		{x32Bit | 257, false, "openat"}, {x32Bit | 2, false, "open"},
		{59, false, ""}, {11, true, ""}, {257, true, ""}, {5, false, ""}, {0, false, ""}, {^uint64(0), false, ""},
	} {
		m, ok := isaX86.memberFor(open, c.nr, c.compat)
		if got := map[bool]string{true: m.Name}[ok]; got != c.want {
			t.Errorf("memberFor(open, %#x, compat=%v) = %q, want %q", c.nr, c.compat, got, c.want)
		}
	}
	for _, c := range []struct {
		nr     uint64
		compat bool
		want   bool
	}{{59, false, true}, {322, false, true}, {11, true, true}, {358, true, true}, {x32Bit | 520, false, true}, {x32Bit | 59, false, false}, {2, false, false}, {59, true, false}} {
		if got := isaX86.isExecCall(c.nr, c.compat); got != c.want {
			t.Errorf("isExecCall(%#x, %v) = %v", c.nr, c.compat, got)
		}
	}
}

func TestHooksOfCoverFamilies(t *testing.T) {
	// Every member of a hooked family has numbers in every ABI, or a call
	// through that ABI would be decided as an open no syscall made.
	for _, fam := range []string{"open", "execve"} {
		for _, m := range families[fam] {
			if len(hooksOf[m.Name]) == 0 {
				t.Errorf("%s: no hook", m.Name)
			}
			if _, ok := syscallNumbers[m.Name]; !ok {
				t.Errorf("%s: no syscall numbers", m.Name)
			}
		}
	}
	if AtFileOpen.String() != "security_file_open" || AtHandler.String() != "handler" {
		t.Errorf("hook names: %s %s", AtFileOpen, AtHandler)
	}
}

func TestAllowOutcome(t *testing.T) {
	g := &Gate{isa: isaX86}
	ev := event.Event{Class: event.ClassSyscall, Op: "open"}
	regs := Regs{RegRSP: 0xffffc90000013e00}
	out := g.allowOutcome(Trap{Addr: 0xffffffff81000000, Skip: 4}, regs, ev)
	if !out.Skipped || !out.Decision.Allows() || len(out.Writes) != 1 || out.Writes[0].Value != 0xffffffff81000004 {
		t.Errorf("allowOutcome with skip: %+v", out)
	}
	if out := g.allowOutcome(Trap{Addr: 0xffffffff81000000}, regs, ev); !out.Step || len(out.Writes) != 0 {
		t.Errorf("allowOutcome without skip: %+v", out)
	}
	// At a call site the call is performed: return address pushed, the
	// hook entered.
	call := Trap{Addr: 0xffffffff81361b63, Len: 5, Via: ViaCall, Target: 0xffffffff8144b640, Hook: AtFileOpen}
	out = g.allowOutcome(call, regs, ev)
	wantMem := []MemWrite{{0xffffc90000013df8, 0xffffffff81361b68}}
	wantRegs := []RegWrite{{RegRSP, 0xffffc90000013df8}, {RegRIP, 0xffffffff8144b640}}
	if out.Step || !reflect.DeepEqual(out.MemWrites, wantMem) || !reflect.DeepEqual(out.Writes, wantRegs) {
		t.Errorf("allowOutcome at a call site: %+v", out)
	}
	jump := call
	jump.Via = ViaJump
	if out := g.allowOutcome(jump, regs, ev); out.Step || len(out.MemWrites) != 0 || !reflect.DeepEqual(out.Writes, []RegWrite{{RegRIP, 0xffffffff8144b640}}) {
		t.Errorf("allowOutcome at a tail jump: %+v", out)
	}
}

// verdictOf is a Decider that gives one verdict.
type verdictOf secserver.Decision

func (v verdictOf) Decide(*event.Event) secserver.Decision { return secserver.Decision(v) }
func (v verdictOf) GateFailure(*event.Event, string, string, int32) secserver.Decision {
	return secserver.Decision{Verdict: secserver.Deny, Errno: ePerm}
}

func TestDecideAtCallSite(t *testing.T) {
	call := Trap{Addr: 0xffffffff81361b63, Len: 5, Via: ViaCall, Target: 0xffffffff8144b640, Hook: AtFileOpen}
	regs := Regs{RegRSP: 0xffffc90000013e00, RegRAX: 7}
	for _, tc := range []struct {
		d    secserver.Decision
		want []RegWrite
	}{
		// The call is skipped, as if the hook returned -errno.
		{secserver.Decision{Verdict: secserver.Deny, Errno: 13}, []RegWrite{{RegRAX, uint64(^uint64(12))}, {RegRIP, 0xffffffff81361b68}}},
		// A kill at a hook fails the call with EPERM (the SIGKILL is queued
		// by handleHook).
		{secserver.Decision{Verdict: secserver.Kill}, []RegWrite{{RegRAX, ^uint64(0)}, {RegRIP, 0xffffffff81361b68}}},
	} {
		g := &Gate{isa: isaX86, d: verdictOf(tc.d)}
		out, err := g.decide(call, regs, event.Event{Class: event.ClassSyscall, Op: "open"}, nil)
		if err != nil || out.Step || len(out.MemWrites) != 0 || !reflect.DeepEqual(out.Writes, tc.want) {
			t.Errorf("%v: %+v, %v; want writes %+v", tc.d.Verdict, out, err, tc.want)
		}
	}
	g := &Gate{isa: isaX86, d: verdictOf(secserver.Decision{Verdict: secserver.Allow})}
	out, err := g.decide(call, regs, event.Event{Class: event.ClassSyscall, Op: "open"}, nil)
	if err != nil || len(out.MemWrites) != 1 || len(out.Writes) != 2 {
		t.Errorf("allow at a call site: %+v, %v", out, err)
	}
}

func TestCreatedOnce(t *testing.T) {
	g := &Gate{isa: isaX86, created: map[createdKey]bool{}}
	ev := event.Event{Path: "/tmp/new", Args: []int64{0, 0o101, 0o644}}
	g.noteCreated(0xffff888000001000, ev)
	other := ev
	other.Args = []int64{0, 0, 0}
	if g.takeCreated(0xffff888000001000, other) || g.takeCreated(0xffff888000002000, ev) {
		t.Fatal("a different call or task took the create's decision")
	}
	if !g.takeCreated(0xffff888000001000, ev) || g.takeCreated(0xffff888000001000, ev) {
		t.Fatal("the create's open must be taken exactly once")
	}
	for i := 0; i < maxCreated+10; i++ {
		g.noteCreated(uint64(i), ev)
	}
	if len(g.created) > maxCreated {
		t.Fatalf("created grew to %d", len(g.created))
	}
}

func TestOpenCreates(t *testing.T) {
	refs := []linux.CodeRef{
		{Kind: linux.RefCall, Addr: 1, Where: "bpf_obj_pin_user+0x8e"},
		{Kind: linux.RefCall, Addr: 2, Where: "do_mknodat+0x113"},
		{Kind: linux.RefCall, Addr: 3, Where: "path_openat.isra.0+0x5db"},
		{Kind: linux.RefCall, Addr: 4, Where: "unix_bind+0x18b"},
	}
	if got := openCreates(refs); len(got) != 1 || got[0].Addr != 3 {
		t.Errorf("openCreates = %+v; want the path_openat call", got)
	}
	if got := openCreates(refs[:2]); len(got) != 2 {
		t.Errorf("openCreates with no open's call = %+v; want every call kept", got)
	}
}

func TestPtraceMembers(t *testing.T) {
	ptrace := Expand("ptrace")
	for _, c := range []struct {
		nr     uint64
		compat bool
		want   bool
	}{{101, false, true}, {26, true, true}, {x32Bit | 521, false, true}, {x32Bit | 101, false, false}, {101, true, false}, {26, false, false}} {
		if _, ok := isaX86.memberFor(ptrace, c.nr, c.compat); ok != c.want {
			t.Errorf("memberFor(ptrace, %#x, compat=%v) = %v, want %v", c.nr, c.compat, ok, c.want)
		}
	}
}

func TestTrapOps(t *testing.T) {
	for _, c := range []struct {
		name  string
		t     Trap
		class event.Class
		want  []string
	}{
		{"ptrace at its hook", Trap{Hook: AtPtraceAccess, Classes: setOf(event.ClassSyscall), Members: Expand("ptrace"), Syscall: Syscall{Op: "ptrace"}}, event.ClassSyscall, []string{"ptrace"}},
		{"unload at capable", Trap{Hook: AtCapable, Classes: setOf(event.ClassModule)}, event.ClassModule, []string{"unload"}},
		{"a class not decided", Trap{Hook: AtCapable, Classes: setOf(event.ClassModule)}, event.ClassFile, nil},
		{"file open's ops", Trap{Hook: AtFileOpen, Classes: setOf(event.ClassFile, event.ClassSyscall), Members: families["open"]}, event.ClassFile, []string{"append", "exec", "open", "read", "write"}},
		{"the open family", Trap{Hook: AtFileOpen, Classes: setOf(event.ClassFile, event.ClassSyscall), Members: families["open"]}, event.ClassSyscall, []string{"open"}},
		{"exec: every op", Trap{Hook: AtExec, Classes: setOf(event.ClassExec)}, event.ClassExec, []string{""}},
	} {
		if got := c.t.Ops(c.class); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: Ops(%v) = %q, want %q", c.name, c.class, got, c.want)
		}
	}
}

// A capable() call for another capability is resumed on its registers
// alone, before anything is read from the guest (no kernel here: a read
// would panic); a stop that lost the capability argument fails closed.
func TestCapableCallSkipsOtherCaps(t *testing.T) {
	g := &Gate{isa: isaX86}
	for _, cap := range []uint64{0, 12, 21, 1<<32 | 21} {
		if _, _, skip, err := g.capableCall(Regs{RegRDX: cap}); !skip || err != nil {
			t.Errorf("cap %#x: skip=%v err=%v, want skipped", cap, skip, err)
		}
	}
	if _, _, skip, err := g.capableCall(Regs{RegRDI: 1}); skip || err == nil {
		t.Errorf("no rdx: skip=%v err=%v, want an error, not skipped", skip, err)
	}
}

// A /proc read or process_vm_readv at security_ptrace_access_check (a mode
// without PTRACE_MODE_ATTACH) is resumed on its registers alone, before
// anything is read from the guest (no kernel here: a read would panic).
func TestPtraceAccessSkipsReads(t *testing.T) {
	g := &Gate{isa: isaX86}
	for _, mode := range []uint64{0x01 | 0x04, 0x01 | 0x08, 0x11} { // PTRACE_MODE_READ_{FSCREDS,REALCREDS}, _NOAUDIT
		hit, err := g.hookEvents(Trap{Hook: AtPtraceAccess, Classes: setOf(event.ClassSyscall)}, Regs{RegRSI: mode})
		if err != nil || len(hit.events) != 0 {
			t.Errorf("mode %#x: %d events, %v; want skipped", mode, len(hit.events), err)
		}
	}
}
