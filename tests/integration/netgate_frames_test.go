package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/vnet"
)

// testMalformedFrames runs testdata/rawframes in guest vm (address addr on
// an isolated network): each malformed frame must be refused for its own
// reason and counted in the API status, a flood of random frames must
// leave the monitor running, and traffic must still flow afterwards, from
// vm to the gateway and from peer to vm.
func testMalformedFrames(t *testing.T, vm, addr, peer string) {
	m := vnet.ServicesMAC
	gwMAC := fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
	run := func(extra string) map[string]string {
		t.Helper()
		// The MTU goes up so that the driver sends the oversized frame.
		script := fmt.Sprintf("ip link set eth0 mtu 65535 && rawframes eth0 %s %s %s %s; rc=$?; ip link set eth0 mtu 1500; exit $rc", gwMAC, addr, vnet.GatewayAddr, extra)
		r := gv(t, 3*time.Minute, "exec", vm, "--timeout", "150s", "--", "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("rawframes: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		out := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			name, res, _ := strings.Cut(l, " ")
			out[name] = res
		}
		return out
	}
	ethertype := gatenet.ErrEtherType.Error()
	reasons := map[string]string{
		"ether-only":         gatenet.ErrIPv4Header.Error(),
		"ip-truncated":       gatenet.ErrIPv4Header.Error(),
		"ihl-short":          gatenet.ErrIPv4Header.Error(),
		"ihl-long":           gatenet.ErrIPv4Header.Error(),
		"totlen-long":        gatenet.ErrIPv4Header.Error(),
		"totlen-short":       gatenet.ErrIPv4Header.Error(),
		"version-6":          gatenet.ErrIPv4Header.Error(),
		"ip-checksum":        gatenet.ErrIPv4Sum.Error(),
		"frag-first":         gatenet.ErrFragment.Error(),
		"frag-later":         gatenet.ErrFragment.Error(),
		"tcp-doff-long":      gatenet.ErrTransport.Error(),
		"tcp-doff-short":     gatenet.ErrTransport.Error(),
		"udp-length":         gatenet.ErrTransport.Error(),
		"tcp-checksum":       gatenet.ErrL4Checksum.Error(),
		"udp-checksum":       gatenet.ErrL4Checksum.Error(),
		"icmp-checksum":      gatenet.ErrL4Checksum.Error(),
		"ip-proto-gre":       gatenet.ErrProtocol.Error(),
		"ipv6":               ethertype,
		"vlan":               ethertype,
		"arp-short":          gatenet.ErrARP.Error(),
		"spoofed-mac":        "spoofed source MAC",
		"arp-spoofed-sender": "spoofed ARP sender",
	}
	notRefused := map[string]bool{"spoofed source MAC": true, "spoofed ARP sender": true} // dropped, but well-formed

	before := netStatus(t, vm)
	sent := run("")
	after := netStatus(t, vm)

	// A packet socket cannot send less than an Ethernet header: the guest's
	// kernel refuses (dev_validate_header), so no runt reaches the gate from
	// a guest program. If a kernel ever pads and sends it, it is a frame of
	// ethertype 0.
	want, refused := map[string]uint64{}, uint64(0)
	if res := sent["runt-10"]; strings.HasPrefix(res, "sent") {
		want[ethertype]++
	} else if res != "error Invalid argument" {
		t.Errorf("runt-10: %q", res)
	}
	for name, reason := range reasons {
		if !strings.HasPrefix(sent[name], "sent") {
			t.Errorf("%s: not sent: %q", name, sent[name])
			continue
		}
		want[reason]++
		if !notRefused[reason] {
			refused++
		}
	}
	for reason, n := range want {
		got := after.Gate.DropReasons[reason] - before.Gate.DropReasons[reason]
		// The guest's kernel sends IPv6 (router solicitations) on its own.
		if got != n && !(reason == ethertype && got > n) {
			t.Errorf("drops for %q: %d, want %d", reason, got, n)
		}
	}
	if got := after.Gate.Refused - before.Gate.Refused; got < refused {
		t.Errorf("refused: %d more, want at least %d", got, refused)
	}
	if after.Gate.NewFlows != before.Gate.NewFlows {
		t.Errorf("malformed frames opened %d flows", after.Gate.NewFlows-before.Gate.NewFlows)
	}
	// The 65549-byte frame is skipped before the gate, and the link stays up.
	if !strings.HasPrefix(sent["oversized"], "sent 65549") {
		t.Errorf("oversized: %q (the driver should allow a 65535-byte MTU)", sent["oversized"])
	} else if got := after.OversizedFrames - before.OversizedFrames; got != 1 {
		t.Errorf("oversized frames: %d more, want 1", got)
	}

	// A flood of random frames behind valid Ethernet headers.
	start := time.Now()
	flood := run("20000")
	if flood["random"] != "sent 20000 errors 0" {
		t.Errorf("flood: %q", flood["random"])
	}
	final := netStatus(t, vm)
	t.Logf("20000 random frames in %v (with the exec round trip); gate: %d frames, %d dropped (%d refused as malformed), %d forwarded, %d new flows",
		time.Since(start).Round(time.Millisecond), final.Gate.Frames-after.Gate.Frames, final.Gate.Dropped-after.Gate.Dropped,
		final.Gate.Refused-after.Gate.Refused, final.Gate.Forwarded-after.Gate.Forwarded, final.Gate.NewFlows-after.Gate.NewFlows)
	if final.Gate.Frames-after.Gate.Frames < 20000 {
		t.Errorf("the gate saw %d of the 20000 frames", final.Gate.Frames-after.Gate.Frames)
	}
	// Alive, and traffic flows both ways.
	if st := status(t, vm); st.State != "running" {
		t.Fatalf("state %s after the flood", st.State)
	}
	if r := gv(t, time.Minute, "exec", vm, "--", "wget", "-qO-", "http://"+vnet.GatewayAddr.String()+"/"); !strings.Contains(r.stdout, "gatevisor host service") {
		t.Errorf("A -> gateway after the flood: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := gv(t, time.Minute, "exec", peer, "--", "wget", "-qO-", "http://"+addr+"/"); !strings.Contains(r.stdout, "gatevisor demo device") {
		t.Errorf("B -> A after the flood: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
}
