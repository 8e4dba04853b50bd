package cli

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/accel"
	"github.com/gatevisor/gatevisor/internal/qemu"
)

// chooseAccel is accel.Choose for a guest of arch: KVM runs only the
// host's own architecture, so another one (an arm64 kit on an x86-64
// host) runs under TCG, and --accel kvm is refused for it.
func chooseAccel(mode accel.Mode, arch string) (accel.Choice, error) {
	if qemu.NativeArch(arch) {
		return accel.Choose(mode)
	}
	if mode == accel.KVM {
		return accel.Choice{}, fmt.Errorf("--accel kvm: KVM runs only this host's own architecture, and the kit is %s: use --accel tcg or auto", arch)
	}
	return accel.Choice{Accel: accel.TCG, Reason: fmt.Sprintf("using TCG: the guest is %s, not this host's architecture", arch)}, nil
}
