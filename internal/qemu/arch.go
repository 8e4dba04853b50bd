package qemu

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
)

// Guest architectures, named as Debian (and the kits) name them.
const (
	ArchAMD64 = "amd64" // qemu-system-x86_64 -machine q35; the default
	ArchARM64 = "arm64" // qemu-system-aarch64 -machine virt
	ArchARMHF = "armhf" // qemu-system-arm -machine virt -cpu cortex-a15 (arch_armhf.go)
)

// BinaryARM64 is the QEMU system emulator of arm64 guests (Debian's
// qemu-system-arm package).
const BinaryARM64 = "qemu-system-aarch64"

// MachineARM64 is the arm64 machine type: QEMU's virt board (a PCIe host
// for the virtio-*-pci devices, a PL011 UART as the first serial port, RAM
// from 0x40000000, a GPIO power key for system_powerdown).
const MachineARM64 = "virt"

// CPUARM64 is the arm64 TCG CPU: a Cortex-A57 (ARMv8.0), whose
// instructions TCG emulates without the cost of pointer authentication
// (max's QARMA is several times slower under TCG) and whose stage-1
// translation is the 4 KiB-granule, 48-bit one introspection walks.
const CPUARM64 = "cortex-a57"

// ErrNoQEMUARM64 means qemu-system-aarch64 is not installed.
var ErrNoQEMUARM64 = errors.New(BinaryARM64 + " not found: arm64 guests need it: install it with 'sudo apt-get install -y qemu-system-arm'")

// ValidArch checks an architecture name ("" is ArchAMD64).
func ValidArch(arch string) error {
	switch arch {
	case "", ArchAMD64, ArchARM64, ArchARMHF:
		return nil
	}
	return fmt.Errorf("architecture %q: gatevisor runs %s, %s and %s guests", arch, ArchAMD64, ArchARM64, ArchARMHF)
}

// FindBinaryFor returns the QEMU binary of a guest architecture:
// FindBinary's for amd64 (EnvBinary or Binary), qemu-system-aarch64 on
// $PATH for arm64.
func FindBinaryFor(arch string) (string, error) {
	if err := ValidArch(arch); err != nil {
		return "", err
	}
	if arch == ArchARMHF {
		return findARMHF()
	}
	if arch != ArchARM64 {
		return FindBinary()
	}
	p, err := exec.LookPath(BinaryARM64)
	if err != nil {
		return "", ErrNoQEMUARM64
	}
	return p, nil
}

// NativeArch reports whether arch is the host's own architecture, the only
// one KVM can run.
func NativeArch(arch string) bool {
	if arch == "" {
		arch = ArchAMD64
	}
	return arch == runtime.GOARCH
}

// machineCPU returns the -machine type and the -cpu model of c's
// architecture and accelerator.
func (c *Config) machineCPU() (machine, cpu string) {
	if c.Arch == ArchARMHF {
		return MachineARMHF, CPUARMHF
	}
	if c.Arch == ArchARM64 {
		if c.Accel == "kvm" {
			return MachineARM64 + ",gic-version=host", "host"
		}
		return MachineARM64, CPUARM64
	}
	cpu = "max,la57=off" // 4-level paging, as on the devices we target
	if c.Accel == "kvm" {
		cpu = "host"
	}
	return Machine, cpu
}

// MachineCPU returns the -machine type and -cpu model gatevisor gives a
// guest of arch under accel ("kvm" or "tcg"), for a plain QEMU command
// line that matches its own (bench boot).
func MachineCPU(arch, accel string) (machine, cpu string) {
	return (&Config{Arch: arch, Accel: accel}).machineCPU()
}
