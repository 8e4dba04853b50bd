package kit

import (
	"fmt"
	"os"

	"github.com/gatevisor/gatevisor/internal/armimage"
)

// Architectures a kit is built for, named as Debian names them.
const (
	ArchAMD64 = "amd64" // the default kit's, and the default
	ArchARM64 = "arm64" // booted on QEMU's virt machine (qemu-system-aarch64)
	ArchARMHF = "armhf" // 32-bit ARMv7, booted on QEMU's virt machine (qemu-system-arm, cortex-a15)
)

// archSpec is what differs between the kits of two architectures.
type archSpec struct {
	name     string
	meta     string    // the kernel metapackage
	append   string    // the default kernel command line
	console  string    // the serial console's tty, for init's shell
	features []Feature // what the kernel must provide
}

// arm64Features differ from wantFeatures in the power button: QEMU's virt
// machine booted from -kernel has no ACPI, and system_powerdown presses a
// GPIO key (KEY_POWER on the PL061) that busybox acpid reads from evdev as
// the same PWRF event.
var arm64Features = []Feature{
	{Name: "virtio-pci", Config: "CONFIG_VIRTIO_PCI", Module: "virtio_pci"},
	{Name: "virtio-net", Config: "CONFIG_VIRTIO_NET", Module: "virtio_net"},
	{Name: "virtio-blk", Config: "CONFIG_VIRTIO_BLK", Module: "virtio_blk"},
	{Name: "virtio-console", Config: "CONFIG_VIRTIO_CONSOLE", Module: "virtio_console"},
	{Name: "9p", Config: "CONFIG_9P_FS", Module: "9p"},
	{Name: "9p-virtio", Config: "CONFIG_NET_9P_VIRTIO", Module: "9pnet_virtio"},
	{Name: "virtiofs", Config: "CONFIG_VIRTIO_FS", Module: "virtiofs"},
	{Name: "serial-pl011", Config: "CONFIG_SERIAL_AMBA_PL011", Module: "amba_pl011"},
	{Name: "gpio-pl061", Config: "CONFIG_GPIO_PL061", Module: "gpio_pl061"},
	{Name: "gpio-power-key", Config: "CONFIG_KEYBOARD_GPIO", Module: "gpio_keys"},
	{Name: "input-evdev", Config: "CONFIG_INPUT_EVDEV", Module: "evdev"},
}

// ARM64Append is the arm64 kits' kernel command line: the virt machine's
// first serial port is a PL011 (ttyAMA0).
const ARM64Append = "console=ttyAMA0 panic=-1 quiet"

var archSpecs = []archSpec{
	{name: ArchAMD64, meta: "linux-image-amd64", append: DefaultAppend, console: "ttyS0", features: wantFeatures},
	{name: ArchARM64, meta: "linux-image-arm64", append: ARM64Append, console: "ttyAMA0", features: arm64Features},
	{name: ArchARMHF, meta: ARMHFMeta, append: ARMHFAppend, console: "ttyAMA0", features: armhfFeatures},
}

// lookupArch returns the spec of arch ("" is ArchAMD64).
func lookupArch(arch string) (archSpec, error) {
	if arch == "" {
		arch = ArchAMD64
	}
	for _, a := range archSpecs {
		if a.name == arch {
			return a, nil
		}
	}
	return archSpec{}, fmt.Errorf("kit: unknown architecture %q: gatevisor builds kits for %s, %s and %s", arch, ArchAMD64, ArchARM64, ArchARMHF)
}

// ValidArch checks an architecture name ("" is ArchAMD64).
func ValidArch(arch string) error {
	_, err := lookupArch(arch)
	return err
}

// Arch is the kit's architecture: its manifest's, ArchAMD64 when the
// manifest names none (the default kit).
func (k *Kit) Arch() string {
	if k.Manifest.Arch == "" {
		return ArchAMD64
	}
	return k.Manifest.Arch
}

// prepareARM64Image makes path a flat arm64 Image: a gzip or EFI zboot
// image is decompressed in place (QEMU's -kernel boots a flat Image
// directly, and introspection reads kallsyms and BTF from it).
func prepareARM64Image(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	img, comp, err := armimage.Unwrap(b)
	if err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	h, err := armimage.Parse(img)
	if err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	if h.BigEndian() || h.PageSize() != 4<<10 {
		return fmt.Errorf("kit: kernel: %w: big-endian %v, page size %d: gatevisor reads little-endian 4 KiB-page kernels", armimage.ErrFormat, h.BigEndian(), h.PageSize())
	}
	if comp == "none" {
		return nil
	}
	if err := os.WriteFile(path, img, 0o644); err != nil {
		return fmt.Errorf("kit: kernel: write the decompressed Image: %w", err)
	}
	return nil
}
