package linux

import (
	"encoding/binary"
	"fmt"
)

// The walks of a 32-bit kernel (armhf): the same objects as the 64-bit
// walks (tasks.go, modules.go) read with 4-byte pointers and longs, from
// the offsets of the profile's symbol table. They fill what a 32-bit
// profile can give: a task's ids, parent, credentials, state, name, start
// time and page tables; Exe, Threads, CPU and the times are not read on
// 32-bit yet (zero, and documented in docs/kernels.md).

// u32 reads a little-endian 4-byte value at kernel address va.
func (k *Kernel) u32(va uint64) (uint64, error) {
	var b [4]byte
	if _, err := k.AS.ReadVirtual(va, b[:]); err != nil {
		return 0, err
	}
	return uint64(binary.LittleEndian.Uint32(b[:])), nil
}

// walkList32 calls fn for each node of the circular list at head (4-byte
// next pointers), bounded and cycle-checked as vmi.WalkList.
func (k *Kernel) walkList32(head uint64, max int, fn func(node uint64) error) error {
	seen := map[uint64]bool{}
	node, err := k.u32(head)
	if err != nil {
		return fmt.Errorf("linux: list head %#x: %w", head, err)
	}
	for count := 0; node != head; count++ {
		if count >= max {
			return fmt.Errorf("linux: list at %#x: more than %d entries", head, max)
		}
		if seen[node] {
			return fmt.Errorf("linux: list at %#x: node %#x revisited after %d entries", head, node, count)
		}
		seen[node] = true
		if err := fn(node); err != nil {
			return err
		}
		if node, err = k.u32(node); err != nil {
			return fmt.Errorf("linux: list at %#x: entry %d: %w", head, count, err)
		}
	}
	return nil
}

// task32Layout holds the offsets the 32-bit task walk reads.
type task32Layout struct {
	tasks, pid, tgid, comm, commLen, parent, cred, mm, flags, state, exitState, start uint64
	credUID, credGID, credEUID, mmPGD                                                 uint64
	err                                                                               error
}

func newTask32Layout(p *Profile) *task32Layout {
	f := &fields{p: p}
	l := &task32Layout{
		tasks: f.off("task_struct.tasks"), pid: f.off("task_struct.pid"), tgid: f.off("task_struct.tgid"),
		comm: f.off("task_struct.comm"), parent: f.off("task_struct.real_parent"), cred: f.off("task_struct.cred"),
		mm: f.off("task_struct.mm"), flags: f.off("task_struct.flags"), state: f.off("task_struct.__state"),
		exitState: f.off("task_struct.exit_state"), start: f.off("task_struct.start_time"),
		credUID: f.off("cred.uid"), credGID: f.off("cred.gid"), credEUID: f.off("cred.euid"), mmPGD: f.off("mm_struct.pgd"),
	}
	l.commLen, _ = f.arrayLen("task_struct.comm")
	if f.err == nil && (l.commLen == 0 || l.commLen > 64) {
		f.err = fmt.Errorf("%w: task_struct.comm of %d bytes", ErrNoField, l.commLen)
	}
	l.err = f.err
	return l
}

// tasks32 is Tasks for a 32-bit kernel: the thread-group leaders on
// init_task.tasks.
func (k *Kernel) tasks32() ([]Task, error) {
	l := newTask32Layout(k.Profile)
	if l.err != nil {
		return nil, fmt.Errorf("linux: task layout: %w", l.err)
	}
	head, err := k.Addr("init_task")
	if err != nil {
		return nil, err
	}
	tl := &tally{view: "tasks"}
	var out []Task
	tl.stop = k.walkList32(head+l.tasks, MaxTasks, func(node uint64) error {
		t, err := k.readTask32(l, node-l.tasks)
		if err != nil {
			tl.skipAt(node-l.tasks, err)
			return nil
		}
		out = append(out, t)
		return nil
	})
	return out, tl.err()
}

