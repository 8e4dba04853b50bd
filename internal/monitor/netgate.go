package monitor

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
	"github.com/gatevisor/gatevisor/internal/vnet"
)

// Network modes for --net.
const (
	NetNone     = ""
	NetIsolated = "isolated"
	NetUser     = "user"
	NetTap      = "tap"
)

// NetSocket is the unix socket QEMU's stream netdev connects to.
const NetSocket = "net.sock"

// NetOptions configure the guest's network.
type NetOptions struct {
	Mode    string // NetNone, NetIsolated, NetUser, NetTap
	Network string // isolated: the network's name
	TapIf   string // tap: the interface
	// TapAddrs (tap:IF,ip=A.B.C.D) are the guest's IPv4 addresses on the
	// tap: the only sources the gate lets out. Without them it learns the
	// address from a DHCP server on the tap's side.
	TapAddrs []netip.Addr
	// NoGate connects the guest straight to the network, for benchmarks
	// only: no filtering and no attribution.
	NoGate bool
}

// ParseNet parses a --net value: isolated[:NAME], user,
// tap:IF[,ip=A.B.C.D[/NN]]... (at most gatenet.MaxStaticAddrs addresses).
func ParseNet(s string) (NetOptions, error) {
	mode, arg, _ := strings.Cut(s, ":")
	switch mode {
	case "", "none":
		return NetOptions{}, nil
	case NetIsolated:
		if arg == "" {
			arg = vnet.DefaultNetwork
		}
		if err := vnet.ValidateName(arg); err != nil {
			return NetOptions{}, err
		}
		return NetOptions{Mode: NetIsolated, Network: arg}, nil
	case NetTap:
		parts := strings.Split(arg, ",")
		if parts[0] == "" || len(parts[0]) > 15 {
			return NetOptions{}, fmt.Errorf("--net tap:IF needs an interface name of 1-15 characters")
		}
		o := NetOptions{Mode: NetTap, TapIf: parts[0]}
		for _, p := range parts[1:] {
			v, ok := strings.CutPrefix(p, "ip=")
			if !ok {
				return NetOptions{}, fmt.Errorf("--net tap:%s: unknown option %q (tap:IF[,ip=A.B.C.D[/NN]]...)", parts[0], p)
			}
			a, err := parseTapAddr(v)
			if err != nil {
				return NetOptions{}, fmt.Errorf("--net tap:%s: ip=%s: %w", parts[0], v, err)
			}
			if !slices.Contains(o.TapAddrs, a) {
				o.TapAddrs = append(o.TapAddrs, a)
			}
		}
		if err := (&gatenet.SourceBinding{Static: o.TapAddrs}).Validate(); err != nil {
			return NetOptions{}, fmt.Errorf("--net tap:%s: %w", parts[0], err)
		}
		return o, nil
	case NetUser:
		if arg != "" {
			return NetOptions{}, fmt.Errorf("--net user takes no argument")
		}
		return NetOptions{Mode: NetUser}, nil
	}
	return NetOptions{}, fmt.Errorf("--net %q: use isolated[:NAME], user or tap:IF", s)
}

// parseTapAddr parses the guest's address on a tap, A.B.C.D or, as in
// `ip addr add`, A.B.C.D/NN: the prefix length is the guest's business;
// only the address is bound, so a prefix's network or broadcast address
// (10.0.0.0/24, meaning a range) is refused rather than read as one host.
func parseTapAddr(v string) (netip.Addr, error) {
	if !strings.Contains(v, "/") {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return netip.Addr{}, fmt.Errorf("not an IPv4 address")
		}
		return a, nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil || !p.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("not an IPv4 address with a prefix length")
	}
	a := p.Addr()
	if p.Bits() < 31 {
		last := p.Masked().Addr().As4()
		for i := p.Bits(); i < 32; i++ {
			last[i/8] |= 0x80 >> (i % 8)
		}
		if a == p.Masked().Addr() || a == netip.AddrFrom4(last) {
			return netip.Addr{}, fmt.Errorf("the network or broadcast address of %v: give the guest's own address (the gate binds exactly one address per ip=)", p.Masked())
		}
	}
	return a, nil
}

