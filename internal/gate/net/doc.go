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
//	          │ hit, pending ──► hold (≤ 8 frames) ────────────► Hold
//	          │ miss, not a flow start (TCP w/o SYN, ICMP reply)► Drop
//	          │ (a SYN on a closed TCP flow's 5-tuple is a miss)
//	          ▼ miss, flow start (SYN, first UDP datagram, echo request)
//	        decision queue full? ──────────────────────────────► Drop undecided (gate-overload)
//	        table full? evict the oldest denied, closed or
//	        unanswered flow; none? ────────────────────────────► Drop undecided (gate-table-full)
//	        Hold ──► decision loop, one pass per batch:
//	                   Attributor.AttributeBatch: every waiting flow, one walk
//	                   │  socket not seen yet? again in a later pass, after 2, 5, 10, 20 ms
//	                   ▼
//	                 the process's budget (rate, share of the table) spent? ──► refuse (gate-flow-rate / -limit)
//	                   ▼
//	                 Decider.DecideBatch (secserver: event class net), one audit write
//	                   │  a flood's records aggregated? the decisions wait for that record
//	                   ├─ allow ──► release held frames ──────────► Accept
//	                   └─ deny  ──► TCP: RST to the initiator ────► Reject
//	                                deny(ETIMEDOUT) or UDP/ICMP ──► Drop
//
// Established flows take the fast path: a map lookup and a TCP flag check,
// no introspection and no security-server call. A policy reload forgets
// denied flows and re-decides allowed ones in the background, so a new
// policy also applies to connections already open (revoked ones are reset).
//
// Under attack (a guest process flooding new flows):
//
//   - Fairness: the decision loop takes every waiting flow each pass, and a
//     pass costs one walk of the guest's sockets however many flows it
//     carries, so a flood makes passes bigger, not more numerous: another
//     process's flow waits for the pass in progress and its own. Each
//     process (each process and peer, for inbound flows) has a budget of
//     new flows (Limits.SubjectRate, SubjectBurst) and a share of the table
//     (SubjectFlows); flows beyond them are refused by the gate, recorded,
//     and reset.
//   - Never silent: every refusal is a record. The gate's own refusals
//     (gate-flow-rate, gate-flow-limit) go through the security server like
//     its denies; a flow start dropped undecided (no room in the decision
//     queue or the table) is attributed in the next pass with the same walk
//     (a sample of up to 1,024 per pass; the rest counted) and recorded as
//     gate-overload or gate-table-full. The security server aggregates a
//     flood's records (secserver.Aggregation): a decision whose record joins
//     an aggregate takes effect once that record is written, so the audit
//     log still holds the record before the verdict acts.
//   - A table that cannot be pinned: a denied flow's entry ends
//     TimeoutDenied after its decision, and an allowed flow nobody answered
//     TimeoutUnanswered after it, whatever the guest sends to them; when the
//     table is full, a new flow evicts the oldest denied, then closed, then
//     unanswered flow, never an established one or one waiting for its
//     decision.
//
// Untrusted input: every frame comes from a hostile guest (or a peer on the
// network); the parser bounds every length and never panics (fuzzed). The
// flow table (Limits.MaxFlows), the decision queue (MaxPending), the frames
// held per flow and the undecided drops sampled per pass are bounded.
//
// Lock order: Gate.mu only; the Attributor and Decider are called without it.
package net
