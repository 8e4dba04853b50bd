package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// This file reads what a breakpoint inside the kernel (an LSM hook such as
// security_file_open) needs to know about the call it interrupted: the
// path of a struct file or struct path as the kernel resolved it, and the
// user registers the current task entered the kernel with.

// PathOf returns the path of the struct path {vfsmnt, dentry} from the
// global root, as Task.Exe and Cwd are: the name the kernel resolved, with
// symlinks followed and every ".." applied. A dentry not yet instantiated
// (a file about to be created) has its name and parent already, so it
// names the file that would be created.
func (k *Kernel) PathOf(vfsmnt, dentry uint64) (string, error) {
	if !k.kernelPointer(vfsmnt) || !k.kernelPointer(dentry) {
		return "", fmt.Errorf("%w: path {%#x, %#x} is not a pair of kernel pointers", ErrInconsistent, vfsmnt, dentry)
	}
	r, err := k.newTaskReader()
	if err != nil {
		return "", err
	}
	return r.dPath(vfsmnt, dentry)
}

// FilePath is k.FilePath with the reader's buffers (TaskReader). Like
// Read, it forgets what the reads before it found.
func (t *TaskReader) FilePath(file uint64) (string, error) {
	t.forget()
	k := t.r.k
	if !k.kernelPointer(file) {
		return "", fmt.Errorf("%w: file %#x is not a kernel pointer", ErrInconsistent, file)
	}
	off, err := k.Profile.FieldOffset("file.f_path")
	if err != nil {
		return "", fmt.Errorf("linux: file path layout: %w", err)
	}
	return k.pathAt(file+off, t.r)
}

// FilePath returns the path of the struct file at file (file->f_path).
func (k *Kernel) FilePath(file uint64) (string, error) {
	if !k.kernelPointer(file) {
		return "", fmt.Errorf("%w: file %#x is not a kernel pointer", ErrInconsistent, file)
	}
	off, err := k.Profile.FieldOffset("file.f_path")
	if err != nil {
		return "", fmt.Errorf("linux: file path layout: %w", err)
	}
	return k.pathAt(file+off, nil)
}

// FileFlags returns the struct file's f_flags (the open flags it keeps).
func (k *Kernel) FileFlags(file uint64) (uint32, error) {
	off, err := k.Profile.FieldOffset("file.f_flags")
	if err != nil {
		return 0, err
	}
	if !k.kernelPointer(file) {
		return 0, fmt.Errorf("%w: file %#x is not a kernel pointer", ErrInconsistent, file)
	}
	return vmi.ReadU32(k.AS, file+off)
}

// BinprmFile returns bprm->file of the struct linux_binprm at bprm: the
// program an execve is about to run, opened.
func (k *Kernel) BinprmFile(bprm uint64) (uint64, error) {
	off, err := k.Profile.FieldOffset("linux_binprm.file")
	if err != nil {
		return 0, err
	}
	if !k.kernelPointer(bprm) {
		return 0, fmt.Errorf("%w: linux_binprm %#x is not a kernel pointer", ErrInconsistent, bprm)
	}
	f, err := vmi.ReadU64(k.AS, bprm+off)
	if err != nil {
		return 0, fmt.Errorf("linux: read linux_binprm %#x: %w", bprm, err)
	}
	return f, nil
}

// threadSize is THREAD_SIZE on x86-64 without KASAN (16 KiB): the kernel
// stack a task's user pt_regs sit at the top of. Used only when the
// per-CPU top-of-stack variable is missing.
const threadSize = 16 << 10

// UserRegsAddr returns the address of the struct pt_regs the task running
// on the CPU with kernel per-CPU base gsBase entered the kernel with: the
// top of its kernel stack (per-CPU cpu_current_top_of_stack in 6.1,
// pcpu_hot.top_of_stack from 6.2) minus sizeof(struct pt_regs). task is
// that CPU's current task, used for the fallback through task->stack.
func (k *Kernel) UserRegsAddr(gsBase, task uint64) (uint64, error) {
	l := k.userRegsLayout()
	return k.userRegsAddr(gsBase, task, l)
}

