package linux

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// The LSM hook lists. Up to Linux 6.8 every LSM hook the kernel calls
// (security_file_open -> call_int_hook(file_open, ...)) walks one list:
// security_hook_heads.<hook>, an hlist of struct security_hook_list, each
// entry naming the function it calls, the list head it belongs to (its
// head back-pointer) and its LSM's name. The kernel's LSMs keep their
// entries in static arrays (capability_hooks, apparmor_hooks, ...) in the
// image's data, linked at boot and read-only after init; a rootkit that
// adds an entry (its own function on file_open, say) has it elsewhere, or
// calls code that is not the kernel's. Linux 6.9 replaced the lists with
// static calls (static_calls_table): there is nothing to walk there.

// Bounds of the LSM hook list walk.
const (
	maxLSMPerList = 64   // entries on one hook's list (one per LSM)
	maxLSMHooks   = 1024 // members of security_hook_heads (6.1 has 239)
	maxLSMNameLen = 64   // an LSM's name ("capability", "apparmor")
	// maxHookListSize bounds sizeof(struct security_hook_list) (40 on 6.1).
	maxHookListSize = 256
)

// ErrLSMNotAvailable means the kernel has no LSM hook lists to walk: it
// calls its hooks through static calls (Linux 6.9+), or has no
// security_hook_heads at all. The walk reports it as such, never as an
// empty list.
var ErrLSMNotAvailable = errors.New("linux: LSM hook lists not available")

// LSMHook is one struct security_hook_list on a hook's list.
type LSMHook struct {
	// Addr is the entry's address, Hook the security_hook_heads member
	// whose list it is on ("file_open"), List that member's address.
	Addr uint64 `json:"addr"`
	Hook string `json:"hook"`
	List uint64 `json:"list"`
	// Head is the entry's head back-pointer: List for an entry the
	// kernel linked (security_add_hooks links each on *head).
	Head uint64 `json:"head"`
	// Func is the function the entry calls (named by the caller, when it
	// needs to: the walk runs at every scan).
	Func uint64 `json:"func"`
	// LSM is the entry's LSM name, read (bounded) at LSMAddr; LSMError
	// says why it could not be.
	LSM      string `json:"lsm"`
	LSMAddr  uint64 `json:"lsm_addr"`
	LSMError string `json:"lsm_error,omitempty"`
	// InCoreData is whether the entry lies in the kernel image's data
	// (read-only data, ro_after_init included, or .data), where the
	// kernel's own LSMs keep their arrays; InCoreText whether Func is in
	// the kernel's core text.
	InCoreData bool `json:"in_core_data"`
	InCoreText bool `json:"in_core_text"`
}

// HeadOK reports whether the entry's head back-pointer is the list it is on.
func (h LSMHook) HeadOK() bool { return h.Head == h.List }

// LSMBrokenList is a hook's list the walk could not finish: a loop, a
// list longer than any kernel makes, a pointer that is not a kernel
// address or cannot be read. The entries before the break are listed;
// what follows it is not checked.
type LSMBrokenList struct {
	Hook string `json:"hook"`
	List uint64 `json:"list"`
	// At is the pointer the walk stopped at.
	At     uint64 `json:"at"`
	Reason string `json:"reason"`
}

// LSMHookLists is every LSM hook list of the kernel.
type LSMHookLists struct {
	// Heads is security_hook_heads's address; Hooks the number of hook
	// lists it holds (all walked).
	Heads   uint64          `json:"heads"`
	Hooks   int             `json:"hooks"`
	Entries []LSMHook       `json:"entries"`
	Broken  []LSMBrokenList `json:"broken,omitempty"`
}

// lsmLayout is what the walk needs of BTF.
type lsmLayout struct {
	hooks     []Member // security_hook_heads's members, one hlist_head each
	headsSize uint64
	// struct security_hook_list: its size and its members' offsets.
	size, list, head, hook, lsm uint64
	err                         error
}

// layoutForLSM returns p's LSM layout, computed once.
func layoutForLSM(p *Profile) *lsmLayout {
	c := p.caches()
	c.lsmOnce.Do(func() { c.lsm = newLSMLayout(p) })
	return c.lsm
}