// sourceBinding is how the gate learns the guest's IPv4 address for mode o:
// from the DHCP server of the isolated network or the NAT (the only one
// whose replies it believes), from the tap's ip= options, or from any DHCP
// server on the tap's side.
func sourceBinding(o NetOptions) *gatenet.SourceBinding {
	switch o.Mode {
	case NetIsolated:
		return &gatenet.SourceBinding{DHCPServer: vnet.GatewayAddr, DHCPServerMAC: vnet.ServicesMAC}
	case NetUser:
		return &gatenet.SourceBinding{DHCPServer: vnet.UserGateway, DHCPServerMAC: vnet.NATMAC}
	}
	return &gatenet.SourceBinding{Static: o.TapAddrs}
}

// guestMAC derives a stable, locally administered MAC from the VM name, so
// that VMs on one network differ and a VM keeps its DHCP lease.
func guestMAC(name string) [6]byte {
	h := sha256.Sum256([]byte("gatevisor-mac:" + name))
	return [6]byte{0x52, 0x54, 0x00, h[0], h[1], h[2]}
}

// netState is the running network of one VM.
type netState struct {
	ln      net.Listener
	network *vnet.Network
	nat     *vnet.NAT
	tap     *os.File
	member  *os.File          // the network host's connection, detached for an upgrade
	reader  *vnet.FrameReader // the guest's frames; set before QEMU connects
	gate    *gatenet.Gate
	guestW  *vnet.FrameWriter
	attr    *attributor
	toNet   func([][]byte) // the guest's frames past the gate go here
	mu      sync.Mutex     // guards conn, pumped
	conn    net.Conn
	pumped  chan struct{} // closed when the pump of conn ends
	done    chan struct{}
}