// readTask32 reads one task_struct.
func (k *Kernel) readTask32(l *task32Layout, addr uint64) (Task, error) {
	b := make([]byte, max(l.tasks, l.pid, l.tgid, l.comm+l.commLen, l.parent, l.cred, l.mm, l.flags, l.state, l.exitState, l.start+8)+4)
	if _, err := k.AS.ReadVirtual(addr, b); err != nil {
		return Task{}, err
	}
	le := binary.LittleEndian
	u := func(off uint64) uint64 { return uint64(le.Uint32(b[off:])) }
	t := Task{Addr: addr, PID: int(int32(u(l.pid))), TGID: int(int32(u(l.tgid))), StartTime: le.Uint64(b[l.start:]), CPU: -1}
	if t.PID < 0 || t.TGID <= 0 || t.PID > 1<<22 {
		return Task{}, fmt.Errorf("%w: task %#x pid %d tgid %d", ErrInconsistent, addr, t.PID, t.TGID)
	}
	comm := b[l.comm : l.comm+l.commLen]
	if n := indexByte(comm, 0); n >= 0 {
		comm = comm[:n]
	}
	t.Comm = string(comm)
	t.State = stateLetter(uint32(u(l.state)), uint32(u(l.exitState)))
	mm := u(l.mm)
	t.KernelThread = u(l.flags)&pfKthread != 0 || mm == 0 && t.State != "Z"
	if parent := u(l.parent); parent != 0 {
		if v, err := k.u32(parent + l.tgid); err == nil {
			t.PPID = int(int32(v))
		}
	}
	if cred := u(l.cred); cred != 0 {
		lo := min(l.credUID, l.credGID, l.credEUID)
		hi := max(l.credUID, l.credGID, l.credEUID) + 4
		cb := make([]byte, hi-lo)
		if _, err := k.AS.ReadVirtual(cred+lo, cb); err != nil {
			return Task{}, fmt.Errorf("task %#x cred %#x: %w", addr, cred, err)
		}
		t.UID = le.Uint32(cb[l.credUID-lo:])
		t.GID = le.Uint32(cb[l.credGID-lo:])
		t.EUID = le.Uint32(cb[l.credEUID-lo:])
	}
	if mm != 0 {
		pgd, err := k.u32(mm + l.mmPGD)
		if err != nil {
			return Task{}, fmt.Errorf("task %#x mm %#x: %w", addr, mm, err)
		}
		t.PGD = k.armhfLinear(pgd)
	}
	return t, nil
}

// modules32 is Modules for a 32-bit kernel.
func (k *Kernel) modules32() ([]Module, error) {
	l := layoutForModules(k.Profile)
	if l.err != nil {
		return nil, l.err
	}
	head, err := k.Addr("modules")
	if err != nil {
		return nil, err
	}
	buf := make([]byte, l.block.len())
	tl := &tally{view: "modules"}
	var out []Module
	tl.stop = k.walkList32(head, MaxModules, func(node uint64) error {
		addr := node - l.list
		if _, err := k.AS.ReadVirtual(addr+l.block.lo, buf); err != nil {
			tl.skipAt(addr, err)
			return nil
		}
		m, err := l.parseModule32(buf, addr)
		if err != nil {
			tl.skipAt(addr, err)
			return nil
		}
		out = append(out, m)
		return nil
	})
	return out, tl.err()
}

// parseModule32 decodes a 32-bit struct module's block.
func (l *moduleLayout) parseModule32(b []byte, addr uint64) (Module, error) {
	le := binary.LittleEndian
	at := func(off uint64) []byte { return b[off-l.block.lo:] }
	st := le.Uint32(at(l.state))
	if st >= uint32(len(moduleStates)) {
		return Module{}, fmt.Errorf("%w: module %#x state %d", ErrInconsistent, addr, st)
	}
	nb := at(l.name)[:l.nameLen]
	n := indexByte(nb, 0)
	if n <= 0 {
		return Module{}, fmt.Errorf("%w: module %#x has no NUL-terminated name", ErrInconsistent, addr)
	}
	for _, c := range nb[:n] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return Module{}, fmt.Errorf("%w: module %#x name %q", ErrInconsistent, addr, nb[:n])
		}
	}
	m := Module{Addr: addr, Name: string(nb[:n]), State: moduleStates[st]}
	m.Base = uint64(le.Uint32(at(l.coreBase[0])))
	for i := range l.coreBase {
		m.Size += uint64(le.Uint32(at(l.coreSize[i])))
	}
	if m.Size > maxModuleSize {
		return Module{}, fmt.Errorf("%w: module %#x (%s) core size %d", ErrInconsistent, addr, m.Name, m.Size)
	}
	return m, nil
}

