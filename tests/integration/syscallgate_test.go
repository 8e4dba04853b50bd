package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
)

// The syscall gate's end-to-end tests. One VM (TestSyscallGate) runs every
// single-vCPU case, moving between policies with 'policy load'; a second
// (TestSyscallGateTwoCPUs) runs two trapping processes at once.

// repoPolicy is a policy file of the repository's policies/ directory.
func repoPolicy(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "policies", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// bootGated starts VM name in the background with --policy and stops it
// when the test ends.
func bootGated(t *testing.T, name, policyFile string, extra ...string) {
	t.Helper()
	args := append([]string{"run", "--detach", "--name", name, "--policy", policyFile, "--ready-timeout", readyTimeout.String()}, extra...)
	t.Cleanup(func() {
		gv(t, 2*time.Minute, "stop", name, "--force")
		waitNoQEMU(t, name, 30*time.Second)
	})
	if r := gv(t, readyTimeout+time.Minute, args...); r.code != 0 {
		t.Fatalf("run %s --policy %s: exit %d\n%s%s", name, policyFile, r.code, r.stdout, r.stderr)
	}
}

// guestSh runs a shell script in the guest of VM name.
func guestSh(t *testing.T, name, script string) result {
	t.Helper()
	return gv(t, 3*time.Minute, "exec", name, "--timeout", "150s", "--", "sh", "-c", script)
}

// loadPolicy hot-loads file on VM name and returns the result.
func loadPolicy(t *testing.T, name, file string) api.PolicyResult {
	t.Helper()
	r := gv(t, 4*time.Minute, "policy", "load", name, file, "--json")
	if r.code != 0 {
		t.Fatalf("policy load %s: exit %d\n%s%s", file, r.code, r.stdout, r.stderr)
	}
	var res api.PolicyResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("policy load --json: %v\n%s", err, r.stdout)
	}
	return res
}

