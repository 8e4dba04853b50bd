// Package net is gatevisor's network gate: a packet filter between a
// guest's NIC and its virtual network that attributes every new flow to the
// guest process that owns it, by introspection, and enforces what the
// security server decides. It never decides itself.
//
// Vocabulary (after netfilter and gVisor's tcpip/stack/iptables):
//
//   - hooks: Egress (frames the guest sent) and Ingress (frames for the
//     guest). Both run the same pipeline with the guest side as "local".
//   - matchers: the parser classifies each frame (Parse): ARP, IPv4
//     TCP/UDP/ICMP, or something the gate refuses (runts, bad IPv4 headers
//     or checksums, fragments, IPv6, VLAN tags, other protocols).
//   - verdicts: Accept (forward), Drop, Reject (a TCP RST to the sender)
//     and Hold (the first packet of a flow waits for its decision).
//   - anti-spoofing: from the guest, the Ethernet source and an ARP
//     packet's sender address must be the guest's MAC (Config.GuestMAC),
//     and the IPv4 source and ARP sender IPv4 address must be an address
//     bound to the guest (Config.Source, IP source guard): static ones (a
//     tap's ip=), or the one in the last DHCPACK for the guest's MAC from
//     the network's DHCP server, which the gate follows on Ingress (DHCP
//     snooping; a DHCPNAK unbinds). DHCP client messages from 0.0.0.0
//     (then decided like any flow) and ARP probes (sender 0.0.0.0) pass.
//
// Pipeline, per batch of frames (one lock acquisition per batch):
//
//	frames ──► Parse ──► refused? ─────────────────────────────► Drop
//	              │
//	              ▼
//	        from the guest: source MAC, ARP sender, IPv4 source
//	        not the guest's? ──────────────────────────────────► Drop
//	        for the guest: a DHCPACK/NAK for it? ─► (re)bind its address
//	              │
//	              ▼
//	        flow table (5-tuple, guest side first)
//	          │ hit, allowed ──► TCP state (FIN/RST) ──────────► Accept
//	          │ hit, denied  ──► SYN again? ───────────────────► Reject / Drop
//	          │ hit, pending ──► queue (bounded) ──────────────► Hold
//	          │ miss, not a flow start (TCP w/o SYN, ICMP reply)► Drop
//	          │ (a SYN on a closed TCP flow's 5-tuple is a miss)
//	          ▼ miss, flow start (SYN, first UDP datagram, echo request)
//	        Hold ──► worker: Attributor (guest sockets → task)
//	                   │  socket not seen yet? retry after 2, 5, 10, 20 ms
//	                   ▼
//	                 Decider (secserver.Decide: event class net)
//	                   ├─ allow ──► release held frames ──────────► Accept
//	                   └─ deny  ──► TCP: RST to the initiator ────► Reject
//	                                deny(ETIMEDOUT) or UDP/ICMP ──► Drop
//
// Established flows take the fast path: a map lookup and a TCP flag check,
// no introspection and no security-server call. A policy reload forgets
// denied flows and re-decides allowed ones in the background, so a new
// policy also applies to connections already open (revoked ones are reset).
//
// Untrusted input: every frame comes from a hostile guest (or a peer on the
// network); the parser bounds every length and never panics (fuzzed). The
// flow table is bounded (MaxFlows); when it is full new flows are denied.
//
// Lock order: Gate.mu only; the Attributor and Decider are called without it.
package net
