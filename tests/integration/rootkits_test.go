package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// The rootkit-technique modules of tests/rootkits, built against the kit
// kernel's headers, loaded into real guests one technique at a time.

const (
	rkSources   = "../rootkits"                        // tests/rootkits, from this package's directory
	rkGuestDir  = "/lib/rk"                            // where the guest finds the .ko files
	rkMatrix    = "../../docs/ids-detection-matrix.md" // the committed detection matrix
	rkUpdateEnv = "GATEVISOR_UPDATE_MATRIX"            // =1: write the matrix instead of comparing
	// rkEventWait bounds the wait for a continuous-scan finding after a
	// technique took effect (scans every second; ~2 s is usual under TCG).
	rkEventWait = 12 * time.Second
)

// buildRootkits builds the modules of tests/rootkits against the headers of
// kernel release in a copy under outDir (never in the source tree) and
// returns the .ko files: every module, or only the ones named.
func buildRootkits(ctx context.Context, release, outDir string, only ...string) ([]string, error) {
	kdir := "/usr/src/linux-headers-" + release
	if _, err := os.Stat(filepath.Join(kdir, "Makefile")); err != nil {
		return nil, fmt.Errorf("no headers for the kit's kernel %s in %s: apt-get install linux-headers-%s (on Debian bookworm scripts/install-deps installs linux-headers-amd64, which matches the kit's linux-image-amd64)", release, kdir, release)
	}
	if _, err := exec.LookPath("make"); err != nil {
		return nil, errors.New("make not found: apt-get install make (scripts/install-deps does)")
	}
	srcs, err := filepath.Glob(filepath.Join(rkSources, "*.[ch]"))
	if err != nil || len(srcs) == 0 {
		return nil, fmt.Errorf("no module sources in %s (%v)", rkSources, err)
	}
	for _, src := range append(srcs, filepath.Join(rkSources, "Kbuild")) {
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(outDir, filepath.Base(src)), data, 0o644); err != nil {
			return nil, err
		}
	}
	if len(only) > 0 {
		kbuild := "obj-m :="
		for _, m := range only {
			kbuild += " " + m + ".o"
		}
		if err := os.WriteFile(filepath.Join(outDir, "Kbuild"), []byte(kbuild+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	cmd := exec.CommandContext(ctx, "make", "-C", kdir, "M="+outDir, "-j", strconv.Itoa(runtime.NumCPU()), "modules")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("make -C %s M=%s modules: %w\n%s", kdir, outDir, err, out)
	}
	kos, err := filepath.Glob(filepath.Join(outDir, "*.ko"))
	if err != nil || len(kos) == 0 {
		return nil, fmt.Errorf("the build made no .ko in %s (%v)", outDir, err)
	}
	return kos, nil
}

// rkWant is one finding a technique must produce.
type rkWant struct {
	desc string
	ok   func(f ids.Finding) bool
}

func rkCheck(check string, text ...string) rkWant {
	return rkWant{fmt.Sprintf("%s %q", check, text), func(f ids.Finding) bool {
		if f.Check != check {
			return false
		}
		for _, s := range text {
			if !strings.Contains(f.Summary, s) {
				return false
			}
		}
		return true
	}}
}

// rkMissing returns the wants no finding satisfies.
func rkMissing(fs []ids.Finding, wants []rkWant) []string {
	var out []string
	for _, w := range wants {
		if !slices.ContainsFunc(fs, w.ok) {
			out = append(out, w.desc)
		}
	}
	return out
}

// rkCase is a technique loaded in a guest: what it must be detected as,
// and how to take it out again.
type rkCase struct {
	vm      string
	loaded  time.Time // when the technique took effect
	want    []rkWant  // live and in the continuous events
	dump    []rkWant  // on a dump; nil: want
	names   string    // the text of a finding that names the module; "" when it has no code to name
	undo    func(t *testing.T) bool
	cleanup []string // what undo must leave no finding about
}

// rkTechnique is one row of the matrix.
type rkTechnique struct {
	mod      string
	expected string // the finding the row is about, for the matrix
	ownVM    bool   // it cannot be undone: a VM of its own
	load     func(t *testing.T, vm string) *rkCase
}

// rkRow is a technique's result.
type rkRow struct {
	live, dump, events, names string
	delay                     time.Duration
	took                      time.Duration
	found                     []string // the checks of the live findings
}

// TestRootkitModules loads each rootkit-technique module of tests/rootkits
// into a guest and expects `ids check` to report it live, on a dump and
// in the continuous events, naming the module where it has code. The
// results are the detection matrix of docs/ids-detection-matrix.md,
// written when GATEVISOR_UPDATE_MATRIX=1 and compared otherwise.
func TestRootkitModules(t *testing.T) {
	needVM(t)
	k := testvm.Kit(t)
	start := time.Now()
	build := t.TempDir()
	kos, err := buildRootkits(context.Background(), k.KernelRelease, build)
	if err != nil {
		t.Fatal(err)
	}
	guestDir := t.TempDir()
	for _, ko := range kos {
		data, err := os.ReadFile(ko)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(guestDir, filepath.Base(ko)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("built %d modules against %s in %v", len(kos), k.KernelRelease, time.Since(start).Round(100*time.Millisecond))

	vmArgs := []string{"--ids-interval", "1s", "--add", guestDir + ":" + rkGuestDir}
	const shared, hideVM = "rk-shared", "rk-hidemod"
	bootStart := time.Now()
	bootVMs(t, vmSpec{shared, vmArgs}, vmSpec{hideVM, vmArgs})
	t.Logf("booted %s and %s in %v", shared, hideVM, time.Since(bootStart).Round(100*time.Millisecond))
	for _, vm := range []string{shared, hideVM} {
		rkClean(t, vm)
	}

	rows := map[string]rkRow{}
	sharedDirty := false
	for _, tech := range rkTechniques() {
		t.Run(tech.mod, func(t *testing.T) {
			began := time.Now()
			row := rkRow{live: "no", dump: "no", events: "no", names: "no"}
			vm := shared
			switch {
			case tech.ownVM:
				vm = hideVM
			case sharedDirty:
				// An earlier technique left the shared guest unclean.
				vm = "rk-" + strings.TrimPrefix(tech.mod, "rk_")
			}
			undone := false
			defer func() {
				row.took = time.Since(began)
				rows[tech.mod] = row
				t.Logf("%s: live %s, dump %s, events %s (%v), names the module %s; %v; live findings from %v", tech.mod, row.live, row.dump, row.events,
					row.delay.Round(10*time.Millisecond), row.names, row.took.Round(100*time.Millisecond), row.found)
				if vm == shared && !undone {
					sharedDirty = true // also when the subtest stopped half-way
				}
			}()
			if vm != shared && vm != hideVM {
				bootVMs(t, vmSpec{vm, vmArgs})
				rkClean(t, vm)
			}
			mark := rkLastSeq(t, vm)
			c := tech.load(t, vm)
			if c.names == "" {
				row.names = "n/a"
			}
			rkDetect(t, tech.mod, c, mark, &row)
			if c.undo != nil {
				undone = c.undo(t) && rkCleanAfter(t, c)
			}
		})
	}
	rkMatrixCheck(t, k.KernelRelease, rows)
	t.Logf("whole test: %v", time.Since(start).Round(100*time.Millisecond))
}

// rkDetect checks c live, on a dump and in the continuous events.
func rkDetect(t *testing.T, mod string, c *rkCase, mark uint64, row *rkRow) {
	t.Helper()
	code, rep, stderr := rkIDSCheck(t, "--vm", c.vm)
	for _, f := range rep.Findings {
		if !slices.Contains(row.found, f.Check) {
			row.found = append(row.found, f.Check)
		}
	}
	if miss := rkMissing(rep.Findings, c.want); code != 1 || len(miss) > 0 {
		t.Errorf("live: ids check --vm %s: exit %d, missing %v; findings:\n%s%s", c.vm, code, miss, rkFindings(rep.Findings), stderr)
	} else {
		row.live = "yes"
	}
	if c.names != "" {
		if slices.ContainsFunc(rep.Findings, func(f ids.Finding) bool { return strings.Contains(f.Summary, c.names) }) {
			row.names = "yes"
		} else {
			t.Errorf("live: no finding names the module (%q); findings:\n%s", c.names, rkFindings(rep.Findings))
		}
	}

	dump := filepath.Join(t.TempDir(), mod+".elf")
	if r := gv(t, 5*time.Minute, "dump", c.vm, "-o", dump); r.code != 0 {
		t.Errorf("dump %s: exit %d: %s", c.vm, r.code, r.stderr)
	} else {
		code, rep, stderr := rkIDSCheck(t, "--dump", dump)
		want := c.dump
		if want == nil {
			want = c.want
		}
		if miss := rkMissing(rep.Findings, want); code != 1 || len(miss) > 0 {
			t.Errorf("dump: ids check --dump: exit %d, missing %v; findings:\n%s%s", code, miss, rkFindings(rep.Findings), stderr)
		} else {
			row.dump = "yes"
		}
	}
	os.Remove(dump) // guest-RAM sized

	// The continuous scan: a finding event for each want after mark.
	var seen []ids.Finding
	var last time.Time
	deadline := c.loaded.Add(rkEventWait)
	for {
		for _, ev := range rkEventsAfter(t, c.vm, mark) {
			mark = max(mark, ev.Seq)
			if ev.Type != ids.EventFinding || ev.Finding == nil {
				continue
			}
			before := len(rkMissing(seen, c.want))
			seen = append(seen, *ev.Finding)
			if len(rkMissing(seen, c.want)) < before {
				last = ev.Time
			}
		}
		if len(rkMissing(seen, c.want)) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if miss := rkMissing(seen, c.want); len(miss) > 0 {
		t.Errorf("events: no finding event within %v for %v; finding events:\n%s", rkEventWait, miss, rkFindings(seen))
		return
	}
	row.events = "yes"
	row.delay = max(last.Sub(c.loaded), 0)
}

// rkIDSCheck runs `ids check --json` on target; exit 2 (a check that
// could not run) is reported, not fatal.
func rkIDSCheck(t *testing.T, target ...string) (int, ids.Report, string) {
	t.Helper()
	r := gv(t, 5*time.Minute, append([]string{"ids", "check", "--json"}, target...)...)
	var rep ids.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("ids check %v: exit %d, not JSON: %v\n%s%s", target, r.code, err, r.stdout, r.stderr)
	}
	return r.code, rep, r.stderr
}

func rkFindings(fs []ids.Finding) string {
	if len(fs) == 0 {
		return "  (none)\n"
	}
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "  %s: %s\n", f.Check, f.Summary)
	}
	return b.String()
}

// rkClean asserts that a guest with no module loaded yet has no findings.
func rkClean(t *testing.T, vm string) {
	t.Helper()
	if code, rep, stderr := rkIDSCheck(t, "--vm", vm); code != 0 || len(rep.Findings) > 0 {
		t.Fatalf("ids check on the clean guest %s: exit %d, findings:\n%s%s", vm, code, rkFindings(rep.Findings), stderr)
	}
}

// rkCleanAfter checks the guest once c is undone: a finding about what it
// changed is an error (the module did not undo it); any other finding
// only makes the guest unfit for the next technique.
func rkCleanAfter(t *testing.T, c *rkCase) bool {
	t.Helper()
	code, rep, stderr := rkIDSCheck(t, "--vm", c.vm)
	if code == 0 {
		return true
	}
	for _, f := range rep.Findings {
		for _, s := range c.cleanup {
			if strings.Contains(f.Summary, s) {
				t.Errorf("after undoing it: %s: %s", f.Check, f.Summary)
			}
		}
	}
	t.Logf("the guest is not clean after undoing (exit %d), the next technique boots its own:\n%s%s", code, rkFindings(rep.Findings), stderr)
	return false
}

// rkEvent is the part of an event line the test reads.
type rkEvent struct {
	Seq     uint64       `json:"seq"`
	Time    time.Time    `json:"time"`
	Type    string       `json:"type"`
	Finding *ids.Finding `json:"finding"`
}

func rkParseEvents(out string) []rkEvent {
	var evs []rkEvent
	for line := range strings.SplitSeq(out, "\n") {
		var ev rkEvent
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &ev) == nil {
			evs = append(evs, ev)
		}
	}
	return evs
}