// startNet prepares the guest NIC before QEMU starts: it listens on the
// socket QEMU's stream netdev connects to and adds the NIC to qcfg.
func (m *Monitor) startNet(qcfg *qemu.Config) error {
	if m.cfg.Net.Mode == NetNone {
		return nil
	}
	if err := m.prepareNet(nil); err != nil {
		return err
	}
	mac := guestMAC(m.cfg.Name)
	qcfg.ExtraArgs = append(qcfg.ExtraArgs,
		"-netdev", "stream,id=gvnet0,server=off,addr.type=unix,addr.path="+m.dir.File(NetSocket),
		"-device", fmt.Sprintf("virtio-net-pci,netdev=gvnet0,mac=%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5])+qcfg.VirtioOpts())
	return nil
}

// prepareNet sets the network up to the NIC's socket: the gate (restored
// from a monitor upgrade's hand-over when saved is set), the network
// behind it, and the listener QEMU's NIC connects to.
func (m *Monitor) prepareNet(saved *NetHandover) error {
	o := m.cfg.Net
	ns := &netState{done: make(chan struct{})}
	m.net = ns
	sec := m.pol.sec
	sock := m.dir.File(NetSocket)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("network socket: %w", err)
	}
	ns.ln = ln
	mac := guestMAC(m.cfg.Name)
	toGuest := func(b [][]byte) {
		ns.mu.Lock()
		w := ns.guestW
		ns.mu.Unlock()
		if w != nil {
			_ = w.WriteFrames(b)
		}
	}
	// The backend is created after the gate, and may deliver frames as
	// soon as it exists (a member's switch floods; a tap reads at once):
	// the gate is in place first, and its way out is bound once the
	// backend is, dropping until then.
	var backend atomic.Pointer[func([][]byte)]
	toNet := func(b [][]byte) {
		if send := backend.Load(); send != nil {
			(*send)(b)
		}
	}
	fromNet := toGuest
	if !o.NoGate {
		ns.attr = &attributor{m: m}
		src := sourceBinding(o)
		switch {
		case o.Mode == NetTap && len(src.Static) == 0:
			m.logf("tap %s: the network gate lets out only the IPv4 address a DHCP server on the tap's side leases the guest; for a static address, pass --net tap:%s,ip=A.B.C.D", o.TapIf, o.TapIf)
		case o.Mode == NetTap:
			m.logf("tap %s: the network gate lets out only the guest's addresses %v", o.TapIf, src.Static)
		}
		ns.gate = gatenet.New(gatenet.Config{Decider: isolatingServer{countingServer{sec, &m.pol.netVerdicts}, &m.netIso}, Seq: sec.Seq, Attributor: ns.attr, GuestMAC: mac, Source: src,
			Logf: m.logf, ToNet: toNet, ToGuest: toGuest, OnDecision: m.onNetDecision})
		if saved != nil {
			if err := ns.gate.Restore(saved.Gate, sec.Seq()); err != nil {
				return fmt.Errorf("resume: %w", err)
			}
		}
		fromNet = ns.gate.Ingress
	}
	var tap, member *os.File
	var memberRest []byte
	if saved != nil && saved.TapFD >= 3 {
		tap = os.NewFile(uintptr(saved.TapFD), "tap "+o.TapIf)
	}
	if saved != nil && saved.MemberFD >= 3 {
		member, memberRest = os.NewFile(uintptr(saved.MemberFD), "network host"), saved.MemberRest
	}
	send, err := m.openBackend(ns, fromNet, tap, member, memberRest)
	if err != nil {
		return err
	}
	backend.Store(&send)
	ns.toNet = toNet
	go m.serveNIC(ns, toNet)
	return nil
}

// openBackend opens the network the guest's frames go to once the gate
// passed them (--net: an isolated network, the NAT, a tap), delivering its
// frames to fromNet, and returns how to send to it. A previous monitor's
// hand-over gives the tap open at tap, or the connection to the isolated
// network's host at member (with the bytes read from it past its last
// whole frame).
func (m *Monitor) openBackend(ns *netState, fromNet func([][]byte), tap, member *os.File, memberRest []byte) (func([][]byte), error) {
	o := m.cfg.Net
	var err error
	switch o.Mode {
	case NetIsolated:
		root, err := rootDir(m.dir.Path)
		if err != nil {
			return nil, err
		}
		if member != nil {
			ns.network, err = vnet.Adopt(root, o.Network, member, memberRest, fromNet, m.logf, m.cfg.NetHost)
		} else {
			ns.network, err = vnet.Join(root, o.Network, fromNet, m.logf, m.cfg.NetHost)
		}
		if err != nil {
			return nil, err
		}
		return ns.network.Send, nil
	case NetUser:
		if ns.nat, err = vnet.NewNAT(vnet.NATConfig{Deliver: fromNet, Logf: m.logf}); err != nil {
			return nil, err
		}
		return ns.nat.Send, nil
	case NetTap:
		f := tap
		if f == nil {
			if f, err = vnet.OpenTap(o.TapIf); err != nil {
				return nil, err
			}
		}
		ns.tap = f
		go vnet.ReadTap(f, fromNet)
		return func(b [][]byte) {
			for _, fr := range b {
				_, _ = f.Write(fr)
			}
		}, nil
	}
	return nil, fmt.Errorf("network mode %q", o.Mode)
}

// rootDir is the runtime root: the parent of the VM's directory.
func rootDir(vmDir string) (string, error) { return filepath.Dir(filepath.Clean(vmDir)), nil }

// serveNIC accepts QEMU's connection and moves the guest's frames through
// the gate in batches.
func (m *Monitor) serveNIC(ns *netState, toNet func([][]byte)) {
	defer close(ns.done)
	c, err := ns.ln.Accept()
	if err != nil {
		return
	}
	ns.ln.Close()
	m.pumpNIC(ns, c, toNet)
}

// pumpNIC moves the frames of QEMU's connection c through the gate until
// the connection ends (QEMU exited, or a restart replaced it).
func (m *Monitor) pumpNIC(ns *netState, c net.Conn, toNet func([][]byte)) {
	r := vnet.NewFrameReader(c)
	pumped := make(chan struct{})
	defer close(pumped)
	ns.mu.Lock()
	if ns.reader != nil {
		r.Oversized.Add(ns.reader.Oversized.Load()) // the count goes on across restarts
	}
	ns.conn, ns.guestW, ns.reader, ns.pumped = c, vnet.NewFrameWriter(c), r, pumped
	ns.mu.Unlock()
	var batch [][]byte
	for {
		var err error
		batch, err = r.ReadBatch(batch[:0], 64)
		if len(batch) > 0 {
			b := append([][]byte(nil), batch...)
			if ns.gate != nil {
				ns.gate.Egress(b)
			} else {
				toNet(b)
			}
		}
		if err != nil {
			return
		}
	}
}

// stopNet tears the network down; safe on a partial start.
func (m *Monitor) stopNet() {
	ns := m.net
	if ns != nil {
		if ns.ln != nil {
			ns.ln.Close()
		}
		ns.mu.Lock()
		if ns.conn != nil {
			ns.conn.Close()
		}
		ns.mu.Unlock()
		if ns.gate != nil {
			ns.gate.Close()
		}
		if ns.network != nil {
			ns.network.Close()
		}
		if ns.nat != nil {
			ns.nat.Close()
		}
		if ns.tap != nil {
			ns.tap.Close()
		}
	}
}

// onNetDecision publishes denies, alerts and permissive allows on the event
// stream (the security server already wrote them to the audit log).
func (m *Monitor) onNetDecision(r gatenet.Record) {
	if v, ok := policy.ParseVerdict(r.Verdict); ok && !r.Undecided {
		ev := event.Event{Class: event.ClassNet, Dir: r.Dir, Proto: r.Proto, Subject: r.Subject, Path: r.Remote}
		m.respondToVerdict(&ev, v, r.Rule)
	}
	if r.Verdict == secserver.Allow.String() && !r.Permissive && !r.Revoked {
		return
	}
	if m.events != nil {
		m.events.publish(monitoring.FromNet(m.cfg.Name, r))
	}
}

// NetStats returns the network gate's counters (nil without a gate).
func (m *Monitor) NetStats() *gatenet.Stats {
	if m.net == nil || m.net.gate == nil {
		return nil
	}
	s := m.net.gate.Stats()
	return &s
}

// netStatus is the network part of the API status (nil without --net).
func (m *Monitor) netStatus() *api.NetStatus {
	ns, o := m.net, m.cfg.Net
	if ns == nil {
		return nil
	}
	st := &api.NetStatus{Mode: o.Mode, Network: o.Network, Tap: o.TapIf, Isolated: m.netIso.reason()}
	ns.mu.Lock()
	if ns.reader != nil {
		st.OversizedFrames = ns.reader.Oversized.Load()
	}
	ns.mu.Unlock()
	if g := m.NetStats(); g != nil {
		st.Gate = &api.NetGateStats{Frames: g.Frames, Forwarded: g.Forwarded, Dropped: g.Dropped, Refused: g.Refused, Resets: g.Resets,
			NewFlows: g.NewFlows, Allowed: g.Allowed, Denied: g.Denied, Unattributed: g.Unattributed,
			Overload: g.Overload, TableFull: g.TableFull, RateLimited: g.RateLimited, FlowLimited: g.FlowLimited, Evicted: g.Evicted,
			Passes: g.Passes, Walks: ns.attr.walks.Load(), WalkMicros: ns.attr.walkNs.Load() / 1000, Flows: g.Flows, Pending: g.Pending, Subjects: g.Subjects, DropReasons: g.DropReasons, ResetReasons: g.ResetReasons}
	}
	if ns.nat != nil {
		n := ns.nat.Stats()
		st.NAT = map[string]uint64{"frames": n.Frames, "frames_to_guest": n.FramesToGuest, "dhcp_replies": n.DHCPReplies,
			"tcp_forwarded": n.TCPForwarded, "tcp_refused": n.TCPRefused, "udp_forwarded": n.UDPForwarded, "udp_refused": n.UDPRefused,
			"blocked": n.Blocked, "dns_queries": n.DNSQueries, "dns_resolved": n.DNSResolved, "dropped": n.Dropped}
	}
	return st
}

// attributor finds the guest processes behind flows from the guest
// kernel's socket and task lists, read live from guest RAM: one walk
// answers a whole batch of flows.
type attributor struct {
	m *Monitor

	mu     sync.Mutex // guards the snapshot
	at     time.Time
	socks  []linux.Socket
	byPort map[int][]int // socks indices by local port
	tasks  map[int]linux.Task
	walks  atomic.Uint64
	walkNs atomic.Uint64 // time spent walking, in all
	// view is the attributor's own view of the guest kernel (a.mu):
	// attribution must not wait for an IDS query, which may be waiting
	// for a guest command that waits for this very attribution.
	view *ids.Inspector
}

// snapshotTTL is how long one walk of the guest's sockets answers queries
// that it can answer; a query it cannot answer walks again at once.
const snapshotTTL = 250 * time.Millisecond

// AttributeBatch implements gatenet.Attributor: what the last walk (if
// recent) answers for sure is answered from it; everything else from one
// new walk.
func (a *attributor) AttributeBatch(ctx context.Context, qs []gatenet.Query, out []gatenet.Attribution) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var miss []int
	for i, q := range qs {
		if time.Since(a.at) < snapshotTTL {
			if s, ok := a.match(q, false); ok {
				out[i] = gatenet.Attribution{Subject: s}
				continue
			}
		}
		miss = append(miss, i)
	}
	if len(miss) == 0 {
		return
	}
	if err := a.refresh(ctx); err != nil {
		for _, i := range miss {
			out[i] = gatenet.Attribution{Err: err}
		}
		return
	}
	for _, i := range miss {
		if s, ok := a.match(qs[i], true); ok {
			out[i] = gatenet.Attribution{Subject: s}
		} else {
			out[i] = gatenet.Attribution{Err: gatenet.ErrNotFound}
		}
	}
}

