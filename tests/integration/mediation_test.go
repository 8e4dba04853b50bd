package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// Complete mediation (issue #11): every rule a policy states is enforced
// by a gate, or the policy is refused; a gate that cannot be armed stops
// the VM; every policy change is all gates or none.

// mediationSetup makes the workspace the cases act on, as root, under the
// open base policy: a file, a directory, a copy of busybox, a script whose
// interpreter is that copy, and a module file that is not the kit's.
const mediationSetup = `rm -rf /tmp/m; mkdir -p /tmp/m/d2 && echo data > /tmp/m/a && cp /bin/busybox /tmp/m/busybox &&
printf '#!/tmp/m/busybox sh\necho script-ran\n' > /tmp/m/s.sh && chmod +x /tmp/m/s.sh &&
cp "$(find /lib/modules -name virtio_ring.ko | head -1)" /tmp/m/mod.ko && echo >> /tmp/m/mod.ko && echo setup-ok`

// mediationCase is one class/op: a rule named t that denies the action
// with EDQUOT ("Disk quota exceeded", an errno nothing else here
// produces), so that a refusal is provably the policy's.
type mediationCase struct {
	name   string
	rule   string // a block with rule t, added to the open base policy
	action string // a shell script in the guest
	// allowed is in the output when the gate lets the action through;
	// denied (default: "Disk quota exceeded") when it refuses it.
	allowed, denied string
	class, op       string // the audit record's event
	records         int    // audit records per refusal (default 1)
}