// rkLastSeq is the seq of the VM's newest event (0 if none).
func rkLastSeq(t *testing.T, vm string) uint64 {
	t.Helper()
	var last uint64
	for _, ev := range rkParseEvents(gv(t, time.Minute, "events", vm, "--limit", "1").stdout) {
		last = max(last, ev.Seq)
	}
	return last
}

// rkEventsAfter returns every event of vm newer than seq.
func rkEventsAfter(t *testing.T, vm string, seq uint64) []rkEvent {
	t.Helper()
	const page = 10000
	var out []rkEvent
	for {
		evs := rkParseEvents(gv(t, time.Minute, "events", vm, "--after", strconv.FormatUint(seq, 10), "--limit", strconv.Itoa(page)).stdout)
		out = append(out, evs...)
		if len(evs) < page {
			return out
		}
		seq = evs[len(evs)-1].Seq
	}
}

// rkSh runs a shell script in the guest and fails the test unless it
// exits 0.
func rkSh(t *testing.T, vm, script string) string {
	t.Helper()
	r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("in %s: %s: exit %d\n%s%s", vm, script, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// rkInsmod loads a module in the guest; a module that does not load ends
// the subtest, with the kernel log's tail.
func rkInsmod(t *testing.T, vm, mod string, params ...string) time.Time {
	t.Helper()
	args := append([]string{"exec", vm, "--", "insmod", rkGuestDir + "/" + mod + ".ko"}, params...)
	if r := gv(t, time.Minute, args...); r.code != 0 {
		log := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", "dmesg | tail -20")
		t.Fatalf("insmod %s %v in %s: exit %d: %s%s\nkernel log:\n%s", mod, params, vm, r.code, r.stdout, r.stderr, log.stdout)
	}
	return time.Now()
}

// rkRmmod unloads modules; false if one would not go.
func rkRmmod(t *testing.T, vm string, mods ...string) bool {
	t.Helper()
	if r := gv(t, time.Minute, append([]string{"exec", vm, "--", "rmmod"}, mods...)...); r.code != 0 {
		t.Errorf("rmmod %v in %s: exit %d: %s%s", mods, vm, r.code, r.stdout, r.stderr)
		return false
	}
	return true
}

// rkKill kills guest processes and waits (≤ 15 s) until they are gone,
// reaped too: a zombie is still a task; false if one stays.
func rkKill(t *testing.T, vm string, pids ...int) bool {
	t.Helper()
	list := strings.Trim(fmt.Sprint(pids), "[]")
	script := fmt.Sprintf(`kill -9 %s; i=0; while [ $i -lt 150 ]; do alive=; for p in %s; do [ -d /proc/$p ] && alive=$p; done; [ -z "$alive" ] && exit 0; i=$((i+1)); sleep 0.1; done; echo "$alive is still there"; exit 1`, list, list)
	if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", script); r.code != 0 {
		t.Errorf("kill %s in %s: exit %d: %s%s", list, vm, r.code, r.stdout, r.stderr)
		return false
	}
	return true
}

// rkParam reads a module parameter in the guest.
func rkParam(t *testing.T, vm, mod, param string) int {
	t.Helper()
	out := rkSh(t, vm, fmt.Sprintf("cat /sys/module/%s/parameters/%s", mod, param))
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("%s's %s: %q", mod, param, out)
	}
	return n
}

