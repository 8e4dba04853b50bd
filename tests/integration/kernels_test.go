package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// The kernel matrix (issue 17, docs/kernels.md): every kernel other than
// the default kit's is built into a named kit, booted once, and checked
// with every ids verb, the kernel gate and the network gate on that one
// boot. The default kit's kernel is the rest of the suite's.

// matrixKernels are the suites of the named kits the matrix boots, with
// the kernel version their release starts with.
var matrixKernels = []struct{ suite, version string }{
	{"bookworm-backports", "6.12."},
	{"trixie", "6.12."},
}

// unreachable are apt's words for an archive it cannot reach: the kit
// cannot be built here, which skips (fails under GATEVISOR_REQUIRE_VM=1).
var unreachable = []string{"Failed to fetch", "Temporary failure resolving", "Could not resolve", "Could not connect", "Network is unreachable", "apt-get not found"}

func TestKernelMatrix(t *testing.T) {
	needVM(t)
	for _, k := range matrixKernels {
		t.Run(k.suite, func(t *testing.T) { testKernel(t, k.suite, k.version) })
	}
}

// buildNamedKit builds (or verifies) the named kit of suite and returns
// its name.
func buildNamedKit(t *testing.T, suite string) string {
	t.Helper()
	start := time.Now()
	r := gv(t, 20*time.Minute, "kit", "build", "--kernel-suite", suite)
	if r.code != 0 {
		for _, u := range unreachable {
			if strings.Contains(r.stderr, u) {
				testvm.Skip(t, "the %s kit cannot be built here: the Debian archive is not reachable through apt (%s): allow access to deb.debian.org or set a mirror in the host's apt\n%s", suite, u, r.stderr)
			}
		}
		t.Fatalf("kit build --kernel-suite %s: exit %d\n%s%s", suite, r.code, r.stdout, r.stderr)
	}
	t.Logf("kit build --kernel-suite %s: %v\n%s", suite, time.Since(start).Round(100*time.Millisecond), lastLines(r.stderr, 3))
	var kits []struct {
		Name     string `json:"name"`
		Arch     string `json:"arch"`
		Suite    string `json:"suite"`
		Verified bool   `json:"verified"`
		Default  bool   `json:"default"`
	}
	ls := gv(t, time.Minute, "kit", "ls", "--json")
	if err := json.Unmarshal([]byte(ls.stdout), &kits); err != nil {
		t.Fatalf("kit ls --json: %v\n%s", err, ls.stdout)
	}
	name := ""
	for _, k := range kits {
		if k.Suite == suite && k.Arch == "amd64" && k.Verified && !k.Default { // arm64 kits of the suite are TestARM64's
			if name != "" {
				t.Logf("several kits of %s; booting it by name %s", suite, name)
				continue
			}
			name = k.Name
		}
	}
	if name == "" {
		t.Fatalf("kit ls lists no verified kit of %s:\n%s", suite, ls.stdout)
	}
	// The default kit is still there, and still the default.
	if len(kits) == 0 || kits[0].Name != "default" || !kits[0].Default {
		t.Errorf("kit ls: the default kit is not listed first as the default:\n%s", ls.stdout)
	}
	return name
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func testKernel(t *testing.T, suite, version string) {
	kitName := buildNamedKit(t, suite)
	vm := "kern-" + strings.SplitN(suite, "-", 2)[0]
	// iot-default: file, exec, module, ptrace and net rules, every gate
	// from boot; the isolated network for its net rules.
	bootGated(t, vm, repoPolicy(t, "iot-default.policy"), "--kit", kitName, "--net", "isolated:it-"+vm)
	ids := func(args ...string) result {
		t.Helper()
		return gv(t, 3*time.Minute, append(append([]string{"ids"}, args...), "--vm", vm)...)
	}

	t.Run("ids banner", func(t *testing.T) {
		var b struct {
			Release  string `json:"release"`
			Verified bool   `json:"verified"`
		}
		if code := idsJSON(t, &b, "banner", "--vm", vm); code != 0 || !b.Verified || !strings.HasPrefix(b.Release, version) {
			t.Fatalf("ids banner: exit %d %+v; want a verified %s* kernel", code, b, version)
		}
		if r := gv(t, time.Minute, "exec", vm, "--", "cat", "/proc/version"); !strings.Contains(r.stdout, b.Release) {
			t.Errorf("/proc/version %q does not name %s", r.stdout, b.Release)
		}
	})
	t.Run("ids syscalls", func(t *testing.T) {
		r := ids("syscalls")
		if r.code != 0 || !strings.Contains(r.stdout, " 0 hooked") || !strings.Contains(r.stdout, "dispatch code (x64_sys_call): 0 findings") ||
			!strings.Contains(r.stdout, "__x64_sys_openat") {
			t.Fatalf("ids syscalls: exit %d\n%s%s", r.code, lastLines(r.stdout, 4), r.stderr)
		}
	})
	t.Run("ids ps threads args env", func(t *testing.T) {
		var tasks []linux.Task
		idsJSON(t, &tasks, "ps", "--vm", vm)
		want, got := stableSet(guestPS(t, vm)), stableSet(tasksToProcs(tasks))
		if strings.Join(want, " ") != strings.Join(got, " ") {
			t.Errorf("ids ps differs from the guest's ps:\nguest: %v\nids:   %v", want, got)
		}
		if r := ids("ps", "--args"); r.code != 0 || !strings.Contains(r.stdout, "httpd -p 80 -h /www") {
			t.Errorf("ids ps --args: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := ids("ps", "--env"); r.code != 0 || !strings.Contains(r.stdout, "PATH=/sbin:") {
			t.Errorf("ids ps --env: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := ids("threads"); r.code != 0 || !strings.Contains(r.stdout, "kthreadd") {
			t.Errorf("ids threads: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("ids files sockets", func(t *testing.T) {
		if r := ids("files"); r.code != 0 || !strings.Contains(r.stdout, "/dev/console") || !strings.Contains(r.stdout, "/run/acpid.log") {
			t.Errorf("ids files: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r := ids("sockets")
		if r.code != 0 || !strings.Contains(r.stdout, ":80") || !strings.Contains(r.stdout, "httpd") || !strings.Contains(r.stdout, ":23") {
			t.Errorf("ids sockets: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("ids modules", func(t *testing.T) {
		r := ids("modules")
		g := gv(t, time.Minute, "exec", vm, "--", "cut", "-d", " ", "-f1", "/proc/modules")
		if r.code != 0 || g.code != 0 {
			t.Fatalf("ids modules: exit %d %s; /proc/modules: exit %d %s", r.code, r.stderr, g.code, g.stderr)
		}
		for _, m := range strings.Fields(g.stdout) {
			if !strings.Contains(r.stdout, m+" ") {
				t.Errorf("ids modules does not list %s (in /proc/modules):\n%s", m, r.stdout)
			}
		}
		if !strings.Contains(r.stdout, "virtio_net") || strings.Contains(r.stdout, "hidden") {
			t.Errorf("ids modules:\n%s", r.stdout)
		}
	})
	t.Run("ids hooks check", func(t *testing.T) {
		if r := ids("hooks"); r.code != 0 {
			t.Errorf("ids hooks: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r := ids("check")
		if r.code != 0 || !strings.Contains(r.stdout, "clean: no findings") {
			t.Fatalf("ids check on a clean boot: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		for _, c := range []string{"syscall-table", "syscall-dispatch", "hidden-process", "hidden-module", "inline-patch", "idt", "ops-table", "guest-view"} {
			if !strings.Contains(r.stdout, fmt.Sprintf("%-22s 0 findings", c)) {
				t.Errorf("ids check: %s did not run clean:\n%s", c, r.stdout)
			}
		}
	})

	t.Run("kernel gate", func(t *testing.T) {
		if st := status(t, vm); st.Policy == nil || st.SyscallGate == nil {
			t.Fatalf("status: no policy or no kernel gate: %+v", st)
		}
		// Writes under /bin: EROFS at the LSM path hooks; exec from /tmp:
		// killed at the exec hook; /etc/shadow: EACCES for uid 1000.
		r := guestSh(t, vm, "echo x > /bin/evil; echo w=$?; cp /bin/busybox /tmp/x; /tmp/x echo ran; echo x=$?; chmod 644 /etc/shadow; su user -c 'cat /etc/shadow' >/dev/null; echo s=$?; /bin/busybox echo bin-ok")
		for _, want := range []string{"w=1", "x=137", "s=1", "bin-ok"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("gated commands: want %q in stdout %q (stderr %q)", want, r.stdout, r.stderr)
			}
		}
		if strings.Contains(r.stdout, "ran") || !strings.Contains(r.stderr, "Read-only file system") || !strings.Contains(r.stderr, "Permission denied") {
			t.Errorf("gated commands: stdout %q stderr %q", r.stdout, r.stderr)
		}
		// A module that is not the kit's is refused (EPERM); the kit's
		// own passes the gate and the kernel says it is loaded.
		r = guestSh(t, vm, "m=$(find /lib/modules -name evdev.ko | head -1); cp $m /tmp/evdev.ko; echo >> /tmp/evdev.ko; insmod /tmp/evdev.ko; echo other=$?; insmod $m; echo kit=$?")
		if !strings.Contains(r.stdout, "other=1") || !strings.Contains(r.stderr, "can't insert '/tmp/evdev.ko': Operation not permitted") ||
			!strings.Contains(r.stderr, "File exists") {
			t.Errorf("insmod: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		want := map[string]bool{"no_write_bin": false, "no_tmp_exec": false, "shadow_owner_only": false, "module default": false}
		for _, rec := range auditRecords(t, vm, "--verdict", "deny,kill") {
			switch {
			case rec.Rule == "no_write_bin" && rec.Event.Path == "/bin/evil" && rec.Errno == 30:
			case rec.Rule == "no_tmp_exec" && rec.Event.Path == "/tmp/x" && rec.Verdict == "kill":
			case rec.Rule == "shadow_owner_only" && rec.Event.Path == "/etc/shadow" && rec.Event.Subject.UID == 1000:
			case rec.Rule == "module default" && rec.Event.Class == "module" && rec.Event.Module == "evdev" && rec.Event.Subject.Comm == "insmod":
			default:
				continue
			}
			want[rec.Rule] = true
		}
		for rule, ok := range want {
			if !ok {
				t.Errorf("no audit record of rule %s", rule)
			}
		}
		// No kit module was refused at boot: the kit's modules carry
		// the kit label (their files are the ELF images insmod loads).
		for _, rec := range auditRecords(t, vm, "--verdict", "deny") {
			if rec.Event.Class == "module" && rec.Event.Subject.Comm == "insmod" && !strings.HasPrefix(rec.Event.Path, "/tmp/") && rec.Event.Module != "evdev" {
				t.Errorf("a kit module was refused: %+v", rec)
			}
		}
	})
	t.Run("network gate", func(t *testing.T) {
		// iot-default kills a process that opens a telnet flow; the flow
		// is attributed to it.
		r := guestSh(t, vm, "nc -w 2 198.51.100.7 23 </dev/null; echo nc=$?")
		if strings.Contains(r.stdout, "nc=0") {
			t.Fatalf("telnet out was let through: %q %q", r.stdout, r.stderr)
		}
		rec := findAudit(t, filepath.Join(env.stateDir, "gatevisor", "vms", vm, "audit.jsonl"), func(r audit.Record) bool {
			return r.Rule == "no_telnet" && r.Event.Port == 23
		})
		if rec.Event.Subject.Comm != "nc" || rec.Event.Subject.PID == 0 {
			t.Errorf("telnet flow attributed to %+v", rec.Event.Subject)
		}
	})
}
