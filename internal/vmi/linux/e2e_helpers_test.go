package linux

import (
	"context"
	"errors"
	"os/exec"
	"testing"

	"github.com/gatevisor/gatevisor/internal/kit"
)

// realKernelKit returns QEMU's path and the default guest kit for the
// real-kernel tests, skipping (with the reason and the fix) when QEMU or
// apt-get is missing.
func realKernelKit(ctx context.Context, t *testing.T) (string, *kit.Kit) {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found: install it (apt-get install qemu-system-x86) to run the real-kernel test")
	}
	k, err := kit.EnsureDefault(ctx, kit.Options{})
	if errors.Is(err, kit.ErrNoApt) {
		t.Skipf("apt-get not found, so the default kit cannot be built: %v", err)
	}
	if err != nil {
		t.Fatalf("kit: %v", err)
	}
	return qemu, k
}
