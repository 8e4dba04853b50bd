package monitor

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

func TestParseNet(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want NetOptions
		err  bool
	}{
		{"", NetOptions{}, false},
		{"none", NetOptions{}, false},
		{"isolated", NetOptions{Mode: NetIsolated, Network: "default"}, false},
		{"isolated:lab-1", NetOptions{Mode: NetIsolated, Network: "lab-1"}, false},
		{"isolated:Bad/Name", NetOptions{}, true},
		{"user", NetOptions{Mode: NetUser}, false},
		{"user:x", NetOptions{}, true},
		{"tap:gvtap0", NetOptions{Mode: NetTap, TapIf: "gvtap0"}, false},
		{"tap:gvtap0,ip=10.213.5.2/24", NetOptions{Mode: NetTap, TapIf: "gvtap0", TapAddrs: []netip.Addr{netip.MustParseAddr("10.213.5.2")}}, false},
		{"tap:gvtap0,ip=10.213.5.2,ip=192.0.2.7/32,ip=10.213.5.2", NetOptions{Mode: NetTap, TapIf: "gvtap0",
			TapAddrs: []netip.Addr{netip.MustParseAddr("10.213.5.2"), netip.MustParseAddr("192.0.2.7")}}, false},
		{"tap:gvtap0,ip=10.213.5.0/24", NetOptions{}, true},   // a network
		{"tap:gvtap0,ip=10.213.5.255/24", NetOptions{}, true}, // its broadcast
		{"tap:gvtap0,ip=10.213.5.1/31", NetOptions{Mode: NetTap, TapIf: "gvtap0", TapAddrs: []netip.Addr{netip.MustParseAddr("10.213.5.1")}}, false},
		{"tap:gvtap0,ip=0.0.0.0", NetOptions{}, true},
		{"tap:gvtap0,ip=127.0.0.1", NetOptions{}, true},
		{"tap:gvtap0,ip=fd00::1", NetOptions{}, true},
		{"tap:gvtap0,ip=10.0.0.300", NetOptions{}, true},
		{"tap:gvtap0,mtu=9000", NetOptions{}, true},
		{"tap:gvtap0,", NetOptions{}, true},
		{"tap:,ip=10.0.0.2", NetOptions{}, true},
		{"tap:gvtap0,ip=10.0.0.1,ip=10.0.0.2,ip=10.0.0.3,ip=10.0.0.4,ip=10.0.0.5,ip=10.0.0.6,ip=10.0.0.7,ip=10.0.0.8,ip=10.0.0.9", NetOptions{}, true},
		{"tap:", NetOptions{}, true},
		{"tap:a-name-longer-than-15", NetOptions{}, true},
		{"bridge", NetOptions{}, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseNet(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("ParseNet(%q) error %v, want error %v", tc.in, err, tc.err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Fatalf("ParseNet(%q) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

// TestAttributorMatch: sockets explain flows by port and peer; the
// packet-socket holder explains only UDP, and only from a fresh snapshot.
func TestAttributorMatch(t *testing.T) {
	a := &attributor{}
	a.setSnapshot([]linux.Task{{PID: 90, Comm: "udhcpc"}, {PID: 100, Comm: "httpd"}, {PID: 101, Comm: "nc"}, {PID: 102, Comm: "mdns"}},
		[]linux.Socket{
			{Family: "packet", Proto: "packet", PID: 90},
			{Family: "inet", Proto: "tcp", LocalAddr: "0.0.0.0", LocalPort: 80, State: "LISTEN", PID: 100},
			{Family: "inet", Proto: "tcp", LocalAddr: "10.0.2.15", LocalPort: 40000, RemoteAddr: "10.0.2.2", RemotePort: 7, State: "SYN_SENT", PID: 101},
			{Family: "inet6", Proto: "udp", LocalAddr: "::", LocalPort: 5353, PID: 102},
		})
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name  string
		q     gatenet.Query
		fresh bool
		want  string // comm, "" for no match
	}{
		{"inbound to a listener", gatenet.Query{Proto: "tcp", Dir: event.DirIn, Local: ap("10.0.2.15:80"), Remote: ap("10.0.2.16:5000")}, false, "httpd"},
		{"outbound by local port and peer", gatenet.Query{Proto: "tcp", Dir: event.DirOut, Local: ap("10.0.2.15:40000"), Remote: ap("10.0.2.2:7")}, false, "nc"},
		{"udp by local port, stale: walk again", gatenet.Query{Proto: "udp", Dir: event.DirOut, Local: ap("10.0.2.15:5353"), Remote: ap("224.0.0.251:5353")}, false, ""},
		{"udp by local port, fresh", gatenet.Query{Proto: "udp", Dir: event.DirOut, Local: ap("10.0.2.15:5353"), Remote: ap("224.0.0.251:5353")}, true, "mdns"},
		{"outbound port reused, stale: walk again", gatenet.Query{Proto: "tcp", Dir: event.DirOut, Local: ap("10.0.2.15:40000"), Remote: ap("10.0.2.3:80")}, false, ""},
		{"forged source address, same port and peer", gatenet.Query{Proto: "tcp", Dir: event.DirOut, Local: ap("10.0.2.99:40000"), Remote: ap("10.0.2.2:7")}, true, ""},
		{"unknown tcp, stale", gatenet.Query{Proto: "tcp", Dir: event.DirOut, Local: ap("10.0.2.15:41000"), Remote: ap("10.0.2.2:7")}, false, ""},
		{"unknown tcp, fresh: never the packet socket", gatenet.Query{Proto: "tcp", Dir: event.DirOut, Local: ap("10.0.2.15:41000"), Remote: ap("10.0.2.2:7")}, true, ""},
		{"dhcp, stale", gatenet.Query{Proto: "udp", Dir: event.DirOut, Local: ap("0.0.0.0:68"), Remote: ap("255.255.255.255:67")}, false, ""},
		{"dhcp, fresh: the packet socket", gatenet.Query{Proto: "udp", Dir: event.DirOut, Local: ap("0.0.0.0:68"), Remote: ap("255.255.255.255:67")}, true, "udhcpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ok := a.match(tc.q, tc.fresh)
			if got := map[bool]string{true: s.Comm, false: ""}[ok]; got != tc.want {
				t.Fatalf("match = %q (ok %v), want %q", got, ok, tc.want)
			}
		})
	}
}
