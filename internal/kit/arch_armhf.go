package kit

import (
	"fmt"
	"os"

	"github.com/gatevisor/gatevisor/internal/armimage"
)

// ARMHFMeta is the armhf kits' kernel metapackage: Debian's armmp flavour
// (ARMv7 multiplatform, short-descriptor page tables). It runs on every
// ARMv7-A core, those without LPAE too (Cortex-A5/A8/A9, most of the
// 32-bit devices gatevisor targets), while armmp-lpae needs LPAE
// (Cortex-A7/A15/A17). Introspection walks both formats (vmi's
// ARMv7 walker detects TTBCR.EAE), so an armmp-lpae kernel differs only in
// the table format it reads.
const ARMHFMeta = "linux-image-armmp"

// ARMHFAppend is the armhf kits' kernel command line: the virt machine's
// first serial port is a PL011 (ttyAMA0), as on arm64.
const ARMHFAppend = "console=ttyAMA0 panic=-1 quiet"

// armhfFeatures are arm64Features: the same virt board, the same devices.
// Whether each is built in or a module is read from the kernel's config
// and modules at build time, and init loads the modules, as for x86.
var armhfFeatures = arm64Features

// checkZImage checks that path is a little-endian ARM zImage, which
// qemu-system-arm boots as it is (the image decompresses itself);
// introspection reads kallsyms from the image's payload (armimage).
func checkZImage(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	if _, err := armimage.ParseZImage(b); err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	return nil
}
