package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// idsJSON runs `gatevisor ids QUERY --json` with target args and decodes it.
func idsJSON(t *testing.T, out any, query string, target ...string) int {
	t.Helper()
	r := gv(t, 5*time.Minute, append([]string{"ids", query, "--json"}, target...)...)
	if r.code != 0 && !((query == "check" || query == "syscalls" || query == "modules" || query == "hooks") && r.code == 1) {
		t.Fatalf("ids %s %v: exit %d: %s%s", query, target, r.code, r.stderr, r.stdout)
	}
	if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
		t.Fatalf("ids %s --json: %v\n%s", query, err, r.stdout)
	}
	return r.code
}

type guestProc struct {
	pid, ppid int
	comm      string
}

// guestPS is the guest's own view: busybox ps inside the guest.
func guestPS(t *testing.T, vm string) []guestProc {
	t.Helper()
	r := gv(t, time.Minute, "exec", vm, "--", "ps", "-o", "pid,ppid,comm")
	if r.code != 0 {
		t.Fatalf("guest ps: %d %s", r.code, r.stderr)
	}
	var out []guestProc
	for _, line := range strings.Split(r.stdout, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		pid, err1 := strconv.Atoi(f[0])
		ppid, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, guestProc{pid, ppid, f[2]})
	}
	return out
}

// stableSet keeps pid:comm of processes that are not transient.
func stableSet(procs []guestProc) []string {
	agent := map[int]bool{}
	for _, p := range procs {
		if p.comm == "gatevisor-agent" {
			agent[p.pid] = true
		}
	}
	// Descendants of the agent are the exec channel's own commands.
	for changed := true; changed; {
		changed = false
		for _, p := range procs {
			if agent[p.ppid] && !agent[p.pid] {
				agent[p.pid], changed = true, true
			}
		}
	}
	var out []string
	for _, p := range procs {
		if p.comm == "timeout" || strings.HasPrefix(p.comm, "kworker/") || (agent[p.pid] && p.comm != "gatevisor-agent") {
			continue
		}
		out = append(out, fmt.Sprintf("%d:%s", p.pid, p.comm))
	}
	sort.Strings(out)
	return out
}

func tasksToProcs(ts []linux.Task) []guestProc {
	out := make([]guestProc, len(ts))
	for i, t := range ts {
		out[i] = guestProc{t.PID, t.PPID, t.Comm}
	}
	return out
}

// startMarked starts two long-running processes with distinctive names in
// the guest (shell scripts: the kernel names a script's process after it).
func startMarked(t *testing.T, vm string, names ...string) {
	t.Helper()
	for _, n := range names {
		script := fmt.Sprintf("printf '#!/bin/sh\\nwhile :; do sleep 5; done\\n' > /tmp/%s && chmod +x /tmp/%s && (/tmp/%s </dev/null >/dev/null 2>&1 &)", n, n, n)
		if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", script); r.code != 0 {
			t.Fatalf("start %s: %d %s", n, r.code, r.stderr)
		}
	}
}

func TestIDSPsMatchesGuestPs(t *testing.T) {
	needShared(t)
	startMarked(t, sharedVM, "gv-mark-one", "gv-mark-two")
	var tasks []linux.Task
	idsJSON(t, &tasks, "ps", "--vm", sharedVM)
	guest := guestPS(t, sharedVM)
	want, got := stableSet(guest), stableSet(tasksToProcs(tasks))
	if strings.Join(want, " ") != strings.Join(got, " ") {
		t.Fatalf("ids ps differs from the guest's ps:\nguest: %v\nids:   %v", want, got)
	}
	for _, n := range []string{"gv-mark-one", "gv-mark-two"} {
		found := false
		for _, tk := range tasks {
			found = found || (tk.Comm == n && tk.Exe == "/bin/busybox" && tk.PID > 1)
		}
		if !found {
			t.Errorf("ids ps does not show %s", n)
		}
	}
	// pstree and the table render the same processes.
	tree := gv(t, time.Minute, "ids", "pstree", "--vm", sharedVM)
	if tree.code != 0 || !strings.Contains(tree.stdout, "gv-mark-one(") || !strings.HasPrefix(tree.stdout, "init(1)") {
		t.Errorf("pstree: %d\n%s", tree.code, tree.stdout)
	}
}