// refresh walks the guest's tasks and their file tables.
// Preconditions: a.mu held.
func (a *attributor) refresh(ctx context.Context) error {
	start := time.Now()
	defer func() {
		a.walks.Add(1)
		a.walkNs.Add(uint64(time.Since(start)))
	}()
	if a.view == nil {
		v, err := a.m.privateInspector(ctx)
		if err != nil {
			return err
		}
		a.view = v
	}
	insp := a.view
	insp.K.AS.Cache.Invalidate()
	// A task that cannot be read (corrupted, or caught mid-exit) leaves
	// its flows unattributed; it does not blind the walk for the others.
	tasks, err := insp.Processes()
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return err
	}
	socks, err := insp.K.Sockets(tasks)
	if err != nil {
		return err
	}
	a.setSnapshot(tasks, socks)
	return nil
}

// setSnapshot installs a walk's result and indexes it.
// Preconditions: a.mu held.
func (a *attributor) setSnapshot(tasks []linux.Task, socks []linux.Socket) {
	a.tasks = make(map[int]linux.Task, len(tasks))
	for _, t := range tasks {
		a.tasks[t.PID] = t
	}
	a.byPort = make(map[int][]int, len(socks))
	for i, s := range socks {
		a.byPort[s.LocalPort] = append(a.byPort[s.LocalPort], i)
	}
	a.socks, a.at = socks, time.Now()
}

