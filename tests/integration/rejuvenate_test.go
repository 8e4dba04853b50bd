package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// rejuvenatePolicy denies programs under /tmp (the exec gate, a
// watchpoint), kills those under /var/evil and then rolls the VM back to
// its snapshot "ready", allows loading the kit's modules only, and
// unloading.
const rejuvenatePolicy = openBase + `exec default: allow
  no_tmp_exec: filePrefixEq("/tmp/") deny
  evil: filePrefixEq("/var/evil/") kill
module default: deny
  kit: labelIs("kit") allow
  unload: opEq("unload") allow
response back_to_ready: on verdict(kill) in exec do rollback limit 1;
`

// uptime returns the guest's /proc/uptime in seconds.
func uptime(t *testing.T, vm string) float64 {
	t.Helper()
	r := guestSh(t, vm, "cut -d' ' -f1 /proc/uptime")
	f, err := strconv.ParseFloat(strings.TrimSpace(r.stdout), 64)
	if err != nil {
		t.Fatalf("%s: uptime %q: %v", vm, r.stdout, err)
	}
	return f
}

// deniedExec runs /tmp/bb (a copy of busybox) and returns its exit status.
func deniedExec(t *testing.T, vm string) string {
	t.Helper()
	return strings.TrimSpace(guestSh(t, vm, "/tmp/bb true 2>/dev/null; echo $?").stdout)
}

