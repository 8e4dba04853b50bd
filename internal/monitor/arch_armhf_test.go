package monitor

import (
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// An armhf guest has no kernel gate, with the armhf reason (docs/design.md:
// vector_swi has no C entry point for the gate's breakpoints); the network
// and API gates are there.
func TestCoverageARMHFNoKernelGate(t *testing.T) {
	cov := Coverage(&linux.Profile{Arch: linux.ArchARMHF}, "vmlinuz", true, true)
	for _, c := range []event.Class{event.ClassSyscall, event.ClassFile, event.ClassExec, event.ClassModule} {
		if o, ok := cov.Observers[c]; ok {
			t.Errorf("%s: observed by %s on armhf", c, o.Gate)
		}
		if cov.Absent[c] != ARMHFNoKernelGate {
			t.Errorf("%s: absent because %q, want ARMHFNoKernelGate", c, cov.Absent[c])
		}
	}
	for _, c := range []event.Class{event.ClassNet, event.ClassAPI} {
		if _, ok := cov.Observers[c]; !ok {
			t.Errorf("%s: no gate on armhf", c)
		}
	}
	// A response may answer only the findings of checks that run there.
	if !cov.Findings["syscall-table"] || !cov.Findings["hidden-module"] || cov.Findings["hidden-process"] || cov.Findings["kprobe"] {
		t.Errorf("findings a response may answer on armhf: %v", cov.Findings)
	}
}
