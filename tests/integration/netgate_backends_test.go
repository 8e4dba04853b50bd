package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// TestNetGateBackends boots one guest on `--net user` and, as root, one on
// `--net tap:IF` (their boots overlap), and checks that the network gate
// decides in front of each backend as it does on an isolated network.
//
// Network safety: the user-mode guest only reaches listeners this test
// opens on the host's 127.0.0.1 (through the NAT's 192.168.127.254), and
// the only other destination it tries (169.254.169.254) is refused by the
// gate and never dialled by the NAT; the tap guest only reaches an address
// on a tap device this test creates, which no other address is on.
func TestNetGateBackends(t *testing.T) {
	needVM(t)
	const userVM, tapVM = "net-user", "net-tap"
	dir := t.TempDir()

	// Host loopback listeners for the user-mode guest: one web server it
	// may reach, one port the policy denies, one UDP (TFTP) server.
	web := listenHTTP(t, "127.0.0.1:0", "hello from the host's loopback\n")
	denied := listenCount(t, "127.0.0.1:0")
	tftp := listenTFTP(t, "127.0.0.1:0", "hello over UDP\n")
	userPol := filepath.Join(dir, "user.policy")
	writeFile(t, userPol, fmt.Sprintf(userPolicy, denied.port, web.port, tftp.port))
	specs := []vmSpec{{userVM, []string{"--net", "user", "--policy", userPol}}}

	var tap *tapDevice
	tapSkip := tapUnavailable()
	if tapSkip == "" {
		tap = newTap(t)
		tapPol := filepath.Join(dir, "tap.policy")
		writeFile(t, tapPol, fmt.Sprintf(tapPolicy, tap.host, tap.host))
		// The gate lets out only the guest's address on the tap (there is
		// no DHCP on it to learn one from).
		specs = append(specs, vmSpec{tapVM, []string{"--net", "tap:" + tap.name + ",ip=" + tap.guest + "/24", "--policy", tapPol}})
	}
	bootVMs(t, specs...)

	t.Run("user", func(t *testing.T) {
		vm := userVM
		auditPath := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
		leaseIPv4(t, vm, "192.168.127.")
		sh := func(script string) result {
			t.Helper()
			return gv(t, 2*time.Minute, "exec", vm, "--", "sh", "-c", script)
		}
		// TCP to the host's loopback, allowed and attributed.
		if r := sh(fmt.Sprintf("wget -qO- http://192.168.127.254:%d/", web.port)); r.code != 0 || r.stdout != "hello from the host's loopback\n" {
			t.Fatalf("wget the host's loopback: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		rec := findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "host_web" })
		if rec.Event.Subject.Comm != "wget" || rec.Event.Addr.String() != "192.168.127.254" || int(rec.Event.Port) != web.port {
			t.Errorf("allow attributed to %+v", rec.Event)
		}
		// A denied port is refused by the gate, attributed, and never
		// reaches the listener behind it.
		if r := sh(fmt.Sprintf("nc -w 3 192.168.127.254 %d </dev/null 2>&1; echo nc=$?", denied.port)); !strings.Contains(r.stdout, "refused") {
			t.Fatalf("denied port not refused: %s%s", r.stdout, r.stderr)
		}
		rec = findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "no_host_port" })
		if rec.Verdict != "deny" || rec.Event.Subject.Comm != "nc" || rec.Event.Subject.Exe != "/bin/busybox" || rec.Event.Dir.String() != "out" {
			t.Errorf("deny attributed to %+v", rec.Event)
		}
		if n := denied.accepted.Load(); n != 0 {
			t.Errorf("the denied listener accepted %d connections", n)
		}
		// UDP through the NAT (TFTP to the host's loopback), and DNS from
		// the gateway.
		if r := sh(fmt.Sprintf("cd /tmp && tftp -g -r hello -l hello 192.168.127.254 %d && cat hello", tftp.port)); r.code != 0 || r.stdout != "hello over UDP\n" {
			t.Errorf("tftp: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		if r := sh("nslookup host.gatevisor 192.168.127.1"); !strings.Contains(r.stdout, "192.168.127.254") {
			t.Errorf("nslookup: %s%s", r.stdout, r.stderr)
		}
		// Anything else is refused by the gate (and would not be dialled by
		// the NAT either: link-local is never forwarded).
		// (busybox 1.35's wget crashes with -T: no timeout option.)
		if r := sh("wget -qO- http://169.254.169.254/ 2>&1; echo wget=$?"); !strings.Contains(r.stdout, "refused") {
			t.Errorf("reached 169.254.169.254: %s", r.stdout)
		}
		findAudit(t, auditPath, func(r audit.Record) bool {
			return r.Rule == "egress_default" && r.Event.Addr.String() == "169.254.169.254" && r.Event.Subject.Comm == "wget"
		})
		ns := netStatus(t, vm)
		if ns.Mode != "user" || ns.NAT["tcp_forwarded"] < 1 || ns.NAT["udp_forwarded"] < 1 || ns.NAT["blocked"] != 0 || ns.Gate.Denied < 2 {
			t.Errorf("status: %+v, gate %+v", ns, ns.Gate)
		}
	})

	t.Run("tap", func(t *testing.T) {
		if tap == nil {
			testvm.Skip(t, "%s", tapSkip)
		}
		vm := tapVM
		auditPath := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
		webTap := listenHTTP(t, net.JoinHostPort(tap.host, "0"), "hello from the tap's host side\n")
		deniedTap := listenCount(t, net.JoinHostPort(tap.host, "7001"))
		// No DHCP on the tap: a static address, and no default route.
		if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", fmt.Sprintf("ip addr add %s/24 dev eth0 && ip route", tap.guest)); r.code != 0 || strings.Contains(r.stdout, "default") {
			t.Fatalf("guest address: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		if r := gv(t, time.Minute, "exec", vm, "--", "wget", "-qO-", fmt.Sprintf("http://%s:%d/", tap.host, webTap.port)); r.code != 0 || r.stdout != "hello from the tap's host side\n" {
			t.Fatalf("guest -> tap host: exit %d %q %s", r.code, r.stdout, r.stderr)
		}
		rec := findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "tap_host" })
		if rec.Event.Subject.Comm != "wget" || rec.Event.Addr.String() != tap.host {
			t.Errorf("allow attributed to %+v", rec.Event)
		}
		if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", fmt.Sprintf("nc -w 3 %s 7001 </dev/null 2>&1; echo nc=$?", tap.host)); !strings.Contains(r.stdout, "refused") {
			t.Fatalf("denied port not refused: %s%s", r.stdout, r.stderr)
		}
		rec = findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "no_tap_7001" })
		if rec.Event.Subject.Comm != "nc" || deniedTap.accepted.Load() != 0 {
			t.Errorf("deny attributed to %+v; listener accepted %d", rec.Event, deniedTap.accepted.Load())
		}
		// Inbound from the host side: the guest's web server is allowed,
		// its telnet service is refused by the gate.
		c, err := net.DialTimeout("tcp", net.JoinHostPort(tap.guest, "80"), 20*time.Second)
		if err != nil {
			t.Fatalf("host -> guest:80: %v", err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		page, _ := io.ReadAll(c)
		c.Close()
		if !bytes.Contains(page, []byte("gatevisor demo device")) {
			t.Errorf("host -> guest:80: %q", page)
		}
		if _, err := net.DialTimeout("tcp", net.JoinHostPort(tap.guest, "23"), 20*time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("host -> guest:23: %v, want refused", err)
		}
		in := findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "tap_web_in" })
		if in.Event.Subject.Comm != "httpd" || in.Event.Dir.String() != "in" || in.Event.Addr.String() != tap.host {
			t.Errorf("inbound allow attributed to %+v", in.Event)
		}
		in = findAudit(t, auditPath, func(r audit.Record) bool { return r.Rule == "tap_no_telnet_in" })
		if in.Event.Subject.Comm != "telnetd" || in.Event.Dir.String() != "in" {
			t.Errorf("inbound deny attributed to %+v", in.Event)
		}
		if ns := netStatus(t, vm); ns.Mode != "tap" || ns.Tap != tap.name || ns.Gate.Allowed < 2 || ns.Gate.Denied < 2 {
			t.Errorf("status: %+v, gate %+v", ns, ns.Gate)
		}
		// A source address other than ip= never reaches the host, though
		// the policy allows the port.
		other := listenCount(t, net.JoinHostPort(tap.host, "7002"))
		tapIf, err := net.InterfaceByName(tap.name)
		if err != nil {
			t.Fatal(err)
		}
		testForgedSource(t, vm, tap.guest, tap.host, tapIf.HardwareAddr.String(), other.port, other.accepted.Load)
	})
}

