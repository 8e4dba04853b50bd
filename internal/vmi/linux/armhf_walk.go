package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The walks of a 32-bit kernel (armhf): the same objects as the 64-bit
// walks (tasks.go, modules.go) read with 4-byte pointers and longs, from
// the offsets of the profile's symbol table. A process's row has what
// ids ps prints: ids, parent, credentials, state, name, start time, page
// tables, thread count, CPU times (the group's, as /proc sums them),
// VSZ, RSS and the executable's path. Not read on 32-bit: the CPU a task
// last ran on (CPU is -1, "not known", as the Task type documents).

// ErrNot32 is returned by a walk that reads 64-bit pointers when the
// kernel is a 32-bit one (sockets: the network gate then leaves flows
// unattributed rather than read the guest wrong).
var ErrNot32 = errors.New("linux: not implemented for 32-bit kernels: this walk reads 64-bit pointers")

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
	// Threads and CPU time: signal_struct's count, its sums of exited
	// threads, the thread list; the scheduler's runtime and the ticks.
	signal, sigThreads, sigHead, sigUTime, sigSTime, sigRuntime, threadNode, utime, stime, runtime uint64
	// Memory and the executable: mm counters, exe_file's path.
	mmTotalVM, mmRSS, mmExe, fPath, pathDentry, dParent, dName, qstrName, mntParent, mntMountpoint, mntMnt, vfsRoot uint64
	err                                                                                                             error
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
	l.signal, l.sigThreads, l.sigHead = f.off("task_struct.signal"), f.off("signal_struct.nr_threads"), f.off("signal_struct.thread_head")
	l.sigUTime, l.sigSTime, l.sigRuntime = f.off("signal_struct.utime"), f.off("signal_struct.stime"), f.off("signal_struct.sum_sched_runtime")
	l.threadNode, l.utime, l.stime = f.off("task_struct.thread_node"), f.off("task_struct.utime"), f.off("task_struct.stime")
	l.runtime = f.off("task_struct.se") + f.off("sched_entity.sum_exec_runtime")
	l.mmTotalVM, l.mmRSS, l.mmExe = f.off("mm_struct.total_vm"), f.off("mm_struct.rss_stat")+f.off("mm_rss_stat.count"), f.off("mm_struct.exe_file")
	l.fPath, l.pathDentry = f.off("file.f_path"), f.off("path.dentry")
	l.dParent, l.dName, l.qstrName = f.off("dentry.d_parent"), f.off("dentry.d_name"), f.off("qstr.name")
	l.mntParent, l.mntMountpoint, l.mntMnt, l.vfsRoot = f.off("mount.mnt_parent"), f.off("mount.mnt_mountpoint"), f.off("mount.mnt"), f.off("vfsmount.mnt_root")
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
	b := make([]byte, max(l.tasks, l.pid, l.tgid, l.comm+l.commLen, l.parent, l.cred, l.mm, l.flags, l.state, l.exitState, l.start+8, l.signal, l.threadNode, l.utime+8, l.stime+8, l.runtime+8)+4)
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
	t.UTime, t.STime, t.Runtime = le.Uint64(b[l.utime:]), le.Uint64(b[l.stime:]), le.Uint64(b[l.runtime:])
	if sig := u(l.signal); sig != 0 {
		if err := k.groupTimes32(l, &t, sig); err != nil {
			return Task{}, fmt.Errorf("task %#x signal %#x: %w", addr, sig, err)
		}
	}
	if mm != 0 {
		mb := make([]byte, max(l.mmPGD, l.mmTotalVM, l.mmRSS+16, l.mmExe)+4)
		if _, err := k.AS.ReadVirtual(mm, mb); err != nil {
			return Task{}, fmt.Errorf("task %#x mm %#x: %w", addr, mm, err)
		}
		m := func(off uint64) uint64 { return uint64(le.Uint32(mb[off:])) }
		t.PGD = k.armhfLinear(m(l.mmPGD))
		t.VSZ = m(l.mmTotalVM) * 4096
		// MM_FILEPAGES, MM_ANONPAGES, (MM_SWAPENTS), MM_SHMEMPAGES: VmRSS.
		rss := int64(int32(m(l.mmRSS))) + int64(int32(m(l.mmRSS+4))) + int64(int32(m(l.mmRSS+12)))
		t.RSS = uint64(max(rss, 0)) * 4096
		if exe := m(l.mmExe); exe != 0 {
			p, err := k.exePath32(l, exe)
			if err != nil {
				return Task{}, fmt.Errorf("task %#x exe_file %#x: %w", addr, exe, err)
			}
			t.Exe = p
		}
	}
	return t, nil
}

