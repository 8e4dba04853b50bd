package gate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"

	"golang.org/x/arch/x86/x86asm"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// The own-entry ("call") model: under TCG, a hook is trapped by a read
// watchpoint on an LSM entry of the gate's own, not on its list head.
//
// Why: QEMU's TCG marks the whole 4 KiB page of a read-watched address in
// its TLB, and security_hook_heads is one page: the head model's
// watchpoints made every read of an untrapped head (file_permission at
// each read(), task_kill at each kill()) take QEMU's slow path (read
// +10 %, kill +8 %; docs/benchmarks.md, "The watched page"). A write-only
// watchpoint on that page costs reads nothing. So the heads of the gated
// hooks get a write watchpoint each (nothing writes __ro_after_init data
// once the kernel runs: a write is tampering, and the monitor fails
// closed), and each gated hook gets one struct security_hook_list on a
// page the monitor had the guest kernel allocate for the gate alone
// (monitor/gatepage.go), linked first into the hook's list. Its hook is
// the kernel's own no-op for that hook (bpf_lsm_<hook>), and a read
// watchpoint on that field stops exactly the list walks of the gated
// hooks, at the load of P->hook in the wrapper's loop (call_int_hook),
// before the indirect call:
//
//	mov    0x18(%rbx),%rax   <- the watched load; the vCPU stops after it
//	mov    %rbp,%rdi         (register moves into argument registers)
//	call   __x86_indirect_thunk_rax
//	test   %eax,%eax         <- an allow or a deny resumes here
//	jne    out
//
// An allow sets rax = 0 and rip past the call (the gate performs the call
// of the no-op, which returns 0 and changes only registers a call may
// change); the loop goes on to the real LSMs. A deny sets rax = -errno:
// the loop breaks and the wrapper returns -errno itself. Nothing is
// unwound and no instruction is stepped. Unlinked, an entry is never
// cleared: a vCPU preempted in the loop may still hold it.

// ViaOwnEntry is a read watchpoint on the hook field of the gate's own
// entry in the hook's list: Addr is the rip after a wrapper's load of it
// (ownentry.go).
const ViaOwnEntry = ViaWatch + 1

// ViaHeadGuard is the write watchpoint on a gated hook's list head
// (Addr is the head's address: never a rip). A stop at it is tampering.
const ViaHeadGuard = ViaWatch + 2

// callSite is one load of a list entry's hook field in a hook's wrapper,
// up to the indirect call through it.
type callSite struct {
	// Stop is the rip after the load; Next the address after the call.
	Stop, Next uint64
	// Entry is the register holding the list entry (the load's base) and
	// Fn the one the hook was loaded into, both at Stop.
	Entry, Fn string
	// Args are where the hook's six argument registers' values are at
	// Stop: the register itself, or the source of a move before the call.
	Args [6]string
	// Mids are the addresses of the instructions after Stop up to the
	// call, with where the arguments are there.
	Mids []midStop
	// Thunk is the call's target when it calls a retpoline thunk (0 for
	// a call *%reg).
	Thunk uint64
}

// midStop is a rip between a site's Stop and its call.
type midStop struct {
	Addr uint64
	Args [6]string
}

// ownTrap is what a trap of the own-entry model knows (Trap.own).
type ownTrap struct {
	site  callSite
	entry uint64 // the entry's address (its list node)
	head  uint64 // the list head's address
	hook  uint64 // the no-op the entry's hook field holds
	// argOf maps the wrapper's argument i, which the hook's events read,
	// to the hook's argument (they differ for mmap_file only).
	argOf [6]int
	// late says the vCPU was found past the call, at its target (the
	// thunk, or the hook for a call *%reg), with the call's return
	// address at rsp (LateOwnTrap); rsp is its stack pointer there.
	late bool
	rsp  uint64
	// primary says this trap sets the entry's read watchpoint (one per
	// hook; a wrapper with several loads has a trap per site).
	primary bool
}

// maxWrapperBytes bounds the wrapper code modelCallSites decodes.
const maxWrapperBytes = 2048

