package monitor

import (
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// An arm64 guest has no kernel gate: its classes are absent, with the
// reason, so that a policy stating their rules is refused (fail closed);
// the network and API gates are there as on x86.
func TestCoverageARM64NoKernelGate(t *testing.T) {
	cov := Coverage(&linux.Profile{Arch: linux.ArchARM64}, "vmlinuz", true, false)
	for _, c := range []event.Class{event.ClassSyscall, event.ClassFile, event.ClassExec, event.ClassModule} {
		if o, ok := cov.Observers[c]; ok {
			t.Errorf("%s: observed by %s on arm64", c, o.Gate)
		}
		if cov.Absent[c] != ARM64NoKernelGate {
			t.Errorf("%s: absent because %q, want the arm64 reason", c, cov.Absent[c])
		}
	}
	for _, c := range []event.Class{event.ClassNet, event.ClassAPI} {
		if _, ok := cov.Observers[c]; !ok {
			t.Errorf("%s: no gate on arm64", c)
		}
	}
}