// match finds the socket owning q's guest end. An older snapshot (fresh
// false) answers only what it can answer for sure: an outbound flow whose
// socket matches the peer too, or an inbound one to a listener. With fresh
// set (a snapshot just taken), a UDP flow no socket explains is attributed
// to the only process holding a packet socket; never from an older
// snapshot, which lacks the sockets opened since (a stale walk once gave an
// nc connect to udhcpc), and never for TCP or ICMP, which no legitimate
// guest program sends through a packet socket.
// Preconditions: a.mu held.
func (a *attributor) match(q gatenet.Query, fresh bool) (event.Subject, bool) {
	best, score := -1, 0
	try := func(i int) {
		if sc := socketScore(a.socks[i], q); sc > score {
			best, score = i, sc
		}
	}
	if q.Proto == "icmp" {
		// A ping socket's id may be its owner's pid: no port to index by.
		for i := range a.socks {
			try(i)
		}
	} else {
		for _, i := range a.byPort[int(q.Local.Port())] {
			try(i)
		}
	}
	if !fresh && q.Dir == event.DirOut && score < 3 {
		// Only a port matched: in an older snapshot that may be a closed
		// socket whose port a new one reuses.
		best = -1
	}
	if best < 0 {
		if !fresh || q.Proto != "udp" {
			return event.Subject{}, false
		}
		if best = a.packetHolder(); best < 0 {
			return event.Subject{}, false
		}
	}
	return a.subject(a.socks[best].PID), true
}

