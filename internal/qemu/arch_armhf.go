package qemu

import (
	"errors"
	"os/exec"
)

// BinaryARMHF is the QEMU system emulator of 32-bit ARM (armhf) guests
// (Debian's qemu-system-arm package, which scripts/install-deps installs
// for arm64 guests too).
const BinaryARMHF = "qemu-system-arm"

// MachineARMHF is the armhf machine type: QEMU's virt board, as for arm64
// (a PCIe host for the virtio-*-pci devices, a PL011 UART as the first
// serial port, RAM from 0x40000000, a GPIO power key). highmem=off keeps
// every device below 4 GiB, where a kernel without LPAE (Debian's armmp)
// can reach it.
const MachineARMHF = "virt,highmem=off"

// CPUARMHF is the armhf TCG CPU: a Cortex-A15 (ARMv7-A with LPAE and the
// virtualization extensions), the core Debian's armmp and armmp-lpae
// kernels both run on.
const CPUARMHF = "cortex-a15"

// ErrNoQEMUARMHF means qemu-system-arm is not installed.
var ErrNoQEMUARMHF = errors.New(BinaryARMHF + " not found: armhf guests need it: install it with 'sudo apt-get install -y qemu-system-arm'")

// findARMHF returns qemu-system-arm from $PATH. KVM does not run 32-bit
// guests on an arm64 host's KVM through this binary, so armhf guests
// always run under TCG (cli's chooseAccel: armhf is never the host's
// architecture).
func findARMHF() (string, error) {
	p, err := exec.LookPath(BinaryARMHF)
	if err != nil {
		return "", ErrNoQEMUARMHF
	}
	return p, nil
}