// modelCallSites finds every load of the hook field (hookOff bytes into a
// list entry) in code, a wrapper's whole text at fn, and models each up
// to the indirect call through the loaded register. thunks maps the
// address of each __x86_indirect_thunk_<reg> to its register. Between the
// load and the call only lfence, nops and register-to-register moves into
// argument registers are allowed. Pure.
func modelCallSites(code []byte, fn, hookOff uint64, thunks map[uint64]string) ([]callSite, error) {
	if len(code) > maxWrapperBytes {
		return nil, fmt.Errorf("a wrapper of %d bytes (at most %d are modelled)", len(code), maxWrapperBytes)
	}
	type inst struct {
		pc uint64
		x  x86asm.Inst
	}
	var insts []inst
	for off := 0; off < len(code); {
		x, err := x86asm.Decode(code[off:], 64)
		if err != nil || x.Len <= 0 || x.Op == 0 {
			return nil, fmt.Errorf("undecodable code at %#x", fn+uint64(off))
		}
		insts = append(insts, inst{fn + uint64(off), x})
		off += x.Len
	}
	var sites []callSite
	for i, in := range insts {
		mem, ok := in.x.Args[1].(x86asm.Mem)
		if in.x.Op != x86asm.MOV || !ok || mem.Base == x86asm.RIP || mem.Base == 0 || mem.Index != 0 ||
			uint64(int64(int32(mem.Disp))) != hookOff || mem.Segment != 0 {
			continue
		}
		dst, ok := regOf(in.x.Args[0])
		base, ok2 := regNames[mem.Base.String()]
		if !ok || !ok2 || in.x.DataSize != 64 || dst == "rsp" || base == "rsp" {
			return nil, fmt.Errorf("%#x: %v reads at the hook field's offset but is not a load of it", in.pc, in.x)
		}
		s := callSite{Stop: in.pc + uint64(in.x.Len), Entry: base, Fn: dst}
		// The instructions from Stop to the call, each with the move it
		// makes ("" for none).
		type step struct {
			pc       uint64
			dst, src string
		}
		var steps []step
		done := false
		for j := i + 1; j < len(insts) && j <= i+8 && !done; j++ {
			x := insts[j].x
			switch x.Op {
			case x86asm.NOP, x86asm.LFENCE:
				steps = append(steps, step{pc: insts[j].pc})
			case x86asm.MOV:
				d, ok1 := regOf(x.Args[0])
				src, ok2 := regOf(x.Args[1])
				if !ok1 || !ok2 || (x.DataSize != 32 && x.DataSize != 64) || !isArgReg(d) || d == dst || src == "rsp" {
					return nil, fmt.Errorf("%#x: %v between the hook's load and its call is not modelled", insts[j].pc, x)
				}
				steps = append(steps, step{insts[j].pc, d, src})
			case x86asm.CALL:
				via := ""
				switch a := x.Args[0].(type) {
				case x86asm.Rel:
					s.Thunk = insts[j].pc + uint64(x.Len) + uint64(int64(a))
					via = thunks[s.Thunk]
				case x86asm.Reg:
					via, _ = regOf(a)
				}
				if via != dst {
					return nil, fmt.Errorf("%#x: %v is not a call through %s, the loaded hook", insts[j].pc, x, dst)
				}
				steps = append(steps, step{pc: insts[j].pc})
				s.Next = insts[j].pc + uint64(x.Len)
				done = true
			default:
				return nil, fmt.Errorf("%#x: %v between the hook's load and its call is not modelled", insts[j].pc, x)
			}
		}
		if !done {
			return nil, fmt.Errorf("%#x: no call through %s after the hook's load", in.pc, dst)
		}
		// argsFrom says where each argument register's value at the call
		// is at the k-th step's address: loc[r] is the register whose
		// value there r will hold.
		argsFrom := func(k int) [6]string {
			loc := map[string]string{}
			for _, r := range argRegs {
				loc[r] = r
			}
			for _, st := range steps[k:] {
				if st.dst == "" {
					continue
				}
				if _, isArg := loc[st.src]; isArg {
					loc[st.dst] = loc[st.src]
				} else {
					loc[st.dst] = st.src
				}
			}
			var a [6]string
			for n, r := range argRegs {
				a[n] = loc[r]
			}
			return a
		}
		s.Args = argsFrom(0)
		for k := 1; k < len(steps); k++ {
			// A stop can land after some of the moves (a translation
			// block that ends between the load and the call).
			s.Mids = append(s.Mids, midStop{steps[k].pc, argsFrom(k)})
		}
		sites = append(sites, s)
	}
	if len(sites) == 0 {
		return nil, errors.New("no load of a list entry's hook field")
	}
	return sites, nil
}

func isArgReg(r string) bool {
	for _, a := range argRegs {
		if a == r {
			return true
		}
	}
	return false
}

// hookListLayout is struct security_hook_list as the kernel's BTF lays it
// out (it is __randomize_layout: never assumed).
type hookListLayout struct {
	Size                       uint64
	Next, Pprev, Head, Hook, L uint64 // list.next, list.pprev, head, hook, lsm
}

