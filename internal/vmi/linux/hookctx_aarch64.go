package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// What a stop inside an arm64 kernel needs to know about the call it
// interrupted, where arm64 keeps it (the x86-64 versions are in
// hookctx.go and taskat.go).

// threadSizeARM64 is THREAD_SIZE on arm64 with 4 KiB pages and without
// KASAN (MIN_THREAD_SHIFT 14): the kernel stack a task's user pt_regs sit
// at the top of (task_pt_regs: task->stack + THREAD_SIZE - sizeof(pt_regs)).
// A kernel with KASAN (THREAD_SHIFT 15 or 16) would put them elsewhere: the
// reader checks the syscall number it finds (UserRegsAddrARM64's callers
// decide nothing on a number no syscall has).
const threadSizeARM64 = 16 << 10

// Thread-info bits of arm64 (arch/arm64/include/asm/thread_info.h), stable
// since 5.x: TIF_SIGPENDING is bit 0 (x86-64: 2), TIF_32BIT (an AArch32
// task, whose syscalls follow the compat ABI) bit 22.
const (
	tifSigpendingARM64 = 0
	tif32BitARM64      = 22
)

// CurrentTaskARM64 returns the task running on a vCPU stopped in the arm64
// kernel: the kernel keeps `current` in SP_EL0 while it runs at EL1
// (arch/arm64/include/asm/current.h; entry.S loads it on every exception
// from EL0), so spEL0 is that register's value. It is checked to be a
// kernel pointer; TaskAt validates what it points to.
func (k *Kernel) CurrentTaskARM64(spEL0 uint64) (uint64, error) {
	if !k.kernelPointer(spEL0) {
		return 0, fmt.Errorf("%w: SP_EL0 %#x is not a kernel pointer (a stop at EL0?)", ErrInconsistent, spEL0)
	}
	return spEL0, nil
}

// UserRegsAddrARM64 returns the address of the struct pt_regs the arm64
// task at task entered the kernel with: the top of its kernel stack
// (task->stack + THREAD_SIZE) minus sizeof(struct pt_regs).
func (k *Kernel) UserRegsAddrARM64(task uint64) (uint64, error) {
	size, err := k.Profile.StructSize("pt_regs")
	if err != nil {
		return 0, err
	}
	so, err := k.Profile.FieldOffset("task_struct.stack")
	if err != nil {
		return 0, fmt.Errorf("linux: task_struct.stack: %w", err)
	}
	if !k.kernelPointer(task) {
		return 0, fmt.Errorf("%w: task %#x is not a kernel pointer", ErrInconsistent, task)
	}
	stack, err := vmi.ReadU64(k.AS, task+so)
	if err != nil {
		return 0, fmt.Errorf("linux: read the kernel stack of %#x: %w", task, err)
	}
	top := stack + threadSizeARM64
	if !k.kernelPointer(stack) || top < stack || stack&(threadSizeARM64-1) != 0 {
		return 0, fmt.Errorf("%w: kernel stack %#x of task %#x", ErrInconsistent, stack, task)
	}
	return top - size, nil
}

// inCompatSyscallARM64 is InCompatSyscall for arm64: the task is an
// AArch32 one (TIF_32BIT in thread_info.flags; the kernel's
// is_compat_task()), so its syscall numbers are the compat table's.
func (k *Kernel) inCompatSyscallARM64(addr uint64) (bool, error) {
	f := &fields{p: k.Profile}
	ti := f.off("task_struct.thread_info")
	fl := f.off("thread_info.flags")
	if f.err != nil {
		return false, fmt.Errorf("linux: thread_info layout: %w", f.err)
	}
	v, err := vmi.ReadU64(k.AS, addr+ti+fl)
	if err != nil {
		return false, fmt.Errorf("linux: read thread_info of %#x: %w", addr, err)
	}
	return v&(1<<tif32BitARM64) != 0, nil
}
