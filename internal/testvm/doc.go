// Package testvm is the one harness for the tests that boot guests under
// QEMU: it finds QEMU and the guest kit, decides whether a VM test may skip,
// boots guests and makes sure none outlives its test. Only test files import
// it; production code must not (internal/archtest checks: it is marked test only).
//
// # Prerequisites, and skip or fail
//
// A VM test states what it needs: NeedQEMU (qemu-system-x86_64 offering TCG,
// or KVM with a usable /dev/kvm), Kit (the default guest kit, built once per
// test binary under the kit cache's lock). When something is missing the
// test skips with a reason that names the missing thing and how to get it.
// With GATEVISOR_REQUIRE_VM=1 in the environment it fails instead: a VM test
// cannot pass by skipping. scripts/test, which CI runs, sets it. Skip is the
// one place where that decision is made; suites send their other
// prerequisites of VM tests (root, /dev/net/tun) through it too. -short
// skips every VM test (and fails them under GATEVISOR_REQUIRE_VM=1). The
// opt-in measurements (GATEVISOR_KIT_BENCH, GATEVISOR_VMI_BENCH) are not
// part of the suite: without their knob they skip, required or not.
//
// # Guests
//
//   - Start boots QEMU directly for the suites that test the low layers
//     (qemu/qmp, qemu/gdbrsp, kit, vmi/linux): a kit guest, or the firmware
//     alone, with QMP, and optionally a gdbstub and the exec agent, each on a
//     unix socket in a short private directory. Start returns once every
//     socket listens; WaitReady waits for the guest's ready marker on its
//     console, Agent for the exec agent's first answer.
//   - Shared is one guest that the tests of a package share: booted by the
//     first test that asks for it, stopped by Main after the last.
//   - Gatevisor is the gatevisor binary, built once, with private runtime
//     and state directories: tests/integration boots its guests with
//     `gatevisor run --detach` through it.
//
// # Nothing left behind
//
// A guest from Start is killed in t.Cleanup, which runs on t.Fatal and on a
// panic too. Every QEMU started here also gets PR_SET_PDEATHSIG, from a
// thread kept for as long as QEMU runs, so it dies with the test binary even
// when that is killed or hits its -timeout. Main (use it as TestMain) stops
// the shared guests and fails the run if any QEMU of this harness is still
// running. Gatevisor.StopAll stops the detached VMs of the binary;
// Gatevisor.StopOnInterrupt does it on SIGINT, SIGTERM and a near -timeout.
//
// Waits are on the condition, never a fixed sleep: Eventually polls a
// condition until a deadline when there is no event to wait on.
package testvm