// userPolicy is the user-mode guest's policy: the host's loopback web
// server and TFTP server, DNS from the gateway, nothing else.
const userPolicy = openBase + `# TestNetGateBackends, --net user.
net default: deny(ECONNREFUSED)
  dhcp: protoEq("udp") and (portEq(67) or localPortEq(68)) allow
  dns: dirIs(out) and protoEq("udp") and addrEq("192.168.127.1") and portEq(53) allow
  no_host_port: dirIs(out) and addrEq("192.168.127.254") and portEq(%d) deny(ECONNREFUSED) audit
  host_web: dirIs(out) and protoEq("tcp") and addrEq("192.168.127.254") and portEq(%d) allow audit
  host_tftp: dirIs(out) and protoEq("udp") and addrEq("192.168.127.254") and portEq(%d) allow audit
  egress_default: dirIs(out) deny(ECONNREFUSED) audit
`

// tapPolicy is the tap guest's policy; both %s are the tap's host address.
const tapPolicy = openBase + `# TestNetGateBackends, --net tap.
net default: deny(ECONNREFUSED)
  no_tap_7001: dirIs(out) and addrEq("%s") and portEq(7001) deny(ECONNREFUSED) audit
  tap_host: dirIs(out) and protoEq("tcp") and addrEq("%s") allow audit
  tap_web_in: dirIs(in) and protoEq("tcp") and localPortEq(80) allow audit
  tap_no_telnet_in: dirIs(in) and localPortEq(23) deny(ECONNREFUSED) audit
  egress_default: dirIs(out) deny(ECONNREFUSED) audit
`

