package monitor

import (
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// A guest of an architecture the kernel gate does not know has no kernel
// gate: its classes are absent, with the reason, so that a policy stating
// their rules is refused (fail closed); the network and API gates are
// there as on x86. (arm64 has the kernel gate: TestARM64.)
func TestCoverageUnknownArchNoKernelGate(t *testing.T) {
	cov := Coverage(&linux.Profile{Arch: "arm"}, "vmlinuz", true, false)
	for _, c := range []event.Class{event.ClassSyscall, event.ClassFile, event.ClassExec, event.ClassModule} {
		if o, ok := cov.Observers[c]; ok {
			t.Errorf("%s: observed by %s on arm", c, o.Gate)
		}
		if !strings.Contains(cov.Absent[c], "the kernel gate is not implemented for arm guests") {
			t.Errorf("%s: absent because %q, want the architecture's reason", c, cov.Absent[c])
		}
	}
	for _, c := range []event.Class{event.ClassNet, event.ClassAPI} {
		if _, ok := cov.Observers[c]; !ok {
			t.Errorf("%s: no gate on arm", c)
		}
	}
}
