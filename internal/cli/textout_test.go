package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// Guest-chosen names that attack a text table or the terminal.
const (
	forgedRow   = "x\n    1     0     0 S init" // a process name that forges a ps row
	clearScreen = "/tmp/\x1b[2J\x1b[Hpwned"     // a file name that clears the screen
	crModule    = "evil\rext4"                  // a module name that overwrites its own row
	bidiName    = "cat\u202Egnp.sh"             // RLO: shows as "cathps.png"
	c1CSI       = "\u009b31mred"                // an 8-bit CSI, as a UTF-8 rune
	tabName     = "a\tb"                        // a tab would shift every column after it
	titleSet    = "\x1b]0;owned\x07"            // OSC: sets the window title
	allHostile  = forgedRow + clearScreen + crModule + bidiName + c1CSI + tabName + titleSet
	forgedEvent = "\n2099-01-01T00:00:00Z process-exit pid=1" // a forged events line
)

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTextOutputEscapesGuestText renders guest-controlled names through every
// text formatter and compares with testdata/*.golden (go test -run
// TestTextOutputEscapesGuestText -update rewrites them). Beyond the golden
// files it checks what must hold whatever the layout: the output has exactly
// the expected number of lines (no row was forged), holds no control byte
// but the line ends, no bidi control, and is valid UTF-8.
func TestTextOutputEscapesGuestText(t *testing.T) {
	tasks := []linux.Task{
		{PID: 1, PPID: 0, State: "S", Comm: "init", Exe: "/bin/busybox", Threads: 1, StartTime: 1e9},
		{PID: 66, PPID: 1, UID: 1000, GID: 1000, State: "R", Comm: forgedRow, Exe: clearScreen, Threads: 1, StartTime: 2_500_000_000},
		{PID: 67, PPID: 66, State: "S", Comm: bidiName, Exe: "/tmp/" + bidiName, Threads: 2, StartTime: 3e9},
		{PID: 68, PPID: 1, State: "S", Comm: titleSet + tabName, Exe: "/tmp/" + c1CSI, Threads: 1, StartTime: 4e9},
		{PID: 2, PPID: 0, State: "I", Comm: "kthreadd", KernelThread: true},
	}
	modules := []linux.Module{
		{Name: "ext4", Base: 0xffffffffc0000000, Size: 4096, State: "live"},
		{Name: crModule, Base: 0xffffffffc0100000, Size: 8192, State: "live"},
		{Name: bidiName, Base: 0xffffffffc0200000, Size: 100, State: "coming"},
	}
	moduleRows := []ids.ModuleEntry{{Module: modules[0], Views: []string{"modules", "sysfs", "scan"}},
		{Module: modules[1], Views: []string{"sysfs" + titleSet, "scan"}, Hidden: true},
		{Module: modules[2], Views: []string{"modules"}}}
	sockets := []linux.Socket{
		{Family: "inet", Proto: "tcp", LocalAddr: "0.0.0.0", LocalPort: 22, RemoteAddr: "0.0.0.0", State: "LISTEN", PID: 1, Comm: "init"},
		{Family: "unix", Proto: "unix", LocalAddr: clearScreen, RemoteAddr: "@" + forgedRow, State: "LISTEN", PID: 66, Comm: forgedRow},
	}
	syscalls := ids.SyscallReport{
		Entries: []linux.SyscallEntry{
			{Nr: 0, Name: "__x64_sys_read", Addr: 0xffffffff81000000, Symbol: "__x64_sys_read"},
			{Nr: 1, Name: "__x64_sys_write", Addr: 0xffffffffc0100010, Symbol: crModule + "_hook+0x10", Hooked: true, Reason: "points into module " + crModule},
		},
		Dispatch:        []linux.DispatchFinding{{Function: "x64_sys_call", Addr: 0xffffffff81000100, Target: 0xffffffffc0100020, TargetSymbol: bidiName, Reason: "jumps into " + clearScreen}},
		DispatchChecked: true,
	}
	report := ids.Report{
		Findings: []ids.Finding{
			{Check: ids.CheckHiddenProcess, Severity: ids.SeverityCritical, PID: 66, Name: forgedRow, Summary: "process 66 (" + forgedRow + ") is hidden: seen in pid hash, missing from task list"},
			{Check: ids.CheckCommExe, Severity: ids.SeverityWarning, PID: 68, Name: titleSet, Summary: "process 68 calls itself " + titleSet + " but runs /tmp/" + c1CSI},
		},
		Checks: []ids.CheckStatus{
			{Name: ids.CheckHiddenProcess, Ran: true, Findings: 1},
			{Name: ids.CheckHiddenModule, Ran: false, Error: "module " + crModule + ": bad list\n[critical] forged: finding"},
		},
	}
	hooks := ids.HooksReport{
		Ftrace:  []ids.HookEntry{{Kind: "ftrace_ops", Addr: 0xffffffffc0100000, On: "__x64_sys_getdents64", Runs: []string{crModule + "+0x10"}, Foreign: true}},
		Kprobes: []ids.HookEntry{{Kind: "kprobe", Addr: 0xffffffff82000000, On: "do_sys_openat2" + tabName, Runs: []string{"kernel"}}},
		LSM: []ids.LSMEntry{
			{Addr: 0xffffffff8242e4c0, Hook: "file_open", LSM: "capability", Func: 0xffffffff81000000, Runs: "cap_file_open"},
			{Addr: 0xffffffffc0100100, Hook: "file_open", LSM: forgedRow + titleSet, Func: 0xffffffffc0100010, Runs: bidiName + "+0x10", Foreign: true,
				Problem: "it lies outside the kernel's own LSM arrays (at " + clearScreen + ")"},
			{Addr: 0xffff888000123000, Hook: "bprm_check_security", LSM: "gatevisor", Func: 0xffffffff81000100, Runs: "bpf_lsm_bprm_check_security", Gate: true},
		},
		LSMBroken: []linux.LSMBrokenList{{Hook: "task_kill", List: 0xffffffff8242e800, At: 0xdead, Reason: "entry 0's link 0xdead is not a kernel address" + forgedEvent}},
		LSMNote:   "not applicable: " + c1CSI,
	}
	banner := ids.BannerReport{Banner: "Linux version 6.1.0 (" + clearScreen + ") #1 SMP" + titleSet, Release: "6.1.0" + bidiName, Verified: false}

	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	status := api.Status{Name: "cam1", State: "running", QEMUStatus: "running" + clearScreen, GuestReady: true, BootSeconds: 1.5,
		MonitorPID: 100, QEMUPID: 101, Accel: "tcg", AccelReason: "no /dev/kvm", Machine: "q35", MemMiB: 256, CPUs: 1,
		Kernel: "/k/" + bidiName, Initrd: "/k/initrd" + c1CSI, Append: "console=ttyS0 " + forgedRow, StartedAt: started,
		RuntimeDir: "/run/gatevisor/cam1", ConsoleLog: "/s/console" + crModule + ".log",
		Policy: &api.PolicyStatus{Digest: "sha256:00", Seq: 2, Path: "/p/" + forgedRow, Files: []string{"x.policy"}, NotEnforced: []string{"x.policy:1:1: " + clearScreen}},
		Gates:  []api.GateStatus{{Name: "kernel", Armed: true, Traps: 3, Watchpoints: 2, Classes: []string{"file"}}, {Name: "net", Note: "no --net" + forgedRow}},
		Audit:  &api.AuditStatus{Log: "/s/audit" + crModule, Head: "7:ab"}}
	lsRows := []lsRow{
		{Name: "cam1", Owner: "alice", Live: true, Status: &status},
		{Name: forgedRow, Owner: titleSet, Live: false},
		{Name: "cam2", Owner: "root" + bidiName, Live: true, Error: "unreachable"},
	}
	evLines := strings.Join([]string{
		string(mustJSON(t, ids.Event{Time: started, VM: "cam1", Type: ids.EventProcessStart, Process: &tasks[1]})),
		string(mustJSON(t, ids.Event{Time: started, VM: "cam1", Type: ids.EventModuleLoad, Module: &modules[1]})),
		string(mustJSON(t, ids.Event{Time: started, VM: "cam1", Type: ids.EventFinding, Finding: &report.Findings[0]})),
		string(mustJSON(t, map[string]any{"time": started, "vm": "cam1", "type": "syscall", "pid": 66, "comm": forgedEvent,
			"syscall": "openat", "args": []int{3, 4}, "path": clearScreen, "verdict": "deny", "errno": 13, "rule": "no_tmp"})),
		string(mustJSON(t, map[string]any{"time": started, "vm": "cam1", "type": "net-deny", "net": map[string]any{
			"remote": "192.0.2.1:23", "subject": map[string]any{"pid": 67, "comm": bidiName, "exe": "a b=c\"d"}, "verdict": "deny"}})),
		"not json \x1b[2J" + titleSet,
		"",
	}, "\n")
	explainEv := event.Event{Class: event.ClassModule, Op: "load" + crModule, Module: crModule + titleSet,
		Path: clearScreen, Subject: event.Subject{PID: 66, Comm: forgedRow, Exe: "/tmp/" + bidiName}}
	explainRes := policy.Result{Verdict: policy.VerdictDeny, Errno: 1, Rule: "no_modules", Reason: "module " + crModule + " is not the kit's",
		Votes: []policy.Vote{{Model: "rule", Verdict: policy.VerdictDeny, Rule: "no_modules", Reason: "matched " + forgedRow}}}

	flows := api.NetFlows{Total: 5, Limit: 3, Isolated: "scan " + crModule, Flows: []api.NetFlow{
		{Proto: "tcp", Local: "10.0.2.15:40000", Remote: "10.0.2.3:80", Dir: "out", State: "allowed", Answered: true, Verdict: "allow", Action: "forward",
			Rule: "updater", Process: &api.NetFlowProcess{PID: 66, Start: 2_500_000_000, Comm: forgedRow, Exe: clearScreen, UID: 1000},
			Created: started.Add(80 * time.Second), Last: started.Add(85 * time.Second), FramesOut: 12, FramesIn: 9},
		{Proto: "tcp", Local: "10.0.2.15:40002", Remote: "198.51.100.1:23", Dir: "out", State: "denied", Closed: true, Revoked: true, Verdict: "deny",
			Action: "reset", Rule: "no_telnet_out", Process: &api.NetFlowProcess{PID: 67, Comm: bidiName, Exe: "/tmp/" + c1CSI + tabName},
			Created: started.Add(70 * time.Second), Last: started.Add(70 * time.Second), FramesOut: 3},
		{Proto: "udp", Local: "10.0.2.15:5353", Remote: "10.0.2.2:53", Dir: "out", State: "pending", NoProcess: "waiting for " + titleSet,
			Created: started.Add(89 * time.Second), Last: started.Add(89 * time.Second), FramesOut: 1},
	}}

	ids := func(query string, v any) func(*bytes.Buffer) {
		return func(b *bytes.Buffer) {
			err := printIDS(b, query, mustJSON(t, v))
			if exitCodeOf(err) != 0 {
				err = nil // the exit code says there are findings, or a check did not run
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name  string
		lines int // the rows the data has: a forged row would add one
		print func(*bytes.Buffer)
	}{
		{"ids_ps", 1 + len(tasks), ids("ps", tasks)},
		{"ids_pstree", len(tasks), ids("pstree", tasks)},
		{"ids_modules", 1 + len(modules), ids("modules", moduleRows)},
		{"ids_sockets", 1 + len(sockets), ids("sockets", sockets)},
		{"ids_syscalls", 1 + 2 + 2 + 1, ids("syscalls", syscalls)},
		{"ids_check", 2 + 2, ids("check", report)},
		{"ids_hooks", 1 + 2 + 3 + 1 + 1, ids("hooks", hooks)},
		{"ids_banner", 6, ids("banner", banner)},
		{"status", 22, func(b *bytes.Buffer) { printStatus(b, &status) }},
		{"ls", 1 + len(lsRows), func(b *bytes.Buffer) {
			if err := printLs(b, lsRows, started.Add(90*time.Second)); err != nil {
				t.Fatal(err)
			}
		}},
		{"events_text", 6, func(b *bytes.Buffer) {
			if _, err := printEvents(b, strings.NewReader(evLines), true); err != nil {
				t.Fatal(err)
			}
		}},
		{"policy_explain", 5, func(b *bytes.Buffer) { printExplain(b, &explainEv, explainRes) }},
		{"net_flows", 1 + len(flows.Flows) + 1, func(b *bytes.Buffer) {
			if err := printNetFlows(b, &flows, started.Add(90*time.Second)); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tc.print(&b)
			got := b.String()
			checkTerminalSafe(t, got)
			if n := strings.Count(got, "\n"); n != tc.lines || !strings.HasSuffix(got, "\n") {
				t.Errorf("%d lines, want %d: a guest name forged a line:\n%s", n, tc.lines, got)
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("%s (-want +got):\n%s", golden, diff)
			}
		})
	}
}

// checkTerminalSafe fails if s holds anything a terminal would act on other
// than the line ends: C0 and C1 controls, DEL, bidi controls, invalid UTF-8.
func checkTerminalSafe(t *testing.T, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Errorf("output is not valid UTF-8: %q", s)
	}
	for i, r := range s {
		switch {
		case r == '\n':
		case r < 0x20, r >= 0x7f && r <= 0x9f:
			t.Errorf("control %U at byte %d reaches the terminal: %q", r, i, s)
		case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
			t.Errorf("bidi control %U at byte %d reaches the terminal: %q", r, i, s)
		}
	}
}

// TestJSONOutputStaysExact: the --json form of an IDS answer carries the
// guest's names exactly, not escaped.
func TestJSONOutputStaysExact(t *testing.T) {
	tasks := []linux.Task{{PID: 66, Comm: forgedRow, Exe: clearScreen + bidiName + c1CSI + titleSet}}
	raw, err := ids.EncodeResult(tasks)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := printIDSJSON(&b, raw); err != nil {
		t.Fatal(err)
	}
	var got []linux.Task
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tasks, got); diff != "" {
		t.Errorf("--json round trip (-want +got):\n%s", diff)
	}
}
