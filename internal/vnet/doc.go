// Package vnet is gatevisor's virtual network: the frame codec QEMU's
// `-netdev stream` speaks, an L2 learning switch, the host-side services a
// guest can reach on an isolated network (DHCP, DNS for gatevisor names, TCP
// and UDP echo, a small HTTP service), named networks shared by several
// monitors, the opt-in user-mode NAT and the opt-in tap backend.
//
//	guest A ─ QEMU ─ stream socket ─ gate (internal/gate/net) ─┐
//	                                                           │ port
//	guest B ─ QEMU ─ stream socket ─ gate ─ <root>/net/N/switch.sock ─┐
//	                                                           ▼      ▼
//	                                                    ┌─────────────────┐
//	                                                    │ Switch (L2, MAC │
//	                                                    │ learning)       │
//	                                                    └────────┬────────┘
//	                                                             │ port
//	                                         Services: 10.0.2.2 gateway, DHCP,
//	                                         DNS (*.gatevisor), echo :7, HTTP :80
//	                                         10.0.2.3 update server (HTTP :80)
//
//	guest ─ QEMU ─ stream socket ─ gate ─ NAT (--net user): netstack ─ host sockets
//	guest ─ QEMU ─ stream socket ─ gate ─ tap device (--net tap:IF) ─ host kernel
//
// An isolated network has no route off the machine: its only ports are
// guests and the Services stack, which is a userspace TCP/IP stack (gVisor's
// netstack) with forwarding off and no host sockets behind it. A frame for
// any other address reaches nobody.
//
// The user-mode network (NAT) is the same netstack in promiscuous mode: it
// terminates each TCP and UDP flow the gate let through and opens the same
// flow from a host socket, like QEMU's slirp. Its layout is
// gvisor-tap-vsock's: 192.168.127.0/24, gateway .1 (DHCP, DNS), and .254 for
// the host's 127.0.0.1. It is ours rather than gvisor-tap-vsock's
// pkg/virtualnetwork because no release of that module builds against the
// gVisor this module requires (v0.0.0-20260527191743): every release up to
// v0.8.9 (May 2026) pins gVisor v0.0.0-20240916094835, and gVisor changed
// udp.ForwarderHandler to return a bool in August 2025 (gVisor PR 11850), so
// its pkg/services/forwarder fails to compile. Meeting it would mean taking
// gVisor back twenty months (170 files and about 7,000 changed lines under
// pkg/tcpip, the code that parses every hostile guest frame, in Services and
// in the gate's parser) or carrying a patched fork; the NAT is about 550
// lines on the stack we already run.
//
// Frames are owned by whoever receives them: Port.Send takes ownership of
// the slices it is given, and deliver callbacks own what they get.
package vnet