// vmSpec is a VM to boot in the background: its name and extra run flags.
type vmSpec struct {
	name string
	args []string
}

// bootVMs boots the VMs at once, so that their TCG boots overlap, and
// stops them when the test ends (also when a boot fails).
func bootVMs(t *testing.T, specs ...vmSpec) {
	t.Helper()
	errs := make([]string, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		t.Cleanup(func() {
			gv(t, time.Minute, "stop", s.name, "--timeout", "20s")
			waitNoQEMU(t, s.name, 30*time.Second)
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+time.Minute)
			defer cancel()
			args := append([]string{"run", "--detach", "--name", s.name, "--ready-timeout", readyTimeout.String()}, s.args...)
			if out, err := gvCmd(ctx, nil, args...).CombinedOutput(); err != nil {
				errs[i] = fmt.Sprintf("run %s: %v\n%s", s.name, err, out)
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Fatal(e)
		}
	}
}

// buildStatic compiles testdata/NAME.c into a static binary and returns
// its path.
func buildStatic(t *testing.T, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	if b, err := exec.Command("gcc", "-static", "-O2", "-o", out, filepath.Join("testdata", name+".c")).CombinedOutput(); err != nil {
		t.Fatalf("build testdata/%s.c (needs gcc and libc6-dev, which scripts/install-deps installs): %v\n%s", name, err, b)
	}
	return out
}

var inetRE = regexp.MustCompile(`inet (\d+\.\d+\.\d+\.\d+)/`)

// leaseIPv4 returns the guest's eth0 address in prefix, running DHCP again
// if the short boot-time attempt did not get one.
func leaseIPv4(t *testing.T, vm, prefix string) string {
	t.Helper()
	script := fmt.Sprintf(`ip -4 addr show eth0 | grep -q 'inet %s' || udhcpc -i eth0 -n -q -t 5 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1; ip -4 addr show eth0`, prefix)
	r := gv(t, 2*time.Minute, "exec", vm, "--", "sh", "-c", script)
	m := inetRE.FindStringSubmatch(r.stdout)
	if m == nil || !strings.HasPrefix(m[1], prefix) {
		t.Fatalf("%s: no DHCP lease in %s: %s%s", vm, prefix, r.stdout, r.stderr)
	}
	return m[1]
}

// netStatus returns the network part of the VM's API status.
func netStatus(t *testing.T, vm string) *api.NetStatus {
	t.Helper()
	st := status(t, vm)
	if st.Net == nil || st.Net.Gate == nil {
		t.Fatalf("%s: no network gate in the status: %+v", vm, st.Net)
	}
	return st.Net
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

type listener struct {
	port     int
	accepted atomic.Int64
}

// listenHTTP serves body on addr until the test ends.
func listenHTTP(t *testing.T, addr, body string) *listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{port: ln.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		l.accepted.Add(1)
		io.WriteString(w, body)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return l
}

// listenCount accepts and closes connections on addr, counting them.
func listenCount(t *testing.T, addr string) *listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{port: ln.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return l
}

// listenTFTP answers every TFTP read request on addr with body (one block,
// sent from the same port: the NAT's UDP flow is connected to it).
func listenTFTP(t *testing.T, addr, body string) *listener {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{port: pc.LocalAddr().(*net.UDPAddr).Port}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 2 && buf[0] == 0 && buf[1] == 1 { // RRQ
				l.accepted.Add(1)
				_, _ = pc.WriteTo(append([]byte{0, 3, 0, 1}, body...), from) // DATA block 1
			}
		}
	}()
	t.Cleanup(func() { pc.Close() })
	return l
}