func TestMediation(t *testing.T) {
	needVM(t)
	const vm = "mediate"
	dir := t.TempDir()
	mmapfile := buildStatic(t, "mmapfile")
	base := writePolicy(t, dir, "base.policy", openBase)
	bootGated(t, vm, base, "--add", mmapfile+":/usr/bin/mmapfile")
	const m = `filePrefixEq("/tmp/m/")`
	block := func(head, cond string) string {
		return fmt.Sprintf("%s default: allow\n  t: %s deny(EDQUOT)\n", head, cond)
	}
	cases := []mediationCase{
		{name: "file unlink", rule: block("file unlink", m), action: "rm /tmp/m/a && echo removed", allowed: "removed", class: "file", op: "unlink"},
		{name: "file rename", rule: block("file rename", m), action: "mv /tmp/m/a /tmp/m/b && echo moved", allowed: "moved", class: "file", op: "rename"},
		{name: "file rename into", rule: block("file rename", `fileEq("/tmp/m/into")`), action: "echo x > /tmp/moving && mv /tmp/moving /tmp/m/into && echo moved", allowed: "moved", class: "file", op: "rename"},
		{name: "file create", rule: block("file create", m), action: "touch /tmp/m/new && echo created", allowed: "created", class: "file", op: "create"},
		{name: "file mkdir", rule: block("file mkdir", m), action: "mkdir /tmp/m/d && echo made", allowed: "made", class: "file", op: "mkdir"},
		{name: "file rmdir", rule: block("file rmdir", m), action: "rmdir /tmp/m/d2 && echo removed", allowed: "removed", class: "file", op: "rmdir"},
		{name: "file chmod", rule: block("file chmod", m), action: "chmod 600 /tmp/m/a && echo changed", allowed: "changed", class: "file", op: "chmod"},
		{name: "file chown", rule: block("file chown", m), action: "chown 1000 /tmp/m/a && echo changed", allowed: "changed", class: "file", op: "chown"},
		{name: "file truncate", rule: block("file truncate", m), action: ": > /tmp/m/a && echo truncated", allowed: "truncated", class: "file", op: "truncate"},
		{name: "file link", rule: block("file link", `fileEq("/tmp/m/a")`), action: "ln /tmp/m/a /tmp/hard && echo linked", allowed: "linked", class: "file", op: "link"},
		{name: "file symlink", rule: block("file symlink", m), action: "ln -s /etc/passwd /tmp/m/s && echo linked", allowed: "linked", class: "file", op: "symlink"},
		{name: "file write", rule: block("file write", m), action: "echo more >> /tmp/m/a && echo wrote", allowed: "wrote", class: "file", op: "write"},
		{name: "file append", rule: block("file append", m), action: "echo more >> /tmp/m/a && echo wrote", allowed: "wrote", class: "file", op: "append"},
		{name: "file open", rule: block("file open", m), action: "cat /tmp/m/a", allowed: "data", class: "file", op: "open"},
		{name: "file read", rule: block("file read", m), action: "cat /tmp/m/a", allowed: "data", class: "file", op: "read"},
		{name: "file getattr", rule: block("file getattr", m), action: "ls -l /tmp/m/a", allowed: "/tmp/m/a", class: "file", op: "getattr"},
		{name: "file mmap", rule: block("file mmap", m), action: "mmapfile /tmp/m/a", allowed: "mapped d", class: "file", op: "mmap"},
		{name: "file exec", rule: block("file exec", m), action: "/tmp/m/busybox echo ran", allowed: "ran", class: "file", op: "exec"},
		{name: "exec", rule: block("exec", m), action: "/tmp/m/busybox echo ran", allowed: "ran", class: "exec"},
		// The script is allowed; its interpreter (the next step of the
		// same exec) is refused.
		{name: "exec interpreter", rule: block("exec", `fileEq("/tmp/m/busybox")`), action: "/tmp/m/s.sh", allowed: "script-ran", class: "exec"},
		{name: "exec kill", rule: "exec default: allow\n  t: fileEq(\"/tmp/m/busybox\") kill\n", action: "/tmp/m/busybox echo ran; echo status=$?", allowed: "ran", denied: "status=137", class: "exec"},
		// busybox insmod tries finit_module, then init_module: two loads,
		// both refused. Allowed, the kernel refuses it as already loaded.
		{name: "module load", rule: block("module load", `moduleEq("virtio_ring")`), action: "insmod /tmp/m/mod.ko", allowed: "File exists", class: "module", op: "load", records: 2},
		{name: "module unload", rule: block("module unload", `moduleEq("nosuchmod")`), action: "rmmod nosuchmod", allowed: "No such file", class: "module", op: "unload"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.denied == "" {
				c.denied = "Disk quota exceeded"
			}
			if c.records == 0 {
				c.records = 1
			}
			if r := guestSh(t, vm, mediationSetup); !strings.Contains(r.stdout, "setup-ok") {
				t.Fatalf("setup: %q %q", r.stdout, r.stderr)
			}
			p := writePolicy(t, dir, fmt.Sprintf("case%d.policy", i), openBase+c.rule)
			loadPolicy(t, vm, p)
			before := len(caseRecords(t, vm, c))
			r := guestSh(t, vm, c.action)
			out := r.stdout + r.stderr
			if !strings.Contains(out, c.denied) || strings.Contains(r.stdout, c.allowed) {
				t.Fatalf("with rule t: %q gave %q; want %q and not %q", c.action, out, c.denied, c.allowed)
			}
			if got := len(caseRecords(t, vm, c)) - before; got != c.records {
				t.Errorf("audit records of rule t for %s %s: %d new, want %d", c.class, c.op, got, c.records)
			}
			loadPolicy(t, vm, base)
			if r := guestSh(t, vm, mediationSetup); !strings.Contains(r.stdout, "setup-ok") {
				t.Fatalf("setup: %q %q", r.stdout, r.stderr)
			}
			r = guestSh(t, vm, c.action)
			if !strings.Contains(r.stdout+r.stderr, c.allowed) || strings.Contains(r.stdout+r.stderr, "Disk quota exceeded") {
				t.Fatalf("without the rule: %q gave %q %q; want %q", c.action, r.stdout, r.stderr, c.allowed)
			}
		})
	}

	t.Run("a rule no gate enforces: refused, the old policy stays", func(t *testing.T) {
		deny := writePolicy(t, dir, "deny-unlink.policy", openBase+block("file unlink", m))
		loadPolicy(t, vm, deny)
		seq := status(t, vm).Policy.Seq
		// Allows unlink again, but names the network, which this VM has not.
		bad := writePolicy(t, dir, "needs-net.policy", openBase+"net default: deny\n  web: portEq(80) allow\n")
		r := gv(t, time.Minute, "policy", "load", vm, bad)
		if r.code == 0 || !strings.Contains(r.stderr, "needs-net.policy:4:") || !strings.Contains(r.stderr, "--net") || !strings.Contains(r.stderr, "stays") {
			t.Fatalf("policy load of a net rule on a VM without --net: exit %d stderr %q", r.code, r.stderr)
		}
		ipc := writePolicy(t, dir, "ipc.policy", openBase+"call default: deny\n")
		if r := gv(t, time.Minute, "policy", "load", vm, ipc); r.code == 0 || !strings.Contains(r.stderr, "no gate for IPC calls") {
			t.Fatalf("policy load of a call rule: exit %d stderr %q", r.code, r.stderr)
		}
		if st := status(t, vm); st.Policy == nil || st.Policy.Seq != seq {
			t.Fatalf("policy after refused loads: %+v, want seq %d", st.Policy, seq)
		}
		guestSh(t, vm, mediationSetup)
		if r := guestSh(t, vm, "rm /tmp/m/a"); !strings.Contains(r.stderr, "Disk quota exceeded") {
			t.Fatalf("rm under the policy still in force: %q %q", r.stdout, r.stderr)
		}
		// An advisory class is accepted, reported as not enforced.
		adv := writePolicy(t, dir, "advisory.policy", openBase+"advisory call;\ncall default: deny\n")
		loadPolicy(t, vm, adv)
		if st := status(t, vm); st.Policy == nil || len(st.Policy.NotEnforced) != 1 || !strings.Contains(st.Policy.NotEnforced[0], "call default") {
			t.Fatalf("advisory policy: status %+v; want the call block listed as not enforced", st.Policy)
		}
		loadPolicy(t, vm, base)
	})
}