func writePolicy(t *testing.T, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// auditRecords reads VM name's audit log through 'gatevisor audit --json'.
func auditRecords(t *testing.T, name string, filter ...string) []auditRecord {
	t.Helper()
	file := filepath.Join(env.stateDir, "gatevisor", "vms", name, "audit.jsonl")
	r := gv(t, time.Minute, append([]string{"audit", "--file", file, "--json"}, filter...)...)
	if r.code != 0 {
		t.Fatalf("audit --file %s: exit %d: %s", file, r.code, r.stderr)
	}
	var out []auditRecord
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if line == "" {
			continue
		}
		var rec auditRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit record %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

type auditRecord struct {
	Verdict string `json:"verdict"`
	Errno   int    `json:"errno"`
	Rule    string `json:"rule"`
	Event   struct {
		Class   string  `json:"class"`
		Op      string  `json:"op"`
		Path    string  `json:"path"`
		Module  string  `json:"module"`
		Args    []int64 `json:"args"`
		Subject struct {
			PID  int    `json:"pid"`
			Comm string `json:"comm"`
			Exe  string `json:"exe"`
			UID  int    `json:"uid"`
		} `json:"subject"`
	} `json:"event"`
}

// handlerAddr returns the handler address of syscall symbol sym from
// 'ids syscalls --json'.
func handlerAddr(t *testing.T, name, sym string) uint64 {
	t.Helper()
	r := gv(t, 2*time.Minute, "ids", "syscalls", "--vm", name, "--json")
	if r.code != 0 {
		t.Fatalf("ids syscalls: exit %d: %s", r.code, r.stderr)
	}
	var rep struct {
		Entries []struct {
			Name string `json:"name"`
			Addr uint64 `json:"addr"`
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("ids syscalls --json: %v", err)
	}
	for _, e := range rep.Entries {
		if e.Name == sym {
			return e.Addr
		}
	}
	t.Fatalf("ids syscalls: no entry %s", sym)
	return 0
}

// kernelPhys translates a kernel-text address with the banner report's
// KASLR offsets: the kernel is linked at 0xffffffff81000000 and loaded at
// phys_base, both moved by the slide (phys = va - (start + slide) + phys_base).
func kernelPhys(t *testing.T, name string, va uint64) uint64 {
	t.Helper()
	r := gv(t, time.Minute, "ids", "banner", "--vm", name, "--json")
	var b struct {
		Slide    uint64 `json:"kaslr_slide"`
		PhysBase uint64 `json:"phys_base"`
		Verified bool   `json:"verified"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || !b.Verified {
		t.Fatalf("ids banner: %v %+v\n%s%s", err, b, r.stdout, r.stderr)
	}
	const startKernel = 0xffffffff81000000
	return va - (startKernel + b.Slide) + b.PhysBase
}

var fileLineCol = regexp.MustCompile(`\.policy:\d+:\d+: `)

func TestSyscallGate(t *testing.T) {
	needVM(t)
	const vm = "sgate"
	dir := t.TempDir()
	// A static helper that calls openat with a real directory fd.
	openat := filepath.Join(dir, "openat")
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", openat, "testdata/openat.c").CombinedOutput(); err != nil {
		t.Fatalf("build testdata/openat.c (needs gcc and libc6-dev, which scripts/install-deps installs): %v\n%s", err, out)
	}
	// And one that enters the kernel through the i386 ABI (int 0x80).
	abi32 := filepath.Join(dir, "abi32")
	if out, err := exec.Command("gcc", "-static", "-no-pie", "-O2", "-o", abi32, "testdata/abi32.c").CombinedOutput(); err != nil {
		t.Fatalf("build testdata/abi32.c: %v\n%s", err, out)
	}
	// And one that makes the ptrace and delete_module calls iot-default
	// decides at LSM hooks.
	ptracer := filepath.Join(dir, "ptrace")
	if out, err := exec.Command("gcc", "-static", "-no-pie", "-O2", "-o", ptracer, "testdata/ptrace.c").CombinedOutput(); err != nil {
		t.Fatalf("build testdata/ptrace.c: %v\n%s", err, out)
	}
	// A network, so that iot-default (whose net rules need one) can be loaded.
	bootGated(t, vm, repoPolicy(t, "seed-002-syscall.policy"), "--add", openat+":/usr/bin/openat", "--add", abi32+":/usr/bin/abi32",
		"--add", ptracer+":/usr/bin/ptrace", "--net", "isolated:it-"+vm)

	t.Run("seed policy: exact errno", func(t *testing.T) {
		r := guestSh(t, vm, "cat /etc/passwd")
		if r.code != 1 || r.stdout != "" || strings.TrimSpace(r.stderr) != "cat: can't open '/etc/passwd': Operation not permitted" {
			t.Fatalf("cat /etc/passwd: exit %d stdout %q stderr %q; want 1 and exactly \"Operation not permitted\"", r.code, r.stdout, r.stderr)
		}
		// Every open flavour is trapped: openat via cat, open via the shell's redirection.
		if r := guestSh(t, vm, ": </etc/passwd"); r.code == 0 || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("redirect from /etc/passwd: exit %d %q", r.code, r.stderr)
		}
	})
	t.Run("unrelated files unaffected", func(t *testing.T) {
		r := guestSh(t, vm, "cat /etc/hostname; cat /etc/group >/dev/null && echo group-ok; echo done")
		if r.code != 0 || r.stdout != "gatevisor-guest\ngroup-ok\ndone\n" {
			t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("path relative to a directory fd", func(t *testing.T) {
		// openat(open("/etc"), "passwd") is /etc/passwd: the rule must match.
		if r := guestSh(t, vm, "openat /etc passwd"); r.code != 1 || r.stdout != "openat: Operation not permitted\n" {
			t.Fatalf("openat /etc passwd: exit %d stdout %q stderr %q; want the rule's EPERM", r.code, r.stdout, r.stderr)
		}
		if r := guestSh(t, vm, "openat /etc hostname"); r.code != 0 || !strings.HasPrefix(r.stdout, "read ") {
			t.Fatalf("openat /etc hostname: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if r := guestSh(t, vm, "cd /etc && cat passwd"); r.code == 0 || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("cat passwd in /etc: exit %d %q", r.code, r.stderr)
		}
	})
	t.Run("path on a page the process has not mapped yet", func(t *testing.T) {
		// A background job's fresh fork opens /dev/null with the string in
		// busybox's read-only data, a page the child has not touched: the
		// gate has the kernel fault it in and decides on the real path
		// instead of failing closed.
		r := guestSh(t, vm, "for i in 1 2 3 4 5 6; do (true </dev/null && echo ok$i) & done; wait")
		for i := 1; i <= 6; i++ {
			if !strings.Contains(r.stdout, fmt.Sprintf("ok%d\n", i)) {
				t.Fatalf("background job %d could not open /dev/null: stdout %q stderr %q", i, r.stdout, r.stderr)
			}
		}
		if strings.Contains(r.stderr, "not permitted") {
			t.Fatalf("a legitimate open was denied: %q", r.stderr)
		}
	})

	t.Run("symlinks and other names of a denied file", func(t *testing.T) {
		// The gate decides on the file the kernel resolved, not on the
		// name the process wrote.
		for _, c := range []string{
			"ln -sf /etc/passwd /tmp/pw && cat /tmp/pw",
			"ln -sfn /etc /tmp/etc2 && cat /tmp/etc2/passwd",
			"ln -sf /tmp/pw /tmp/pw2 && cat /tmp/pw2",
			"cat /etc/../etc//./passwd",
			"cd /tmp && cat ../etc/passwd",
		} {
			if r := guestSh(t, vm, c); r.code == 0 || !strings.Contains(r.stderr, "Operation not permitted") {
				t.Errorf("%s: exit %d stdout %q stderr %q; want EPERM", c, r.code, r.stdout, r.stderr)
			}
		}
		if r := guestSh(t, vm, "ln -sf /etc/hostname /tmp/hn && cat /tmp/hn"); r.code != 0 || r.stdout != "gatevisor-guest\n" {
			t.Errorf("a symlink to an allowed file: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		recs := auditRecords(t, vm, "--class", "syscall", "--verdict", "deny")
		found := false
		for _, rec := range recs {
			if rec.Event.Path == "/etc/passwd" && rec.Event.Subject.Comm == "cat" {
				found = true
			}
			if strings.HasPrefix(rec.Event.Path, "/tmp/") {
				t.Errorf("audit record names the link, not the file: %+v", rec.Event)
			}
		}
		if !found {
			t.Errorf("no deny record with the resolved path /etc/passwd among %d", len(recs))
		}
	})
	t.Run("a denied create leaves no file", func(t *testing.T) {
		// filePrefixEq("/etc/cron.d") is decided before the file exists.
		r := guestSh(t, vm, "mkdir -p /etc/cron.d; echo '* * * * * /tmp/x' >/etc/cron.d/job; echo rc=$?; ls -A /etc/cron.d | wc -l")
		if r.stdout != "rc=1\n0\n" || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("create in /etc/cron.d: stdout %q stderr %q; want rc=1, EPERM and no file", r.stdout, r.stderr)
		}
		if r := guestSh(t, vm, "echo hi >/tmp/created && cat /tmp/created"); r.stdout != "hi\n" {
			t.Fatalf("an allowed create: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("the i386 entry (int 0x80)", func(t *testing.T) {
		if r := guestSh(t, vm, "abi32 open /etc/passwd"); r.code != 1 || r.stdout != "abi32 open: Operation not permitted\n" {
			t.Fatalf("abi32 open /etc/passwd: exit %d %q %q; want EPERM", r.code, r.stdout, r.stderr)
		}
		if r := guestSh(t, vm, "abi32 open /etc/hostname"); r.code != 0 {
			t.Fatalf("abi32 open /etc/hostname: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		// A syscall decided at its handler is trapped at both entries.
		p := writePolicy(t, dir, "mkdir.policy", openBase+`open default: allow
  fileEq("/etc/passwd") or filePrefixEq("/etc/cron.d") deny(EPERM)

syscall default: allow
  no_forbidden_dir: opEq("mkdir") and fileEq("/tmp/forbidden") deny(EACCES)
`)
		res := loadPolicy(t, vm, p)
		syms := map[string]bool{}
		for _, bp := range res.Breakpoints {
			syms[bp.Symbol] = true
			// The LSM hooks are trapped by read watchpoints on their list
			// heads (gate/syscall/watch.go) or, once the gate has its own
			// page, on its entries first in their lists (ownentry.go),
			// which cost other code almost nothing under TCG, not by
			// breakpoints at their entries.
			head := "security_hook_heads." + strings.TrimPrefix(bp.Symbol, "security_")
			if strings.HasPrefix(bp.Symbol, "security_") && (!bp.Watchpoint || bp.Site != "read of "+head && bp.Site != "read of the gate's entry on "+head) {
				t.Errorf("%s trapped at %s (%q); want a watchpoint on its list head or the gate's entry in it", bp.Symbol, bp.Addr, bp.Site)
			}
		}
		if !syms["__x64_sys_mkdir"] || !syms["__ia32_sys_mkdir"] || !syms["security_file_open"] {
			t.Errorf("breakpoints %v; want __x64_sys_mkdir, __ia32_sys_mkdir and security_file_open", syms)
		}
		r := guestSh(t, vm, "abi32 mkdir /tmp/forbidden; mkdir /tmp/forbidden; abi32 mkdir /tmp/allowed; ls -d /tmp/forbidden /tmp/allowed")
		if r.stdout != "abi32 mkdir: Permission denied\nabi32 mkdir: ok\n/tmp/allowed\n" || !strings.Contains(r.stderr, "Permission denied") {
			t.Fatalf("mkdir through both entries: stdout %q stderr %q", r.stdout, r.stderr)
		}
	})

	// The handler of ptrace is not trapped by the seed policy: keep its
	// bytes from live RAM to compare after breakpoints come and go.
	ctx := context.Background()
	finitVA := handlerAddr(t, vm, "__x64_sys_ptrace")
	finitPA := kernelPhys(t, vm, finitVA)
	before, err := client(vm).ReadPhysical(ctx, finitPA, 64)
	if err != nil {
		t.Fatalf("read handler bytes at %#x: %v", finitPA, err)
	}

	t.Run("failed reload keeps the old policy", func(t *testing.T) {
		bad := writePolicy(t, dir, "bad.policy", "open default: allow\n  fileEq(\"/etc/passwd\" deny(EPERM)\n")
		r := gv(t, time.Minute, "policy", "load", vm, bad)
		if r.code == 0 || !fileLineCol.MatchString(r.stderr) || !strings.Contains(r.stderr, "bad.policy:2:") || !strings.Contains(r.stderr, "stays") {
			t.Fatalf("policy load of a syntax error: exit %d stderr %q; want an error at bad.policy:2:col and the old policy kept", r.code, r.stderr)
		}
		if r := guestSh(t, vm, "cat /etc/passwd"); r.code != 1 || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("after the failed reload, cat /etc/passwd: exit %d %q", r.code, r.stderr)
		}
	})

	var iot api.PolicyResult
	t.Run("hot reload: iot-default", func(t *testing.T) {
		// Where ptrace is not the policy's, the kernel lets a process
		// attach to its own child.
		if r := guestSh(t, vm, "ptrace attach"); r.stdout != "attach: ok\n" {
			t.Fatalf("ptrace attach under the seed policy: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		iot = loadPolicy(t, vm, repoPolicy(t, "iot-default.policy"))
		if len(iot.Breakpoints) == 0 {
			t.Fatalf("iot-default: no traps: %+v", iot)
		}
		// Issue 19: on a 1-vCPU TCG VM the shipped policy costs no
		// execution breakpoint (each slows all guest code under TCG):
		// ptrace and module unload are decided at LSM hooks too.
		for _, bp := range iot.Breakpoints {
			if !bp.Watchpoint {
				t.Errorf("iot-default sets an execution breakpoint: %+v", bp)
			}
		}
		for _, bp := range iot.Breakpoints {
			va, err1 := strconv.ParseUint(bp.Addr, 0, 64)
			pa, err2 := strconv.ParseUint(bp.PhysAddr, 0, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("breakpoint %+v: %v %v", bp, err1, err2)
			}
			// The page-table translation agrees with the banner's offsets.
			if got := kernelPhys(t, vm, va); got != pa {
				t.Errorf("%s at %#x: page tables say %#x, banner offsets %#x", bp.Symbol, va, pa, got)
			}
			if bp.Symbol == "__x64_sys_ptrace" && va != finitVA {
				t.Errorf("ptrace breakpoint at %#x, ids syscalls says %#x", va, finitVA)
			}
		}
		// The same command the seed policy denied now works, without a restart.
		if r := guestSh(t, vm, "cat /etc/passwd"); r.code != 0 || !strings.Contains(r.stdout, "root:") {
			t.Fatalf("cat /etc/passwd under iot-default: exit %d %q", r.code, r.stderr)
		}
		// /etc/shadow: denied to uid 1000 with the policy's EACCES, open to
		// root. The file is made world-readable first, so that the denial is
		// the gate's and not the guest kernel's permission check.
		r := guestSh(t, vm, "chmod 644 /etc/shadow && su user -c 'cat /etc/shadow'")
		if r.code != 1 || strings.TrimSpace(r.stderr) != "cat: can't open '/etc/shadow': Permission denied" {
			t.Fatalf("uid 1000 cat /etc/shadow: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if r := guestSh(t, vm, "cat /etc/shadow"); r.code != 0 || !strings.HasPrefix(r.stdout, "root:") {
			t.Fatalf("root cat /etc/shadow: exit %d %q", r.code, r.stderr)
		}
	})
	t.Run("insmod: only the kit's modules", func(t *testing.T) {
		// A module file that is not the kit's (one byte more: another
		// SHA-256) is refused by the policy's module default (EPERM), before the
		// kernel sees it; the kit's own file passes the gate and the
		// kernel answers EEXIST (it is loaded).
		r := guestSh(t, vm, "m=$(find /lib/modules -name evdev.ko | head -1); cp $m /tmp/evdev.ko; echo >> /tmp/evdev.ko; insmod /tmp/evdev.ko; echo other=$?; insmod $m; echo kit=$?")
		if !strings.Contains(r.stdout, "other=1") || !strings.Contains(r.stderr, "can't insert '/tmp/evdev.ko': Operation not permitted") ||
			!strings.Contains(r.stderr, "File exists") {
			t.Fatalf("insmod: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		// Every module file of the kit is loaded at boot; unloading one is
		// denied too (delete_module, with the policy's EPERM), through
		// either entry, and it stays.
		r = guestSh(t, vm, "rmmod button; ptrace rmmod32 button; grep -c '^button ' /proc/modules")
		if r.code != 0 || r.stdout != "rmmod32: Operation not permitted\n1\n" || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("rmmod button: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("ptrace: no attach, traceme works", func(t *testing.T) {
		// iot-default denies PTRACE_ATTACH and PTRACE_SEIZE (through
		// either entry) with EPERM; PTRACE_TRACEME and the pokes of a
		// tracer its tracee chose are the kernel's to allow.
		r := guestSh(t, vm, "ptrace attach; ptrace seize; ptrace attach32; ptrace traceme")
		want := "attach: Operation not permitted\nseize: Operation not permitted\nattach32: Operation not permitted\ntraceme: ok\n"
		if r.stdout != want {
			t.Fatalf("ptrace probes: exit %d stdout %q stderr %q; want %q", r.code, r.stdout, r.stderr, want)
		}
		var attaches, unloads int
		for _, rec := range auditRecords(t, vm, "--verdict", "deny") {
			e := rec.Event
			switch {
			case e.Class == "syscall" && e.Op == "ptrace" && rec.Rule == "ptrace_attach" && rec.Errno == 1 && e.Subject.Comm == "ptrace" && len(e.Args) > 0 && (e.Args[0] == 16 || e.Args[0] == 0x4206):
				attaches++
			case e.Class == "module" && e.Op == "unload" && e.Module == "button" && rec.Errno == 1:
				unloads++
			}
		}
		if attaches != 3 || unloads != 2 {
			t.Errorf("audit: %d ptrace attach denies (want 3), %d unload denies of button (want 2)", attaches, unloads)
		}
	})
	t.Run("exec from /tmp killed, /bin works", func(t *testing.T) {
		r := guestSh(t, vm, "cp /bin/busybox /tmp/x; /tmp/x echo ran; echo status=$?; /bin/busybox echo bin-ok")
		if !strings.Contains(r.stdout, "status=137") || strings.Contains(r.stdout, "ran") || !strings.Contains(r.stdout, "bin-ok") {
			t.Fatalf("exec from /tmp: exit %d stdout %q stderr %q; want status 137 (SIGKILL) and /bin working", r.code, r.stdout, r.stderr)
		}
		// Through a symlink elsewhere, the program is still /tmp/x; a link
		// in /tmp to /bin/busybox runs /bin/busybox.
		r = guestSh(t, vm, "ln -sf /tmp/x /root/looks-fine; /root/looks-fine echo ran; echo status=$?; ln -sf /bin/busybox /tmp/echo; /tmp/echo link-ok")
		if !strings.Contains(r.stdout, "status=137") || strings.Contains(r.stdout, "ran") || !strings.Contains(r.stdout, "link-ok") {
			t.Fatalf("exec through symlinks: exit %d stdout %q stderr %q; want the /tmp program killed and the /bin one run", r.code, r.stdout, r.stderr)
		}
		// The kill is SIGKILL: the shell reports it, and the guest stays healthy.
		if !strings.Contains(r.stderr, "Killed") {
			t.Errorf("no 'Killed' from the shell: %q", r.stderr)
		}
	})
	t.Run("audit log", func(t *testing.T) {
		recs := auditRecords(t, vm, "--verdict", "deny,kill")
		want := map[string]bool{"seed passwd": false, "shadow": false, "module": false, "tmp exec": false}
		for _, rec := range recs {
			s := rec.Event.Subject
			switch {
			case rec.Event.Class == "syscall" && rec.Event.Path == "/etc/passwd" && rec.Verdict == "deny" && rec.Errno == 1 && s.Comm == "cat" && s.Exe == "/bin/busybox" && s.PID > 0:
				want["seed passwd"] = true
			case rec.Event.Path == "/etc/shadow" && rec.Rule == "shadow_owner_only" && rec.Errno == 13 && s.UID == 1000:
				want["shadow"] = true
			case rec.Event.Class == "module" && rec.Event.Op == "load" && rec.Rule == "module default" && s.Comm == "insmod":
				want["module"] = true
			case rec.Event.Class == "exec" && rec.Verdict == "kill" && rec.Event.Path == "/tmp/x" && rec.Rule == "no_tmp_exec":
				want["tmp exec"] = true
			}
		}
		for k, ok := range want {
			if !ok {
				t.Errorf("no audit record for %s among %d deny/kill records", k, len(recs))
			}
		}
		// The human-readable view names the rule and the path.
		file := filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl")
		r := gv(t, time.Minute, "audit", "--file", file, "--rule", "shadow_owner_only")
		if r.code != 0 || !strings.Contains(r.stdout, "/etc/shadow") || !strings.Contains(r.stdout, "deny") {
			t.Errorf("audit --rule shadow_owner_only: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("status counts the gate's stops", func(t *testing.T) {
		vmBefore := status(t, vm)
		before := vmBefore.SyscallGate
		if before == nil || before.Breakpoints == 0 || before.Stops == 0 || before.Decided == 0 || before.Stops < before.Decided+before.Skipped {
			t.Fatalf("syscall_gate status %+v; want breakpoints and counted stops", before)
		}
		// One cat: its open and the exec's own open of busybox are hook
		// stops, decided (iot-default's file rules see both).
		guestSh(t, vm, "cat /etc/hostname >/dev/null")
		vmAfter := status(t, vm)
		after := vmAfter.SyscallGate
		if after.Decided <= before.Decided || after.Stops <= before.Stops || after.HandleMicros <= before.HandleMicros {
			t.Errorf("after a cat: %+v, before %+v; want more stops, decided", after, before)
		}
		// The VM's stopped time, by QEMU's STOP and RESUME timestamps:
		// every gate stop is one stop of the VM (one vCPU), which lasts
		// at least the monitor's handling of it (by the monitor's clock).
		stops, handled := after.Stops-before.Stops, after.HandleMicros-before.HandleMicros
		if n, d := vmAfter.StopIntervals-vmBefore.StopIntervals, vmAfter.StoppedMicros-vmBefore.StoppedMicros; n < stops || d < handled {
			t.Errorf("after a cat: the VM stopped %d times for %d µs; the gate stopped it %d times and handled the stops for %d µs", n, d, stops, handled)
		}
		if r := gv(t, time.Minute, "status", vm); !strings.Contains(r.stdout, "kernel gate:") || !strings.Contains(r.stdout, "stops") || !strings.Contains(r.stdout, "stopped:") {
			t.Errorf("status text: %q", r.stdout)
		}
		// Earlier subtests were denied (shadow) and allowed (the cat):
		// the kernel gate's verdicts count both, as do the API's.
		var kernel, apiGate api.GateStatus
		for _, g := range status(t, vm).Gates {
			switch g.Name {
			case "kernel":
				kernel = g
			case "api":
				apiGate = g
			}
		}
		if kernel.Decisions["allow"] == 0 || kernel.Decisions["deny"] == 0 || apiGate.Decisions["allow"] == 0 {
			t.Errorf("verdict counts: kernel gate %v, api gate %v; want allows and denies", kernel.Decisions, apiGate.Decisions)
		}
	})
	t.Run("process-scoped rule", func(t *testing.T) {
		p := writePolicy(t, dir, "only-me.policy", openBase+`# Only /tmp/busybox-only-me may not read /etc/hostname.
open default: allow
  only_me: fileEq("/etc/hostname") and exeEq("/tmp/busybox-only-me") deny(EACCES)

syscall default: allow
`)
		res := loadPolicy(t, vm, p)
		if len(res.Syscalls) != 1 || res.Syscalls[0] != "open" {
			t.Errorf("only-me policy traps %v; want open only", res.Syscalls)
		}
		// A copy of busybox whose name starts with "busybox", so that it
		// takes the applet from its first argument.
		r := guestSh(t, vm, "cp /bin/busybox /tmp/busybox-only-me; /tmp/busybox-only-me cat /etc/hostname; echo scoped=$?; cat /etc/hostname; /bin/busybox cat /etc/hostname")
		if r.stdout != "scoped=1\ngatevisor-guest\ngatevisor-guest\n" || !strings.Contains(r.stderr, "Permission denied") {
			t.Fatalf("process-scoped rule: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("rules removed: kernel text restored", func(t *testing.T) {
		// Back to iot-default (its traps again), then none.
		loadPolicy(t, vm, repoPolicy(t, "iot-default.policy"))
		armed, err := client(vm).ReadPhysical(ctx, finitPA, 64)
		if err != nil {
			t.Fatal(err)
		}
		none := writePolicy(t, dir, "none.policy", openBase)
		res := loadPolicy(t, vm, none)
		if len(res.Breakpoints) != 0 || res.Removed == 0 || res.TextRestored == nil || !*res.TextRestored {
			t.Fatalf("policy without syscall rules: %+v; want no breakpoints, some removed, text restored", res)
		}
		r := gv(t, time.Minute, "policy", "load", vm, none)
		if r.code != 0 || !strings.Contains(r.stdout, "kernel gate: 0 traps") {
			t.Errorf("policy load (text): %q %q", r.stdout, r.stderr)
		}
		after, err := client(vm).ReadPhysical(ctx, finitPA, 64)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(before, after) {
			t.Fatalf("__x64_sys_ptrace at %#x changed:\nbefore %x\nafter  %x", finitPA, before, after)
		}
		// Under TCG, QEMU keeps breakpoints outside guest memory; under
		// KVM they are int3 bytes the guest could see.
		if st := status(t, vm); st.Accel == "tcg" && !bytes.Equal(before, armed) {
			t.Errorf("TCG breakpoint visible in guest memory:\nbefore %x\narmed  %x", before, armed)
		}
		if r := guestSh(t, vm, "cat /etc/passwd >/dev/null && su user -c 'cat /etc/shadow' >/dev/null && echo free"); r.stdout != "free\n" {
			t.Fatalf("with no rules: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
	})
}

// TestSyscallGateTwoCPUs runs two guest processes that hit a trapped
// syscall at the same time on two vCPUs: every call is denied, none is
// allowed, nothing hangs.
func TestSyscallGateTwoCPUs(t *testing.T) {
	needVM(t)
	const vm = "sgate2"
	bootGated(t, vm, repoPolicy(t, "seed-002-syscall.policy"), "--cpus", "2")
	if st := status(t, vm); st.CPUs != 2 {
		t.Fatalf("cpus = %d", st.CPUs)
	}
	if r := guestSh(t, vm, "grep -c ^processor /proc/cpuinfo"); strings.TrimSpace(r.stdout) != "2" {
		t.Fatalf("guest sees %q CPUs", r.stdout)
	}
	const n = 100
	loop := fmt.Sprintf(`i=0; ok=0; no=0; while [ $i -lt %d ]; do if cat /etc/passwd >/dev/null 2>&1; then ok=$((ok+1)); else no=$((no+1)); fi; i=$((i+1)); done; echo "$1 ok=$ok denied=$no"`, n)
	// Two background jobs: each fresh fork also opens /dev/null from a page
	// it has not mapped yet, so fault-ins run on both vCPUs too.
	// Opens of /etc/passwd before the loops (the guest's own, at boot)
	// are not the loops': count from here.
	passwdDenies := func() []auditRecord {
		var out []auditRecord
		for _, rec := range auditRecords(t, vm, "--class", "syscall", "--verdict", "deny") {
			if rec.Event.Path == "/etc/passwd" {
				out = append(out, rec)
			}
		}
		return out
	}
	before := passwdDenies()
	for _, rec := range before {
		t.Logf("before the loops: %+v", rec.Event)
	}
	// Issue 19: two vCPUs under TCG trap with watchpoints too (each
	// breakpoint would slow all guest code, and its stop flushes QEMU's
	// translated code).
	if st := status(t, vm); st.Accel == "tcg" {
		for _, g := range st.Gates {
			if g.Name == "kernel" && (g.Watchpoints == 0 || g.Watchpoints != g.Traps) {
				t.Errorf("kernel gate on 2 vCPUs: %+v; want every trap a watchpoint", g)
			}
		}
	}
	script := fmt.Sprintf("cat > /tmp/loop.sh <<'EOF'\n%s\nEOF\nsh /tmp/loop.sh a & sh /tmp/loop.sh b & wait", loop)
	// Requests that stop the VM (an IDS query through the gdbstub pauses
	// the guest) race with the loops' hits: a hit whose stop a request's
	// interrupt took is served before the VM runs on (debugger.scan).
	racing := make(chan struct{})
	go func() {
		defer close(racing)
		for range 30 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			_ = gvCmd(ctx, nil, "ids", "banner", "--vm", vm, "--source", "gdbstub").Run() // its answer is not the point
			cancel()
		}
	}()
	start := time.Now()
	r := guestSh(t, vm, script)
	<-racing
	t.Logf("two loops of %d trapped opens each: %v", n, time.Since(start).Round(time.Millisecond))
	for _, who := range []string{"a", "b"} {
		want := fmt.Sprintf("%s ok=0 denied=%d", who, n)
		if !strings.Contains(r.stdout, want) {
			t.Errorf("loop %s: want %q in %q (stderr %q)", who, want, r.stdout, r.stderr)
		}
	}
	recs := passwdDenies()[len(before):]
	denies, pids := len(recs), map[int]bool{}
	for _, rec := range recs {
		pids[rec.Event.Subject.PID] = true
	}
	t.Logf("audit: %d /etc/passwd denies by %d processes", denies, len(pids))
	if denies != 2*n || len(pids) < n {
		for _, rec := range recs {
			if rec.Event.Subject.Comm != "cat" {
				t.Logf("record not by cat: %+v", rec)
			}
		}
		// A trap whose enforcement failed is retried by the vCPU (it is
		// still at the breakpoint) and decided again: the monitor log says.
		if b, err := os.ReadFile(filepath.Join(env.stateDir, "gatevisor", "vms", vm, "monitor.log")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "syscall gate") {
					t.Logf("monitor: %s", line)
				}
			}
		}
		t.Errorf("audit: %d /etc/passwd denies by %d processes; want exactly %d by about as many", denies, len(pids), 2*n)
	}
	// The gate still answers after the storm, and unrelated opens work.
	if r := guestSh(t, vm, "cat /etc/hostname; cat /etc/passwd"); r.stdout != "gatevisor-guest\n" || !strings.Contains(r.stderr, "Operation not permitted") {
		t.Fatalf("after the concurrent loops: %q %q", r.stdout, r.stderr)
	}
	// Allowed calls are decided once each: a vCPU allowed at a watched
	// load is moved past it before the VM runs on, so no later stop finds
	// it there and decides the same call again.
	loadPolicy(t, vm, writePolicy(t, t.TempDir(), "audited.policy", openBase+"open default: allow\n  seen: fileEq(\"/etc/hostname\") allow audit\n\nsyscall default: allow\n"))
	allowLoop := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do cat /etc/hostname >/dev/null; i=$((i+1)); done`, n)
	guestSh(t, vm, fmt.Sprintf("cat > /tmp/allow.sh <<'EOF'\n%s\nEOF\nsh /tmp/allow.sh & sh /tmp/allow.sh & wait", allowLoop))
	per := map[int]int{}
	for _, rec := range auditRecords(t, vm, "--rule", "seen") {
		if rec.Event.Subject.Comm == "cat" {
			per[rec.Event.Subject.PID]++
		}
	}
	twice := 0
	for _, c := range per {
		if c > 1 {
			twice++
		}
	}
	if len(per) != 2*n || twice != 0 {
		t.Errorf("audited allows: %d cat processes recorded, %d of them more than once; want %d, each once", len(per), twice, 2*n)
	}
	if st := status(t, vm).SyscallGate; st.Emulated == 0 && st.SiblingStops == 0 {
		t.Logf("syscall gate: %+v", st)
	}
}

// TestSyscallGateArmsBeforeInit boots with a policy that denies opening
// /etc/hostname: the guest's init script runs `hostname -F /etc/hostname`
// early in boot, so the denial proves the breakpoints were in place before
// the first user-space scripts ran (the gate arms as soon as the kernel can
// be located, not when the guest reports ready).
func TestSyscallGateArmsBeforeInit(t *testing.T) {
	needVM(t)
	const vm = "sg-early"
	pol := writePolicy(t, t.TempDir(), "early.policy", openBase+"open default: allow\n  fileEq(\"/etc/hostname\")\n  deny(EPERM)\n")
	bootGated(t, vm, pol)
	if r := guestSh(t, vm, "cat /proc/sys/kernel/hostname"); strings.TrimSpace(r.stdout) != "(none)" {
		t.Fatalf("hostname %q: the init script's read of /etc/hostname was not denied", r.stdout)
	}
	st := status(t, vm)
	log := filepath.Join(filepath.Dir(st.ConsoleLog), "audit.jsonl")
	r := gv(t, time.Minute, "audit", "--file", log, "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"comm":"hostname"`) || !strings.Contains(r.stdout, "/etc/hostname") {
		t.Fatalf("audit log has no boot-time deny of hostname's open:\n%s%s", r.stdout, r.stderr)
	}
}