func TestIDSBannerEqualsProcVersion(t *testing.T) {
	needShared(t)
	var b ids.BannerReport
	idsJSON(t, &b, "banner", "--vm", sharedVM)
	r := gv(t, time.Minute, "exec", sharedVM, "--", "cat", "/proc/version")
	if b.Banner != strings.TrimSpace(r.stdout) || !b.Verified {
		t.Fatalf("ids banner %q (verified %v) != /proc/version %q", b.Banner, b.Verified, r.stdout)
	}
	if b.Slide == 0 {
		t.Errorf("KASLR slide 0: the kit's kernel runs with KASLR on")
	}
}

func TestIDSSocketsShowDemoServices(t *testing.T) {
	needShared(t)
	var socks []linux.Socket
	idsJSON(t, &socks, "sockets", "--vm", sharedVM)
	var tasks []linux.Task
	idsJSON(t, &tasks, "ps", "--vm", sharedVM)
	pidOf := map[string]int{}
	for _, tk := range tasks {
		pidOf[tk.Comm] = tk.PID
	}
	for _, want := range []struct {
		comm string
		port int
	}{{"httpd", 80}, {"telnetd", 23}} {
		ok := false
		for _, s := range socks {
			ok = ok || (s.Proto == "tcp" && s.LocalPort == want.port && s.State == "LISTEN" && s.Comm == want.comm && s.PID == pidOf[want.comm])
		}
		if !ok {
			t.Errorf("ids sockets shows no %s (pid %d) listening on tcp port %d: %+v", want.comm, pidOf[want.comm], want.port, socks)
		}
	}
}

func TestIDSModulesMatchGuest(t *testing.T) {
	needShared(t)
	var mods []linux.Module
	idsJSON(t, &mods, "modules", "--vm", sharedVM)
	r := gv(t, time.Minute, "exec", sharedVM, "--", "cat", "/proc/modules")
	var want, got []string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			want = append(want, f[0])
		}
	}
	for _, m := range mods {
		got = append(got, m.Name)
	}
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(want, " ") != strings.Join(got, " ") || len(got) == 0 {
		t.Fatalf("ids modules %v != /proc/modules %v", got, want)
	}
}