func hookListLayoutOf(p *linux.Profile) (hookListLayout, error) {
	var l hookListLayout
	var err error
	if l.Size, err = p.StructSize("security_hook_list"); err != nil {
		return l, err
	}
	off := func(f string) uint64 {
		o, e := p.FieldOffset(f)
		err = errors.Join(err, e)
		return o
	}
	list := off("security_hook_list.list")
	l.Next = list + off("hlist_node.next")
	l.Pprev = list + off("hlist_node.pprev")
	l.Head, l.Hook, l.L = off("security_hook_list.head"), off("security_hook_list.hook"), off("security_hook_list.lsm")
	if err != nil {
		return l, fmt.Errorf("gate: security_hook_list's layout: %w", err)
	}
	for _, o := range []uint64{l.Next, l.Pprev, l.Head, l.Hook, l.L} {
		if o+8 > l.Size {
			return l, fmt.Errorf("gate: security_hook_list's layout: a field at %d past its %d bytes", o, l.Size)
		}
	}
	return l, nil
}

// entryBytes builds an entry at entry: linked before first in the list at
// head (pprev = &head->first), calling hook, named by lsm. Pure.
func (l hookListLayout) entryBytes(entry, first, head, hook, lsm uint64) []byte {
	b := make([]byte, l.Size)
	binary.LittleEndian.PutUint64(b[l.Next:], first)
	binary.LittleEndian.PutUint64(b[l.Pprev:], head)
	binary.LittleEndian.PutUint64(b[l.Head:], head)
	binary.LittleEndian.PutUint64(b[l.Hook:], hook)
	binary.LittleEndian.PutUint64(b[l.L:], lsm)
	return b
}

// PhysMemory is guest-physical memory the gate reads and writes its
// entries and the lists they are linked into through (the heads are
// read-only in the guest's page tables).
type PhysMemory interface {
	ReadAt(p []byte, gpa int64) (int, error)
	WriteAt(p []byte, gpa int64) (int, error)
}

// listMem is what the list surgery reads and writes: virtual addresses,
// translated to guest-physical ones.
type listMem struct {
	as interface {
		Translate(va uint64) (uint64, uint64, error)
	}
	phys PhysMemory
}

func (m listMem) pa(va uint64) (int64, error) {
	pa, _, err := m.as.Translate(va)
	if err != nil {
		return 0, fmt.Errorf("translate %#x: %w", va, err)
	}
	return int64(pa), nil
}

