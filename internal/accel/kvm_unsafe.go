package accel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVM ioctl numbers (linux/kvm.h); _IO(0xAE, n) and sized variants.
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46 // _IOW(0xAE, 0x46, 32 bytes)
	kvmRun                 = 0xAE80
	kvmSetRegs             = 0x4090AE82 // _IOW(0xAE, 0x82, 144 bytes)
	kvmGetSregs            = 0x8138AE83 // _IOR(0xAE, 0x83, 312 bytes)
	kvmSetSregs            = 0x4138AE84 // _IOW(0xAE, 0x84, 312 bytes)

	kvmExitHLT           = 5
	kvmExitIRQWindowOpen = 7
	kvmExitIntr          = 10
	kvmAPI               = 12
)

type kvmUserspaceMemoryRegion struct {
	Slot, Flags                              uint32
	GuestPhysAddr, MemorySize, UserspaceAddr uint64
}

type kvmRegs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// kvmSregs is struct kvm_sregs; only cs is touched, the rest is opaque.
type kvmSregs [312]byte

func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// runLoop runs `mov ecx, n; 1: dec ecx; jnz 1b; hlt` in real mode in a new
// KVM VM and returns how long KVM_RUN took.
func runLoop(n int) (time.Duration, error) {
	kvm, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM unavailable: %w", err)
	}
	defer kvm.Close()
	kfd := int(kvm.Fd())
	if v, err := ioctl(kfd, kvmGetAPIVersion, 0); err != nil || v != kvmAPI {
		return 0, fmt.Errorf("KVM unavailable: API version %d (%v), want %d", v, err, kvmAPI)
	}
	vmfd, err := ioctl(kfd, kvmCreateVM, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM unavailable: KVM_CREATE_VM: %w", err)
	}
	defer unix.Close(int(vmfd))

	const memSize = 64 << 10
	mem, err := unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, fmt.Errorf("calibration memory: %w", err)
	}
	defer unix.Munmap(mem)
	const codeAt = 0x1000
	code := []byte{0x66, 0xB9, 0, 0, 0, 0, 0x66, 0x49, 0x75, 0xFC, 0xF4}
	binary.LittleEndian.PutUint32(code[2:], uint32(n))
	copy(mem[codeAt:], code)

	region := kvmUserspaceMemoryRegion{MemorySize: memSize, UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := ioctl(int(vmfd), kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); err != nil {
		return 0, fmt.Errorf("KVM unavailable: KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	vcpufd, err := ioctl(int(vmfd), kvmCreateVCPU, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM unavailable: KVM_CREATE_VCPU: %w", err)
	}
	defer unix.Close(int(vcpufd))
	runSize, err := ioctl(kfd, kvmGetVCPUMmapSize, 0)
	if err != nil || runSize < 16 || runSize > 1<<20 {
		return 0, fmt.Errorf("KVM unavailable: vCPU mmap size %d (%v)", runSize, err)
	}
	run, err := unix.Mmap(int(vcpufd), 0, int(runSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("KVM unavailable: mmap kvm_run: %w", err)
	}
	defer unix.Munmap(run)

	var sregs kvmSregs
	if _, err := ioctl(int(vcpufd), kvmGetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return 0, fmt.Errorf("KVM unavailable: KVM_GET_SREGS: %w", err)
	}
	// struct kvm_segment cs is first: base u64 at 0, selector u16 at 12.
	binary.LittleEndian.PutUint64(sregs[0:], 0)
	binary.LittleEndian.PutUint16(sregs[12:], 0)
	if _, err := ioctl(int(vcpufd), kvmSetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return 0, fmt.Errorf("KVM unavailable: KVM_SET_SREGS: %w", err)
	}
	regs := kvmRegs{RIP: codeAt, RFLAGS: 2}
	if _, err := ioctl(int(vcpufd), kvmSetRegs, uintptr(unsafe.Pointer(&regs))); err != nil {
		return 0, fmt.Errorf("KVM unavailable: KVM_SET_REGS: %w", err)
	}
	start := time.Now()
	// A bounded number of entries: interrupts or host signals may exit early.
	for i := 0; i < 1000; i++ {
		if _, err := ioctl(int(vcpufd), kvmRun, 0); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return 0, fmt.Errorf("KVM unavailable: KVM_RUN: %w", err)
		}
		switch reason := binary.LittleEndian.Uint32(run[8:]); reason {
		case kvmExitHLT:
			return time.Since(start), nil
		case kvmExitIRQWindowOpen, kvmExitIntr:
			continue
		default:
			return 0, fmt.Errorf("KVM unavailable: calibration guest exited with reason %d", reason)
		}
	}
	return 0, errors.New("KVM unavailable: calibration guest did not halt")
}