func TestIDSCheckCleanOnCleanBoot(t *testing.T) {
	needShared(t)
	r := gv(t, 5*time.Minute, "ids", "check", "--vm", sharedVM)
	if r.code != 0 || !strings.Contains(r.stdout, "clean: no findings") {
		t.Fatalf("ids check on a clean guest: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestIDSLSMHooks: on the default guest (Debian's 6.1: capability,
// landlock, yama, lockdown, tomoyo, apparmor and bpf linked at boot) the
// lsm-hook check runs and finds nothing, and `ids hooks` lists every LSM
// entry as the kernel's own, live and on a dump alike.
func TestIDSLSMHooks(t *testing.T) {
	needShared(t)
	var rep ids.Report
	idsJSON(t, &rep, "check", "--vm", sharedVM)
	ran := false
	for _, c := range rep.Checks {
		ran = ran || c.Name == ids.CheckLSM && c.Ran && c.Findings == 0 && c.Error == "" && c.NotApplicable == ""
	}
	for _, f := range rep.Findings {
		if f.Check == ids.CheckLSM {
			t.Errorf("lsm-hook finding on the clean guest: %s", f.Summary)
		}
	}
	if !ran {
		t.Errorf("lsm-hook did not run clean: %+v", rep.Checks)
	}
	var live ids.HooksReport
	if code := idsJSON(t, &live, "hooks", "--vm", sharedVM); code != 0 {
		t.Errorf("ids hooks: exit %d", code)
	}
	lsms := map[string]int{}
	for _, e := range live.LSM {
		lsms[e.LSM]++
		if e.Foreign || e.Gate {
			t.Errorf("LSM entry %+v on the clean guest is not the kernel's own", e)
		}
	}
	for _, want := range []string{"capability", "apparmor", "bpf", "yama", "landlock"} {
		if lsms[want] == 0 {
			t.Errorf("no %s entry among the LSM hook entries: %v", want, lsms)
		}
	}
	if live.LSMNote != "" || len(live.LSMBroken) > 0 || lsms["bpf"] < 200 {
		t.Errorf("LSM hook lists: note %q, broken %v, %v entries by LSM", live.LSMNote, live.LSMBroken, lsms)
	}
	dump := filepath.Join(t.TempDir(), "guest.elf")
	if r := gv(t, 5*time.Minute, "dump", sharedVM, "-o", dump); r.code != 0 {
		t.Fatalf("dump: %d %s", r.code, r.stderr)
	}
	defer os.Remove(dump)
	var fromDump ids.HooksReport
	idsJSON(t, &fromDump, "hooks", "--dump", dump)
	if fmt.Sprint(live.LSM) != fmt.Sprint(fromDump.LSM) {
		t.Errorf("LSM entries: %d live, %d from the dump, differing", len(live.LSM), len(fromDump.LSM))
	}
}

// TestDumpEqualsLive dumps the shared VM and compares every query's answer
// from the dump with the live one.
func TestDumpEqualsLive(t *testing.T) {
	needShared(t)
	dump := filepath.Join(t.TempDir(), "guest.elf")
	if r := gv(t, 5*time.Minute, "dump", sharedVM, "-o", dump); r.code != 0 {
		t.Fatalf("dump: %d %s", r.code, r.stderr)
	}
	defer os.Remove(dump)
	var liveTasks, dumpTasks []linux.Task
	idsJSON(t, &liveTasks, "ps", "--vm", sharedVM)
	idsJSON(t, &dumpTasks, "ps", "--dump", dump)
	if a, b := stableSet(tasksToProcs(liveTasks)), stableSet(tasksToProcs(dumpTasks)); strings.Join(a, " ") != strings.Join(b, " ") {
		t.Errorf("ps: live %v\ndump %v", a, b)
	}
	var liveB, dumpB ids.BannerReport
	idsJSON(t, &liveB, "banner", "--vm", sharedVM)
	idsJSON(t, &dumpB, "banner", "--dump", dump)
	if liveB != dumpB {
		t.Errorf("banner: live %+v, dump %+v", liveB, dumpB)
	}
	var liveM, dumpM []linux.Module
	idsJSON(t, &liveM, "modules", "--vm", sharedVM)
	idsJSON(t, &dumpM, "modules", "--dump", dump)
	if fmt.Sprint(liveM) != fmt.Sprint(dumpM) {
		t.Errorf("modules: live %v, dump %v", liveM, dumpM)
	}
	var liveS, dumpS ids.SyscallReport
	idsJSON(t, &liveS, "syscalls", "--vm", sharedVM)
	idsJSON(t, &dumpS, "syscalls", "--dump", dump)
	if fmt.Sprint(liveS) != fmt.Sprint(dumpS) || len(liveS.Entries) < 300 {
		t.Errorf("syscalls differ or too few (%d live, %d dump)", len(liveS.Entries), len(dumpS.Entries))
	}
	var liveK, dumpK []linux.Socket
	idsJSON(t, &liveK, "sockets", "--vm", sharedVM)
	idsJSON(t, &dumpK, "sockets", "--dump", dump)
	if fmt.Sprint(liveK) != fmt.Sprint(dumpK) {
		t.Errorf("sockets: live %v, dump %v", liveK, dumpK)
	}
	if r := gv(t, 5*time.Minute, "ids", "check", "--dump", dump); r.code != 0 {
		t.Errorf("ids check on the dump: %d\n%s", r.code, r.stdout)
	}
}

func TestIDSGdbstubSourceAgrees(t *testing.T) {
	needShared(t)
	var viaRAM, viaGDB []linux.Module
	idsJSON(t, &viaRAM, "modules", "--vm", sharedVM)
	idsJSON(t, &viaGDB, "modules", "--vm", sharedVM, "--source", "gdbstub")
	if fmt.Sprint(viaRAM) != fmt.Sprint(viaGDB) {
		t.Fatalf("modules via RAM %v != via gdbstub %v", viaRAM, viaGDB)
	}
}
