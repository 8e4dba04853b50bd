package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/vnet"
)

// TestNetGate boots two guests on one isolated network, each behind its
// own network gate: A with policies/net-gate.policy, B with a policy of
// its own. Through the CLI only, it checks that flows are decided by the
// process that opened them, on both ends of a guest-to-guest connection,
// and that malformed frames from a real guest are refused and counted
// while the monitor and normal traffic carry on.
func TestNetGate(t *testing.T) {
	needVM(t)
	const vm, peer = "netgate", "netgate-b"
	dir := t.TempDir()
	pol := filepath.Join(dir, "net.policy")
	src, err := os.ReadFile("../../policies/net-gate.policy")
	if err != nil {
		t.Fatal(err)
	}
	// Audit A's inbound web allows too, to see their attribution.
	webIn := `localPortEq(80) and exeEq("/bin/busybox") allow`
	if !strings.Contains(string(src), webIn) {
		t.Fatalf("policies/net-gate.policy has no web_in rule ending %q", webIn)
	}
	src = []byte(strings.Replace(string(src), webIn, webIn+" audit", 1))
	if err := os.WriteFile(pol, src, 0o600); err != nil {
		t.Fatal(err)
	}
	peerPol := filepath.Join(dir, "peer.policy")
	if err := os.WriteFile(peerPol, []byte(peerPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	raw := buildStatic(t, "rawframes")
	network := "isolated:it-" + vm
	bootVMs(t,
		vmSpec{vm, []string{"--net", network, "--policy", pol, "--add", raw + ":/usr/bin/rawframes"}},
		vmSpec{peer, []string{"--net", network, "--policy", peerPol}})
	sh := func(script string) result {
		t.Helper()
		return gv(t, 2*time.Minute, "exec", vm, "--", "sh", "-c", script)
	}
	addr := leaseIPv4(t, vm, "10.0.2.")
	peerAddr := leaseIPv4(t, peer, "10.0.2.")
	auditPath := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
	peerAudit := filepath.Join(env.stateDir, "gatevisor", "vms", peer, "audit.jsonl")

	t.Run("same destination, verdict by identity", func(t *testing.T) {
		// busybox picks its applet from argv[0]: run the copy as "wget".
		r := sh(`cp /bin/busybox /usr/bin/updater && (exec -a wget /usr/bin/updater -qO- http://10.0.2.3/); echo "updater=$?"; wget -qO- http://10.0.2.3/ ; echo "wget=$?"`)
		if !strings.Contains(r.stdout, "firmware 2.0") || !strings.Contains(r.stdout, "updater=0") || strings.Contains(r.stdout, "wget=0") {
			t.Fatalf("got:\n%s%s", r.stdout, r.stderr)
		}
		rec := findAudit(t, auditPath, func(r audit.Record) bool {
			return r.Rule == "updates_only_updater" && r.Event.Subject.Comm == "wget"
		})
		if rec.Event.Subject.Exe != "/bin/busybox" || rec.Event.Port != 80 || rec.Event.Subject.PID == 0 {
			t.Fatalf("audit %+v", rec)
		}
		findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "updater" && r.Event.Subject.Exe == "/usr/bin/updater" })
	})

	t.Run("short-lived connections are attributed", func(t *testing.T) {
		r := sh(`for i in 1 2 3 4 5; do nc -w 1 198.51.100.$i 23 </dev/null; done 2>&1; echo done`)
		if strings.Count(r.stdout, "refused") < 5 {
			t.Fatalf("telnet attempts not refused:\n%s", r.stdout)
		}
		pids := map[int32]bool{}
		for _, rec := range readAudit(t, auditPath) {
			if rec.Rule == "no_telnet_out" && strings.HasPrefix(rec.Event.Addr.String(), "198.51.100.") {
				if rec.Event.Subject.Comm != "nc" {
					t.Fatalf("attributed to %+v", rec.Event.Subject)
				}
				pids[rec.Event.Subject.PID] = true
			}
		}
		if len(pids) != 5 {
			t.Fatalf("want 5 distinct nc pids, got %v", pids)
		}
	})

	t.Run("inbound", func(t *testing.T) {
		r := sh(`wget -qO- 'http://10.0.2.2/dial?port=80'; wget -qO- 'http://10.0.2.2/dial?port=23'`)
		if !strings.Contains(r.stdout, "connected\nrefused") {
			t.Fatalf("dial back: %q %s", r.stdout, r.stderr)
		}
		rec := findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "no_telnet_in" })
		if rec.Event.Subject.Comm != "telnetd" || rec.Event.Dir.String() != "in" {
			t.Fatalf("inbound telnet attributed to %+v", rec.Event.Subject)
		}
	})

	t.Run("attribution does not wait for an IDS query", func(t *testing.T) {
		// An ids check asks the guest agent for its own view of itself
		// while a guest command holds the exec channel; that command's
		// new flows must still be attributed and decided (the attributor
		// has its own view of the kernel, not the IDS's lock).
		done := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := gvCmd(ctx, nil, "exec", vm, "--timeout", "12s", "--", "sh", "-c",
				`sleep 2; for i in 1 2 3 4 5; do nc -w 2 10.0.2.2 7 </dev/null && echo ok$i; sleep 0.3; done`)
			var o, e strings.Builder
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			code := 0
			if err != nil {
				code = -1
			}
			done <- result{stdout: o.String(), stderr: e.String(), code: code}
		}()
		time.Sleep(500 * time.Millisecond)
		check := gv(t, 2*time.Minute, "ids", "check", "--vm", vm)
		r := <-done
		if r.code != 0 || r.stdout != "ok1\nok2\nok3\nok4\nok5\n" {
			t.Fatalf("guest flows during an ids check: exit %d, stdout %q, stderr %q (ids check: exit %d, %s)", r.code, r.stdout, r.stderr, check.code, check.stderr)
		}
	})

	t.Run("UDP", func(t *testing.T) {
		r := sh(`nslookup updates.gatevisor 10.0.2.2`)
		if !strings.Contains(r.stdout, "10.0.2.3") {
			t.Fatalf("udp: %s%s", r.stdout, r.stderr)
		}
	})

	t.Run("nothing leaves the machine", func(t *testing.T) {
		r := sh(`wget -qO- http://1.1.1.1/ ; echo "wget=$?"; ping -c 1 -W 2 1.1.1.1; echo "ping=$?"; nslookup example.com 10.0.2.2; echo "dns=$?"`)
		if strings.Contains(r.stdout, "wget=0") || strings.Contains(r.stdout, "ping=0") || strings.Contains(r.stdout, "dns=0") {
			t.Fatalf("reached outside:\n%s", r.stdout)
		}
		findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "egress_default" && r.Event.Addr.String() == "1.1.1.1" })
	})

	t.Run("events stream", func(t *testing.T) {
		r := gv(t, time.Minute, "events", vm)
		if !strings.Contains(r.stdout, `"type":"net-deny"`) || !strings.Contains(r.stdout, `"comm":"nc"`) {
			t.Fatalf("events:\n%s", r.stdout)
		}
	})

	t.Run("net flows lists the gate's flows with their processes", func(t *testing.T) {
		// An echo connection held open (allowed: gateway_services) and a
		// telnet connect (denied: no_telnet_out), each by an nc whose pid
		// the guest prints (exec keeps the shell's pid).
		r := sh(`rm -f /tmp/flow-echo.pid
( sleep 40 | sh -c 'echo $$ >/tmp/flow-echo.pid; exec nc 10.0.2.2 7' ) </dev/null >/dev/null 2>&1 &
for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/flow-echo.pid ] && break; sleep 0.2; done
sleep 1; cat /tmp/flow-echo.pid
sh -c 'echo $$; exec nc -w 2 203.0.113.9 23' </dev/null 2>/dev/null; true`)
		var echoPID, telnetPID int32
		if _, err := fmt.Sscan(r.stdout, &echoPID, &telnetPID); err != nil || r.code != 0 {
			t.Fatalf("guest: exit %d, stdout %q (%v), stderr %s", r.code, r.stdout, err, r.stderr)
		}
		defer sh(fmt.Sprintf("kill %d 2>/dev/null; true", echoPID))
		// The denied flow stays in the table 10 s after its decision.
		out := gv(t, time.Minute, "net", "flows", vm, "--json")
		if out.code != 0 {
			t.Fatalf("net flows --json: exit %d %s", out.code, out.stderr)
		}
		var fl api.NetFlows
		if err := json.Unmarshal([]byte(out.stdout), &fl); err != nil {
			t.Fatalf("net flows --json: %v\n%s", err, out.stdout)
		}
		find := func(remote string, pid int32) *api.NetFlow {
			for i, f := range fl.Flows {
				if f.Remote == remote && f.Process != nil && f.Process.PID == pid {
					return &fl.Flows[i]
				}
			}
			t.Fatalf("no flow to %s by pid %d among %d (total %d):\n%s", remote, pid, len(fl.Flows), fl.Total, out.stdout)
			return nil
		}
		echo := find("10.0.2.2:7", echoPID)
		if echo.Proto != "tcp" || echo.Dir != "out" || echo.State != "allowed" || echo.Verdict != "allow" || echo.Action != "forward" ||
			echo.Rule != "gateway_services" || echo.Process.Comm != "nc" || echo.Process.Start == 0 || !echo.Answered || echo.FramesOut == 0 || echo.FramesIn == 0 {
			t.Errorf("the echo flow: %+v (process %+v)", *echo, *echo.Process)
		}
		telnet := find("203.0.113.9:23", telnetPID)
		if telnet.State != "denied" || telnet.Verdict != "deny" || telnet.Action != "reset" || telnet.Rule != "no_telnet_out" ||
			telnet.Process.Comm != "nc" || telnet.Decided == nil {
			t.Errorf("the telnet flow: %+v (process %+v)", *telnet, *telnet.Process)
		}
		if !strings.HasPrefix(echo.Local, addr+":") {
			t.Errorf("the echo flow's local end %s is not the guest's %s", echo.Local, addr)
		}
		text := gv(t, time.Minute, "net", "flows", vm)
		t.Logf("net flows %s:\n%s", vm, text.stdout)
		if text.code != 0 || !strings.Contains(text.stdout, "gateway_services") || !strings.Contains(text.stdout, fmt.Sprintf("  %d ", echoPID)) {
			t.Errorf("net flows: exit %d\n%s%s", text.code, text.stdout, text.stderr)
		}
	})

	t.Run("two guests, both ends attributed", func(t *testing.T) {
		peerSh := func(script string) result {
			t.Helper()
			return gv(t, 2*time.Minute, "exec", peer, "--", "sh", "-c", script)
		}
		// B fetches A's web page: B's gate allows wget out, A's gate allows
		// httpd in.
		if r := peerSh("wget -qO- http://" + addr + "/"); r.code != 0 || !strings.Contains(r.stdout, "gatevisor demo device") {
			t.Fatalf("B -> A:80: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		out := findAudit(t, peerAudit, func(r audit.Record) bool {
			return r.Rule == "peer_tcp" && r.Event.Port == 80 && r.Event.Addr.String() == addr
		})
		in := findAudit(t, auditPath, func(r audit.Record) bool {
			return r.Rule == "web_in" && r.Event.Addr.String() == peerAddr
		})
		if out.Event.Subject.Comm != "wget" || out.Event.Dir.String() != "out" || out.Verdict != "allow" {
			t.Errorf("B's side: %+v", out)
		}
		if in.Event.Subject.Comm != "httpd" || in.Event.Dir.String() != "in" || in.Event.LocalPort != 80 || in.Verdict != "allow" {
			t.Errorf("A's side: %+v", in)
		}
		// B's telnet to A: B's gate lets nc out, A's gate refuses telnetd's
		// inbound connection.
		if r := peerSh("nc -w 3 " + addr + " 23 </dev/null 2>&1; echo nc=$?"); !strings.Contains(r.stdout, "refused") {
			t.Fatalf("B -> A:23 not refused: %s%s", r.stdout, r.stderr)
		}
		in = findAudit(t, auditPath, func(r audit.Record) bool {
			return r.Rule == "no_telnet_in" && r.Event.Addr.String() == peerAddr
		})
		if in.Event.Subject.Comm != "telnetd" || in.Event.Dir.String() != "in" || in.Verdict != "deny" {
			t.Errorf("A's deny: %+v", in)
		}
		findAudit(t, peerAudit, func(r audit.Record) bool {
			return r.Rule == "peer_tcp" && r.Event.Port == 23 && r.Event.Subject.Comm == "nc"
		})
		// B's own rule stops a connection to A's port 8080 before it is
		// sent: A's gate never sees it.
		if r := peerSh("nc -w 3 " + addr + " 8080 </dev/null 2>&1; echo nc=$?"); !strings.Contains(r.stdout, "refused") {
			t.Fatalf("B -> A:8080 not refused: %s%s", r.stdout, r.stderr)
		}
		deny := findAudit(t, peerAudit, func(r audit.Record) bool { return r.Rule == "no_peer_8080" })
		if deny.Event.Subject.Comm != "nc" || deny.Event.Subject.Exe != "/bin/busybox" || deny.Event.Addr.String() != addr {
			t.Errorf("B's deny: %+v", deny)
		}
		for _, r := range readAudit(t, auditPath) {
			if r.Event.LocalPort == 8080 {
				t.Errorf("A's gate saw B's denied connection: %+v", r)
			}
		}
	})

	t.Run("forged source address", func(t *testing.T) {
		m := vnet.ServicesMAC
		testForgedSource(t, vm, addr, vnet.GatewayAddr.String(), net.HardwareAddr(m[:]).String(), vnet.EchoPort, nil)
	})

	t.Run("malformed frames from the guest", func(t *testing.T) {
		testMalformedFrames(t, vm, addr, peer)
	})

	t.Run("hot policy reload", func(t *testing.T) {
		// Let every process reach the update server.
		relaxed := strings.Replace(string(src), "  updates_only_updater:", "  updates_all: addrEq(\"10.0.2.3\") allow\n  updates_only_updater:", 1)
		if err := os.WriteFile(pol, []byte(relaxed), 0o600); err != nil {
			t.Fatal(err)
		}
		if r := gv(t, time.Minute, "policy", "load", vm, pol); r.code != 0 {
			t.Fatalf("policy load: %s%s", r.stdout, r.stderr)
		}
		// policy load returns once every gate has the new policy.
		r := sh(`wget -qO- http://10.0.2.3/`)
		if !strings.Contains(r.stdout, "firmware 2.0") {
			t.Fatalf("still refused after reload: %s%s", r.stdout, r.stderr)
		}
	})
}