// rkPID returns the pid of the guest process named comm, from the guest's
// own ps (0 if none).
func rkPID(t *testing.T, vm, comm string) (pid, ppid int) {
	t.Helper()
	for _, p := range guestPS(t, vm) {
		if p.comm == comm {
			return p.pid, p.ppid
		}
	}
	return 0, 0
}

var rkCorruptRE = regexp.MustCompile(`rk_corrupt: task ([0-9a-f]{16}) `)

// rkTechniques are the matrix's rows, in its order. The shared guest runs
// them one after another; each undoes itself before the next.
func rkTechniques() []rkTechnique {
	sctWants := func(mod string) []rkWant {
		return []rkWant{
			rkCheck(ids.CheckSyscallTable, "(__x64_sys_kill)", mod+"+0x"),
			rkCheck(ids.CheckSyscallTable, "(__x64_sys_getdents64)", mod+"+0x"),
			rkCheck(ids.CheckSyscallTable, "(__x64_sys_openat)", mod+"+0x"),
		}
	}
	simple := func(mod string, want []rkWant, names bool) func(t *testing.T, vm string, loaded time.Time) *rkCase {
		return func(t *testing.T, vm string, loaded time.Time) *rkCase {
			c := &rkCase{vm: vm, loaded: loaded, want: want, cleanup: []string{mod}}
			if names {
				c.names = mod + "+0x"
			}
			c.undo = func(t *testing.T) bool { return rkRmmod(t, vm, mod) }
			return c
		}
	}
	return []rkTechnique{
		{mod: "rk_sct", expected: ids.CheckSyscallTable, load: func(t *testing.T, vm string) *rkCase {
			loaded := rkInsmod(t, vm, "rk_sct")
			return simple("rk_sct", sctWants("rk_sct"), true)(t, vm, loaded)
		}},
		{mod: "rk_dispatch", expected: ids.CheckDispatch, load: func(t *testing.T, vm string) *rkCase {
			loaded := rkInsmod(t, vm, "rk_dispatch")
			rkSh(t, vm, "sh -c 'echo $$' >/dev/null") // ash calls getpid for $$
			if n := rkParam(t, vm, "rk_dispatch", "hits"); n == 0 {
				t.Errorf("getpid never reached the patched branch's target")
			}
			return simple("rk_dispatch", []rkWant{rkCheck(ids.CheckDispatch, "rk_dispatch+0x", "39")}, true)(t, vm, loaded)
		}},
		{mod: "rk_hide_mod", expected: ids.CheckHiddenModule + " (scan view only)", ownVM: true, load: func(t *testing.T, vm string) *rkCase {
			loaded := rkInsmod(t, vm, "rk_hide_mod")
			if out := rkSh(t, vm, "cat /proc/modules; ls /sys/module"); strings.Contains(out, "rk_hide_mod") {
				t.Errorf("rk_hide_mod is still listed by the guest:\n%s", out)
			}
			// Only the module-area scan sees it: no module list, no sysfs.
			return &rkCase{vm: vm, loaded: loaded, names: `"rk_hide_mod"`,
				want: []rkWant{rkCheck(ids.CheckHiddenModule, `"rk_hide_mod"`, "seen in scan, missing from")}}
		}},
		{mod: "rk_hide_pid", expected: ids.CheckHiddenProcess + " (" + ids.ViewGuestProc + ")", load: func(t *testing.T, vm string) *rkCase {
			startMarked(t, vm, "gv-rk-hidden")
			pid, _ := rkPID(t, vm, "gv-rk-hidden")
			if pid == 0 {
				t.Fatal("gv-rk-hidden did not start")
			}
			loaded := rkInsmod(t, vm, "rk_hide_pid", fmt.Sprintf("pid=%d", pid))
			if p, _ := rkPID(t, vm, "gv-rk-hidden"); p != 0 {
				t.Errorf("process %d still shows in the guest's ps", pid)
			}
			rkSh(t, vm, fmt.Sprintf("! ls /proc | grep -qx %d && test -d /proc/%d", pid, pid))
			onPID := func(check string, text ...string) rkWant {
				w := rkCheck(check, text...)
				return rkWant{fmt.Sprintf("%s, pid %d", w.desc, pid), func(f ids.Finding) bool { return f.PID == pid && w.ok(f) }}
			}
			return &rkCase{vm: vm, loaded: loaded, names: "rk_hide_pid+0x", cleanup: []string{"rk_hide_pid", fmt.Sprintf("process %d ", pid)},
				want: []rkWant{onPID(ids.CheckHiddenProcess, ids.ViewGuestProc)},
				// A dump has no guest userland to ask: what memory shows of
				// the hidden task (the flag that marks it) must be reported.
				dump: []rkWant{{fmt.Sprintf("%s or %s, pid %d", ids.CheckHiddenProcess, ids.CheckTaskFlags, pid), func(f ids.Finding) bool {
					return f.PID == pid && (f.Check == ids.CheckHiddenProcess || f.Check == ids.CheckTaskFlags)
				}}},
				undo: func(t *testing.T) bool {
					ok := rkRmmod(t, vm, "rk_hide_pid")
					return rkKill(t, vm, pid) && ok
				}}
		}},
		{mod: "rk_root", expected: ids.CheckCredentials + " or " + ids.CheckUnexpectedRoot, load: func(t *testing.T, vm string) *rkCase {
			rkInsmod(t, vm, "rk_root")
			// A uid 1000 shell starts gv-rk-root, which runs as uid 1000
			// for 3 s (a scan sees it so) and then asks for root.
			rkSh(t, vm, `printf '#!/bin/sh\nsleep 3\nkill -64 $$\ngrep ^Uid: /proc/$$/status > /tmp/gv-rk-root.uid\nwhile :; do sleep 5; done\n' > /tmp/gv-rk-root && chmod 755 /tmp/gv-rk-root && rm -f /tmp/gv-rk-root.uid && (su user -c '/tmp/gv-rk-root & wait' </dev/null >/dev/null 2>&1 &)`)
			var loaded time.Time
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
				r := gv(t, time.Minute, "exec", vm, "--", "cat", "/tmp/gv-rk-root.uid")
				if r.code == 0 && strings.TrimSpace(r.stdout) != "" {
					loaded = time.Now()
					if f := strings.Fields(r.stdout); len(f) != 5 || f[1] != "0" || f[2] != "0" {
						t.Fatalf("gv-rk-root after kill -64: %q", r.stdout)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("gv-rk-root did not get root within 30 s")
				}
			}
			pid, ppid := rkPID(t, vm, "gv-rk-root")
			if pid == 0 {
				t.Fatal("gv-rk-root is not running")
			}
			rooted := rkWant{fmt.Sprintf("%s or %s, pid %d", ids.CheckCredentials, ids.CheckUnexpectedRoot, pid), func(f ids.Finding) bool {
				return f.PID == pid && (f.Check == ids.CheckCredentials || f.Check == ids.CheckUnexpectedRoot)
			}}
			return &rkCase{vm: vm, loaded: loaded, names: "rk_root+0x", want: []rkWant{rooted}, cleanup: []string{"rk_root", fmt.Sprintf("process %d ", pid)},
				undo: func(t *testing.T) bool {
					// The rooted process stays root: it must be gone.
					return rkKill(t, vm, ppid, pid) && rkRmmod(t, vm, "rk_root")
				}}
		}},
		{mod: "rk_protect", expected: ids.CheckDispatch, load: func(t *testing.T, vm string) *rkCase {
			startMarked(t, vm, "gv-rk-protected")
			pid, _ := rkPID(t, vm, "gv-rk-protected")
			if pid == 0 {
				t.Fatal("gv-rk-protected did not start")
			}
			loaded := rkInsmod(t, vm, "rk_protect", fmt.Sprintf("pid=%d", pid))
			// The guest's own kill cannot reach it, not even as root.
			if out := rkSh(t, vm, fmt.Sprintf("kill -STOP %d; kill -9 %d; sleep 0.3; test -d /proc/%d && echo alive || true", pid, pid, pid)); !strings.Contains(out, "alive") {
				t.Errorf("rk_protect did not protect process %d from the guest's kill:\n%s", pid, out)
			}
			if n := rkParam(t, vm, "rk_protect", "refused"); n < 2 {
				t.Errorf("rk_protect refused %d kills, want 2", n)
			}
			// gatevisor needs no kill syscall: the kernel signals it from a
			// timer interrupt.
			if r := gv(t, time.Minute, "proc", "stop", vm, strconv.Itoa(pid)); r.code != 0 || !strings.Contains(r.stdout, "-> T") {
				t.Errorf("proc stop of the protected process: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := gv(t, time.Minute, "proc", "kill", vm, strconv.Itoa(pid)); r.code != 0 || !(strings.Contains(r.stdout, "-> gone") || strings.Contains(r.stdout, "-> Z")) {
				t.Errorf("proc kill of the protected process: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			return simple("rk_protect", []rkWant{rkCheck(ids.CheckDispatch, "rk_protect+0x", "62")}, true)(t, vm, loaded)
		}},
		{mod: "rk_ftrace", expected: ids.CheckFtrace, load: func(t *testing.T, vm string) *rkCase {
			loaded := rkInsmod(t, vm, "rk_ftrace")
			rkSh(t, vm, "ls / >/dev/null")
			if n := rkParam(t, vm, "rk_ftrace", "hits"); n == 0 {
				t.Errorf("getdents64 never reached the ftrace hook")
			}
			return simple("rk_ftrace", []rkWant{rkCheck(ids.CheckFtrace)}, true)(t, vm, loaded)
		}},
		{mod: "rk_kprobe", expected: ids.CheckKprobe, load: func(t *testing.T, vm string) *rkCase {
			loaded := rkInsmod(t, vm, "rk_kprobe")
			rkSh(t, vm, "cat /etc/passwd >/dev/null")
			if n := rkParam(t, vm, "rk_kprobe", "hits"); n == 0 {
				t.Errorf("the kprobe's handler never ran")
			}
			return simple("rk_kprobe", []rkWant{rkCheck(ids.CheckKprobe)}, true)(t, vm, loaded)
		}},
		{mod: "rk_lsm", expected: ids.CheckLSM, load: func(t *testing.T, vm string) *rkCase {
			loaded := rkInsmod(t, vm, "rk_lsm")
			rkSh(t, vm, "cat /etc/passwd >/dev/null")
			if n := rkParam(t, vm, "rk_lsm", "hits"); n == 0 {
				t.Errorf("no open went through the module's LSM entry")
			}
			return simple("rk_lsm", []rkWant{rkCheck(ids.CheckLSM, "LSM hook file_open", "outside the kernel's own LSM arrays")}, true)(t, vm, loaded)
		}},
		{mod: "rk_seqshow", expected: ids.CheckInline, load: func(t *testing.T, vm string) *rkCase {
			// The kit's services listen on IPv6 (/proc/net/tcp6): an IPv4
			// listener to hide.
			const port, hex = 8023, ":1F57 "
			httpd, err := strconv.Atoi(strings.TrimSpace(rkSh(t, vm, fmt.Sprintf("mkdir -p /tmp/www && (httpd -f -p 127.0.0.1:%d -h /tmp/www </dev/null >/dev/null 2>&1 & echo $!) && sleep 1", port))))
			if err != nil {
				t.Fatal(err)
			}
			if out := rkSh(t, vm, "cat /proc/net/tcp"); !strings.Contains(out, hex) {
				t.Fatalf("no listener on %d in /proc/net/tcp:\n%s", port, out)
			}
			loaded := rkInsmod(t, vm, "rk_seqshow", fmt.Sprintf("port=%d", port))
			if out := rkSh(t, vm, "cat /proc/net/tcp"); strings.Contains(out, hex) {
				t.Errorf("port %d still shows in /proc/net/tcp:\n%s", port, out)
			}
			c := simple("rk_seqshow", []rkWant{rkCheck(ids.CheckInline)}, true)(t, vm, loaded)
			c.undo = func(t *testing.T) bool {
				ok := rkRmmod(t, vm, "rk_seqshow")
				return rkKill(t, vm, httpd) && ok
			}
			return c
		}},
		{mod: "rk_corrupt", expected: ids.CheckCorrupt + " (with rk_sct's " + ids.CheckSyscallTable + ")", load: func(t *testing.T, vm string) *rkCase {
			rkInsmod(t, vm, "rk_corrupt")
			m := rkCorruptRE.FindStringSubmatch(rkSh(t, vm, "dmesg | grep 'rk_corrupt: task' | tail -1"))
			if m == nil {
				t.Fatal("rk_corrupt did not log the task it corrupted")
			}
			addr, _ := strconv.ParseUint(m[1], 16, 64)
			// Another technique while the object is corrupt: the scan
			// must report both.
			loaded := rkInsmod(t, vm, "rk_sct")
			corrupt := rkCheck(ids.CheckCorrupt, fmt.Sprintf("%#x", addr))
			return &rkCase{vm: vm, loaded: loaded, want: append(sctWants("rk_sct"), corrupt), cleanup: []string{"rk_sct", fmt.Sprintf("%#x", addr)},
				undo: func(t *testing.T) bool { return rkRmmod(t, vm, "rk_sct", "rk_corrupt") }}
		}},
	}
}

// rkMatrixCheck writes the detection matrix (GATEVISOR_UPDATE_MATRIX=1) or
// compares this run's cells with the committed file's (delays and times
// aside).
func rkMatrixCheck(t *testing.T, release string, rows map[string]rkRow) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `# IDS detection matrix: rootkit-technique modules

What `+"`gatevisor ids`"+` detects of each module of [tests/rootkits](../tests/rootkits/README.md),
loaded into the default guest (kernel %s, TCG, one vCPU, `+"`--ids-interval 1s`"+`):

- **live**: `+"`ids check --vm`"+` exits 1 with the expected finding;
- **dump**: `+"`ids check --dump`"+` on `+"`gatevisor dump`"+` of the same guest does too (a dump has no guest
  userland, so for rk_hide_pid it must report the hidden pid from memory alone);
- **events**: the continuous scan publishes it as a `+"`finding`"+` event; the delay is from the
  technique taking effect (insmod returned, or the process became root) to the event;
- **names the module**: a finding names the module (`+"`rk_x+0x…`"+`, or the hidden module's name),
  n/a for a technique with no code (rk_corrupt).

Written by `+"`GATEVISOR_UPDATE_MATRIX=1 GATEVISOR_REQUIRE_VM=1 go test -count=1 -run TestRootkitModules ./tests/integration/`"+`;
without the variable the test fails when a live, dump, events or names cell differs from this file.

| technique | expected finding | live | dump | events | events delay | names the module | time |
|---|---|---|---|---|---|---|---|
`, release)
	for _, tech := range rkTechniques() {
		r, ok := rows[tech.mod]
		if !ok {
			r = rkRow{live: "not run", dump: "not run", events: "not run", names: "not run"}
		}
		delay := "—"
		if r.events == "yes" {
			delay = r.delay.Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", tech.mod, tech.expected, r.live, r.dump, r.events, delay, r.names, r.took.Round(time.Second))
	}
	if os.Getenv(rkUpdateEnv) == "1" {
		if err := os.WriteFile(rkMatrix, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s:\n%s", rkMatrix, b.String())
		return
	}
	t.Logf("this run's matrix:\n%s", b.String())
	committed, err := os.ReadFile(rkMatrix)
	if err != nil {
		t.Fatalf("%v: write it with %s=1", err, rkUpdateEnv)
	}
	want, got := rkMatrixCells(string(committed)), rkMatrixCells(b.String())
	for _, tech := range rkTechniques() {
		if w, g := want[tech.mod], got[tech.mod]; w != g {
			t.Errorf("%s: %s says live/dump/events/names %v, this run %v (if the change is right, rerun with %s=1 and commit the file)",
				tech.mod, rkMatrix, w, g, rkUpdateEnv)
		}
	}
	for mod := range want {
		if _, ok := got[mod]; !ok {
			t.Errorf("%s has a row for %s, which the test does not run", rkMatrix, mod)
		}
	}
}

// rkMatrixCells reads a matrix's compared cells: technique → live, dump,
// events, names the module.
func rkMatrixCells(md string) map[string][4]string {
	out := map[string][4]string{}
	for line := range strings.SplitSeq(md, "\n") {
		if !strings.HasPrefix(line, "| rk_") {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) < 9 {
			continue
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		out[f[1]] = [4]string{f[3], f[4], f[5], f[7]}
	}
	return out
}