// caseRecords returns the audit records of rule t for the case's event.
func caseRecords(t *testing.T, vm string, c mediationCase) []auditRecord {
	t.Helper()
	var out []auditRecord
	for _, rec := range auditRecords(t, vm, "--rule", "t") {
		if rec.Event.Class == c.class && rec.Event.Op == c.op {
			out = append(out, rec)
		}
	}
	return out
}

// TestRunPolicyRefusals: a policy that does not compile, that states a
// rule no gate of the VM enforces, or whose gate cannot be armed starts
// nothing: run fails, no QEMU and no runtime directory are left.
func TestRunPolicyRefusals(t *testing.T) {
	needVM(t)
	dir := t.TempDir()
	syntax := writePolicy(t, dir, "syntax.policy", openBase+"open default: allow\n  fileEq(\"/etc/passwd\" deny\n")
	netless := writePolicy(t, dir, "netless.policy", openBase+"net default: deny\n")
	armed := writePolicy(t, dir, "armed.policy", openBase+"file unlink default: allow\n  t: fileEq(\"/x\") deny\n")
	for _, c := range []struct {
		name, policy string
		env          []string
		want         []string
	}{
		{"syntax error", syntax, nil, []string{"syntax.policy:5:", "expected"}},
		{"a rule no gate enforces", netless, nil, []string{"netless.policy:4:1", "--net"}},
		{"a gate that cannot be armed", armed, []string{"GATEVISOR_TEST_FAIL_APPLY=kernel"}, []string{"failed closed", "kernel gate"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := "refuse-" + strings.ReplaceAll(c.name, " ", "-")
			if len(name) > 32 {
				name = name[:32]
			}
			r := gvEnv(t, readyTimeout+time.Minute, c.env, "run", "--detach", "--name", name, "--policy", c.policy, "--ready-timeout", readyTimeout.String())
			if r.code == 0 {
				gv(t, time.Minute, "stop", name, "--force")
				t.Fatalf("run --policy %s: exit 0\n%s", c.policy, r.stdout)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("run --policy %s: stderr lacks %q:\n%s", filepath.Base(c.policy), w, r.stderr)
				}
			}
			waitNoQEMU(t, name, 30*time.Second)
			deadline := time.Now().Add(30 * time.Second)
			for {
				_, err := os.Stat(filepath.Join(env.runtimeDir, name))
				if os.IsNotExist(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("runtime directory of %s left behind", name)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// TestPolicyTransaction: a reload whose second gate (the network gate's
// step, failing by injection) fails leaves every gate on the old policy:
// the kernel gate's traps are put back, the network and API gates decide
// as before, the sequence number and digest do not move.
func TestPolicyTransaction(t *testing.T) {
	needVM(t)
	const vm = "txn"
	dir := t.TempDir()
	old := writePolicy(t, dir, "old.policy", openBase+`file unlink default: allow
  t: filePrefixEq("/tmp/txn/") deny(EDQUOT)
net default: allow
`)
	next := writePolicy(t, dir, "new.policy", openBase+`net default: deny(ECONNREFUSED)
  dhcp: protoEq("udp") and (portEq(67) or localPortEq(68)) allow
`)
	args := []string{"run", "--detach", "--name", vm, "--policy", old, "--net", "isolated:it-" + vm, "--ready-timeout", readyTimeout.String()}
	t.Cleanup(func() {
		gv(t, 2*time.Minute, "stop", vm, "--force")
		waitNoQEMU(t, vm, 30*time.Second)
	})
	if r := gvEnv(t, readyTimeout+time.Minute, []string{"GATEVISOR_TEST_FAIL_APPLY=net"}, args...); r.code != 0 {
		t.Fatalf("run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	leaseIPv4(t, vm, "10.0.2.")
	oldOnly := func(when string) {
		t.Helper()
		r := guestSh(t, vm, "mkdir -p /tmp/txn && touch /tmp/txn/f && rm /tmp/txn/f; timeout 20 wget -qO- http://10.0.2.2/ | head -c 20; echo; echo done")
		if !strings.Contains(r.stderr, "Disk quota exceeded") || !strings.Contains(r.stdout, "done") || strings.Contains(r.stderr, "refused") || len(strings.TrimSpace(strings.TrimSuffix(r.stdout, "done\n"))) == 0 {
			t.Fatalf("%s: the old policy's unlink rule and web allow should hold: stdout %q stderr %q", when, r.stdout, r.stderr)
		}
	}
	oldOnly("before the reload")
	st := status(t, vm)
	r := gv(t, 2*time.Minute, "policy", "load", vm, next)
	if r.code == 0 || !strings.Contains(r.stderr, "the net gate failed to apply") || !strings.Contains(r.stderr, "stays in force on every gate") {
		t.Fatalf("policy load with the network gate failing: exit %d stderr %q", r.code, r.stderr)
	}
	after := status(t, vm)
	if after.Policy == nil || after.Policy.Seq != st.Policy.Seq || after.Policy.Digest != st.Policy.Digest {
		t.Fatalf("policy after the failed transaction: %+v, want %+v", after.Policy, st.Policy)
	}
	if after.SyscallGate == nil || st.SyscallGate == nil || after.SyscallGate.Breakpoints != st.SyscallGate.Breakpoints {
		t.Fatalf("kernel gate after the failed transaction: %+v, want %+v", after.SyscallGate, st.SyscallGate)
	}
	oldOnly("after the failed reload")
}

// TestDefaultPolicyFromBoot: the shipped default policy from the first
// instruction of init, on the default kit, in root's runtime directory:
// the guest boots and works, the network works, a module that is not the
// kit's is refused at boot (by the device's own rc.local) and after; a
// viewer (uid 1000) may read the status but not stop the VM.
func TestDefaultPolicyFromBoot(t *testing.T) {
	needVM(t)
	if os.Geteuid() != 0 {
		testvm.Skip(t, "needs root: the VM runs in /run/gatevisor and the viewer is uid 1000: run the tests as root (CI does)")
	}
	vm := fmt.Sprintf("it-iot-%d", os.Getpid())
	dir := t.TempDir()
	rcLocal := filepath.Join(dir, "rc.local")
	writeFile(t, rcLocal, `#!/bin/sh
# A module file that is not the kit's, loaded at boot.
cp "$(find /lib/modules -name virtio_ring.ko | head -1)" /tmp/boot-evil.ko
echo >> /tmp/boot-evil.ko
insmod /tmp/boot-evil.ko > /run/boot-insmod.txt 2>&1
echo "status=$?" >> /run/boot-insmod.txt
`)
	if err := os.Chmod(rcLocal, 0o755); err != nil {
		t.Fatal(err)
	}
	// Root's own runtime directory: the one other users' CLIs find.
	sys := []string{"GATEVISOR_RUNTIME_DIR="}
	gvSys := func(timeout time.Duration, args ...string) result { return gvEnv(t, timeout, sys, args...) }
	t.Cleanup(func() {
		gvSys(2*time.Minute, "stop", vm, "--force")
		for deadline := time.Now().Add(30 * time.Second); ; {
			if _, err := os.Stat(filepath.Join("/run/gatevisor", vm)); os.IsNotExist(err) || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	r := gvSys(readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--policy", repoPolicy(t, "iot-default.policy"),
		"--net", "isolated:it-iot", "--add", rcLocal+":/etc/rc.local", "--ready-timeout", readyTimeout.String())
	if r.code != 0 {
		t.Fatalf("run --policy iot-default.policy --net isolated: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	sh := func(script string) result {
		return gvSys(3*time.Minute, "exec", vm, "--timeout", "150s", "--", "sh", "-c", script)
	}
	t.Run("boots, exec works, the network works", func(t *testing.T) {
		r := sh(`uname -r; ip -4 addr show eth0 | grep -c 'inet 10.0.2.'; nslookup gateway.gatevisor 10.0.2.2 | grep -c 10.0.2.2`)
		lines := strings.Fields(r.stdout)
		if r.code != 0 || len(lines) != 3 || lines[1] != "1" || lines[2] == "0" {
			t.Fatalf("exec: exit %d stdout %q stderr %q; want the release, a DHCP lease and a DNS answer", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("a module not the kit's: refused at boot and after", func(t *testing.T) {
		r := sh("cat /run/boot-insmod.txt; insmod /tmp/boot-evil.ko; echo after=$?")
		// iot-default refuses modules with EPERM ("Operation not permitted").
		if !strings.Contains(r.stdout, "Operation not permitted") || !strings.Contains(r.stdout, "status=1") || !strings.Contains(r.stdout, "after=1") {
			t.Fatalf("boot-time insmod: stdout %q stderr %q", r.stdout, r.stderr)
		}
		file := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
		a := gvSys(time.Minute, "audit", "--file", file, "--class", "module", "--json")
		var boot, kit int
		for _, line := range strings.Split(strings.TrimSpace(a.stdout), "\n") {
			var rec auditRecord
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Rule == "module default" && rec.Event.Path == "/tmp/boot-evil.ko" {
				boot++
			}
			if strings.Contains(line, `"kit"`) {
				kit++
			}
		}
		if boot < 2 {
			t.Errorf("audit: %d refusals of /tmp/boot-evil.ko, want the boot-time one and the later one:\n%s%s", boot, a.stdout, a.stderr)
		}
		if st := statusSys(t, vm); st.Policy == nil || st.Policy.Seq != 1 || len(st.Gates) != 3 || !st.Gates[0].Armed || !st.Gates[1].Armed || !st.Gates[2].Armed {
			t.Errorf("status: policy %+v gates %+v; want seq 1 and the kernel, net and API gates armed", st.Policy, st.Gates)
		}
	})
	t.Run("the IDS finds nothing under the armed default policy", func(t *testing.T) {
		// The gates' traps (breakpoints, watchpoints) and the refused
		// module must not look like a rootkit to the IDS.
		r := gvSys(5*time.Minute, "ids", "check", "--vm", vm)
		if r.code != 0 {
			t.Fatalf("ids check under iot-default: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("a viewer reads the status, cannot stop the VM", func(t *testing.T) {
		bin := copyBinaryForOthers(t)
		t.Cleanup(func() { os.RemoveAll("/tmp/gatevisor-1000") })
		as := func(uid, gid uint32, args ...string) result {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/tmp"}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
			var o, e strings.Builder
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			res := result{stdout: o.String(), stderr: e.String()}
			if ee, ok := err.(*exec.ExitError); ok {
				res.code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("uid %d: %v: %v", uid, args, err)
			}
			return res
		}
		viewer := func(args ...string) result { return as(1000, 1000, args...) }
		if r := viewer("status", vm); r.code != 0 || !strings.Contains(r.stdout, vm) {
			t.Fatalf("viewer status: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		if r := viewer("stop", vm); r.code == 0 || !strings.Contains(r.stderr, "vm.stop refused for uid 1000") {
			t.Fatalf("viewer stop: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		if r := viewer("proc", "stop", vm, "1"); r.code == 0 || !strings.Contains(r.stderr, "proc.stop refused for uid 1000") {
			t.Fatalf("viewer proc stop: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		if st := statusSys(t, vm); st.State != api.StateRunning {
			t.Fatalf("after the viewer's stop: state %s", st.State)
		}
		// An operator may dump the guest's memory, but root's monitor
		// writes only a new file in a directory of the operator's, never
		// where the operator points it (/etc, a shared /tmp, a symlink).
		const opUID, opGID = 1001, 950
		for _, c := range []struct{ path, want string }{
			{"/etc/gv-dump.elf", "belongs to uid 0, not to the requester (uid 1001)"},
			{"/tmp/gv-dump.elf", "belongs to uid 0, not to the requester (uid 1001)"},
		} {
			if r := as(opUID, opGID, "dump", vm, "-o", c.path); r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("operator dump to %s: exit %d %q; want %q", c.path, r.code, r.stderr, c.want)
			}
			if _, err := os.Lstat(c.path); err == nil {
				os.Remove(c.path)
				t.Errorf("%s was written", c.path)
			}
		}
		opDir, err := os.MkdirTemp("", "gv-operator-*")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(opDir)
		if err := os.Chown(opDir, opUID, opGID); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/passwd", filepath.Join(opDir, "passwd.elf")); err != nil {
			t.Fatal(err)
		}
		if r := as(opUID, opGID, "dump", vm, "-o", filepath.Join(opDir, "passwd.elf")); r.code == 0 {
			t.Errorf("an operator's dump followed a symlink to /etc/passwd: %q", r.stdout)
		}
		if r := as(opUID, opGID, "dump", vm, "-o", filepath.Join(opDir, "guest.elf")); r.code != 0 {
			t.Errorf("operator dump into their own directory: exit %d %q", r.code, r.stderr)
		} else if fi, err := os.Stat(filepath.Join(opDir, "guest.elf")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != opUID || fi.Mode().Perm() != 0o600 {
			t.Errorf("the operator's dump: %v %v; want theirs, mode 0600", fi, err)
		}
		file := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
		a := gvSys(time.Minute, "audit", "--file", file, "--class", "api", "--verdict", "deny", "--json")
		if !strings.Contains(a.stdout, `"op":"vm.stop"`) || !strings.Contains(a.stdout, `"uid":1000`) {
			t.Errorf("no audit record of the viewer's refused stop:\n%s%s", a.stdout, a.stderr)
		}
	})
}

// statusSys is status for a VM in root's runtime directory.
func statusSys(t *testing.T, name string) api.Status {
	t.Helper()
	r := gvEnv(t, 30*time.Second, []string{"GATEVISOR_RUNTIME_DIR="}, "status", name, "--json")
	var st api.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s%s", err, r.stdout, r.stderr)
	}
	return st
}

// copyBinaryForOthers copies the binary under test where other users can
// run it (the run's temporary directory is closed to them).
func copyBinaryForOthers(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gatevisor-bin-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(env.bin)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "gatevisor")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPlantedStateFiles: another local user plants a symbolic link where
// gatevisor keeps a VM's state (its audit log, pointing at a file of the
// owner's) or a directory of their own there: run refuses with an error
// naming the path, writes nothing through the link, and leaves nothing.
func TestPlantedStateFiles(t *testing.T) {
	needVM(t)
	if os.Geteuid() != 0 {
		testvm.Skip(t, "needs root to plant files owned by another user (chown): run the tests as root (CI does)")
	}
	const other = 12345
	pol := writePolicy(t, t.TempDir(), "p.policy", openBase)
	for _, c := range []struct {
		name  string
		plant func(t *testing.T, state string) string // returns a file that must stay untouched, or ""
		want  string
	}{
		{"audit log is another user's symlink", func(t *testing.T, state string) string {
			victim := filepath.Join(t.TempDir(), "victim")
			writeFile(t, victim, "precious\n")
			link := filepath.Join(state, "audit.jsonl")
			if err := os.Symlink(victim, link); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(link, other, other); err != nil {
				t.Fatal(err)
			}
			return victim
		}, "audit.jsonl: it is a symbolic link"},
		{"state directory is another user's", func(t *testing.T, state string) string {
			if err := os.Chown(state, other, other); err != nil {
				t.Fatal(err)
			}
			return ""
		}, "belongs to uid 12345"},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := "plant-" + strconv.Itoa(len(c.name))
			state := filepath.Join(env.stateDir, "gatevisor", "vms", name)
			if err := os.MkdirAll(state, 0o700); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(state) })
			victim := c.plant(t, state)
			r := gv(t, 2*time.Minute, "run", "--detach", "--name", name, "--policy", pol)
			if r.code == 0 {
				gv(t, time.Minute, "stop", name, "--force")
				t.Fatalf("run with a planted state file: exit 0")
			}
			if !strings.Contains(r.stderr, "refusing") || !strings.Contains(r.stderr, c.want) {
				t.Fatalf("run: stderr %q; want a refusal naming %q", r.stderr, c.want)
			}
			if victim != "" {
				if b, err := os.ReadFile(victim); err != nil || string(b) != "precious\n" {
					t.Fatalf("the link's target was written: %q %v", b, err)
				}
			}
			waitNoQEMU(t, name, 30*time.Second)
			if _, err := os.Stat(filepath.Join(env.runtimeDir, name)); !os.IsNotExist(err) {
				t.Fatalf("runtime directory of %s left behind: %v", name, err)
			}
		})
	}
}