func newLSMLayout(p *Profile) *lsmLayout {
	l := &lsmLayout{}
	f := &fields{p: p}
	l.list, l.head, l.hook, l.lsm = f.off("security_hook_list.list"), f.off("security_hook_list.head"),
		f.off("security_hook_list.hook"), f.off("security_hook_list.lsm")
	if f.err != nil {
		l.err = f.err
		return l
	}
	var err error
	if l.size, err = p.StructSize("security_hook_list"); err != nil {
		l.err = err
		return l
	}
	if l.size > maxHookListSize || max(l.list, l.head, l.hook, l.lsm)+8 > l.size {
		l.err = fmt.Errorf("linux: struct security_hook_list: implausible layout (size %d)", l.size)
		return l
	}
	if l.headsSize, err = p.StructSize("security_hook_heads"); err != nil {
		l.err = err
		return l
	}
	members, err := p.StructMembers("security_hook_heads")
	if err != nil {
		l.err = err
		return l
	}
	for _, m := range members {
		// Each member is a struct hlist_head: one pointer.
		if m.Type.Kind != KindStruct || m.Type.Size != 8 || m.Offset%8 != 0 || m.Offset+8 > l.headsSize {
			l.err = fmt.Errorf("linux: security_hook_heads.%s is not an hlist_head (kind %d, size %d, offset %d)", m.Name, m.Type.Kind, m.Type.Size, m.Offset)
			return l
		}
	}
	if len(members) == 0 || len(members) > maxLSMHooks {
		l.err = fmt.Errorf("linux: security_hook_heads has %d members (1 to %d expected)", len(members), maxLSMHooks)
		return l
	}
	l.hooks = members
	return l
}

// LSMHooks walks every list of security_hook_heads (one per LSM hook, its
// members read from BTF) and reads each entry: its function, its head
// back-pointer and its LSM's name. Every walk is bounded (maxLSMPerList
// entries, a revisited entry is a loop) and every pointer is checked
// before it is followed; a list that cannot be finished is in Broken, the
// others are still walked. A kernel without the lists returns an error
// wrapping ErrLSMNotAvailable.
func (k *Kernel) LSMHooks() (*LSMHookLists, error) {
	heads, err := k.Addr("security_hook_heads")
	if err != nil {
		return nil, k.noLSMHeads()
	}
	l := layoutForLSM(k.Profile)
	if l.err != nil {
		return nil, fmt.Errorf("linux: LSM hook lists: %w", l.err)
	}
	data, err := k.coreData()
	if err != nil {
		return nil, fmt.Errorf("linux: LSM hook lists: %w", err)
	}
	buf := make([]byte, l.headsSize)
	if _, err := k.AS.ReadVirtual(heads, buf); err != nil {
		return nil, fmt.Errorf("linux: security_hook_heads at %#x: %w", heads, err)
	}
	// A kernel has an entry or two per hook (381 on 6.1's 239 hooks).
	out := &LSMHookLists{Heads: heads, Hooks: len(l.hooks), Entries: make([]LSMHook, 0, 2*len(l.hooks))}
	w := lsmWalk{k: k, l: l, data: data, names: map[uint64]lsmName{}, entry: make([]byte, l.size), seen: map[uint64]bool{}, out: out}
	for _, m := range l.hooks {
		w.walk(m.Name, heads+m.Offset, binary.LittleEndian.Uint64(buf[m.Offset:]))
	}
	return out, nil
}

// noLSMHeads says why the kernel has no security_hook_heads.
func (k *Kernel) noLSMHeads() error {
	var major, minor int
	_, verr := fmt.Sscanf(k.Profile.Release, "%d.%d", &major, &minor)
	if _, err := k.Addr("static_calls_table"); err == nil || verr == nil && major*1000+minor >= 6009 {
		return fmt.Errorf("%w: this kernel calls its LSM hooks through static calls (static_calls_table, Linux 6.9+): it has no security_hook_heads lists to walk, and its static call table is not checked", ErrLSMNotAvailable)
	}
	if err := k.Profile.noDataSymbols("security_hook_heads"); err != nil {
		return fmt.Errorf("%w: %w", ErrLSMNotAvailable, err)
	}
	return fmt.Errorf("%w: the kernel has neither security_hook_heads nor static_calls_table (built without CONFIG_SECURITY?)", ErrLSMNotAvailable)
}