// socketScore says how well guest socket s explains flow q: 0 not at all,
// 1 by its port, 2 by an ICMP id that is the owner's pid, 3 by its port
// and its peer (or an ICMP socket's own id).
func socketScore(s linux.Socket, q gatenet.Query) int {
	lport := int(q.Local.Port())
	// A socket bound to an address owns only flows of that address: a
	// frame with a forged source finds no connected socket.
	if s.Family != "inet" && s.Family != "inet6" || !boundTo(s.LocalAddr, q.Local.Addr()) {
		return 0
	}
	peer := s.RemotePort == int(q.Remote.Port()) && addrIs(s.RemoteAddr, q.Remote.Addr())
	switch q.Proto {
	case "tcp":
		switch {
		case s.Proto != "tcp" || s.LocalPort != lport:
			return 0
		case q.Dir == event.DirIn:
			return map[bool]int{true: 1}[s.State == "LISTEN"]
		case s.State == "LISTEN":
			return 0
		case peer:
			return 3
		}
		return 1
	case "udp":
		switch {
		case s.Proto != "udp" || s.LocalPort != lport:
			return 0
		case peer:
			return 3
		}
		return 1
	case "icmp":
		// A ping socket's port is the echo id; busybox ping on a raw
		// socket uses its pid as the id.
		switch {
		case s.Proto == "icmp" && s.LocalPort == lport:
			return 3
		case (s.Proto == "icmp" || s.Proto == "raw") && s.PID&0xffff == lport:
			return 2
		}
	}
	return 0
}

// packetHolder is the socket of the only process holding a packet socket,
// or -1: frames from a packet socket (busybox udhcpc before it has a
// lease) carry any header, so they are attributed to it.
func (a *attributor) packetHolder() int {
	holder := -1
	for i, s := range a.socks {
		if s.Family == "packet" {
			if holder >= 0 && a.socks[holder].PID != s.PID {
				return -1
			}
			holder = i
		}
	}
	return holder
}

// boundTo reports whether a socket with local address s (unspecified for
// a wildcard bind) receives and sends as a.
func boundTo(s string, a netip.Addr) bool {
	p, err := netip.ParseAddr(s)
	return s == "" || err == nil && (p.IsUnspecified() || p.Unmap() == a)
}

func addrIs(s string, a netip.Addr) bool {
	p, err := netip.ParseAddr(s)
	return err == nil && p.Unmap() == a
}

