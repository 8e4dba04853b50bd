package integration

import (
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// TestARM64 is issue 17's arm64 smoke set (docs/kernels.md): the arm64
// kit is built (or a valid one reused), booted with qemu-system-aarch64
// -machine virt under TCG, a command runs through the exec channel, and
// ids banner, ps, modules and syscalls read the guest's kernel from
// below and agree with the guest's own view; then threads, files,
// sockets, check (what does not run on arm64 reported as such) and the
// four first verbs on a dump; one network-gate verdict (an outbound telnet
// flow reset and attributed to nc). The VM runs under a kernel-gate policy
// armed at boot: an open denied at an LSM hook, a mkdirat killed at its
// handler, an exec killed at an LSM hook, a module unload denied at
// __arm64_sys_delete_module; and a process killed from below (proc kill).
func TestARM64(t *testing.T) {
	needVM(t)
	kitName := builtKit(t, "arm64", "qemu-system-aarch64", "-arm64")

	// The kernel gate on arm64 (docs/design.md, "Kernel gate on arm64"):
	// armed at SYSTEM_RUNNING before init, a deny at an LSM hook
	// (security_file_open), a kill at a syscall handler
	// (__arm64_sys_mkdirat) and a kill at an LSM hook
	// (security_bprm_check), each checked from inside the guest and in the
	// audit log.
	pol := writePolicy(t, t.TempDir(), "arm64-gate.policy", `default: allow;
syscall default: allow
open default: allow
  no_passwd: fileEq("/etc/passwd") deny(EPERM)
mkdirat default: allow
  no_killme: fileEq("/tmp/killme") kill
exec default: allow
  no_tmp_exec: filePrefixEq("/tmp/") kill
module default: allow
  no_unload: opEq("unload") deny(EPERM)
role admin: *;
subject roles admin when uidEq(0);
`)
	vm := "arm64"
	t.Cleanup(func() {
		gv(t, 2*time.Minute, "stop", vm, "--force")
		waitNoQEMU(t, vm, 30*time.Second)
	})
	start := time.Now()
	if r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--kit", kitName, "--policy", pol, "--ready-timeout", readyTimeout.String()); r.code != 0 {
		t.Fatalf("run --kit %s --policy %s: exit %d\n%s%s", kitName, pol, r.code, r.stdout, r.stderr)
	}
	t.Logf("boot to ready (run --detach, kernel gate armed at boot): %v", time.Since(start).Round(100*time.Millisecond))
	if r := gv(t, time.Minute, "exec", vm, "--", "uname", "-m"); r.code != 0 || strings.TrimSpace(r.stdout) != "aarch64" {
		t.Fatalf("exec uname -m: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	t.Run("kernel gate", func(t *testing.T) {
		r := guestSh(t, vm, "cat /etc/passwd >/dev/null; echo open=$?; mkdir /tmp/ok && echo mkdir-ok; mkdir /tmp/killme; echo mkdir=$?; "+
			"cp /bin/busybox /tmp/bb; /tmp/bb true; echo tmpexec=$?; [ -d /tmp/killme ] || echo no-killme; rmmod gpio_keys; echo rmmod=$?")
		for _, want := range []string{"open=1", "mkdir-ok", "mkdir=137", "tmpexec=137", "no-killme", "rmmod=1"} {
			if !strings.Contains(r.stdout, want+"\n") {
				t.Errorf("guest: %q missing\nstdout %q\nstderr %q", want, r.stdout, r.stderr)
			}
		}
		if !strings.Contains(r.stderr, "Operation not permitted") {
			t.Errorf("guest: cat /etc/passwd did not see EPERM: %q", r.stderr)
		}
		want := map[string]bool{"deny open /etc/passwd errno 1": false, "kill mkdirat /tmp/killme": false, "kill  /tmp/bb": false, "deny unload gpio_keys errno 1": false}
		for _, rec := range auditRecords(t, vm) {
			k := fmt.Sprintf("%s %s %s%s", rec.Verdict, rec.Event.Op, rec.Event.Path, rec.Event.Module)
			if rec.Verdict == "deny" {
				k += fmt.Sprintf(" errno %d", rec.Errno)
			}
			if _, ok := want[k]; ok {
				want[k] = true
			}
		}
		for k, seen := range want {
			if !seen {
				t.Errorf("audit log: no record %q", k)
			}
		}
		// A process killed from below: send_sig_info called at a timer
		// interrupt in AAPCS64.
		r = guestSh(t, vm, "sleep 600 >/dev/null 2>&1 & echo $!")
		pid := strings.TrimSpace(r.stdout)
		if k := gv(t, time.Minute, "proc", "kill", vm, pid); k.code != 0 || !strings.Contains(k.stdout, "sent SIGKILL") {
			t.Fatalf("proc kill %s %s: exit %d\n%s%s", vm, pid, k.code, k.stdout, k.stderr)
		}
		if r := guestSh(t, vm, "cat /proc/"+pid+"/stat 2>/dev/null | cut -d' ' -f3"); strings.TrimSpace(r.stdout) != "" && strings.TrimSpace(r.stdout) != "Z" {
			t.Errorf("pid %s after proc kill: state %q, want gone or a zombie", pid, r.stdout)
		}
	})
	ids := func(args ...string) result {
		t.Helper()
		s := time.Now()
		r := gv(t, 3*time.Minute, append(append([]string{"ids"}, args...), "--vm", vm)...)
		t.Logf("ids %s: %v", strings.Join(args, " "), time.Since(s).Round(time.Millisecond))
		return r
	}

	t.Run("ids banner", func(t *testing.T) {
		var b struct {
			Release  string `json:"release"`
			BuildID  string `json:"build_id"`
			Verified bool   `json:"verified"`
		}
		if code := idsJSON(t, &b, "banner", "--vm", vm); code != 0 || !b.Verified || !strings.HasSuffix(b.Release, "-arm64") {
			t.Fatalf("ids banner: exit %d %+v; want a verified arm64 kernel", code, b)
		}
		// The kernel's own build id (its first note) is the image's.
		if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", "od -A n -t x1 -j 16 -N 20 /sys/kernel/notes | tr -d ' \\n'"); strings.TrimSpace(r.stdout) != b.BuildID || b.BuildID == "" {
			t.Errorf("build id %q, the guest's /sys/kernel/notes %q", b.BuildID, r.stdout)
		}
		if r := gv(t, time.Minute, "exec", vm, "--", "cat", "/proc/version"); !strings.Contains(r.stdout, b.Release) {
			t.Errorf("/proc/version %q does not name %s", r.stdout, b.Release)
		}
	})
	t.Run("ids ps", func(t *testing.T) {
		var tasks []linux.Task
		idsJSON(t, &tasks, "ps", "--vm", vm)
		want, got := stableSet(guestPS(t, vm)), stableSet(tasksToProcs(tasks))
		if strings.Join(want, " ") != strings.Join(got, " ") {
			t.Errorf("ids ps differs from the guest's ps:\nguest: %v\nids:   %v", want, got)
		}
		if r := ids("ps", "--args"); r.code != 0 || !strings.Contains(r.stdout, "httpd -p 80 -h /www") {
			t.Errorf("ids ps --args: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("ids modules", func(t *testing.T) {
		r := ids("modules")
		g := gv(t, time.Minute, "exec", vm, "--", "cut", "-d", " ", "-f1", "/proc/modules")
		if r.code != 0 || g.code != 0 {
			t.Fatalf("ids modules: exit %d %s; /proc/modules: exit %d %s", r.code, r.stderr, g.code, g.stderr)
		}
		mods := strings.Fields(g.stdout)
		for _, m := range mods {
			if !strings.Contains(r.stdout, m+" ") {
				t.Errorf("ids modules does not list %s (in /proc/modules):\n%s", m, r.stdout)
			}
		}
		if len(mods) == 0 || !strings.Contains(r.stdout, "virtio_pci") || !strings.Contains(r.stdout, "modules, sysfs, scan") || strings.Contains(r.stdout, "hidden") {
			t.Errorf("ids modules (guest has %v):\n%s", mods, r.stdout)
		}
	})
	t.Run("ids threads files sockets", func(t *testing.T) {
		if r := ids("threads"); r.code != 0 || !strings.Contains(r.stdout, "kthreadd") {
			t.Errorf("ids threads: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := ids("files"); r.code != 0 || !strings.Contains(r.stdout, "/dev/console") || !strings.Contains(r.stdout, "/run/acpid.log") {
			t.Errorf("ids files: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := ids("sockets"); r.code != 0 || !strings.Contains(r.stdout, ":80") || !strings.Contains(r.stdout, "httpd") || !strings.Contains(r.stdout, ":23") {
			t.Errorf("ids sockets: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("ids check", func(t *testing.T) {
		r := ids("check")
		if r.code != 0 || !strings.Contains(r.stdout, "clean: no findings") {
			t.Fatalf("ids check on a clean boot: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		for _, c := range []string{"syscall-table", "hidden-process", "hidden-module", "comm-exe", "unexpected-root", "credential-change", "ftrace-hook", "kprobe", "task-flags", "guest-view"} {
			if !strings.Contains(r.stdout, fmt.Sprintf("%-22s 0 findings", c)) {
				t.Errorf("ids check: %s did not run clean:\n%s", c, r.stdout)
			}
		}
		// What does not run on arm64 says so, never "0 findings".
		for _, c := range []string{"syscall-dispatch", "inline-patch", "idt", "ops-table"} {
			if !strings.Contains(r.stdout, fmt.Sprintf("%-22s not applicable: ", c)) {
				t.Errorf("ids check: %s is not reported as not applicable on arm64:\n%s", c, r.stdout)
			}
		}
	})
	t.Run("ids on a dump", func(t *testing.T) {
		kernel := gv(t, time.Minute, "kit", "show", "--kit", kitName, "--kernel")
		dir := t.TempDir()
		dump := filepath.Join(dir, "arm64.elf")
		if r := gv(t, 3*time.Minute, "dump", vm, "-o", dump); r.code != 0 {
			t.Fatalf("dump: exit %d %s", r.code, r.stderr)
		}
		defer os.Remove(dump)
		image := strings.TrimSpace(kernel.stdout)
		for _, q := range []struct{ verb, want string }{{"banner", "-arm64"}, {"ps", "httpd"}, {"modules", "virtio_pci"}, {"syscalls", " 0 hooked"}} {
			r := gv(t, 3*time.Minute, "ids", q.verb, "--dump", dump, "--kernel", image)
			if r.code != 0 || !strings.Contains(r.stdout, q.want) {
				t.Errorf("ids %s --dump: exit %d\n%s%s", q.verb, r.code, lastLines(r.stdout, 4), r.stderr)
			}
		}
		// A hooked slot is found: openat (56) pointed at close's handler
		// (57) in the dump, as a rootkit would redirect it.
		var b struct {
			PhysBase uint64 `json:"phys_base"`
		}
		if code := idsJSON(t, &b, "banner", "--dump", dump, "--kernel", image); code != 0 || b.PhysBase == 0 {
			t.Fatalf("ids banner --dump: exit %d %+v", code, b)
		}
		prof, err := linux.LoadProfile(image, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		text, _ := prof.Symbols.Lookup("_text")
		table, ok := prof.Symbols.Lookup("sys_call_table")
		if !ok {
			t.Fatal("no sys_call_table in the arm64 profile")
		}
		slot := func(nr uint64) int64 { return dumpOffset(t, dump, b.PhysBase+(table-text)+8*nr) }
		f, err := os.OpenFile(dump, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		closeFn := make([]byte, 8)
		if _, err := f.ReadAt(closeFn, slot(57)); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(closeFn, slot(56)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		r := gv(t, 3*time.Minute, "ids", "syscalls", "--dump", dump, "--kernel", image)
		if r.code != 1 || !strings.Contains(r.stdout, " 1 hooked") || !strings.Contains(r.stdout, "__arm64_sys_close") {
			t.Errorf("ids syscalls --dump with slot 56 redirected: exit %d\n%s%s", r.code, lastLines(r.stdout, 3), r.stderr)
		}

		// A module unlinked from the modules list, as a rootkit hides
		// itself, is still seen in sysfs and by the module-area scan.
		mem, err := vmi.OpenELFDump(dump)
		if err != nil {
			t.Fatal(err)
		}
		k, err := linux.Locate(mem, prof, linux.Registers{})
		if err != nil {
			mem.Close()
			t.Fatal(err)
		}
		mods, err := k.Modules()
		listOff, ferr := prof.FieldOffset("module.list")
		if err != nil || ferr != nil || len(mods) < 3 {
			mem.Close()
			t.Fatalf("modules of the dump: %d, %v, %v", len(mods), err, ferr)
		}
		victim := mods[1]
		node := victim.Addr + listOff
		next, err1 := vmi.ReadU64(k.AS, node)
		prev, err2 := vmi.ReadU64(k.AS, node+8)
		pa := func(va uint64) int64 {
			p, _, err := k.AS.Translate(va)
			if err != nil {
				t.Fatalf("translate %#x: %v", va, err)
			}
			return dumpOffset(t, dump, p)
		}
		prevNext, nextPrev := pa(prev), pa(next+8)
		mem.Close()
		if err1 != nil || err2 != nil {
			t.Fatalf("module %s list node: %v %v", victim.Name, err1, err2)
		}
		f, err = os.OpenFile(dump, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		put := func(off int64, v uint64) {
			b := make([]byte, 8)
			binary.LittleEndian.PutUint64(b, v)
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
		}
		put(prevNext, next) // prev->next = victim->next
		put(nextPrev, prev) // next->prev = victim->prev
		f.Close()
		r = gv(t, 3*time.Minute, "ids", "modules", "--dump", dump, "--kernel", image)
		if r.code != 1 || !strings.Contains(grepLine(r.stdout, victim.Name), "missing from the module list") {
			t.Errorf("ids modules --dump with %s unlinked: exit %d\n%s%s", victim.Name, r.code, r.stdout, r.stderr)
		}
		t.Logf("%s unlinked in the dump: %s", victim.Name, lastLines(grepLine(r.stdout, victim.Name), 1))
	})
	t.Run("network gate", func(t *testing.T) {
		// net-gate.policy: an outbound telnet flow is reset by the gate
		// and attributed to the process that opened it.
		nvm := "arm64-net"
		bootGated(t, nvm, repoPolicy(t, "net-gate.policy"), "--kit", kitName, "--net", "isolated:it-"+nvm)
		r := guestSh(t, nvm, "i=0; until ip -4 addr show eth0 | grep -q inet || [ $i -ge 30 ]; do sleep 1; i=$((i+1)); done; echo x | nc -w 3 10.0.2.2 23; echo nc=$?")
		if !strings.Contains(r.stdout, "nc=1") || !strings.Contains(r.stderr, "Connection refused") {
			t.Errorf("telnet out: stdout %q stderr %q", r.stdout, r.stderr)
		}
		f := gv(t, time.Minute, "net", "flows", nvm)
		var line string
		for _, l := range strings.Split(f.stdout, "\n") {
			if strings.Contains(l, "10.0.2.2:23") {
				line = l
			}
		}
		for _, want := range []string{"denied", "no_telnet_out", " nc ", "/bin/busybox"} {
			if !strings.Contains(line, want) {
				t.Errorf("net flows: the telnet flow %q lacks %q:\n%s", line, want, f.stdout)
			}
		}
	})
	t.Run("ids syscalls", func(t *testing.T) {
		r := ids("syscalls")
		if r.code != 0 || !strings.Contains(r.stdout, " 0 hooked") || !strings.Contains(r.stdout, "__arm64_sys_openat ") ||
			!strings.Contains(r.stdout, "\n0    __arm64_sys_io_setup ") {
			t.Fatalf("ids syscalls: exit %d\n%s%s", r.code, lastLines(r.stdout, 4), r.stderr)
		}
	})
	t.Run("ids hooks", func(t *testing.T) {
		// Last: a kprobe registered through tracefs is listed, with its
		// handler in the kernel, and the check stays clean.
		r := guestSh(t, vm, "mount -t tracefs nodev /sys/kernel/tracing && cd /sys/kernel/tracing && echo 'p:gvprobe do_sys_openat2' > kprobe_events && echo 1 > events/kprobes/gvprobe/enable && echo kp-ok")
		if !strings.Contains(r.stdout, "kp-ok") {
			t.Fatalf("registering a kprobe: %q %q", r.stdout, r.stderr)
		}
		h := ids("hooks")
		if h.code != 0 || !strings.Contains(h.stdout, "do_sys_openat2") || !strings.Contains(h.stdout, "kprobe_dispatcher") {
			t.Errorf("ids hooks: exit %d\n%s%s", h.code, h.stdout, h.stderr)
		}
		if c := ids("check"); c.code != 0 || !strings.Contains(c.stdout, fmt.Sprintf("%-22s 0 findings", "kprobe")) {
			t.Errorf("ids check with the kernel's own kprobe: exit %d\n%s%s", c.code, c.stdout, c.stderr)
		}
	})
}

// dumpOffset returns the file offset of guest-physical address pa in an
// ELF dump (QMP dump-guest-memory: a PT_LOAD per RAM block, p_paddr).
func dumpOffset(t *testing.T, path string, pa uint64) int64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && pa >= p.Paddr && pa-p.Paddr+8 <= p.Filesz {
			return int64(p.Off + pa - p.Paddr)
		}
	}
	t.Fatalf("%#x is in no PT_LOAD of %s", pa, path)
	return 0
}

// TestARM64Backports boots the arm64 kit of bookworm-backports (Debian's
// 6.12: kallsyms tables in the 6.4+ order, 463 syscalls) when one is
// built, and reads it with ids banner, ps, modules, syscalls and check.
// It is opt-in by building that kit ('gatevisor kit build --arch arm64
// --kernel-suite bookworm-backports', a 70 MiB kernel package): the
// default CI run builds only bookworm's arm64 kit (TestARM64).
func TestARM64Backports(t *testing.T) {
	needVM(t)
	var kits []struct {
		Name, Arch, Suite string
		Verified          bool
	}
	ls := gv(t, time.Minute, "kit", "ls", "--json")
	if err := json.Unmarshal([]byte(ls.stdout), &kits); err != nil {
		t.Fatalf("kit ls --json: %v\n%s", err, ls.stdout)
	}
	kitName := ""
	for _, k := range kits {
		if k.Arch == "arm64" && k.Suite == "bookworm-backports" && k.Verified {
			kitName = k.Name
		}
	}
	if kitName == "" {
		t.Skip("no arm64 kit of bookworm-backports is built: gatevisor kit build --arch arm64 --kernel-suite bookworm-backports")
	}
	vm := "arm64-bpo"
	t.Cleanup(func() {
		gv(t, 2*time.Minute, "stop", vm, "--force")
		waitNoQEMU(t, vm, 30*time.Second)
	})
	if r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--kit", kitName, "--ready-timeout", readyTimeout.String()); r.code != 0 {
		t.Fatalf("run --kit %s: exit %d\n%s%s", kitName, r.code, r.stdout, r.stderr)
	}
	var b struct {
		Release  string `json:"release"`
		Verified bool   `json:"verified"`
	}
	if code := idsJSON(t, &b, "banner", "--vm", vm); code != 0 || !b.Verified || !strings.HasPrefix(b.Release, "6.12.") {
		t.Fatalf("ids banner: exit %d %+v", code, b)
	}
	var tasks []linux.Task
	idsJSON(t, &tasks, "ps", "--vm", vm)
	if want, got := stableSet(guestPS(t, vm)), stableSet(tasksToProcs(tasks)); strings.Join(want, " ") != strings.Join(got, " ") {
		t.Errorf("ids ps differs from the guest's ps:\nguest: %v\nids:   %v", want, got)
	}
	for _, q := range []struct{ verb, want string }{{"modules", "virtio_net"}, {"syscalls", " 0 hooked"}, {"check", "clean: no findings"}} {
		if r := gv(t, 3*time.Minute, "ids", q.verb, "--vm", vm); r.code != 0 || !strings.Contains(r.stdout, q.want) {
			t.Errorf("ids %s: exit %d\n%s%s", q.verb, r.code, lastLines(r.stdout, 4), r.stderr)
		}
	}
}

// grepLine returns the lines of s that contain sub.
func grepLine(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
