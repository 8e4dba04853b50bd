package integration

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// guestRAM is a VM's RAM opened the way a rootkit's author with host access
// would: through QEMU's own descriptor of the RAM file (fd 3).
type guestRAM struct {
	f      *os.File
	layout api.MemoryLayout
}

func openGuestRAM(t *testing.T, vm string) *guestRAM {
	t.Helper()
	st := status(t, vm)
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/3", st.QEMUPID), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open guest RAM of %s: %v", vm, err)
	}
	t.Cleanup(func() { f.Close() })
	layout, err := client(vm).MemoryLayout(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &guestRAM{f: f, layout: layout}
}

func (g *guestRAM) offset(gpa uint64) (int64, bool) {
	for _, r := range g.layout.Regions {
		if gpa >= r.GPA && gpa < r.GPA+r.Size {
			return int64(r.Offset + gpa - r.GPA), true
		}
	}
	return 0, false
}

func (g *guestRAM) ReadAt(p []byte, gpa int64) (int, error) {
	off, ok := g.offset(uint64(gpa))
	if !ok {
		return 0, vmi.ErrNotMapped
	}
	return g.f.ReadAt(p, off)
}

func (g *guestRAM) Ranges() []vmi.Range {
	var out []vmi.Range
	for _, r := range g.layout.Regions {
		out = append(out, vmi.Range{Start: r.GPA, End: r.GPA + r.Size})
	}
	return out
}