// tapDevice is a tap this test created, with the host side's address.
type tapDevice struct {
	name, host, guest string
}

// tapUnavailable says why the tap test cannot run here ("" if it can).
func tapUnavailable() string {
	if os.Geteuid() != 0 {
		return "--net tap needs root to create a tap device: run the tests as root (CI does)"
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "--net tap needs /dev/net/tun (modprobe tun): " + err.Error()
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "--net tap test needs iproute2's ip: apt-get install iproute2"
	}
	return ""
}

const tapPrefix = "gvit"

// newTap creates tap gvitPID with 10.213.X.1/24 on the host side (X free
// on this host), deleting it when the test ends; taps left by test
// processes that died are deleted first.
func newTap(t *testing.T) *tapDevice {
	t.Helper()
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			pid, err := strconv.Atoi(strings.TrimPrefix(i.Name, tapPrefix))
			if err != nil || !strings.HasPrefix(i.Name, tapPrefix) || syscall.Kill(pid, 0) == nil {
				continue
			}
			_ = exec.Command("ip", "link", "del", i.Name).Run()
		}
	}
	name := fmt.Sprintf("%s%d", tapPrefix, os.Getpid())
	var sub string
	for x := os.Getpid() % 200; ; x++ {
		sub = fmt.Sprintf("10.213.%d", 20+x%200)
		if out, _ := exec.Command("ip", "-4", "route", "show", "to", "match", sub+".1").Output(); !bytes.Contains(out, []byte("10.213.")) {
			break
		}
		if x > os.Getpid()%200+200 {
			t.Fatal("no free 10.213.X.0/24 on this host for the tap test")
		}
	}
	d := &tapDevice{name: name, host: sub + ".1", guest: sub + ".2"}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", name).Run()
		if _, err := net.InterfaceByName(name); err == nil {
			t.Errorf("tap %s is still there", name)
		}
	})
	ip("tuntap", "add", "dev", name, "mode", "tap")
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644)
	ip("addr", "add", d.host+"/24", "dev", name)
	ip("link", "set", name, "up")
	return d
}
