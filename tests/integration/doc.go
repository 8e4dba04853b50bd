// Package integration holds gatevisor's end-to-end tests: they build the
// gatevisor binary, boot the default guest kit under real QEMU (TCG on
// machines without fast KVM), and drive it only through the CLI and the API,
// as a user would. One detached guest is shared by the tests that only
// observe it; lifecycle tests (Ctrl-C, QEMU killed, monitor killed with -9)
// boot their own.
//
// They need qemu-system-x86_64 and apt-get (for the kit on first use); they
// skip only when QEMU is missing, saying how to install it.
package integration
