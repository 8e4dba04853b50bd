package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// TaskAt reads and validates one task_struct at the kernel virtual address
// addr, such as a CPU's current task (see CurrentTask), with the same
// fields and bounds as Tasks. PGD and Exe are those of the thread group's
// mm (threads share it).
func (k *Kernel) TaskAt(addr uint64) (Task, error) {
	r, err := k.newTaskReader()
	if err != nil {
		return Task{}, err
	}
	return r.read(addr)
}

// CurrentTask returns the address of the task running on the CPU whose
// kernel per-CPU base is gsBase (the GS base while that CPU is in kernel
// mode, after swapgs). Linux 6.1 keeps it in the per-CPU variable
// current_task; from 6.2 it is pcpu_hot.current_task. Per-CPU symbols are
// offsets from the CPU's area on x86-64 SMP and KASLR does not move them.
func (k *Kernel) CurrentTask(gsBase uint64) (uint64, error) {
	off, err := k.CurrentTaskOffset()
	if err != nil {
		return 0, err
	}
	return k.CurrentTaskAt(gsBase, off)
}

// CurrentTaskAt is CurrentTask with current_task's per-CPU offset already
// found by CurrentTaskOffset (a constant of the kernel: a caller reading the
// current task at every stop looks it up once).
func (k *Kernel) CurrentTaskAt(gsBase, off uint64) (uint64, error) {
	if !isKernelPtr(gsBase) {
		return 0, fmt.Errorf("%w: GS base %#x is not a kernel per-CPU area (a user-mode stop?)", ErrInconsistent, gsBase)
	}
	t, err := vmi.ReadU64(k.AS, gsBase+off)
	if err != nil {
		return 0, fmt.Errorf("linux: read current_task at %#x: %w", gsBase+off, err)
	}
	if !isKernelPtr(t) {
		return 0, fmt.Errorf("%w: current_task %#x is not a kernel address", ErrInconsistent, t)
	}
	return t, nil
}

// CurrentTaskOffset returns the per-CPU offset of the running task's
// pointer: current_task (Linux 6.1) or pcpu_hot.current_task (6.2 on).
func (k *Kernel) CurrentTaskOffset() (uint64, error) {
	sym, err := k.Profile.Symbol("current_task")
	if err != nil {
		hot, herr := k.Profile.Symbol("pcpu_hot")
		if herr != nil {
			return 0, fmt.Errorf("linux: neither current_task nor pcpu_hot: %w", err)
		}
		f, ferr := k.Profile.FieldOffset("pcpu_hot.current_task")
		if ferr != nil {
			return 0, ferr
		}
		sym = hot + f
	}
	if isKernelPtr(sym) {
		// A uniprocessor kernel: an ordinary variable in the image.
		return 0, fmt.Errorf("linux: current_task at %#x is not per-CPU: uniprocessor kernels are not supported", sym)
	}
	return sym, nil
}

// Cwd returns the working directory of the task at addr (task->fs->pwd),
// as a path from the global root, bounded like Task.Exe.
func (k *Kernel) Cwd(addr uint64) (string, error) {
	r, err := k.newTaskReader()
	if err != nil {
		return "", err
	}
	f := &fields{p: k.Profile}
	fsOff := f.off("task_struct.fs")
	pwd := f.off("fs_struct.pwd")
	mnt, dent := f.off("path.mnt"), f.off("path.dentry")
	if f.err != nil {
		return "", fmt.Errorf("linux: cwd layout: %w", f.err)
	}
	fs, err := vmi.ReadU64(k.AS, addr+fsOff)
	if err != nil || !isKernelPtr(fs) {
		return "", fmt.Errorf("%w: task %#x has no readable fs_struct", ErrInconsistent, addr)
	}
	vfsmnt, err := vmi.ReadU64(k.AS, fs+pwd+mnt)
	if err != nil {
		return "", err
	}
	dentry, err := vmi.ReadU64(k.AS, fs+pwd+dent)
	if err != nil {
		return "", err
	}
	return r.dPath(vfsmnt, dentry)
}