func (g *guestRAM) writeU64(t *testing.T, gpa, v uint64) {
	t.Helper()
	off, ok := g.offset(gpa)
	if !ok {
		t.Fatalf("gpa %#x not in RAM", gpa)
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if _, err := g.f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// writeVirtU64 writes a kernel virtual address's 8 bytes and returns a
// function that restores them.
func writeVirtU64(t *testing.T, g *guestRAM, k *linux.Kernel, va, v uint64) func() {
	t.Helper()
	pa, _, err := k.AS.Translate(va)
	if err != nil {
		t.Fatalf("translate %#x: %v", va, err)
	}
	old, err := vmi.ReadU64(k.AS, va)
	if err != nil {
		t.Fatal(err)
	}
	g.writeU64(t, pa, v)
	return func() { g.writeU64(t, pa, old) }
}

// unlink removes the list_head at node from its list, as DKOM rootkits do,
// and returns a function that links it back. The guest keeps running
// meanwhile (tasks fork and exit next to the node), so the relink inserts
// the node after its old predecessor as the list is then, rather than
// writing back the pointers as they were.
func unlink(t *testing.T, g *guestRAM, k *linux.Kernel, node uint64) func() {
	t.Helper()
	next, err := vmi.ReadU64(k.AS, node)
	if err != nil {
		t.Fatal(err)
	}
	prev, err := vmi.ReadU64(k.AS, node+8)
	if err != nil {
		t.Fatal(err)
	}
	writeVirtU64(t, g, k, prev, next)   // prev->next = next
	writeVirtU64(t, g, k, next+8, prev) // next->prev = prev
	return func() {
		cur, err := vmi.ReadU64(k.AS, prev) // prev->next now
		if err != nil {
			t.Fatal(err)
		}
		writeVirtU64(t, g, k, node, cur)    // node->next
		writeVirtU64(t, g, k, node+8, prev) // node->prev
		writeVirtU64(t, g, k, cur+8, node)  // cur->prev
		writeVirtU64(t, g, k, prev, node)   // prev->next
	}
}

func checkFindings(t *testing.T, vm string) (int, ids.Report) {
	t.Helper()
	var r ids.Report
	code := idsJSON(t, &r, "check", "--vm", vm)
	return code, r
}

func hasFinding(r ids.Report, check, text string) bool {
	for _, f := range r.Findings {
		if f.Check == check && strings.Contains(f.Summary, text) {
			return true
		}
	}
	return false
}

// TestSimulatedRootkits writes three classic rootkit modifications into a
// running guest's memory — a hooked syscall table entry, a task unlinked
// from the task list, a module unlinked from the module list — and expects
// `ids check` and the event stream to name each one.
func TestSimulatedRootkits(t *testing.T) {
	needVM(t)
	const vm = "rootkit"
	r := gv(t, readyTimeout+time.Minute, "run", "--detach", "--name", vm, "--ids-interval", "1s", "--ready-timeout", readyTimeout.String())
	if r.code != 0 {
		t.Fatalf("run: %d %s%s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { gv(t, 2*time.Minute, "stop", vm, "--force") })
	startMarked(t, vm, "gv-hide-me")
	if code, rep := checkFindings(t, vm); code != 0 {
		t.Fatalf("check before any rootkit: exit %d, %+v", code, rep)
	}

	g := openGuestRAM(t, vm)
	prof, err := ids.LoadKernelProfile(status(t, vm).Kernel)
	if err != nil {
		t.Fatal(err)
	}
	k, err := linux.Locate(g, prof, linux.Registers{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("hooked syscall", func(t *testing.T) {
		entries, err := k.SyscallTable()
		if err != nil {
			t.Fatal(err)
		}
		var victim, other linux.SyscallEntry
		for _, e := range entries {
			if e.Name == "__x64_sys_ni_syscall" && victim.Name == "" {
				victim = e // an unimplemented slot: nothing in the guest calls it
			}
			if e.Name == "__x64_sys_getpid" {
				other = e
			}
		}
		if victim.Name == "" || other.Name == "" {
			t.Fatalf("no ni_syscall or getpid slot in %d entries", len(entries))
		}
		for _, target := range []struct {
			name string
			addr uint64
		}{{"another handler", other.Addr}, {"module space", 0xffffffffc0001000}} {
			g.writeU64(t, victim.SlotPhys, target.addr)
			code, rep := checkFindings(t, vm)
			g.writeU64(t, victim.SlotPhys, victim.Addr)
			if code != 1 || !hasFinding(rep, ids.CheckSyscallTable, fmt.Sprintf("syscall %d ", victim.Nr)) {
				t.Errorf("slot %d pointed at %s: exit %d, findings %+v", victim.Nr, target.name, code, rep.Findings)
			}
		}
	})

	t.Run("hidden process", func(t *testing.T) {
		// The victim is the middle of three sleeps started back to back:
		// its neighbours on the task list neither fork nor exit while it
		// is unlinked, so linking it back cannot race with the guest.
		r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c",
			"for n in 1 2 3; do sleep 60$n </dev/null >/dev/null 2>&1 & echo $!; done")
		pids := strings.Fields(r.stdout)
		if r.code != 0 || len(pids) != 3 {
			t.Fatalf("start three sleeps: exit %d, %q", r.code, r.stdout)
		}
		defer gv(t, time.Minute, "exec", vm, "--", "kill", "-9", pids[0], pids[1], pids[2])
		tasks, err := k.Tasks()
		if err != nil {
			t.Fatal(err)
		}
		var victim linux.Task
		for i, tk := range tasks {
			if strconv.Itoa(tk.PID) == pids[1] && i > 0 && i+1 < len(tasks) &&
				strconv.Itoa(tasks[i-1].PID) == pids[0] && strconv.Itoa(tasks[i+1].PID) == pids[2] {
				victim = tk
			}
		}
		if victim.PID == 0 {
			t.Fatalf("sleeps %v not adjacent on the task list", pids)
		}
		off, err := prof.FieldOffset("task_struct.tasks")
		if err != nil {
			t.Fatal(err)
		}
		relink := unlink(t, g, k, victim.Addr+off)
		var ps []linux.Task
		idsJSON(t, &ps, "ps", "--vm", vm)
		code, rep := checkFindings(t, vm)
		relink()
		for _, p := range ps {
			if p.PID == victim.PID {
				t.Errorf("the unlinked task still shows in ids ps")
			}
		}
		if code != 1 || !hasFinding(rep, ids.CheckHiddenProcess, fmt.Sprintf("process %d (sleep)", victim.PID)) {
			t.Errorf("unlinked task %d: exit %d, findings %+v", victim.PID, code, rep.Findings)
		}
	})

	t.Run("hidden module", func(t *testing.T) {
		mods, err := k.Modules()
		if err != nil {
			t.Fatal(err)
		}
		var victim linux.Module
		for _, m := range mods {
			if m.Name == "evdev" {
				victim = m
			}
		}
		if victim.Name == "" {
			t.Fatalf("no evdev module in %v", mods)
		}
		off, err := prof.FieldOffset("module.list")
		if err != nil {
			t.Fatal(err)
		}
		// A syscall slot pointed into the module's code is traced to it,
		// before and after the module hides.
		slot := syscallSlot(t, k, "__x64_sys_ni_syscall")
		target := victim.Base + 0x10
		g.writeU64(t, slot.SlotPhys, target)
		code, rep := checkFindings(t, vm)
		if code != 1 || !hasFinding(rep, ids.CheckSyscallTable, "evdev+0x10 in module space") {
			t.Errorf("slot %d into evdev: exit %d, findings %+v", slot.Nr, code, rep.Findings)
		}
		relink := unlink(t, g, k, victim.Addr+off)
		code, rep = checkFindings(t, vm)
		var listing []ids.ModuleEntry
		mcode := idsJSON(t, &listing, "modules", "--vm", vm)
		relink()
		g.writeU64(t, slot.SlotPhys, slot.Addr)
		if code != 1 || !hasFinding(rep, ids.CheckHiddenModule, `"evdev"`) ||
			!hasFinding(rep, ids.CheckSyscallTable, "evdev+0x10 (hidden: seen in sysfs, scan, missing from the module list)") {
			t.Errorf("unlinked module: exit %d, findings %+v", code, rep.Findings)
		}
		hidden := false
		for _, m := range listing {
			hidden = hidden || m.Name == "evdev" && m.Hidden && !slices.Contains(m.Views, linux.ViewModules)
		}
		if mcode != 1 || !hidden {
			t.Errorf("ids modules with evdev unlinked: exit %d, evdev not flagged hidden in %+v", mcode, listing)
		}
	})

	t.Run("status shows the periodic scan", func(t *testing.T) {
		slot := syscallSlot(t, k, "__x64_sys_ni_syscall")
		g.writeU64(t, slot.SlotPhys, 0xffffffffc0001000)
		defer g.writeU64(t, slot.SlotPhys, slot.Addr)
		testvm.Eventually(t, time.Minute, "a periodic scan's finding in status", func() error {
			st := status(t, vm)
			if st.IDS == nil || st.IDS.IntervalSeconds != 1 || st.IDS.Scans == 0 || len(st.IDS.Findings) == 0 {
				return fmt.Errorf("ids status %+v", st.IDS)
			}
			return nil
		})
		text := gv(t, time.Minute, "status", vm)
		if !regexp.MustCompile(`(?m)^ids: +a scan every 1s$`).MatchString(text.stdout) ||
			!regexp.MustCompile(`(?m)^  findings: +[1-9][0-9]* \(`).MatchString(text.stdout) {
			t.Errorf("plain status does not show the scan and its findings:\n%s", text.stdout)
		}
		g.writeU64(t, slot.SlotPhys, slot.Addr)
		testvm.Eventually(t, time.Minute, "a clean periodic scan in status", func() error {
			if st := status(t, vm); st.IDS == nil || len(st.IDS.Findings) != 0 {
				return fmt.Errorf("ids status %+v", st.IDS)
			}
			return nil
		})
	})

	t.Run("inline patch", func(t *testing.T) {
		// A jmp over raw_seq_show's first bytes (nothing reads /proc/net/raw
		// meanwhile) into a module's code: the technique of a rootkit that
		// filters /proc/net by patching a seq_show function.
		fn, err := k.Addr("raw_seq_show")
		if err != nil {
			t.Fatal(err)
		}
		mods, err := k.Modules()
		if err != nil || len(mods) == 0 {
			t.Fatalf("modules: %v", err)
		}
		target := mods[0].Base + 0x40
		old, err := vmi.ReadU64(k.AS, fn)
		if err != nil {
			t.Fatal(err)
		}
		jmp := old&^0xffffffffff | 0xe9 | uint64(uint32(int32(target-(fn+5))))<<8
		restore := writeVirtU64(t, g, k, fn, jmp)
		code, rep := checkFindings(t, vm)
		restore()
		want := fmt.Sprintf("raw_seq_show is patched at %#x: it branches to %s+0x40", fn, mods[0].Name)
		if code != 1 || !hasFinding(rep, ids.CheckInline, want) {
			t.Errorf("jmp at raw_seq_show: exit %d, want %q in %+v", code, want, rep.Findings)
		}
	})

	t.Run("redirected /proc/net operations", func(t *testing.T) {
		// raw_seq_ops.show (nothing reads /proc/net/raw meanwhile) pointed
		// into a module's code, as a rootkit hiding raw sockets would.
		ops, err := k.Addr("raw_seq_ops")
		if err != nil {
			t.Fatal(err)
		}
		off, err := prof.FieldOffset("seq_operations.show")
		if err != nil {
			t.Fatal(err)
		}
		mods, err := k.Modules()
		if err != nil || len(mods) == 0 {
			t.Fatalf("modules: %v", err)
		}
		restore := writeVirtU64(t, g, k, ops+off, mods[0].Base+0x50)
		code, rep := checkFindings(t, vm)
		restore()
		want := fmt.Sprintf("raw_seq_ops+%#x points to %s+0x50", off, mods[0].Name)
		if code != 1 || !hasFinding(rep, ids.CheckOpsTables, want) {
			t.Errorf("raw_seq_ops.show into %s: exit %d, want %q in %+v", mods[0].Name, code, want, rep.Findings)
		}
	})

	t.Run("hooked interrupt vector", func(t *testing.T) {
		// Vector 21 (reserved: never raised) pointed into a module's code.
		idt, err := k.Addr("idt_table")
		if err != nil {
			t.Fatal(err)
		}
		mods, err := k.Modules()
		if err != nil || len(mods) == 0 {
			t.Fatalf("modules: %v", err)
		}
		h := mods[0].Base + 0x30
		gate := idt + 16*21
		lo, err := vmi.ReadU64(k.AS, gate)
		if err != nil {
			t.Fatal(err)
		}
		// offset_low (bits 0-15) and offset_middle (bits 48-63) of the
		// first quadword, offset_high in the second.
		newLo := lo&0x0000ffffffff0000 | h&0xffff | (h>>16&0xffff)<<48
		restoreLo := writeVirtU64(t, g, k, gate, newLo)
		hi, err := vmi.ReadU64(k.AS, gate+8)
		if err != nil {
			t.Fatal(err)
		}
		restoreHi := writeVirtU64(t, g, k, gate+8, hi&^0xffffffff|h>>32)
		code, rep := checkFindings(t, vm)
		restoreHi()
		restoreLo()
		want := fmt.Sprintf("interrupt vector 21's handler is %s+0x30", mods[0].Name)
		if code != 1 || !hasFinding(rep, ids.CheckIDT, want) {
			t.Errorf("vector 21 into %s: exit %d, want %q in %+v", mods[0].Name, code, want, rep.Findings)
		}
	})

	t.Run("a hiding mark in the task flags", func(t *testing.T) {
		tasks, err := k.Tasks()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(tasks, func(x linux.Task) bool { return x.Comm == "gv-hide-me" })
		if i < 0 {
			t.Fatal("gv-hide-me not running")
		}
		off, err := prof.FieldOffset("task_struct.flags")
		if err != nil {
			t.Fatal(err)
		}
		old, err := vmi.ReadU64(k.AS, tasks[i].Addr+off)
		if err != nil {
			t.Fatal(err)
		}
		restore := writeVirtU64(t, g, k, tasks[i].Addr+off, old|0x20000000) // PF__HOLE__20000000 on 6.1
		code, rep := checkFindings(t, vm)
		restore()
		if code != 1 || !hasFinding(rep, ids.CheckTaskFlags, fmt.Sprintf("thread %d (gv-hide-me) carries task flag 0x20000000", tasks[i].PID)) {
			t.Errorf("a task marked with an unused flag: exit %d, %+v", code, rep.Findings)
		}
	})

	t.Run("stolen root", func(t *testing.T) {
		stolenRoot(t, vm, g, k, prof)
	})

	t.Run("the kernel's own tracers are listed, not flagged", func(t *testing.T) {
		kernelTracers(t, vm)
	})

	t.Run("the guest's own view lies", func(t *testing.T) {
		lyingGuestView(t, vm)
	})

	t.Run("a corrupted task does not blind the scan", func(t *testing.T) {
		corruptedTaskScan(t, vm, g, k, prof)
	})

	if code, rep := checkFindings(t, vm); code != 0 {
		t.Errorf("check after restoring everything: exit %d, %+v", code, rep.Findings)
	}
	// Continuous mode reports a process started now, after its baseline
	// scan (the hooks above were too brief to be sure a scan saw them).
	startMarked(t, vm, "gv-late")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev := gv(t, time.Minute, "events", vm)
		if strings.Contains(ev.stdout, `"type":"process-start"`) && strings.Contains(ev.stdout, `"comm":"gv-late"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no process-start event for gv-late:\n%s", ev.stdout)
		}
		time.Sleep(time.Second)
	}
}

// corruptedTaskScan corrupts a kernel thread's pid and tgid (0x7fffffff,
// out of range) and, in the same window, unlinks a module, as a rootkit
// that blinds the IDS before hiding would: `ids ps` must print every other
// row and exit 2, `ids check` must report the corrupt object by address
// and the hidden module, and the continuous scan must report both as
// findings, then clear them once memory is restored.
func corruptedTaskScan(t *testing.T, vm string, g *guestRAM, k *linux.Kernel, prof *linux.Profile) {
	tasks, err := k.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	var victim linux.Task
	for _, tk := range tasks {
		if tk.KernelThread && strings.HasPrefix(tk.Comm, "ksoftirqd") {
			victim = tk
			break
		}
	}
	if victim.PID == 0 {
		t.Fatal("no ksoftirqd thread to corrupt")
	}
	pidOff, err := prof.FieldOffset("task_struct.pid")
	if err != nil {
		t.Fatal(err)
	}
	if tgidOff, err := prof.FieldOffset("task_struct.tgid"); err != nil || tgidOff != pidOff+4 {
		t.Fatalf("task_struct.tgid is not right after pid (%d, %v)", tgidOff, err)
	}
	mods, err := k.Modules()
	if err != nil {
		t.Fatal(err)
	}
	var mod linux.Module
	for _, m := range mods {
		if m.Name == "evdev" {
			mod = m
		}
	}
	listOff, err := prof.FieldOffset("module.list")
	if err != nil || mod.Name == "" {
		t.Fatalf("no evdev module (%v)", err)
	}
	restorePID := writeVirtU64(t, g, k, victim.Addr+pidOff, 0x7fffffff_7fffffff)
	relink := unlink(t, g, k, mod.Addr+listOff)
	restored := false
	restore := func() {
		if !restored {
			relink()
			restorePID()
			restored = true
		}
	}
	defer restore()

	ps := gv(t, 5*time.Minute, "ids", "ps", "--json", "--vm", vm)
	var rows []linux.Task
	if err := json.Unmarshal([]byte(ps.stdout), &rows); err != nil {
		t.Fatalf("ids ps --json with a corrupted task: %v\n%s", err, ps.stdout)
	}
	// Every other process is listed (processes come and go meanwhile: the
	// guest's exec channel's among them), the corrupted one is not.
	hasInit, hasVictim := false, false
	for _, r := range rows {
		hasInit = hasInit || r.PID == 1
		hasVictim = hasVictim || r.Addr == victim.Addr
	}
	if ps.code != 2 || len(rows) < len(tasks)/2 || !hasInit || hasVictim || !strings.Contains(ps.stderr, fmt.Sprintf("task_struct at %#x", victim.Addr)) {
		t.Errorf("ids ps with a corrupted task: exit %d, %d rows (%d before), init %v, victim %v, stderr %q", ps.code, len(rows), len(tasks), hasInit, hasVictim, ps.stderr)
	}
	code, rep := checkFindings(t, vm)
	if code != 1 || !hasFinding(rep, ids.CheckCorrupt, fmt.Sprintf("%#x", victim.Addr)) || !hasFinding(rep, ids.CheckHiddenModule, `"evdev"`) {
		t.Errorf("ids check with a corrupted task and a hidden module: exit %d, findings %+v, checks %+v", code, rep.Findings, rep.Checks)
	}
	var ids1 []string
	for _, f := range rep.Findings {
		ids1 = append(ids1, f.ID)
	}
	waitEvents(t, vm, []string{`"type":"finding"`, ids.CheckCorrupt}, []string{`"type":"finding"`, `"name":"evdev"`})
	restore()
	waitEvents(t, vm, []string{`"type":"finding-cleared"`, ids.CheckCorrupt}, []string{`"type":"finding-cleared"`, `"name":"evdev"`})
	t.Logf("finding ids while corrupted: %v", ids1)
}

// waitEvents waits (≤ 30 s) until the VM's event stream has, for each
// group of strings, one line holding all of them.
func waitEvents(t *testing.T, vm string, groups ...[]string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev := gv(t, time.Minute, "events", vm, "--limit", "1000")
		missing := 0
		for _, g := range groups {
			found := false
			for line := range strings.SplitSeq(ev.stdout, "\n") {
				all := true
				for _, s := range g {
					all = all && strings.Contains(line, s)
				}
				found = found || all
			}
			if !found {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events of %s: %d groups of %v missing:\n%s", vm, missing, groups, ev.stdout)
		}
		time.Sleep(time.Second)
	}
}

// syscallSlot returns the first syscall table entry whose image handler is
// name.
func syscallSlot(t *testing.T, k *linux.Kernel, name string) linux.SyscallEntry {
	t.Helper()
	entries, err := k.SyscallTable()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("no %s slot in %d entries", name, len(entries))
	return linux.SyscallEntry{}
}

// lyingGuestView makes the guest's /proc lie as a getdents- and
// seq_show-filtering rootkit does: a copy of /proc's pid directories
// without one process, and of /proc/net without its listening socket, is
// bind-mounted over /proc. ids check must report the process and the
// socket as hidden from the guest (the kernel's lists still hold them),
// and be clean again once /proc is itself.
func lyingGuestView(t *testing.T, vm string) {
	start := `httpd -p 4444 -h /tmp; sleep 1; pid=$(pidof httpd); echo $pid`
	r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", start)
	pid, err := strconv.Atoi(strings.Fields(strings.TrimSpace(r.stdout) + " x")[0])
	if r.code != 0 || err != nil {
		t.Fatalf("start httpd: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	defer gv(t, time.Minute, "exec", vm, "--", "kill", strconv.Itoa(pid))
	lie := fmt.Sprintf(`set -e
rm -rf /tmp/fp && mkdir -p /tmp/fp/net
for d in /proc/[0-9]*; do n=${d#/proc/}; [ "$n" = %d ] || mkdir /tmp/fp/$n; done
for f in tcp tcp6 udp udp6; do [ -r /proc/net/$f ] && grep -v ':115C ' /proc/net/$f > /tmp/fp/net/$f || true; done
mount --bind /tmp/fp /proc`, pid)
	if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", lie); r.code != 0 {
		t.Fatalf("bind the lying /proc: exit %d: %s", r.code, r.stderr)
	}
	unmounted := false
	unmount := func() {
		if !unmounted {
			if r := gv(t, time.Minute, "exec", vm, "--", "umount", "/proc"); r.code != 0 {
				t.Errorf("umount the lying /proc: %s", r.stderr)
			}
			unmounted = true
		}
	}
	defer unmount()
	code, rep := checkFindings(t, vm)
	if code != 1 || !hasFinding(rep, ids.CheckHiddenProcess, fmt.Sprintf("process %d (httpd) is hidden from the guest", pid)) ||
		!hasFinding(rep, ids.CheckHiddenSocket, ":4444 (LISTEN") {
		t.Errorf("a /proc without httpd: exit %d, findings %+v, checks %+v", code, rep.Findings, rep.Checks)
	}
	unmount()
	if code, rep := checkFindings(t, vm); code != 0 {
		t.Errorf("/proc itself again: exit %d, findings %+v", code, rep.Findings)
	}
}

// kernelTracers attaches the kernel's own function tracer and a kprobe
// event (tracefs) to do_sys_openat2: `ids hooks` must list both, attached
// there and running the kernel's own code, and `ids check` stay clean.
func kernelTracers(t *testing.T, vm string) {
	const on = `mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; cd /sys/kernel/tracing &&
echo 'p:gvprobe do_sys_openat2' >> kprobe_events && echo 1 > events/kprobes/gvprobe/enable &&
echo do_sys_openat2 > set_ftrace_filter && echo function > current_tracer`
	const off = `cd /sys/kernel/tracing && echo nop > current_tracer; echo > set_ftrace_filter; echo 0 > events/kprobes/gvprobe/enable; echo '-:gvprobe' >> kprobe_events`
	if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", on); r.code != 0 {
		t.Fatalf("attach the tracers: exit %d: %s", r.code, r.stderr)
	}
	defer gv(t, time.Minute, "exec", vm, "--", "sh", "-c", off)
	var hooks ids.HooksReport
	code := idsJSON(t, &hooks, "hooks", "--vm", vm)
	sawKprobe, sawFtrace := false, false
	for _, e := range hooks.Kprobes {
		sawKprobe = sawKprobe || strings.HasPrefix(e.On, "do_sys_openat2") && !e.Foreign
	}
	for _, e := range hooks.Ftrace {
		sawFtrace = sawFtrace || strings.Contains(e.On, "do_sys_openat2") && !e.Foreign
	}
	if code != 0 || !sawKprobe || !sawFtrace {
		t.Errorf("ids hooks with the kernel's tracers on do_sys_openat2: exit %d, kprobe %v, ftrace %v: %+v", code, sawKprobe, sawFtrace, hooks)
	}
	if code, rep := checkFindings(t, vm); code != 0 {
		t.Errorf("ids check with the kernel's tracers attached: exit %d, %+v", code, rep.Findings)
	}
}

// stolenRoot makes a process (a sleep) look like a user's (its cred's uids and gids
// 1000) to a first check, then root again, as commit_creds from a hooked
// syscall would: the next check must report it as having become root
// without a setuid exec. Then it points another process's cred at the
// first one's, which no fork or exec does: reported as shared credentials.
func stolenRoot(t *testing.T, vm string, g *guestRAM, k *linux.Kernel, prof *linux.Profile) {
	// Two processes that do not fork (a forked child would keep the
	// credentials its parent had).
	r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c",
		"sleep 600 </dev/null >/dev/null 2>&1 & echo $!; sleep 601 </dev/null >/dev/null 2>&1 & echo $!")
	pids := strings.Fields(r.stdout)
	if r.code != 0 || len(pids) != 2 {
		t.Fatalf("start two sleeps: exit %d, %q", r.code, r.stdout)
	}
	tasks, err := k.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	var user, other linux.Task
	for _, tk := range tasks {
		switch strconv.Itoa(tk.PID) {
		case pids[0]:
			user = tk
		case pids[1]:
			other = tk
		}
	}
	if user.PID == 0 || other.PID == 0 {
		t.Fatalf("sleeps %v not in the task list", pids)
	}
	defer func() {
		// Gone before the next check: a process that escalated stays a
		// finding while it lives.
		if r := gv(t, time.Minute, "exec", vm, "--", "kill", "-9", pids[0], pids[1]); r.code != 0 {
			t.Errorf("kill the sleeps: %s", r.stderr)
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			ts, _ := k.Tasks()
			if !slices.ContainsFunc(ts, func(x linux.Task) bool { return x.Addr == user.Addr && x.StartTime == user.StartTime }) {
				return
			}
		}
		t.Errorf("sleep %d still running", user.PID)
	}()
	off := func(f string) uint64 {
		o, err := prof.FieldOffset(f)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	c, err := k.Creds(user)
	if err != nil {
		t.Fatal(err)
	}
	// uid/gid, suid/sgid, euid/egid, fsuid/fsgid are pairs of 4-byte ids.
	var undo []func()
	for _, pair := range []string{"uid", "suid", "euid", "fsuid"} {
		if off("cred."+pair)+4 != off("cred."+strings.Replace(pair, "uid", "gid", 1)) {
			t.Fatalf("cred.%s is not followed by its gid", pair)
		}
		undo = append(undo, writeVirtU64(t, g, k, c.Cred+off("cred."+pair), 1000|1000<<32))
	}
	// A user's process has no capabilities in effect or permitted.
	for _, set := range []string{"cred.cap_effective", "cred.cap_permitted"} {
		undo = append(undo, writeVirtU64(t, g, k, c.Cred+off(set), 0))
	}
	if code, rep := checkFindings(t, vm); code != 0 {
		t.Fatalf("a user's process: exit %d, %+v", code, rep.Findings)
	}
	for _, u := range undo {
		u()
	}
	code, rep := checkFindings(t, vm)
	if code != 1 || !hasFinding(rep, ids.CheckCredentials, fmt.Sprintf("process %d (sleep, /bin/busybox) became root", user.PID)) {
		t.Errorf("root without a setuid exec: exit %d, %+v", code, rep.Findings)
	}
	oc, err := k.Creds(other)
	if err != nil {
		t.Fatal(err)
	}
	restoreCred := writeVirtU64(t, g, k, other.Addr+off("task_struct.cred"), c.Cred)
	restoreReal := writeVirtU64(t, g, k, other.Addr+off("task_struct.real_cred"), c.Cred)
	code, rep = checkFindings(t, vm)
	restoreReal()
	restoreCred()
	if code != 1 || !hasFinding(rep, ids.CheckCredentials, fmt.Sprintf("shares its credentials (cred at %#x)", c.Cred)) {
		t.Errorf("a cred shared by two processes (%#x, %#x before): exit %d, %+v", c.Cred, oc.Cred, code, rep.Findings)
	}
}
