package monitor

import (
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
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

// On armhf a response that acts on a guest process is refused when the
// policy is loaded, not when it fires: process actions need a kernel call
// in a calling convention the injector knows (x86-64, AAPCS64).
func TestCoverageARMHFRefusesProcResponses(t *testing.T) {
	src := `default: allow;
role admin: *;
subject roles admin when uidEq(0);
response hooked_kill: on finding("syscall-table") do kill;
response hooked_cut: on finding("syscall-table") do isolate;
`
	spec, err := policy.Parse("armhf.policy", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	armhf := Coverage(&linux.Profile{Arch: linux.ArchARMHF}, "vmlinuz", true, true)
	errs := p.CheckResponses(armhf)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "hooked_kill acts on a guest process (kill)") || !strings.Contains(errs[0].Error(), "armhf") {
		t.Fatalf("armhf: %v, want hooked_kill refused with the reason", errs)
	}
	if errs := p.CheckResponses(Coverage(nil, "vmlinuz", true, true)); len(errs) != 0 {
		t.Fatalf("without a profile (x86-64 and arm64 act on processes): %v", errs)
	}
}