// userRegsLayout is what UserRegsAddr looks up in the profile: constants
// of the kernel (TaskReader keeps them).
type userRegsLayout struct {
	size    uint64 // sizeof(struct pt_regs)
	sizeErr error
	off     uint64 // the per-CPU top of stack's offset
	offErr  error
}

func (k *Kernel) userRegsLayout() userRegsLayout {
	var l userRegsLayout
	l.size, l.sizeErr = k.Profile.StructSize("pt_regs")
	l.off, l.offErr = k.Profile.Symbol("cpu_current_top_of_stack")
	if l.offErr != nil {
		if hot, herr := k.Profile.Symbol("pcpu_hot"); herr == nil {
			if f, ferr := k.Profile.FieldOffset("pcpu_hot.top_of_stack"); ferr == nil {
				l.off, l.offErr = hot+f, nil
			}
		}
	}
	return l
}

func (k *Kernel) userRegsAddr(gsBase, task uint64, l userRegsLayout) (uint64, error) {
	size, err := l.size, l.sizeErr
	if err != nil {
		return 0, err
	}
	if !isKernelPtr(gsBase) {
		return 0, fmt.Errorf("%w: GS base %#x is not a kernel per-CPU area", ErrInconsistent, gsBase)
	}
	off, err := l.off, l.offErr
	var top uint64
	if err == nil && !isKernelPtr(off) {
		top, err = vmi.ReadU64(k.AS, gsBase+off)
	} else {
		// No per-CPU variable: the task's own stack pointer.
		so, serr := k.Profile.FieldOffset("task_struct.stack")
		if serr != nil {
			return 0, fmt.Errorf("linux: no top-of-stack variable and no task_struct.stack: %w", serr)
		}
		var stack uint64
		if stack, err = vmi.ReadU64(k.AS, task+so); err == nil {
			top = stack + threadSize
		}
	}
	if err != nil {
		return 0, fmt.Errorf("linux: read the kernel stack top: %w", err)
	}
	if !k.kernelPointer(top) || top < size {
		return 0, fmt.Errorf("%w: kernel stack top %#x", ErrInconsistent, top)
	}
	return top - size, nil
}

// Thread-info bits (arch/x86/include/asm/thread_info.h), stable since 4.x.
const (
	tifSigpending = 2      // TIF_SIGPENDING in thread_info.flags
	tsCompat      = 0x0002 // TS_COMPAT in thread_info.status: a 32-bit syscall is running
	sigKill       = 9
)

// InCompatSyscall reports whether the task at addr is in a 32-bit (ia32)
// system call: thread_info.status has TS_COMPAT (the kernel's
// in_ia32_syscall()), so its syscall number and arguments follow the
// i386 ABI. On arm64: the task is an AArch32 one (TIF_32BIT).
func (k *Kernel) InCompatSyscall(addr uint64) (bool, error) {
	if k.Profile.IsARM64() {
		return k.inCompatSyscallARM64(addr)
	}
	f := &fields{p: k.Profile}
	ti := f.off("task_struct.thread_info")
	st := f.off("thread_info.status")
	if f.err != nil {
		return false, fmt.Errorf("linux: thread_info layout: %w", f.err)
	}
	v, err := vmi.ReadU32(k.AS, addr+ti+st)
	if err != nil {
		return false, fmt.Errorf("linux: read thread_info of %#x: %w", addr, err)
	}
	return v&tsCompat != 0, nil
}

// Store is one 8-byte little-endian store into kernel memory.
type Store struct {
	Addr, Value uint64
}