// modulesFromSysfs32 is ModulesFromSysfs for a 32-bit kernel: the modules
// module_kset's kobjects (/sys/module) point to.
func (k *Kernel) modulesFromSysfs32() ([]Module, error) {
	l := layoutForModules(k.Profile)
	if l.err != nil {
		return nil, l.err
	}
	va, err := k.Addr("module_kset")
	if err != nil {
		return nil, err
	}
	kset, err := k.u32(va)
	if err != nil {
		return nil, fmt.Errorf("linux: module_kset: %w", err)
	}
	if kset < k.armhfPageOffset() {
		return nil, fmt.Errorf("%w: module_kset is %#x", ErrInconsistent, kset)
	}
	buf := make([]byte, l.block.len())
	tl := &tally{view: "sysfs"}
	var out []Module
	seen := map[uint64]bool{}
	tl.stop = k.walkList32(kset+l.ksetList, 4*MaxModules, func(node uint64) error {
		mk := node - l.kobjEntry - l.mkKobj
		mod, err := k.u32(mk + l.mkMod)
		if err != nil {
			tl.skip(fmt.Errorf("linux: module_kobject %#x: %w", mk, err))
			return nil
		}
		if mod == 0 || seen[mod] {
			return nil // a built-in module's kobject: no struct module
		}
		seen[mod] = true
		if _, err := k.AS.ReadVirtual(mod+l.block.lo, buf); err != nil {
			tl.skipAt(mod, err)
			return nil
		}
		m, err := l.parseModule32(buf, mod)
		if err != nil {
			tl.skipAt(mod, err)
			return nil
		}
		if len(out) >= MaxModules {
			return fmt.Errorf("linux: more than %d modules", MaxModules)
		}
		out = append(out, m)
		return nil
	})
	return out, tl.err()
}

// armhfPageOffset is PAGE_OFFSET: _text's 256 MiB boundary (regionARMHF).
func (k *Kernel) armhfPageOffset() uint64 {
	text, _ := k.Profile.Symbol("_text")
	return text &^ (1<<28 - 1)
}

// List poison of a 32-bit ARM kernel (POISON_POINTER_DELTA is 0).
const (
	listPoison1ARM = 0x100
	listPoison2ARM = 0x122
)

// scanModules32 is ScanModules for a 32-bit kernel: the module area is
// the 16 MiB below PAGE_OFFSET (MODULES_VADDR to MODULES_END); every
// mapped page of it is read and searched, at 4-byte steps, for a struct
// module that validates as ScanModules' do (state, name, a core layout
// that holds the structure, list pointers into kernel space or list_del's
// poison, a kobject pointing back).
func (k *Kernel) scanModules32() ([]Module, error) {
	l := layoutForModules(k.Profile)
	if l.err != nil {
		return nil, l.err
	}
	hi := k.armhfPageOffset()
	lo := hi - 16<<20
	le := binary.LittleEndian
	tl := &tally{view: "scan"}
	var out []Module
	page := make([]byte, 4096+l.block.hi)
	for va := lo; va < hi; va += 4096 {
		if _, _, err := k.AS.Translate(va); err != nil {
			continue
		}
		n := uint64(4096)
		if _, _, err := k.AS.Translate(va + 4096); err == nil && va+4096 < hi {
			n += l.block.hi // a structure may cross into the next mapped page
		}
		b := page[:n]
		if _, err := k.AS.ReadVirtual(va, b); err != nil {
			tl.skip(fmt.Errorf("linux: module area %#x: %w", va, err))
			continue
		}
		for off := uint64(0); off < 4096 && off+l.block.hi <= n; off += 4 {
			if le.Uint32(b[off+l.state:]) >= uint32(len(moduleStates)) {
				continue
			}
			if c := b[off+l.name]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				continue
			}
			blk := b[off+l.block.lo : off+l.block.hi]
			addr := va + off
			m, err := l.parseModule32(blk, addr)
			if err != nil {
				continue
			}
			at := func(o uint64) uint64 { return uint64(le.Uint32(blk[o-l.block.lo:])) }
			inside := false
			for i := range l.coreBase {
				if base, size := at(l.coreBase[i]), at(l.coreSize[i]); base != 0 && addr >= base && addr-base < size {
					inside = true
				}
			}
			next, prev := at(l.list), at(l.list+4)
			sane := func(p uint64) bool { return p >= lo && p&3 == 0 }
			poisoned := next == listPoison1ARM && prev == listPoison2ARM
			st := le.Uint32(blk[l.state-l.block.lo:])
			mk := at(l.mkobjMod)
			if !inside || m.Base < lo || m.Base >= hi || !(poisoned || sane(next) && sane(prev)) || mk != addr && !(mk == 0 && (st == 1 || st == 3)) {
				continue
			}
			if len(out) >= MaxModules {
				tl.stop = fmt.Errorf("linux: more than %d module candidates", MaxModules)
				return out, tl.err()
			}
			out = append(out, m)
		}
	}
	return out, tl.err()
}