// lsmName is an LSM name read once per walk (the entries of one LSM
// share the pointer).
type lsmName struct {
	name string
	err  error
}

// lsmWalk is one LSMHooks walk.
type lsmWalk struct {
	k     *Kernel
	l     *lsmLayout
	data  [][2]uint64
	names map[uint64]lsmName
	entry []byte          // one struct security_hook_list
	seen  map[uint64]bool // the nodes of the list being walked
	out   *LSMHookLists
}

// walk walks the list of hook, whose head is at list and whose first
// node is first.
func (w *lsmWalk) walk(hook string, list, first uint64) {
	le := binary.LittleEndian
	broken := func(at uint64, format string, a ...any) {
		w.out.Broken = append(w.out.Broken, LSMBrokenList{Hook: hook, List: list, At: at, Reason: fmt.Sprintf(format, a...)})
	}
	seen := w.seen
	clear(seen)
	for node, n := first, 0; node != 0; n++ {
		switch {
		case n >= maxLSMPerList:
			broken(node, "more than %d entries", maxLSMPerList)
			return
		case seen[node]:
			broken(node, "it loops: entry %#x comes again after %d entries", node, n)
			return
		case !w.k.kernelPointer(node) || node&7 != 0 || node < w.l.list:
			broken(node, "entry %d's link %#x is not a kernel address", n, node)
			return
		}
		seen[node] = true
		e := node - w.l.list
		if _, err := w.k.AS.ReadVirtual(e, w.entry); err != nil {
			broken(node, "entry %d at %#x cannot be read: %v", n, e, err)
			return
		}
		h := LSMHook{Addr: e, Hook: hook, List: list, Head: le.Uint64(w.entry[w.l.head:]), Func: le.Uint64(w.entry[w.l.hook:]),
			LSMAddr: le.Uint64(w.entry[w.l.lsm:])}
		h.InCoreText = w.k.inCoreText(h.Func)
		h.InCoreData = inRanges(w.data, e, w.l.size)
		h.LSM, h.LSMError = w.name(h.LSMAddr)
		w.out.Entries = append(w.out.Entries, h)
		node = le.Uint64(w.entry[w.l.list:]) // hlist_node.next
	}
}

// name reads the LSM name at va, bounded, once per walk.
func (w *lsmWalk) name(va uint64) (string, string) {
	n, ok := w.names[va]
	if !ok {
		if !w.k.kernelPointer(va) {
			n.err = fmt.Errorf("%#x is not a kernel address", va)
		} else {
			n.name, n.err = vmi.ReadCString(w.k.AS, va, maxLSMNameLen)
		}
		w.names[va] = n
	}
	if n.err != nil {
		return n.name, n.err.Error()
	}
	return n.name, ""
}

// coreData returns the run-time ranges of the kernel image's data: its
// read-only data (ro_after_init included) and .data.
func (k *Kernel) coreData() ([][2]uint64, error) {
	var out [][2]uint64
	for _, sec := range [][2]string{{"__start_rodata", "__end_rodata"}, {"_sdata", "_edata"}} {
		s, err1 := k.Addr(sec[0])
		e, err2 := k.Addr(sec[1])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("the image's data bounds: %w", err)
		}
		if e <= s {
			return nil, fmt.Errorf("the image's data bounds: %s %#x is not above %s %#x", sec[1], e, sec[0], s)
		}
		out = append(out, [2]uint64{s, e})
	}
	return out, nil
}

// InCoreData reports whether run-time address va is in the kernel image's
// data (read-only data, ro_after_init included, or .data); false when the
// image's data bounds are unknown.
func (k *Kernel) InCoreData(va uint64) bool {
	r, err := k.coreData()
	return err == nil && inRanges(r, va, 1)
}

// inRanges reports whether the n bytes at va lie in one of ranges.
func inRanges(ranges [][2]uint64, va, n uint64) bool {
	for _, r := range ranges {
		if va >= r[0] && va < r[1] && r[1]-va >= n {
			return true
		}
	}
	return false
}
