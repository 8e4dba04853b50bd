package integration

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// TestKernelGateOwnEntries checks the kernel gate's own-entry model
// (gate/syscall/ownentry.go) on a 1-vCPU TCG VM under the shipped
// policy: every LSM hook iot-default traps is trapped at an entry of the
// gate's own, first in the hook's list, on the page status names; the
// policy is enforced through them; and a write from the guest to a gated
// list head (a module doing what LSM-list rootkits do) ends the VM, with
// the reason, and a critical finding in the events.
func TestKernelGateOwnEntries(t *testing.T) {
	needVM(t)
	k := testvm.Kit(t)
	// rk_lsm links an entry of its own first on file_open, writing the
	// read-only head with CR0.WP cleared: what the gate's head guards
	// must catch (its entry is never called here).
	kos, err := buildRootkits(context.Background(), k.KernelRelease, t.TempDir(), "rk_lsm")
	if err != nil {
		t.Fatalf("build rk_lsm: %v", err)
	}
	guestDir := t.TempDir()
	data, err := os.ReadFile(kos[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(guestDir, "rk_lsm.ko"), data, 0o644); err != nil {
		t.Fatal(err)
	}

	const vm = "ownentry"
	bootGated(t, vm, repoPolicy(t, "iot-default.policy"), "--net", "isolated", "--add", guestDir+":/opt/rk")
	st := status(t, vm)
	if st.Accel != "tcg" {
		t.Skipf("the own-entry model is TCG's (this VM runs under %s)", st.Accel)
	}
	// The page is allocated once the guest runs, after the boot arming.
	var page uint64
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		st = status(t, vm)
		if g := st.SyscallGate; g != nil && g.GatePage != "" {
			page, err = strconv.ParseUint(g.GatePage, 0, 64)
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no gate page a minute after boot: %+v\n%s", st.SyscallGate, monitorLogTail(vmState(vm)))
		}
	}
	res := loadPolicy(t, vm, repoPolicy(t, "iot-default.policy"))
	hooks := 0
	ctx := context.Background()
	for _, bp := range res.Breakpoints {
		if !strings.HasPrefix(bp.Symbol, "security_") {
			continue
		}
		hooks++
		if bp.Model != "own-entry" || bp.Entry == "" || !bp.Watchpoint {
			t.Errorf("%s: model %q entry %q; want own-entry with an entry", bp.Symbol, bp.Model, bp.Entry)
			continue
		}
		head, err1 := strconv.ParseUint(bp.Addr, 0, 64)
		entry, err2 := strconv.ParseUint(bp.Entry, 0, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("%+v: %v %v", bp, err1, err2)
		}
		b, err := client(vm).ReadPhysical(ctx, kernelPhys(t, vm, head), 8)
		if err != nil {
			t.Fatalf("read %s's list head: %v", bp.Symbol, err)
		}
		first := binary.LittleEndian.Uint64(b)
		// The list's first entry is the gate's: on its page, and the
		// read-watched hook field lies inside it.
		if first&^0xfff != page || entry < first || entry-first >= 64 {
			t.Errorf("%s: list head %#x starts at %#x; want the gate's entry (hook field %#x) on its page %#x", bp.Symbol, head, first, entry, page)
		}
	}
	if hooks == 0 {
		t.Fatalf("iot-default traps no LSM hook: %+v", res.Breakpoints)
	}
	// Enforced through the entries: a deny (EACCES, EROFS), a kill, an allow.
	if r := guestSh(t, vm, "su -s /bin/cat user /etc/shadow"); r.code == 0 || !strings.Contains(r.stderr, "Permission denied") {
		t.Errorf("a user reading /etc/shadow: exit %d %q %q; want EACCES", r.code, r.stdout, r.stderr)
	}
	if r := guestSh(t, vm, "touch /bin/zz"); r.code == 0 || !strings.Contains(r.stderr, "Read-only file system") {
		t.Errorf("touch /bin/zz: exit %d %q; want EROFS", r.code, r.stderr)
	}
	if r := guestSh(t, vm, "cp /bin/true /tmp/t && /tmp/t; echo rc=$?"); !strings.Contains(r.stdout, "rc=137") {
		t.Errorf("an exec from /tmp: %q %q; want it killed", r.stdout, r.stderr)
	}
	if r := guestSh(t, vm, "cat /etc/hostname"); r.code != 0 {
		t.Errorf("cat /etc/hostname: exit %d %q", r.code, r.stderr)
	}

	// Module loads allowed, file_open still gated.
	pol := writePolicy(t, t.TempDir(), "modules.policy", `default: allow;
file default: allow
  no_shadow: fileEq("/etc/shadow") and not uidEq(0) deny(EACCES)
module default: allow
`)
	res = loadPolicy(t, vm, pol)

	// A rollback to a snapshot taken under this policy (only file_open's
	// entry linked) while iot-default is in force (its sixteen): the
	// gate takes the snapshot's page over, which the restored RAM holds
	// (the same page here), and links the hooks the snapshot had not;
	// no entry of the gate's is left off its page for the IDS to flag.
	if r := gv(t, 3*time.Minute, "snapshot", vm, "fewhooks"); r.code != 0 {
		t.Fatalf("snapshot: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	loadPolicy(t, vm, repoPolicy(t, "iot-default.policy"))
	if r := gv(t, 3*time.Minute, "rollback", vm, "fewhooks"); r.code != 0 {
		t.Fatalf("rollback: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	if g := status(t, vm).SyscallGate; g == nil || g.GatePage != "0x"+strconv.FormatUint(page, 16) {
		t.Errorf("gate page after the rollback: %+v; want %#x, the snapshot's\n%s", g, page, monitorLogTail(vmState(vm)))
	}
	var rep ids.Report
	idsJSON(t, &rep, "check", "--vm", vm)
	for _, f := range rep.Findings {
		if f.Check == ids.CheckLSM {
			t.Errorf("lsm-hook finding after the rollback: %s", f.Summary)
		}
	}
	// A dump does not record the gate's page: the IDS recognises it by
	// the name the gate writes at its start, and holds its entries to the
	// gate's rule (each calls its hook's no-op), with no --gate-page.
	dump := filepath.Join(t.TempDir(), "gated.elf")
	if r := gv(t, 5*time.Minute, "dump", vm, "-o", dump); r.code != 0 {
		t.Fatalf("dump: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	var fromDump ids.Report
	idsJSON(t, &fromDump, "check", "--dump", dump)
	for _, f := range fromDump.Findings {
		if f.Check == ids.CheckLSM {
			t.Errorf("lsm-hook finding in a dump of the gated VM: %s", f.Summary)
		}
	}
	var dumpHooks ids.HooksReport
	idsJSON(t, &dumpHooks, "hooks", "--dump", dump)
	gateEntries := 0
	for _, e := range dumpHooks.LSM {
		if e.Gate {
			gateEntries++
			if e.Addr&^0xfff != page {
				t.Errorf("a gate entry off the gate's page %#x in the dump: %+v", page, e)
			}
		}
	}
	if gateEntries < hooks {
		t.Errorf("the dump's listing marks %d entries the gate's; iot-default links %d", gateEntries, hooks)
	}
	os.Remove(dump)
	if r := guestSh(t, vm, "su -s /bin/cat user /etc/shadow"); r.code == 0 || !strings.Contains(r.stderr, "Permission denied") {
		t.Errorf("after the rollback, a user reading /etc/shadow: exit %d %q %q; want EACCES", r.code, r.stdout, r.stderr)
	}
	if r := guestSh(t, vm, "touch /bin/zz"); r.code == 0 || !strings.Contains(r.stderr, "Read-only file system") {
		t.Errorf("after the rollback, touch /bin/zz: exit %d %q; want EROFS (a hook the snapshot had not linked)", r.code, r.stderr)
	}
	res = loadPolicy(t, vm, pol)

	// A write to a gated head.
	guarded := false
	for _, bp := range res.Breakpoints {
		guarded = guarded || bp.Symbol == "security_file_open" && bp.Model == "own-entry"
	}
	if !guarded {
		t.Fatalf("the module policy does not trap security_file_open on its own entry: %+v", res.Breakpoints)
	}
	r := gv(t, 2*time.Minute, "exec", vm, "--timeout", "60s", "--", "insmod", "/opt/rk/rk_lsm.ko")
	waitNoQEMU(t, vm, time.Minute)
	log, _ := os.ReadFile(filepath.Join(vmState(vm), "monitor.log"))
	if !strings.Contains(string(log), "FAIL CLOSED") || !strings.Contains(string(log), "tampering") || !strings.Contains(string(log), "security_file_open") {
		t.Errorf("insmod rk_lsm (exit %d %q %q): the VM did not fail closed naming the tampering\n%s", r.code, r.stdout, r.stderr, monitorLogTail(vmState(vm)))
	}
	events, _ := os.ReadFile(filepath.Join(vmState(vm), "events.jsonl"))
	if !strings.Contains(string(events), `"check":"kernel-gate"`) || !strings.Contains(string(events), `"severity":"critical"`) {
		t.Errorf("no critical kernel-gate finding in the events:\n%s", tail(events))
	}

	// The same write through the head's direct-map alias, which no
	// watchpoint watches: the monitor's read-back of the heads ends the VM.
	const vm2 = "ownentry-alias"
	bootGated(t, vm2, pol, "--net", "isolated", "--add", guestDir+":/opt/rk")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if g := status(t, vm2).SyscallGate; g != nil && g.GatePage != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no gate page a minute after boot\n%s", vm2, monitorLogTail(vmState(vm2)))
		}
	}
	// A load waits for the re-arm on the page (both hold the policy lock).
	guarded = false
	for _, bp := range loadPolicy(t, vm2, pol).Breakpoints {
		guarded = guarded || bp.Symbol == "security_file_open" && bp.Model == "own-entry"
	}
	if !guarded {
		t.Fatalf("%s: security_file_open is not trapped on its own entry", vm2)
	}
	r = gv(t, 2*time.Minute, "exec", vm2, "--timeout", "60s", "--", "insmod", "/opt/rk/rk_lsm.ko", "alias=1")
	waitNoQEMU(t, vm2, time.Minute)
	log, _ = os.ReadFile(filepath.Join(vmState(vm2), "monitor.log"))
	if !strings.Contains(string(log), "FAIL CLOSED") || !strings.Contains(string(log), "read-back") || !strings.Contains(string(log), "security_file_open") {
		t.Errorf("insmod rk_lsm alias=1 (exit %d %q %q): the VM did not fail closed on the read-back\n%s", r.code, r.stdout, r.stderr, monitorLogTail(vmState(vm2)))
	}
}

// vmState is VM name's state directory.
func vmState(name string) string {
	return filepath.Join(env.stateDir, "gatevisor", "vms", name)
}