// QueueSIGKILL returns the stores that queue SIGKILL for the task at addr
// the way the kernel's fast path does when no siginfo can be allocated:
// the bit in task->pending.signal and TIF_SIGPENDING in its thread_info,
// so that on its way back to user mode the task finds the signal and
// exits the whole thread group with SIGKILL semantics (get_signal →
// do_group_exit). The stores must be made with every vCPU stopped: they
// are a read-modify-write of words the kernel changes under its locks.
func (k *Kernel) QueueSIGKILL(addr uint64) ([]Store, error) {
	f := &fields{p: k.Profile}
	pending := f.off("task_struct.pending")
	sig := f.off("sigpending.signal")
	ti := f.off("task_struct.thread_info")
	flags := f.off("thread_info.flags")
	if f.err != nil {
		return nil, fmt.Errorf("linux: signal layout: %w", f.err)
	}
	if !k.kernelPointer(addr) {
		return nil, fmt.Errorf("%w: task %#x is not a kernel pointer", ErrInconsistent, addr)
	}
	sa, fa := addr+pending+sig, addr+ti+flags
	sv, err := vmi.ReadU64(k.AS, sa)
	if err != nil {
		return nil, fmt.Errorf("linux: read the pending signals of %#x: %w", addr, err)
	}
	fv, err := vmi.ReadU64(k.AS, fa)
	if err != nil {
		return nil, fmt.Errorf("linux: read the thread flags of %#x: %w", addr, err)
	}
	tif := tifSigpending
	if k.Profile.IsARM64() {
		tif = tifSigpendingARM64
	}
	return []Store{{sa, sv | 1<<(sigKill-1)}, {fa, fv | 1<<tif}}, nil
}

// ChildPath returns the path of dentry, a child (possibly not yet
// instantiated) of the directory at the struct path dir points to: what
// security_path_mknod(dir, dentry, ...) is asked about.
func (k *Kernel) ChildPath(dir, dentry uint64) (string, error) {
	off, err := k.Profile.FieldOffset("path.mnt")
	if err != nil {
		return "", err
	}
	if !k.kernelPointer(dir) {
		return "", fmt.Errorf("%w: struct path %#x is not a kernel pointer", ErrInconsistent, dir)
	}
	mnt, err := vmi.ReadU64(k.AS, dir+off)
	if err != nil {
		return "", fmt.Errorf("linux: read struct path %#x: %w", dir, err)
	}
	return k.PathOf(mnt, dentry)
}

// FileMode returns the struct file's f_mode (FMODE_READ, FMODE_WRITE,
// FMODE_EXEC, ...).
func (k *Kernel) FileMode(file uint64) (uint32, error) {
	off, err := k.Profile.FieldOffset("file.f_mode")
	if err != nil {
		return 0, err
	}
	if !k.kernelPointer(file) {
		return 0, fmt.Errorf("%w: file %#x is not a kernel pointer", ErrInconsistent, file)
	}
	return vmi.ReadU32(k.AS, file+off)
}

// PathAt returns the path of the struct path at p ({vfsmnt, dentry}), as
// the path LSM hooks (security_path_truncate, _chmod, _chown,
// security_inode_getattr) receive it.
func (k *Kernel) PathAt(p uint64) (string, error) {
	return k.pathAt(p, nil)
}

// pathAt is PathAt through reader r (nil: a new one).
func (k *Kernel) pathAt(p uint64, r *taskReader) (string, error) {
	f := &fields{p: k.Profile}
	mnt, dent := f.off("path.mnt"), f.off("path.dentry")
	if f.err != nil {
		return "", fmt.Errorf("linux: path layout: %w", f.err)
	}
	if !k.kernelPointer(p) {
		return "", fmt.Errorf("%w: struct path %#x is not a kernel pointer", ErrInconsistent, p)
	}
	vfsmnt, err := vmi.ReadU64(k.AS, p+mnt)
	if err != nil {
		return "", fmt.Errorf("linux: read struct path %#x: %w", p, err)
	}
	dentry, err := vmi.ReadU64(k.AS, p+dent)
	if err != nil {
		return "", fmt.Errorf("linux: read struct path %#x: %w", p, err)
	}
	if r == nil {
		return k.PathOf(vfsmnt, dentry)
	}
	if !k.kernelPointer(vfsmnt) || !k.kernelPointer(dentry) {
		return "", fmt.Errorf("%w: path {%#x, %#x} is not a pair of kernel pointers", ErrInconsistent, vfsmnt, dentry)
	}
	return r.dPath(vfsmnt, dentry)
}
