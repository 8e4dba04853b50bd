// Package vnet is gatevisor's virtual network: the frame codec QEMU's
// `-netdev stream` speaks, an L2 learning switch, the host-side services a
// guest can reach on an isolated network (DHCP, DNS for gatevisor names, TCP
// and UDP echo, a small HTTP service), named networks shared by several
// monitors, and the opt-in tap backend.
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
// An isolated network has no route off the machine: its only ports are
// guests and the Services stack, which is a userspace TCP/IP stack (gVisor's
// netstack) with forwarding off and no host sockets behind it. A frame for
// any other address reaches nobody.
//
// Frames are owned by whoever receives them: Port.Send takes ownership of
// the slices it is given, and deliver callbacks own what they get.
//
// Imported by monitor and gate/net's tests; it imports nothing of gatevisor.
package vnet