// groupTimes32 sets t's thread count and its thread group's CPU times:
// signal_struct's sums of the exited threads plus every live thread's, as
// /proc/PID/stat adds them.
func (k *Kernel) groupTimes32(l *task32Layout, t *Task, sig uint64) error {
	sb := make([]byte, max(l.sigThreads, l.sigUTime+8, l.sigSTime+8, l.sigRuntime+8)+4)
	if _, err := k.AS.ReadVirtual(sig, sb); err != nil {
		return err
	}
	le := binary.LittleEndian
	t.Threads = int(int32(le.Uint32(sb[l.sigThreads:])))
	t.GroupUTime, t.GroupSTime, t.GroupRuntime = le.Uint64(sb[l.sigUTime:]), le.Uint64(sb[l.sigSTime:]), le.Uint64(sb[l.sigRuntime:])
	var tb [24]byte
	return k.walkList32(sig+l.sigHead, MaxTasks, func(node uint64) error {
		th := node - l.threadNode
		for i, off := range []uint64{l.utime, l.stime, l.runtime} {
			if _, err := k.AS.ReadVirtual(th+off, tb[8*i:8*i+8]); err != nil {
				return err
			}
		}
		t.GroupUTime += le.Uint64(tb[0:])
		t.GroupSTime += le.Uint64(tb[8:])
		t.GroupRuntime += le.Uint64(tb[16:])
		return nil
	})
}

// exePath32 is the path of the struct file at file from the global root,
// as prepend_path() builds it: the dentry names up to the mount's root,
// crossing to the parent mount at each mount point; bounded in steps and
// length.
func (k *Kernel) exePath32(l *task32Layout, file uint64) (string, error) {
	mnt, err := k.u32(file + l.fPath)
	if err != nil {
		return "", err
	}
	dentry, err := k.u32(file + l.fPath + l.pathDentry)
	if err != nil {
		return "", err
	}
	mount := mnt - l.mntMnt // container_of(vfsmount, struct mount, mnt)
	var parts []string
	size := 0
	name := make([]byte, maxNameLen+1)
	for steps := 0; ; steps++ {
		if steps > MaxPathLen/2 || size > MaxPathLen {
			return "", fmt.Errorf("%w: path longer than %d bytes", ErrInconsistent, MaxPathLen)
		}
		root, err := k.u32(mount + l.mntMnt + l.vfsRoot)
		if err != nil {
			return "", err
		}
		parent, err := k.u32(dentry + l.dParent)
		if err != nil {
			return "", err
		}
		if dentry == root || dentry == parent {
			mp, err := k.u32(mount + l.mntParent)
			if err != nil {
				return "", err
			}
			if mp == mount || dentry != root {
				break // the global root (or a dentry that is its own parent)
			}
			if dentry, err = k.u32(mount + l.mntMountpoint); err != nil {
				return "", err
			}
			mount = mp
			continue
		}
		np, err := k.u32(dentry + l.dName + l.qstrName)
		if err != nil {
			return "", err
		}
		n := min(uint64(len(name)), 4096-np&4095) // up to the page's end: the next may be unmapped
		clear(name)
		if _, err := k.AS.ReadVirtual(np, name[:n]); err != nil {
			return "", err
		}
		end := indexByte(name[:n], 0)
		if end <= 0 {
			return "", fmt.Errorf("%w: dentry %#x has no name", ErrInconsistent, dentry)
		}
		parts = append(parts, string(name[:end]))
		size += end + 1
		dentry = parent
	}
	if len(parts) == 0 {
		return "/", nil
	}
	out := make([]byte, 0, size)
	for i := len(parts) - 1; i >= 0; i-- {
		out = append(out, '/')
		out = append(out, parts[i]...)
	}
	return string(out), nil
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
	m, err := l.moduleIdentity(b, addr)
	if err != nil {
		return Module{}, err
	}
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
