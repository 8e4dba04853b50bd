package monitor

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

type flowsAttr struct{}

func (flowsAttr) AttributeBatch(_ context.Context, qs []gatenet.Query, out []gatenet.Attribution) {
	for i := range qs {
		out[i] = gatenet.Attribution{Subject: event.Subject{PID: 42, Start: 7, Comm: "nc\x1b[2J", Exe: "/bin/busybox", UID: 1000}}
	}
}

type flowsDecider struct{}

func (flowsDecider) DecideBatch(reqs []secserver.Request) []secserver.Decision {
	out := make([]secserver.Decision, len(reqs))
	for i := range reqs {
		out[i] = secserver.Decision{Verdict: secserver.Deny, Errno: 111, Rule: "no_telnet_out", Seq: 3}
	}
	return out
}

// TestNetFlows: a VM without a gated network says so; with one, the
// gate's flows come out with their process and decision.
func TestNetFlows(t *testing.T) {
	ctx := context.Background()
	if _, err := (&Monitor{}).NetFlows(ctx, 10); !api.IsCode(err, api.CodeConflict) {
		t.Errorf("no network: %v, want conflict", err)
	}
	if _, err := (&Monitor{net: &netState{}}).NetFlows(ctx, 10); !api.IsCode(err, api.CodeConflict) {
		t.Errorf("no gate: %v, want conflict", err)
	}
	decided := make(chan struct{}, 1)
	g := gatenet.New(gatenet.Config{Decider: flowsDecider{}, Attributor: flowsAttr{}, ToNet: func([][]byte) {}, ToGuest: func([][]byte) {},
		OnDecision: func(gatenet.Record) { decided <- struct{}{} }})
	defer g.Close()
	m := &Monitor{net: &netState{gate: g}}
	if _, err := m.NetFlows(ctx, 0); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("limit 0: %v, want bad_request", err)
	}
	g.Egress([][]byte{synFrame(netip.MustParseAddrPort("10.0.2.15:40000"), netip.MustParseAddrPort("198.51.100.1:23"))})
	select {
	case <-decided:
	case <-time.After(5 * time.Second):
		t.Fatalf("no decision: %+v", g.Stats())
	}
	fl, err := m.NetFlows(ctx, 10)
	if err != nil || fl.Total != 1 || len(fl.Flows) != 1 || fl.Limit != 10 {
		t.Fatalf("NetFlows = %+v, %v", fl, err)
	}
	f := fl.Flows[0]
	if f.Proto != "tcp" || f.Local != "10.0.2.15:40000" || f.Remote != "198.51.100.1:23" || f.Dir != "out" || f.State != "denied" ||
		f.Verdict != "deny" || f.Action != "reset" || f.Rule != "no_telnet_out" || f.PolicySeq != 3 || f.Decided == nil || f.FramesOut != 1 ||
		f.Process == nil || f.Process.PID != 42 || f.Process.Start != 7 || f.Process.Comm != "nc\x1b[2J" || f.Process.UID != 1000 || f.NoProcess != "" {
		t.Errorf("flow %+v (process %+v)", f, f.Process)
	}
}

// synFrame is a TCP SYN from the guest with valid checksums.
func synFrame(src, dst netip.AddrPort) []byte {
	b := make([]byte, 14+20+20)
	b[12], b[13] = 0x08, 0x00
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	ip[2], ip[3] = 0, 40
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	put16(ip[10:], ^sum(ip, 0))
	tcp := b[34:]
	put16(tcp[0:], src.Port())
	put16(tcp[2:], dst.Port())
	tcp[12], tcp[13] = 5<<4, 0x02
	put16(tcp[14:], 65535)
	pseudo := uint32(0)
	for i := 0; i < 4; i += 2 {
		pseudo += (uint32(s[i])<<8 | uint32(s[i+1])) + (uint32(d[i])<<8 | uint32(d[i+1]))
	}
	pseudo += 6 + uint32(len(tcp))
	put16(tcp[16:], ^sum(tcp, pseudo))
	return b
}

func put16(b []byte, v uint16) { b[0], b[1] = byte(v>>8), byte(v) }

// sum is the Internet checksum's one's-complement sum of b, from init.
func sum(b []byte, init uint32) uint16 {
	s := init
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
