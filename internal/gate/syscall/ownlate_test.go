package gate

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// directMap is the test kernel's direct map: va = directMap + gpa.
const directMap = 0xffff888000000000

// ramPhys is fakePhys as vmi.PhysicalMemory.
type ramPhys struct{ *fakePhys }

func (ramPhys) Ranges() []vmi.Range { return []vmi.Range{{Start: 0, End: 1 << 30}} }

// lateGate is a Gate over fake RAM of one page at gpa 0x10000 (the
// direct map's 0xffff888000010000) with one own-entry trap: its site
// calls through a retpoline thunk.
func lateGate(t *testing.T) (*Gate, *fakePhys, Trap) {
	t.Helper()
	mem := &fakePhys{mem: map[int64]byte{}}
	for a := int64(0x10000); a < 0x11000; a++ {
		mem.mem[a] = 0
	}
	as := &vmi.AddressSpace{Mem: ramPhys{mem}, Linear: &vmi.LinearWindow{Base: directMap, Size: 1 << 30}}
	site := callSite{Stop: 0xffffffff9e84b664, Next: 0xffffffff9e84b66c, Thunk: 0xffffffff9f2010a0, Entry: "rbx", Fn: "rax"}
	tr := Trap{Via: ViaOwnEntry, Addr: site.Stop, Hook: AtFileOpen, own: ownTrap{site: site, entry: directMap + 0x10040, head: directMap + 0x10800, hook: 0xffffffff9e65cf50, argOf: hookArgsOf(AtFileOpen), primary: true}}
	g := &Gate{k: &linux.Kernel{AS: as}, traps: map[uint64]Trap{tr.Addr: tr}}
	g.own.phys = mem
	return g, mem, tr
}

func put64(mem *fakePhys, va, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if _, err := mem.WriteAt(b[:], int64(va-directMap)); err != nil {
		panic(err)
	}
}

// TestLateOwnTrap: a vCPU found at a site's call target (the thunk, or
// the hook for a call *%reg) with that site's return address on its stack
// is the site's call, marked late (its decision also pops the return
// address); anywhere else, or with another return address, or an
// unreadable stack, it is not the gate's.
func TestLateOwnTrap(t *testing.T) {
	g, mem, tr := lateGate(t)
	rsp := uint64(directMap + 0x10f00)
	put64(mem, rsp, tr.own.site.Next)
	for _, rip := range []uint64{tr.own.site.Thunk, tr.own.hook} {
		if !g.MaybeLateOwn(rip) {
			t.Errorf("MaybeLateOwn(%#x) = false", rip)
		}
		got, ok := g.LateOwnTrap(Regs{RegRIP: rip, RegRSP: rsp})
		if !ok || !got.own.late || got.own.rsp != rsp || got.Addr != rip || got.own.site.Next != tr.own.site.Next {
			t.Errorf("at %#x: %+v %v; want the site's trap, late, at rsp %#x", rip, got, ok, rsp)
		}
	}
	if _, ok := g.LateOwnTrap(Regs{RegRIP: tr.own.site.Thunk}); ok {
		t.Error("taken without rsp")
	}
	if g.MaybeLateOwn(tr.own.site.Thunk+1) || g.MaybeLateOwn(tr.Addr) {
		t.Error("MaybeLateOwn true off the call targets")
	}
	if _, ok := g.LateOwnTrap(Regs{RegRIP: tr.own.site.Thunk + 1, RegRSP: rsp}); ok {
		t.Error("taken off the call target")
	}
	put64(mem, rsp, tr.own.site.Next+5) // another caller of the thunk
	if _, ok := g.LateOwnTrap(Regs{RegRIP: tr.own.site.Thunk, RegRSP: rsp}); ok {
		t.Error("taken with another return address")
	}
	if _, ok := g.LateOwnTrap(Regs{RegRIP: tr.own.site.Thunk, RegRSP: directMap + 0x20000}); ok {
		t.Error("taken with an unreadable stack")
	}
	// Only sites that set their own stop: a trap at another address of
	// the same site (the loads between) is not looked up.
	g.traps = map[uint64]Trap{tr.Addr + 3: func() Trap { x := tr; x.Addr += 3; return x }()}
	put64(mem, rsp, tr.own.site.Next)
	if _, ok := g.LateOwnTrap(Regs{RegRIP: tr.own.site.Thunk, RegRSP: rsp}); ok {
		t.Error("taken for a trap that is not at its site's stop")
	}
}

// TestHeadChanged: a head guard's stop reports a change only when the
// head no longer starts at the gate's entry; an unreadable head, or no
// memory to read it through, counts as changed (fail closed).
func TestHeadChanged(t *testing.T) {
	g, mem, tr := lateGate(t)
	guard := tr
	guard.Via, guard.Addr = ViaHeadGuard, tr.own.head
	put64(mem, tr.own.head, tr.own.entry)
	if changed, err := g.HeadChanged(guard); changed || err != nil {
		t.Errorf("head at the gate's entry: changed %v, %v", changed, err)
	}
	put64(mem, tr.own.head, directMap+0x10100) // unlinked: another entry first
	if changed, err := g.HeadChanged(guard); !changed || err != nil {
		t.Errorf("head at another entry: changed %v, %v", changed, err)
	}
	if changed, err := g.HeadChanged(tr); changed || err != nil {
		t.Errorf("not a guard: changed %v, %v", changed, err)
	}
	far := guard
	far.own.head = directMap + 0x20000
	if changed, err := g.HeadChanged(far); !changed || err == nil {
		t.Errorf("unreadable head: changed %v, %v; want changed with an error", changed, err)
	}
	g.own.phys = nil
	if changed, err := g.HeadChanged(guard); !changed || err == nil || !strings.Contains(err.Error(), "no guest memory") {
		t.Errorf("no memory: changed %v, %v", changed, err)
	}
}