// ticks returns the numbers of the "gvtick N" lines in the console log,
// in order.
func ticks(t *testing.T, log string) []int {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, m := range regexp.MustCompile(`gvtick (\d+)\r?\n`).FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// TestRejuvenation restarts QEMU under a running guest (256 MiB and 2
// GiB), takes snapshots and rolls back, and checks that nothing the gates
// decide slips through, nothing the guest writes is lost, and a damaged or
// foreign snapshot changes nothing.
func TestRejuvenation(t *testing.T) {
	needVM(t)
	const vm, big = "rejuv", "rejuv-2g"
	dir := t.TempDir()
	pol := writePolicy(t, dir, "rejuv.policy", rejuvenatePolicy)
	r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--ready-timeout", readyTimeout.String(),
		"--net", "isolated:rejuv-net", "--policy", pol, "--snapshot-ready")
	if r.code != 0 {
		t.Fatalf("run: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { gv(t, 2*time.Minute, "stop", vm, "--force") })
	state := filepath.Join(env.stateDir, "gatevisor", "vms", vm)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(monitorLogTail(state))
		}
	})
	leaseIPv4(t, vm, "10.0.2.")
	guestSh(t, vm, "cp /bin/busybox /tmp/bb")
	if rc := deniedExec(t, vm); rc != "126" {
		t.Fatalf("/tmp/bb before the restart: exit %s, want 126 (denied)", rc)
	}

	// Load across the restart: a counter on the console, an echo stream
	// through the network gate, a long-lived process, and a loop of
	// denied execs that keeps trapping while the QEMUs change hands.
	sleeper := procStart(t, vm, "sleep 3000")
	startLoad(t, vm, echoLoad)
	before := uptime(t, vm)
	pidBefore := status(t, vm).QEMUPID
	r = gv(t, 3*time.Minute, "restart", vm, "--keep-guest")
	if r.code != 0 || !strings.Contains(r.stdout, "QEMU restarted") {
		t.Fatalf("restart: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("restart: %s", strings.TrimSpace(r.stdout))
	st := status(t, vm)
	if st.QEMUPID == pidBefore || st.QEMUPID == 0 {
		t.Errorf("QEMU pid %d after the restart, %d before: not replaced", st.QEMUPID, pidBefore)
	}
	if pids := qemuPIDs(vm); len(pids) != 1 || pids[0] != st.QEMUPID {
		t.Errorf("QEMU processes of %s after the restart: %v, want only %d", vm, pids, st.QEMUPID)
	}
	if after := uptime(t, vm); after < before {
		t.Errorf("guest uptime %.2f s after the restart, %.2f s before: the guest was rebooted", after, before)
	}
	if s := guestStates(t, vm, sleeper); s == "gone" {
		t.Errorf("the guest's sleep (pid %d) did not survive the restart", sleeper)
	}
	checkCounter(t, state, "the restart")
	checkEcho(t, vm, "the restart")
	checkDenyLoop(t, vm, "the restart")
	if rc := deniedExec(t, vm); rc != "126" {
		t.Errorf("/tmp/bb after the restart: exit %s, want 126 (denied)", rc)
	}

	// Another QEMU binary (an upgrade): here a copy of the same one,
	// installed in a prefix of its own as an upgraded QEMU would be.
	qcopy := qemuPrefix(t, testvm.NeedQEMU(t))
	if r := gv(t, 3*time.Minute, "restart", vm, "--keep-guest", "--qemu", qcopy); r.code != 0 || !strings.Contains(r.stdout, "the pause:") {
		t.Fatalf("restart --qemu %s: exit %d %s%s", qcopy, r.code, r.stdout, r.stderr)
	}
	st = status(t, vm)
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.QEMUPID)); err != nil || !strings.HasPrefix(string(b), qcopy+"\x00") {
		t.Errorf("after restart --qemu, QEMU pid %d runs %q (err %v), want %s", st.QEMUPID, strings.SplitN(string(b), "\x00", 2)[0], err, qcopy)
	}
	if rc := deniedExec(t, vm); rc != "126" {
		t.Errorf("/tmp/bb after restart --qemu: exit %s, want 126 (denied)", rc)
	}

	// A restart that cannot start its new QEMU changes nothing.
	r = gv(t, 3*time.Minute, "restart", vm, "--keep-guest", "--qemu", "/bin/false")
	if r.code == 0 || !strings.Contains(r.stderr, "the guest runs on in the old QEMU") {
		t.Errorf("restart --qemu /bin/false: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	if p := status(t, vm).QEMUPID; p != st.QEMUPID {
		t.Errorf("QEMU pid %d after a failed restart, %d before", p, st.QEMUPID)
	}
	if s := guestStates(t, vm, sleeper); s == "gone" {
		t.Errorf("the guest's sleep (pid %d) did not survive a failed restart", sleeper)
	}

	// Snapshot, change files, processes and modules, roll back.
	testvm.Eventually(t, time.Minute, "snapshot ready (--snapshot-ready)", func() error {
		if r := gv(t, time.Minute, "snapshots", vm); !strings.Contains(r.stdout, "ready ") {
			return fmt.Errorf("snapshots: %s%s", r.stdout, r.stderr)
		}
		return nil
	})
	guestSh(t, vm, "echo before > /tmp/state.txt")
	if r := gv(t, 3*time.Minute, "snapshot", vm, "s1"); r.code != 0 || !strings.Contains(r.stdout, "snapshot s1 taken") {
		t.Fatalf("snapshot: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	upSnap := uptime(t, vm)
	procStart(t, vm, "sleep 4000")
	// A kit module the guest loaded at boot, unloaded after the snapshot.
	r = guestSh(t, vm, `echo after > /tmp/state.txt; echo new > /tmp/new.txt
for m in evdev button fuse virtio_blk; do lsmod | grep -q "^$m " || continue; rmmod $m && ! lsmod | grep -q "^$m " && { echo $m; break; }; done`)
	mod := strings.TrimSpace(r.stdout)
	if mod == "" {
		t.Fatalf("no kit module could be unloaded after the snapshot: %q %q", r.stdout, r.stderr)
	}
	r = gv(t, 3*time.Minute, "rollback", vm, "s1")
	if r.code != 0 || !strings.Contains(r.stdout, "rolled back to snapshot s1") {
		t.Fatalf("rollback: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("rollback: %s", strings.TrimSpace(r.stdout))
	// Pids are the snapshot's again (and reused): processes are told
	// apart by their command lines.
	r = guestSh(t, vm, "cat /tmp/state.txt; ls /tmp/new.txt 2>&1; lsmod | grep -c '^"+mod+" '; ps | grep -c '[s]leep 4000'; ps | grep -c '[s]leep 3000'")
	if got := strings.Fields(r.stdout); len(got) < 4 || got[0] != "before" || !strings.Contains(r.stdout, "No such file") || got[len(got)-3] != "1" || got[len(got)-2] != "0" || got[len(got)-1] != "1" {
		t.Errorf("after the rollback, the guest is not back to the snapshot (state.txt 'before', no new.txt, %s loaded again, no 'sleep 4000', one 'sleep 3000'): %q", mod, r.stdout)
	}
	if up := uptime(t, vm); up > upSnap+60 {
		t.Errorf("guest uptime %.1f s after the rollback, %.1f s at the snapshot", up, upSnap)
	}
	if r := gv(t, time.Minute, "ids", "modules", "--vm", vm); r.code != 0 || !strings.Contains(r.stdout, mod) {
		t.Errorf("ids modules after the rollback: exit %d, %s not listed: %s%s", r.code, mod, r.stdout, r.stderr)
	}
	if rc := deniedExec(t, vm); rc != "126" {
		t.Errorf("/tmp/bb after the rollback: exit %s, want 126 (the gate still works)", rc)
	}

	// A damaged snapshot is refused and changes nothing.
	snaps := filepath.Join(state, "snapshots")
	copyDir(t, filepath.Join(snaps, "s1"), filepath.Join(snaps, "bad"))
	setManifestTag(t, filepath.Join(snaps, "bad"), "bad")
	flipDataByte(t, filepath.Join(snaps, "bad", "ram"))
	guestSh(t, vm, "echo marker > /tmp/marker.txt")
	r = gv(t, 3*time.Minute, "rollback", vm, "bad")
	if r.code == 0 || !strings.Contains(r.stderr, "does not match its digest") {
		t.Errorf("rollback to a damaged snapshot: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	if r := guestSh(t, vm, "cat /tmp/marker.txt"); strings.TrimSpace(r.stdout) != "marker" {
		t.Errorf("the guest changed after a refused rollback: %q", r.stdout)
	}

	// 2 GiB: restart keeps the guest; a snapshot of another VM is refused.
	// With --add: QEMU booted from a temporary initramfs that run removes
	// once QEMU read it; the restarted QEMU reads the monitor's descriptor.
	hello, err := filepath.Abs("../../examples/hello")
	if err != nil {
		t.Fatal(err)
	}
	// Its policy has no rollback response: it takes no snapshot "ready",
	// and a policy with one is refused (what the run above checks too).
	polBig := writePolicy(t, dir, "rejuv-2g.policy", strings.Replace(rejuvenatePolicy, "response back_to_ready", "# response back_to_ready", 1))
	if r := gv(t, time.Minute, "run", "--detach", "--name", big+"-refused", "--policy", pol); r.code == 0 || !strings.Contains(r.stderr, "start the VM with --snapshot-ready") {
		t.Errorf("run with a rollback response and no --snapshot-ready: exit %d %s", r.code, r.stderr)
		gv(t, time.Minute, "stop", big+"-refused", "--force")
	}
	r = gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", big, "--mem", "2G", "--ready-timeout", readyTimeout.String(), "--policy", polBig,
		"--add", hello+":/usr/bin/hello")
	if r.code != 0 {
		t.Fatalf("run --mem 2G: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { gv(t, 2*time.Minute, "stop", big, "--force") })
	bigSleeper := procStart(t, big, "sleep 3000")
	guestSh(t, big, "dd if=/dev/urandom of=/tmp/blob bs=1M count=64 2>/dev/null; md5sum /tmp/blob > /tmp/blob.md5")
	before = uptime(t, big)
	if r := gv(t, 3*time.Minute, "restart", big, "--keep-guest"); r.code != 0 {
		t.Fatalf("restart 2G: exit %d %s%s", r.code, r.stdout, r.stderr)
	} else {
		t.Logf("restart 2G: %s", strings.TrimSpace(r.stdout))
	}
	if after := uptime(t, big); after < before {
		t.Errorf("2G guest uptime %.2f s after the restart, %.2f s before", after, before)
	}
	if s := guestStates(t, big, bigSleeper); s == "gone" {
		t.Errorf("the 2G guest's sleep did not survive the restart")
	}
	if r := guestSh(t, big, "hello world"); r.code != 0 || !strings.Contains(r.stdout, "world") {
		t.Errorf("the added file after the restart: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := guestSh(t, big, "md5sum -c /tmp/blob.md5"); r.code != 0 {
		t.Errorf("64 MiB of tmpfs data changed across the restart: %s%s", r.stdout, r.stderr)
	}
	if r := gv(t, 3*time.Minute, "snapshot", big, "other"); r.code != 0 {
		t.Fatalf("snapshot 2G: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	copyDir(t, filepath.Join(env.stateDir, "gatevisor", "vms", big, "snapshots", "other"), filepath.Join(snaps, "other"))
	r = gv(t, 3*time.Minute, "rollback", vm, "other")
	if r.code == 0 || !strings.Contains(r.stderr, "is of another VM") {
		t.Errorf("rollback to another VM's snapshot: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	if r := gv(t, time.Minute, "snapshot", "rm", vm, "bad"); r.code != 0 {
		t.Errorf("snapshot rm: exit %d %s", r.code, r.stderr)
	}
	var list api.Snapshots
	r = gv(t, time.Minute, "snapshots", vm, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("snapshots --json: %v %s", err, r.stdout)
	}
	var tags []string
	for _, s := range list.Snapshots {
		tags = append(tags, s.Tag)
	}
	if strings.Join(tags, ",") != "ready,s1,other" {
		t.Errorf("snapshots after rm: %v, want ready, s1, other", tags)
	}

	// The policy's response: a killed exec rolls the VM back to "ready".
	r = guestSh(t, vm, "mkdir -p /var/evil && cp /bin/busybox /var/evil/x && echo gone > /tmp/resp.txt && /var/evil/x true; echo rc=$?")
	if !strings.Contains(r.stdout, "rc=137") {
		t.Errorf("/var/evil/x: %q %q, want killed (rc=137)", r.stdout, r.stderr)
	}
	testvm.Eventually(t, 2*time.Minute, "the response's rollback to snapshot ready", func() error {
		if r := guestSh(t, vm, "ls /tmp/resp.txt /var/evil 2>&1"); !strings.Contains(r.stdout, "No such file") || strings.Contains(r.stdout, "/tmp/resp.txt\n") {
			return fmt.Errorf("the guest still has the files made after boot: %q", r.stdout)
		}
		return nil
	})
	if rc := deniedExec(t, vm); rc != "127" && rc != "126" {
		t.Errorf("after the response's rollback: /tmp/bb exit %s (the gate must still deny, or the file be gone)", rc)
	}

	// Everything was audited, the chain is whole.
	auditFile := filepath.Join(state, "audit.jsonl")
	for _, rule := range []string{"vm.restart", "vm.snapshot", "vm.rollback", "vm.snapshot.remove", "response:back_to_ready"} {
		if a := gv(t, time.Minute, "audit", "--file", auditFile, "--rule", rule, "--json"); a.code != 0 || !strings.Contains(a.stdout, rule) {
			t.Errorf("no audit record of %s: exit %d %s", rule, a.code, a.stderr)
		}
	}
	if a := gv(t, time.Minute, "audit", "--verify", "--file", auditFile); a.code != 0 {
		t.Errorf("audit --verify after restarts and rollbacks: exit %d %s%s", a.code, a.stdout, a.stderr)
	}
}

// startLoad starts, in the guest, what runs across a restart or an
// upgrade: a counter on the console ("gvtick 1" to "gvtick 300", every
// 20 ms), a loop of denied execs of /tmp/bb until /tmp/stopdeny exists,
// and extra (a shell line that backgrounds itself, or "").
func startLoad(t *testing.T, vm, extra string) {
	t.Helper()
	guestSh(t, vm, `rm -f /tmp/stopdeny /tmp/deny.out
(i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo "gvtick $i" > /dev/console; usleep 20000; done) </dev/null >/dev/null 2>&1 &
`+extra+`
(n=0; ok=0; while [ ! -e /tmp/stopdeny ]; do /tmp/bb true 2>/dev/null && ok=$((ok+1)); n=$((n+1)); done; echo "$n $ok" > /tmp/deny.out) </dev/null >/dev/null 2>&1 &
echo started`)
}

// echoLoad is startLoad's extra load through the network gate: 200 lines
// over one TCP connection to the isolated network's echo service.
const echoLoad = `((i=0; while [ $i -lt 200 ]; do echo "e$i"; i=$((i+1)); usleep 20000; done; sleep 3) | timeout 60 nc 10.0.2.2 7 > /tmp/echo.out 2>/tmp/echo.err) </dev/null >/dev/null 2>&1 &`

// checkEcho waits for echoLoad to end and checks that every line came
// back once, in order, across what.
func checkEcho(t *testing.T, vm, what string) {
	t.Helper()
	testvm.Eventually(t, 2*time.Minute, "the echo stream to finish", func() error {
		r := guestSh(t, vm, "grep -c . /tmp/echo.out; pidof nc || echo none")
		if !strings.Contains(r.stdout, "none") {
			return fmt.Errorf("nc still runs: %s", r.stdout)
		}
		return nil
	})
	echo := guestSh(t, vm, "cat /tmp/echo.out; cat /tmp/echo.err").stdout
	var want strings.Builder
	for i := range 200 {
		fmt.Fprintf(&want, "e%d\n", i)
	}
	if echo != want.String() {
		t.Errorf("the TCP echo stream through the network gate across %s is not whole: got %d bytes (want %d): %q", what, len(echo), want.Len(), echo)
	}
}

// deniedHTTP tries a TCP connection to the gateway's HTTP port, which the
// upgrade test's policy denies with ECONNREFUSED, and returns what nc said.
func deniedHTTP(t *testing.T, vm string) string {
	t.Helper()
	return guestSh(t, vm, "nc -w 3 10.0.2.2 80 </dev/null 2>&1; echo nc=$?").stdout
}

// checkCounter waits for startLoad's counter to end and checks that the
// console log holds every tick once, in order, across what.
func checkCounter(t *testing.T, state, what string) {
	t.Helper()
	testvm.Eventually(t, 2*time.Minute, "the console counter to finish", func() error {
		if n := ticks(t, filepath.Join(state, "console.log")); len(n) == 0 || n[len(n)-1] != 300 {
			return fmt.Errorf("%d ticks so far", len(n))
		}
		return nil
	})
	got := ticks(t, filepath.Join(state, "console.log"))
	for i, n := range got {
		if n != i+1 {
			t.Fatalf("console counter across %s: tick %d where %d was due (lost or duplicated output): %v", what, n, i+1, got)
		}
	}
}

// checkDenyLoop ends startLoad's loop of denied execs and checks that it
// tried and that none ran across what.
func checkDenyLoop(t *testing.T, vm, what string) {
	t.Helper()
	guestSh(t, vm, "touch /tmp/stopdeny")
	testvm.Eventually(t, time.Minute, "the denied-exec loop to end", func() error {
		if r := guestSh(t, vm, "cat /tmp/deny.out"); r.code != 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	var n, ok int
	if _, err := fmt.Sscan(guestSh(t, vm, "cat /tmp/deny.out").stdout, &n, &ok); err != nil || n == 0 || ok != 0 {
		t.Errorf("denied execs across %s: %d tries, %d ran (want >0 tries, 0 ran); err %v", what, n, ok, err)
	}
}

// zombies returns the children of pid that exited and were not reaped.
func zombies(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// monitorLogTail is the end of the monitor's log in a VM's state
// directory, for a failure's message.
func monitorLogTail(state string) string {
	b, err := os.ReadFile(filepath.Join(state, "monitor.log"))
	if err != nil {
		return "(no monitor log: " + err.Error() + ")"
	}
	return "monitor log (end):\n" + tail(b)
}

// stopAcrossUpgrade stops VM vm at once, retrying for a minute: a test
// that failed while its monitor was replacing itself finds the API down
// for a moment, and must not leave the VM running.
func stopAcrossUpgrade(t *testing.T, vm string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		r := gv(t, 2*time.Minute, "stop", vm, "--force")
		if r.code == 0 || len(qemuPIDs(vm)) == 0 && !strings.Contains(r.stderr, "connect") {
			break
		}
	}
	waitNoQEMU(t, vm, time.Minute)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", "--sparse=always", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp %s %s: %v %s", from, to, err, out)
	}
}

// setManifestTag rewrites a copied snapshot's manifest to name tag.
func setManifestTag(t *testing.T, dir, tag string) {
	t.Helper()
	p := filepath.Join(dir, "manifest.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["tag"] = tag
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// flipDataByte flips one byte of the first non-zero page of a sparse file.
func flipDataByte(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		for i := 0; i < n; i++ {
			if buf[i] != 0 {
				if _, err := f.WriteAt([]byte{buf[i] ^ 0x5a}, off+int64(i)); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		if err != nil {
			t.Fatalf("no non-zero byte in %s", path)
		}
	}
}

// qemuPrefix installs a copy of the QEMU binary qemu in a prefix of its
// own (PREFIX/bin) and returns its path. QEMU finds its modules and
// firmware relative to its binary (../lib/..., ../share/...: a
// relocatable install), so the prefix links Debian's directories.
func qemuPrefix(t *testing.T, qemu string) string {
	t.Helper()
	prefix := t.TempDir()
	bin := filepath.Join(prefix, "bin", filepath.Base(qemu))
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	copyDir(t, qemu, bin)
	for _, d := range []string{"lib/x86_64-linux-gnu/qemu", "lib/ipxe/qemu", "share/qemu", "share/seabios"} {
		src := filepath.Join("/usr", d)
		if _, err := os.Stat(src); err != nil {
			continue
		}
		dst := filepath.Join(prefix, d)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(src, dst); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// TestMonitorUpgrade replaces the monitor process (exec in place) under a
// running guest twice, with a counter on the console and a loop of denied
// execs running across: nothing lost or duplicated, nothing let through,
// the audit chain whole.
func TestMonitorUpgrade(t *testing.T) {
	needVM(t)
	const vm = "upgrade"
	dir := t.TempDir()
	pol := writePolicy(t, dir, "upgrade.policy", openBase+`exec default: allow
  no_tmp_exec: filePrefixEq("/tmp/") deny
net default: allow
  no_http: dirIs(out) and protoEq("tcp") and portEq(80) deny(ECONNREFUSED)
`)
	// The kernel's layouts from a symbol table (as for a kernel without
	// BTF), which the upgrade hands over too.
	isf := kitISF(t, dir)
	r := gvEnv(t, readyTimeout+time.Minute, []string{"GATEVISOR_IGNORE_BTF=1"}, "run", "--detach", "--name", vm, "--ready-timeout", readyTimeout.String(), "--policy", pol,
		"--net", "isolated:upgrade-net", "--symbols", isf)
	if r.code != 0 {
		t.Fatalf("run: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { stopAcrossUpgrade(t, vm) })
	state := filepath.Join(env.stateDir, "gatevisor", "vms", vm)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(monitorLogTail(state))
		}
	})
	leaseIPv4(t, vm, "10.0.2.")
	guestSh(t, vm, "cp /bin/busybox /tmp/bb")
	if rc := deniedExec(t, vm); rc != "126" {
		t.Fatalf("/tmp/bb before the upgrade: exit %s, want 126", rc)
	}
	if out := deniedHTTP(t, vm); !strings.Contains(out, "refused") {
		t.Fatalf("HTTP to the gateway before the upgrade: %q, want refused by the network gate", out)
	}
	netHosts := env.gv.NetHostPIDs()
	if len(netHosts) != 1 {
		t.Fatalf("network host processes: %v, want one", netHosts)
	}
	// A frozen process stays frozen across the upgrades (below); refused,
	// nothing changed: a binary that is not one.
	sleeper := procStart(t, vm, "sleep 3000")
	frozen := procStart(t, vm, "sleep 3001")
	proc(t, "freeze", vm, frozen)
	if r := gv(t, time.Minute, "upgrade", vm, "--binary", pol); r.code == 0 || !strings.Contains(r.stderr, "not a regular executable") {
		t.Errorf("upgrade --binary with a policy file: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	st0 := status(t, vm)
	startLoad(t, vm, echoLoad)
	before := uptime(t, vm)
	for i := 1; i <= 2; i++ {
		r := gv(t, 3*time.Minute, "upgrade", vm)
		if r.code != 0 || !strings.Contains(r.stdout, "monitor upgraded in place") {
			t.Fatalf("upgrade %d: exit %d %s%s", i, r.code, r.stdout, r.stderr)
		}
		t.Logf("upgrade %d: %s", i, strings.TrimSpace(r.stdout))
		st := status(t, vm)
		if st.MonitorPID != st0.MonitorPID || st.MonitorUpgrades != i || st.QEMUPID == st0.QEMUPID {
			t.Errorf("after upgrade %d: monitor pid %d (was %d), upgrades %d, QEMU pid %d (was %d)", i, st.MonitorPID, st0.MonitorPID, st.MonitorUpgrades, st.QEMUPID, st0.QEMUPID)
		}
		if pids := qemuPIDs(vm); len(pids) != 1 || pids[0] != st.QEMUPID {
			t.Errorf("QEMU processes after upgrade %d: %v, want only %d", i, pids, st.QEMUPID)
		}
	}
	if after := uptime(t, vm); after < before {
		t.Errorf("guest uptime %.2f s after the upgrades, %.2f s before: the guest was rebooted", after, before)
	}
	if z := zombies(st0.MonitorPID); len(z) > 0 {
		t.Errorf("the upgraded monitor left zombie children (the old QEMUs, unreaped): %v", z)
	}
	if s := guestStates(t, vm, sleeper); s == "gone" {
		t.Errorf("the guest's sleep did not survive the upgrades")
	}
	// The new monitor keeps the frozen process stopped: resumed from
	// inside the guest, it is stopped again; then thawed.
	if s := guestStates(t, vm, frozen); s != "1 T" {
		t.Errorf("the frozen process after the upgrades: state %q, want stopped", s)
	}
	guestSh(t, vm, fmt.Sprintf("kill -CONT %d", frozen))
	waitGuestState(t, vm, frozen, "1 T")
	proc(t, "thaw", vm, frozen)
	waitGuestState(t, vm, frozen, "1 S")
	checkCounter(t, state, "the upgrades")
	checkEcho(t, vm, "the upgrades")
	checkDenyLoop(t, vm, "the upgrades")
	if rc := deniedExec(t, vm); rc != "126" {
		t.Errorf("/tmp/bb after the upgrades: exit %s, want 126", rc)
	}
	if out := deniedHTTP(t, vm); !strings.Contains(out, "refused") {
		t.Errorf("HTTP to the gateway after the upgrades: %q, want refused by the network gate", out)
	}
	if got := env.gv.NetHostPIDs(); !slices.Equal(got, netHosts) {
		t.Errorf("network host processes after the upgrades: %v, before %v: the network's other end was replaced", got, netHosts)
	}
	if st := status(t, vm); st.Net == nil || st.Net.Gate == nil || st.Net.Gate.Flows == 0 {
		t.Errorf("the network gate's flows after the upgrades: %+v", st.Net)
	}
	auditFile := filepath.Join(state, "audit.jsonl")
	if a := gv(t, time.Minute, "audit", "--file", auditFile, "--rule", "vm.upgrade", "--json"); a.code != 0 || strings.Count(a.stdout, "monitor upgraded in place") != 2 {
		t.Errorf("audit records of the upgrades: exit %d %s", a.code, a.stdout)
	}
	if a := gv(t, time.Minute, "audit", "--verify", "--file", auditFile); a.code != 0 {
		t.Errorf("audit --verify after the upgrades: exit %d %s%s", a.code, a.stdout, a.stderr)
	}
	// The upgraded monitor stops the VM as the first would, leaving nothing.
	if r := gv(t, 2*time.Minute, "stop", vm); r.code != 0 {
		t.Errorf("stop after the upgrades: exit %d %s", r.code, r.stderr)
	}
	waitNoQEMU(t, vm, time.Minute)
}

// TestAutoUpgrade installs a new gatevisor binary over the one a VM's
// monitor runs (run --auto-upgrade): the monitor replaces itself, the
// guest kept running, and the audit log names the cause.
func TestAutoUpgrade(t *testing.T) {
	needVM(t)
	const vm = "autoup"
	bin := filepath.Join(t.TempDir(), "gatevisor")
	copyDir(t, env.gv.Bin, bin)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+time.Minute)
	defer cancel()
	cmd := env.gv.Command(ctx, nil, "run", "--detach", "--name", vm, "--auto-upgrade", "--ready-timeout", readyTimeout.String())
	cmd.Path, cmd.Args[0] = bin, bin
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s run --auto-upgrade: %v\n%s", bin, err, out)
	}
	t.Cleanup(func() { stopAcrossUpgrade(t, vm) })
	sleeper := procStart(t, vm, "sleep 3000")
	before := uptime(t, vm)
	// A new build installed over it: a new file renamed into place.
	copyDir(t, env.gv.Bin, bin+".new")
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	testvm.Eventually(t, time.Minute, "the monitor to upgrade itself", func() error {
		// The API is down for a moment while the monitor execs.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := client(vm).Status(ctx)
		if err != nil {
			return err
		}
		if st.MonitorUpgrades != 1 || st.State != api.StateRunning {
			return fmt.Errorf("upgrades %d, state %s", st.MonitorUpgrades, st.State)
		}
		return nil
	})
	if after := uptime(t, vm); after < before {
		t.Errorf("guest uptime %.2f s after the auto-upgrade, %.2f s before", after, before)
	}
	if s := guestStates(t, vm, sleeper); s == "gone" {
		t.Errorf("the guest's sleep did not survive the auto-upgrade")
	}
	auditFile := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
	if a := gv(t, time.Minute, "audit", "--file", auditFile, "--rule", "auto-upgrade", "--json"); a.code != 0 || !strings.Contains(a.stdout, "run --auto-upgrade") {
		t.Errorf("no audit record of the auto-upgrade: exit %d %s", a.code, a.stdout)
	}
	// A new binary that cannot take the VM over: the guest, stopped for the
	// hand-over, never runs again unguarded; the VM ends, and upgrade says
	// so at once rather than wait for a monitor that is gone.
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := gv(t, 3*time.Minute, "upgrade", vm, "--binary", broken)
	if r.code == 0 || !strings.Contains(r.stderr, "ended without taking the VM over") {
		t.Errorf("upgrade to a binary that exits: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("upgrade to a binary that exits: %s after %v", strings.TrimSpace(r.stderr), time.Since(start).Round(time.Millisecond))
	waitNoQEMU(t, vm, time.Minute)
}