// testForgedSource gives guest vm (leased or configured address addr) a
// second address on eth0 that the gate was not told about, and sends from
// it to dst (whose MAC is dstMAC): an ICMP echo (ping -I), a TCP
// connection to dst:port (through a host route whose preferred source is
// the forged address) and ARP requests (arping -s). The guest first pins
// dst's MAC, so that its kernel sends the IPv4 packets rather than asking
// for dst's MAC in vain from the forged address. Everything must be dropped
// by the gate and counted as spoofed, and never reach dst (accepted, when
// not nil, counts dst's connections); then, with the address removed, the
// real address must still reach dst:port.
func testForgedSource(t *testing.T, vm, addr, dst, dstMAC string, port int, accepted func() int64) {
	t.Helper()
	forged := addr[:strings.LastIndex(addr, ".")] + ".200"
	sh := func(script string) result {
		t.Helper()
		return gv(t, 2*time.Minute, "exec", vm, "--", "sh", "-c", script)
	}
	before := netStatus(t, vm)
	var n0 int64
	if accepted != nil {
		n0 = accepted()
	}
	r := sh(fmt.Sprintf(`ip addr add %[1]s/24 dev eth0 && ip route add %[2]s/32 dev eth0 src %[1]s && arp -s %[2]s %[4]s || exit 9
ping -c 2 -W 2 -I %[1]s %[2]s >/dev/null 2>&1; echo "ping=$?"
nc -w 3 %[2]s %[3]d </dev/null >/dev/null 2>&1; echo "nc=$?"
arping -c 2 -w 3 -s %[1]s %[2]s >/dev/null 2>&1; echo "arping=$?"
arp -d %[2]s; ip route del %[2]s/32 dev eth0 src %[1]s; ip addr del %[1]s/24 dev eth0`, forged, dst, port, dstMAC))
	if r.code != 0 || !strings.Contains(r.stdout, "ping=1") || strings.Contains(r.stdout, "nc=0") || !strings.Contains(r.stdout, "arping=1") {
		t.Fatalf("from the forged %s: exit %d %q %s", forged, r.code, r.stdout, r.stderr)
	}
	after := netStatus(t, vm)
	delta := func(reason string) uint64 { return after.Gate.DropReasons[reason] - before.Gate.DropReasons[reason] }
	if got := delta(gatenet.ReasonSpoofedIPv4); got < 3 {
		t.Errorf("spoofed-source drops: %d more, want at least 3 (2 echo requests, a SYN); reasons %v", got, after.Gate.DropReasons)
	}
	if got := delta(gatenet.ReasonSpoofedARPIPv4); got < 2 {
		t.Errorf("spoofed ARP sender drops: %d more, want at least 2; reasons %v", got, after.Gate.DropReasons)
	}
	if got := delta(gatenet.ReasonUnbound); got != 0 {
		t.Errorf("%d drops for want of a bound address: the gate lost the guest's address", got)
	}
	if accepted != nil && accepted() != n0 {
		t.Errorf("%s:%d accepted %d connections from the forged source", dst, port, accepted()-n0)
	}
	// The real address still works, ARP included.
	if r := sh(fmt.Sprintf(`ip -4 addr show eth0 | grep -c inet; arping -c 1 -w 3 %[1]s >/dev/null && echo hello | nc -w 3 %[1]s %[2]d`, dst, port)); r.code != 0 || !strings.HasPrefix(r.stdout, "1\n") {
		t.Fatalf("from %s after the forged attempt: exit %d %q %s", addr, r.code, r.stdout, r.stderr)
	}
	if accepted != nil && accepted() != n0+1 {
		t.Errorf("%s:%d accepted %d connections from the real address, want 1", dst, port, accepted()-n0)
	}
}

func readAudit(t *testing.T, path string) []audit.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r audit.Record
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

func findAudit(t *testing.T, path string, match func(audit.Record) bool) audit.Record {
	t.Helper()
	recs := readAudit(t, path)
	for _, r := range recs {
		if match(r) {
			return r
		}
	}
	t.Fatalf("no matching audit record among %d", len(recs))
	return audit.Record{}
}

// peerPolicy is guest B's policy in TestNetGate: TCP to the isolated
// network's addresses is allowed and audited, except port 8080.
const peerPolicy = openBase + `# TestNetGate's second guest.
net default: deny(ECONNREFUSED)
  dhcp: protoEq("udp") and (portEq(67) or localPortEq(68)) allow
  no_peer_8080: dirIs(out) and addrIn("10.0.2.0/24") and portEq(8080) deny(ECONNREFUSED) audit
  peer_tcp: dirIs(out) and protoEq("tcp") and addrIn("10.0.2.0/24") allow audit
  egress_default: dirIs(out) deny(ECONNREFUSED) audit
`