func (m listMem) read(va uint64) (uint64, error) {
	pa, err := m.pa(va)
	if err != nil {
		return 0, err
	}
	var b [8]byte
	if _, err := m.phys.ReadAt(b[:], pa); err != nil {
		return 0, fmt.Errorf("read %#x: %w", va, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (m listMem) write(va uint64, b []byte) error {
	if (va&(vmi.PageSize4K-1))+uint64(len(b)) > vmi.PageSize4K {
		return fmt.Errorf("write at %#x crosses a page", va)
	}
	pa, err := m.pa(va)
	if err != nil {
		return err
	}
	if _, err := m.phys.WriteAt(b, pa); err != nil {
		return fmt.Errorf("write %#x: %w", va, err)
	}
	return nil
}

func (m listMem) write64(va, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return m.write(va, b[:])
}

// linkEntry links the entry at entry first into the list at head, with
// the VM stopped: the entry (list.next = the first entry, list.pprev =
// &head->first, its head, hook and lsm), then the old first entry's pprev,
// then head->first. An entry already first is left as it is (a monitor
// upgrade, a QEMU restart keeping RAM).
func linkEntry(m listMem, l hookListLayout, entry, head, hook, lsm uint64) error {
	first, err := m.read(head)
	if err != nil {
		return fmt.Errorf("gate: link the gate's entry: the list head: %w", err)
	}
	if first == entry {
		return nil
	}
	if err := m.write(entry, l.entryBytes(entry, first, head, hook, lsm)); err != nil {
		return fmt.Errorf("gate: link the gate's entry: %w", err)
	}
	if first != 0 {
		if err := m.write64(first+l.Pprev, entry+l.Next); err != nil {
			return fmt.Errorf("gate: link the gate's entry: the first entry's pprev: %w", err)
		}
	}
	if err := m.write64(head, entry); err != nil {
		return fmt.Errorf("gate: link the gate's entry: the list head: %w", err)
	}
	return nil
}

// unlinkEntry takes the entry out of the list at head, where it must be
// first: head->first and the next entry's pprev are restored. The entry
// itself is not changed (a vCPU preempted in the list's loop may still
// hold it, and must go on to the next entry from it). An entry not in the
// list is left alone; one anywhere but first is an error (someone else
// changed the list).
func unlinkEntry(m listMem, l hookListLayout, entry, head uint64) error {
	first, err := m.read(head)
	if err != nil {
		return fmt.Errorf("gate: unlink the gate's entry: the list head: %w", err)
	}
	if first != entry {
		pprev, err := m.read(entry + l.Pprev)
		if err == nil && pprev == 0 {
			return nil // never linked (a zeroed slot)
		}
		if err == nil && pprev == head && first != entry {
			// Linked once, then the head was moved past it (a rollback
			// to RAM from before the link, or an earlier unlink).
			return nil
		}
		return fmt.Errorf("gate: unlink the gate's entry at %#x: the list at %#x starts at %#x, not at the entry", entry, head, first)
	}
	next, err := m.read(entry + l.Next)
	if err != nil {
		return fmt.Errorf("gate: unlink the gate's entry: %w", err)
	}
	if next != 0 {
		if err := m.write64(next+l.Pprev, head); err != nil {
			return fmt.Errorf("gate: unlink the gate's entry: the next entry's pprev: %w", err)
		}
	}
	if err := m.write64(head, next); err != nil {
		return fmt.Errorf("gate: unlink the gate's entry: the list head: %w", err)
	}
	return nil
}

// lsmName is the name the gate's entries give as their LSM, written at
// the start of the page (the entries follow it).
const lsmName = "gatevisor"

// entrySlot is where hook h's entry lies on the page.
func (l hookListLayout) entrySlot(page uint64, h Hook) uint64 {
	return page + 64 + uint64(h)*((l.Size+7)&^7)
}

// ownArgs returns regs with the wrapper's arguments where the hook
// events read them (rdi, rsi, ...), from where t's site says the hook's
// arguments are at the stop.
func ownArgs(t Trap, regs Regs) Regs {
	out := maps.Clone(regs) // a copy: the caller's registers are the vCPU's
	if out == nil {
		out = Regs{}
	}
	at := t.own.site.Args
	if t.own.late {
		at = argRegs // the call was made: each in its register
	}
	for i, r := range argRegs {
		if hi := t.own.argOf[i]; hi >= 0 && hi < 6 {
			if src := at[hi]; src != "" {
				if v, ok := regs[src]; ok {
					out[r] = v
					continue
				}
			}
		}
		delete(out, r)
	}
	return out
}

// ownHit reports whether a vCPU at t's stop loaded the gate's own entry:
// the same load walks every LSM's entry, and a vCPU stopped there by
// anything else (a request's interrupt, another vCPU's stop) is in the
// middle of another LSM's call, which is not the gate's to decide. The
// loaded hook itself is not looked at: the gate never lets the vCPU call
// it (an allow or a deny moves it past the call), so a guest that wrote
// the entry's hook field gains nothing.
func ownHit(t Trap, regs Regs) bool {
	e, ok := regs[t.own.site.Entry]
	return ok && e == t.own.entry
}

// ownResume is an allow at the gate's entry: the no-op's call is done by
// the gate (it returns 0), the loop goes on with the next LSM.
func ownResume(t Trap) []RegWrite {
	return ownReturn(t, 0)
}

// ownReturn returns to the wrapper's loop after the call with rax: from
// a late stop the call's return address is popped too.
func ownReturn(t Trap, rax uint64) []RegWrite {
	w := []RegWrite{{RegRAX, rax}, {RegRIP, t.own.site.Next}}
	if t.own.late {
		w = append(w, RegWrite{RegRSP, t.own.rsp + 8})
	}
	return w
}

// ownDeny is a deny at the gate's entry: the hook "returned" -errno, and
// the wrapper's loop breaks and returns it.
func ownDeny(t Trap, errno int32) []RegWrite {
	return ownReturn(t, uint64(uint32(-errno)))
}

// Shown reports whether the trap is listed on its own by policy load
// and status: a hook trapped at its own entry is listed once (its first
// site), not per wrapper load site, nor its head's write guard.
func (t Trap) Shown() bool {
	switch t.Via {
	case ViaHeadGuard:
		return false
	case ViaOwnEntry:
		return t.own.primary
	}
	return true
}

// Model names how a hook trap is placed: "own-entry" (a read watchpoint
// on the gate's own LSM entry), "head" (a read watchpoint on the list
// head), "" for a breakpoint.
func (t Trap) Model() string {
	switch t.Via {
	case ViaOwnEntry, ViaHeadGuard:
		return "own-entry"
	case ViaWatch:
		return "head"
	}
	return ""
}

// Head is, for a trap of the own-entry model, the hook's list head (which
// carries a write watchpoint), else 0.
func (t Trap) Head() uint64 {
	if t.Via == ViaOwnEntry || t.Via == ViaHeadGuard {
		return t.own.head
	}
	return 0
}

// WatchKind says what a watchpoint trap watches for: "write" for a head
// guard, "read" for an own entry's hook field, "access" (read or write)
// for a list head or global of the head model.
func (t Trap) WatchKind() string {
	switch t.Via {
	case ViaHeadGuard:
		return "write"
	case ViaOwnEntry:
		return "read"
	}
	return "access"
}

// IsGuard reports whether the trap is a gated head's write guard.
func (t Trap) IsGuard() bool { return t.Via == ViaHeadGuard }

// hookArgsOf maps, per hook, each wrapper argument the events read to the
// hook's argument it is passed as (the identity but for mmap_file, whose
// hook gets (file, reqprot, prot, flags) from security_mmap_file(file,
// prot, flags)).
func hookArgsOf(h Hook) [6]int {
	if h == AtMmap {
		return [6]int{0, 1, 3, -1, -1, -1}
	}
	return [6]int{0, 1, 2, 3, 4, 5}
}

// ownModel is a hook's own-entry plan: its wrappers' sites, or why it has
// none.
type ownModel struct {
	sites []callSite
	head  uint64
	hook  uint64 // bpf_lsm_<head>
	why   string // "" when modelled
}

// modelOwnEntries models every gated hook's wrappers for the own-entry
// model: the functions in the kernel text that refer to the hook's list
// head (linux.CodeRefs), each decoded whole. A hook stays on the head
// model (why says so) when one of them refers to another hook's head too,
// has a load the model does not understand, or the kernel has no
// bpf_lsm_<hook> no-op.
func modelOwnEntries(k *linux.Kernel, hooks map[Hook]uint64, l hookListLayout) map[Hook]ownModel {
	out := map[Hook]ownModel{}
	heads, err := k.Addr("security_hook_heads")
	if err != nil {
		return out
	}
	thunks := map[uint64]string{}
	for _, r := range append(append([]string{}, argRegs[:]...), "rax", "rbx", "rbp", "r10", "r11", "r12", "r13", "r14", "r15") {
		if a, err := k.Addr("__x86_indirect_thunk_" + r); err == nil {
			thunks[a] = r
		}
	}
	headOf := map[uint64]Hook{}
	var targets []uint64
	for h := range hooks {
		d := hookDefs[h]
		if d.head == "" {
			continue
		}
		off, err := k.Profile.FieldOffset("security_hook_heads." + d.head)
		if err != nil {
			out[h] = ownModel{why: "no security_hook_heads." + d.head + " in the BTF"}
			continue
		}
		headOf[heads+off] = h
		targets = append(targets, heads+off)
	}
	if len(targets) == 0 {
		return out
	}
	refs, err := k.CodeRefs(targets)
	if err != nil {
		for _, h := range headOf {
			out[h] = ownModel{why: fmt.Sprintf("the kernel text could not be scanned for its list's walkers: %v", err)}
		}
		return out
	}
	// Only code walks a list: the pointers to the heads in static data
	// are the LSMs' own entries (selinux_hooks[i].head, ...).
	textLo, err1 := k.Addr("_stext")
	textHi, err2 := k.Addr("_etext")
	if err1 != nil || err2 != nil {
		for _, h := range headOf {
			out[h] = ownModel{why: "the kernel has no _stext/_etext to tell its code from its data"}
		}
		return out
	}
	for head, rs := range refs {
		var code []linux.CodeRef
		for _, r := range rs {
			if r.Addr >= textLo && r.Addr < textHi {
				code = append(code, r)
			}
		}
		refs[head] = code
	}
	// Which heads each walker refers to.
	fnHeads := map[string]map[uint64]bool{}
	for head, rs := range refs {
		for _, r := range rs {
			fn, _, _ := strings.Cut(r.Where, "+")
			if fnHeads[fn] == nil {
				fnHeads[fn] = map[uint64]bool{}
			}
			fnHeads[fn][head] = true
		}
	}
	for head, h := range headOf {
		m := ownModel{head: head}
		hookFn := "bpf_lsm_" + hookDefs[h].head
		if a, err := k.Addr(hookFn); err != nil {
			m.why = "the kernel has no " + hookFn + " (CONFIG_BPF_LSM) for the gate's entry to call"
		} else {
			m.hook = a
		}
		if len(refs[head]) == 0 && m.why == "" {
			m.why = "no code refers to its list head"
		}
		seen := map[string]bool{}
		for _, r := range refs[head] {
			if m.why != "" {
				break
			}
			fn, _, _ := strings.Cut(r.Where, "+")
			if r.Kind == linux.RefUnknown || fn == "" || strings.HasPrefix(fn, "0x") {
				m.why = fmt.Sprintf("a reference to its list head at %#x the scan cannot take apart", r.Addr)
				break
			}
			if seen[fn] {
				continue
			}
			seen[fn] = true
			if len(fnHeads[fn]) > 1 {
				m.why = fmt.Sprintf("%s walks several hooks' lists", fn)
				break
			}
			sites, err := wrapperSites(k, fn, l.Hook, thunks)
			if err != nil {
				m.why = fmt.Sprintf("%s: %v", fn, err)
				break
			}
			m.sites = append(m.sites, sites...)
		}
		if m.why != "" {
			m.sites = nil
		}
		out[h] = m
	}
	return out
}

// wrapperSites reads function fn's live text (after alternatives) and
// models its loads of a list entry's hook field.
func wrapperSites(k *linux.Kernel, fn string, hookOff uint64, thunks map[uint64]string) ([]callSite, error) {
	start, err := k.Addr(fn)
	if err != nil {
		return nil, err
	}
	// The function ends where the next symbol starts (functions are
	// 16-byte aligned).
	end := start + 16
	for ; end < start+maxWrapperBytes; end += 16 {
		s, _, ok := k.SymbolAt(end)
		if !ok || s.Name != fn {
			break
		}
	}
	if end >= start+maxWrapperBytes {
		return nil, fmt.Errorf("longer than %d bytes", maxWrapperBytes)
	}
	code := make([]byte, end-start)
	if _, err := k.AS.ReadVirtual(start, code); err != nil {
		return nil, fmt.Errorf("read its text: %w", err)
	}
	// Trailing int3 padding is not code.
	for len(code) > 0 && code[len(code)-1] == 0xcc {
		code = code[:len(code)-1]
	}
	return modelCallSites(code, start, hookOff, thunks)
}

// ownState is the gate's own page and its hooks' models (SetOwnPage).
type ownState struct {
	mu     sync.Mutex // guards the fields below
	page   uint64     // the page's virtual address (direct map); 0: none
	phys   PhysMemory
	layout hookListLayout
	models map[Hook]ownModel // modelled once, on the first SetOwnPage
}

// SetOwnPage gives the gate a zeroed guest page of its own at va (in the
// kernel's direct map; allocated by the monitor through the guest kernel,
// known to nobody in the guest, never freed), and phys to write its
// entries and the lists through. From the next Plan on, the hooks whose
// wrappers modelOwnEntries understands are trapped at an entry on that
// page. va 0 takes the page away (a new boot): Plan goes back to the head
// model. The page is checked first: page-aligned, inside the direct map
// of guest RAM, translated to where the direct map says. Not on arm64.
func (g *Gate) SetOwnPage(va uint64, phys PhysMemory) error {
	if va == 0 {
		g.own.mu.Lock()
		g.own.page = 0 // phys stays: entries still linked are unlinked through it
		g.own.mu.Unlock()
		return nil
	}
	if g.isa.arm64 {
		return errors.New("gate: the own-entry model is x86-64 only")
	}
	if err := checkDirectMapPage(g.k, va); err != nil {
		return err
	}
	l, err := hookListLayoutOf(g.k.Profile)
	if err != nil {
		return err
	}
	if l.entrySlot(0, numHooks) > vmi.PageSize4K {
		return fmt.Errorf("gate: %d entries of %d bytes do not fit a page", numHooks, l.Size)
	}
	m := listMem{g.k.AS, phys}
	name := append([]byte(lsmName), 0)
	if err := m.write(va, name); err != nil {
		return fmt.Errorf("gate: the own page at %#x: %w", va, err)
	}
	g.own.mu.Lock()
	models := g.own.models
	g.own.mu.Unlock()
	if models == nil {
		models = modelOwnEntries(g.k, g.hooks, l)
	}
	g.own.mu.Lock()
	defer g.own.mu.Unlock()
	g.own.page, g.own.phys, g.own.layout, g.own.models = va, phys, l, models
	return nil
}

// CheckOwnName checks that the page at va starts with the name the
// gate's entries give as their LSM, as SetOwnPage writes it: a page of
// the gate's (read through phys, nothing written).
func (g *Gate) CheckOwnName(va uint64, phys PhysMemory) error {
	m := listMem{g.k.AS, phys}
	pa, err := m.pa(va)
	if err != nil {
		return fmt.Errorf("gate: the page at %#x: %w", va, err)
	}
	b := make([]byte, len(lsmName)+1)
	if _, err := phys.ReadAt(b, pa); err != nil {
		return fmt.Errorf("gate: the page at %#x: %w", va, err)
	}
	if string(b) != lsmName+"\x00" {
		return fmt.Errorf("gate: the page at %#x does not start with the gate's LSM name", va)
	}
	return nil
}

// OwnPage returns the gate's own page (0: none).
func (g *Gate) OwnPage() uint64 {
	g.own.mu.Lock()
	defer g.own.mu.Unlock()
	return g.own.page
}

// OwnEntryUnavailable says, per hook the gate could trap on its own page,
// why it stays on the head model instead ("" hooks are not listed);
// nothing before SetOwnPage.
func (g *Gate) OwnEntryUnavailable() map[string]string {
	g.own.mu.Lock()
	defer g.own.mu.Unlock()
	out := map[string]string{}
	for h, m := range g.own.models {
		if m.why != "" {
			out[h.String()] = m.why
		}
	}
	return out
}

// checkDirectMapPage checks that va is a page of the kernel's direct map
// of guest RAM (page_offset_base + pa), mapped where that says.
func checkDirectMapPage(k *linux.Kernel, va uint64) error {
	if va&(vmi.PageSize4K-1) != 0 {
		return fmt.Errorf("gate: the own page %#x is not page-aligned", va)
	}
	pob, err := k.Addr("page_offset_base")
	if err != nil {
		return fmt.Errorf("gate: the own page: %w", err)
	}
	base, err := vmi.ReadU64(k.AS, pob)
	if err != nil {
		return fmt.Errorf("gate: the own page: read page_offset_base: %w", err)
	}
	ranges := k.Mem.Ranges()
	if len(ranges) == 0 || va < base || va-base >= ranges[len(ranges)-1].End {
		return fmt.Errorf("gate: the own page %#x is outside the direct map of guest RAM (from %#x)", va, base)
	}
	pa, _, err := k.AS.Translate(va)
	if err != nil {
		return fmt.Errorf("gate: the own page %#x: %w", va, err)
	}
	if pa != va-base {
		return fmt.Errorf("gate: the own page %#x translates to %#x, not to its direct-map address %#x", va, pa, va-base)
	}
	return nil
}

// ownTrapsLocked returns the traps of hook h on the gate's own page, built
// from t (its head-model or entry trap), or nil when h is not trapped
// that way: one per wrapper load site, the first setting the read
// watchpoint on the entry's hook field, and the head's write guard.
func (g *Gate) ownTraps(h Hook, t Trap) []Trap {
	g.own.mu.Lock()
	defer g.own.mu.Unlock()
	m, ok := g.own.models[h]
	if g.own.page == 0 || !ok || m.why != "" || len(m.sites) == 0 {
		return nil
	}
	l := g.own.layout
	entry := l.entrySlot(g.own.page, h)
	own := ownTrap{entry: entry, head: m.head, hook: m.hook, argOf: hookArgsOf(h)}
	var out []Trap
	for i, s := range m.sites {
		st := t
		st.Via, st.Addr, st.Target, st.Site = ViaOwnEntry, s.Stop, t.Addr, "read of the gate's entry on "+watchName(h)
		st.own = own
		st.own.site = s
		if i == 0 {
			st.own.primary = true
			st.Watch, st.WatchLen = entry+l.Hook, 8
		}
		out = append(out, st)
		for _, mid := range s.Mids {
			// Found between the load and the call: the same call, the
			// arguments where the moves done so far left them.
			mt := st
			mt.Addr, mt.Watch, mt.WatchLen = mid.Addr, 0, 0
			mt.own.primary = false
			mt.own.site.Args = mid.Args
			out = append(out, mt)
		}
	}
	guard := t
	guard.Via, guard.Addr, guard.Target, guard.Site = ViaHeadGuard, m.head, t.Addr, "write of "+watchName(h)
	guard.Watch, guard.WatchLen = m.head, 8
	guard.own = own
	return append(out, guard)
}

// LinkOwn links the entry of a head guard trap first into its hook's list
// (nothing for any other trap). Call with the VM stopped.
func (g *Gate) LinkOwn(t Trap) error {
	if t.Via != ViaHeadGuard {
		return nil
	}
	g.own.mu.Lock()
	m, l, page := listMem{g.k.AS, g.own.phys}, g.own.layout, g.own.page
	g.own.mu.Unlock()
	if page == 0 || m.phys == nil || t.own.entry&^(vmi.PageSize4K-1) != page {
		return fmt.Errorf("gate: link %s's entry: the gate's own page is gone", t.Symbol)
	}
	return linkEntry(m, l, t.own.entry, t.own.head, t.own.hook, page)
}

// UnlinkOwn takes a head guard trap's entry out of its hook's list
// (nothing for any other trap). Call with the VM stopped.
func (g *Gate) UnlinkOwn(t Trap) error {
	if t.Via != ViaHeadGuard {
		return nil
	}
	g.own.mu.Lock()
	m, l := listMem{g.k.AS, g.own.phys}, g.own.layout
	g.own.mu.Unlock()
	if m.phys == nil {
		return fmt.Errorf("gate: unlink %s's entry: no guest memory to write it through", t.Symbol)
	}
	return unlinkEntry(m, l, t.own.entry, t.own.head)
}

// OwnEntry returns, for a trap of the own-entry model, its entry's
// address and the list head's (0, 0 otherwise).
func (t Trap) OwnEntry() (entry, head uint64) {
	if t.Via != ViaOwnEntry && t.Via != ViaHeadGuard {
		return 0, 0
	}
	return t.own.entry, t.own.head
}

// HeadChanged reports whether a head guard trap's list no longer starts at
// the gate's entry (read through guest-physical memory): what a write to
// a gated head that matters does. An error (the head unreadable) is
// reported as a change by the caller.
func (g *Gate) HeadChanged(t Trap) (bool, error) {
	if t.Via != ViaHeadGuard {
		return false, nil
	}
	g.own.mu.Lock()
	m := listMem{g.k.AS, g.own.phys}
	g.own.mu.Unlock()
	if m.phys == nil {
		return true, errors.New("gate: no guest memory to read the head through")
	}
	first, err := m.read(t.own.head)
	if err != nil {
		return true, err
	}
	return first != t.own.entry, nil
}

// LateOwnTrap recognises a vCPU that made a gated hook's call from the
// gate's entry without stopping at the site: at the call's target (the
// retpoline thunk, or the entry's no-op for a call *%reg) with the return
// address of one of the own-entry sites at rsp. QEMU 7.2 stops it there
// when its previous watchpoint hit was served without being reported (on
// a sibling vCPU): its next watched load raises the debug interrupt at
// the end of the translation block, which the call ends. The trap
// returned is that site's, marked late: the decision's writes also pop
// the return address. Whether it is the gate's entry's call is for
// Handle to check (ownHit), as at the site.
func (g *Gate) LateOwnTrap(regs Regs) (Trap, bool) {
	rip, ok1 := regs[RegRIP]
	rsp, ok2 := regs[RegRSP]
	if !ok1 || !ok2 || !g.MaybeLateOwn(rip) {
		return Trap{}, false
	}
	ret, err := vmi.ReadU64(g.k.AS, rsp)
	if err != nil {
		return Trap{}, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range g.traps {
		if t.Via == ViaOwnEntry && t.Addr == t.own.site.Stop && t.own.site.Next == ret && (rip == t.own.site.Thunk || rip == t.own.hook) {
			t.Addr, t.own.late, t.own.rsp = rip, true, rsp
			return t, true
		}
	}
	return Trap{}, false
}

// MaybeLateOwn reports whether rip is where LateOwnTrap may find a vCPU
// (a site's call target), for a scan that reads only each vCPU's rip.
func (g *Gate) MaybeLateOwn(rip uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range g.traps {
		if t.Via == ViaOwnEntry && t.Addr == t.own.site.Stop && (rip == t.own.site.Thunk || rip == t.own.hook) {
			return true
		}
	}
	return false
}

// GFPZeroIn returns the constant the code of get_zeroed_page (its first
// instructions, up to its first call) ORs into its gfp argument: the
// kernel's own __GFP_ZERO, which tells which layout of the gfp bits the
// kernel was built with (0x100: __GFP_HIGH 0x20, __GFP_DIRECT_RECLAIM
// 0x400, __GFP_KSWAPD_RECLAIM 0x800). Pure.
func GFPZeroIn(code []byte) (uint64, bool) {
	for off, n := 0, 0; off < len(code) && n < 16; n++ {
		x, err := x86asm.Decode(code[off:], 64)
		if err != nil || x.Len <= 0 || x.Op == 0 || x.Op == x86asm.CALL || x.Op == x86asm.JMP || x.Op == x86asm.RET {
			return 0, false
		}
		off += x.Len
		if r, ok := regOf(x.Args[0]); x.Op == x86asm.OR && ok && r == "rdi" {
			if imm, ok := x.Args[1].(x86asm.Imm); ok && imm > 0 {
				return uint64(imm), true
			}
		}
	}
	return 0, false
}