func (a *attributor) subject(pid int) event.Subject {
	t := a.tasks[pid]
	s := event.Subject{PID: int32(pid), PPID: int32(t.PPID), Start: t.StartTime, Comm: t.Comm, Exe: t.Exe, UID: t.UID, GID: t.GID}
	if p, ok := a.tasks[t.PPID]; ok {
		s.ParentComm, s.ParentExe = p.Comm, p.Exe
	}
	return s
}

// nicPending is the listening socket a restarted QEMU's NIC connects to,
// and the connection once it did.
type nicPending struct {
	ln   net.Listener
	conn chan net.Conn
}

// listenNIC listens again on the NIC's socket, for a new QEMU (restart.go);
// nil without a network.
func (m *Monitor) listenNIC() (*nicPending, error) {
	if m.net == nil {
		return nil, nil
	}
	ln, err := net.Listen("unix", m.dir.File(NetSocket))
	if err != nil {
		return nil, fmt.Errorf("network socket for the new QEMU: %w", err)
	}
	p := &nicPending{ln: ln, conn: make(chan net.Conn, 1)}
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err == nil {
			p.conn <- c
		}
	}()
	return p, nil
}

// take returns the new QEMU's connection, waiting at most wait.
func (p *nicPending) take(wait time.Duration) (net.Conn, error) {
	select {
	case c := <-p.conn:
		return c, nil
	case <-time.After(wait):
		return nil, fmt.Errorf("the new QEMU's NIC did not connect within %v", wait)
	}
}

// close stops listening and drops a connection not taken; safe on nil.
func (p *nicPending) close() {
	if p == nil {
		return
	}
	p.ln.Close()
	select {
	case c := <-p.conn:
		c.Close()
	default:
	}
}

// reattachNIC moves the NIC to a new QEMU's connection c: the old
// connection's frames still buffered pass the gate first, then c's.
func (m *Monitor) reattachNIC(c net.Conn) {
	ns := m.net
	ns.mu.Lock()
	old, pumped := ns.conn, ns.pumped
	ns.mu.Unlock()
	if old != nil && pumped != nil {
		select {
		case <-pumped:
		case <-time.After(2 * time.Second):
			old.Close()
			<-pumped
		}
	}
	go m.pumpNIC(ns, c, ns.toNet)
}

// handOffNet stops the network's traffic through this monitor for a
// monitor upgrade (the guest is stopped) and returns what the new monitor
// takes over: the NIC's connection to the old QEMU is closed and its frames
// drained through the gate, the isolated network left (its host process
// stays), the gate stopped and its flows saved; a tap stays open for the
// new process. A frame the network sends meanwhile is lost, as on a link
// that went down for the pause: TCP sends it again.
func (m *Monitor) handOffNet() *NetHandover {
	ns := m.net
	out := &NetHandover{TapFD: -1, MemberFD: -1, Isolated: m.netIso.reason()}
	ns.ln.Close()
	ns.mu.Lock()
	c, pumped := ns.conn, ns.pumped
	ns.mu.Unlock()
	if c != nil {
		c.Close()
		select {
		case <-pumped:
		case <-time.After(5 * time.Second):
			m.logf("upgrade: the NIC's last frames did not pass the network gate within 5 s; left")
		}
	}
	if ns.network != nil {
		// The connection to the network's host process crosses the exec:
		// the host never sees this member leave. Failing that, the new
		// monitor joins again (while the host lingers).
		f, rest, err := ns.network.Detach()
		if err != nil {
			m.logf("upgrade: %v: the new monitor joins the network again", err)
			ns.network.Close()
		} else {
			ns.member = f
			out.MemberFD, out.MemberRest = int(f.Fd()), rest
		}
	}
	if ns.gate != nil {
		ns.gate.Close()
		out.Gate = ns.gate.Save()
	}
	if ns.tap != nil {
		out.TapFD = int(ns.tap.Fd())
	}
	return out
}
