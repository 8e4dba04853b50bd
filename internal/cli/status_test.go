package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/api"
)

// fullStatus is a status with every field set, as a VM with a policy on
// every gate, a network and a stop in progress would report it.
func fullStatus() api.Status {
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ready := started.Add(1500 * time.Millisecond)
	lastRecord, lastScan := started.Add(time.Minute), started.Add(2*time.Minute)
	return api.Status{
		Name: "cam4", State: "stopping", QEMUStatus: "running", GuestReady: true,
		MonitorPID: 4242, QEMUPID: 4243, Accel: "kvm", AccelReason: "/dev/kvm is usable",
		Machine: "q35", MemMiB: 512, CPUs: 2,
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd.gz", Append: "console=ttyS0 panic=-1 quiet",
		StartedAt: started, ReadyAt: &ready, BootSeconds: 1.5,
		RuntimeDir: "/run/gatevisor/cam4", ConsoleLog: "/s/cam4/console.log",
		Net: &api.NetStatus{Mode: "isolated", Network: "lab", Tap: "gv0", OversizedFrames: 1,
			Gate: &api.NetGateStats{Frames: 1200, Forwarded: 1150, Dropped: 50, Refused: 3, Resets: 7,
				NewFlows: 40, Allowed: 31, Denied: 8, Unattributed: 1,
				Overload: 2, TableFull: 4, RateLimited: 5, FlowLimited: 6, Evicted: 9, Passes: 12,
				Walks: 13, WalkMicros: 2400, Flows: 14, Pending: 1, Subjects: 3,
				DropReasons:  map[string]uint64{"denied": 41, "malformed": 3, "undecided": 6},
				ResetReasons: map[string]uint64{"denied": 7}},
			NAT: map[string]uint64{"frames": 300, "dns_queries": 11}, Isolated: "by response cut (p.policy:9:1) on finding kprobe"},
		SyscallGate: &api.SyscallGateStatus{Breakpoints: 3, Stops: 120, Decided: 100, Skipped: 15, FaultIns: 5,
			SiblingStops: 2, Emulated: 4, HandleMicros: 1200},
		Policy: &api.PolicyStatus{Digest: "sha256:5f1d", Seq: 2, Path: "/p/iot-default.policy", Reloads: 1, FailedReloads: 3,
			Files:       []string{"/p/iot-default.policy", "/p/base.policy"},
			NotEnforced: []string{"iot-default.policy:12:3: rule mount_any (class mount)", "iot-default.policy:20:3: rule ioctl_tty (class ioctl)"}},
		Gates: []api.GateStatus{
			{Name: "kernel", Armed: true, Traps: 3, Watchpoints: 2, Classes: []string{"exec", "file"},
				Breakpoints: []api.Breakpoint{{Symbol: "__x64_sys_ptrace", Site: "do_syscall_64+0x5b", Syscall: "ptrace",
					Addr: "0xffffffff81001234", PhysAddr: "0x1001234", Classes: []string{"syscall"},
					Rules: []string{"rule ptrace_attach (p.policy:75:3)"}, Cost: "a stop per ptrace call"}},
				Decisions: map[string]uint64{"allow": 90, "deny": 8, "kill": 2}},
			{Name: "net", Armed: true, Classes: []string{"net"}, Decisions: map[string]uint64{"allow": 31, "deny": 8}},
			{Name: "api", Armed: true, Classes: []string{"api"}, Note: "the socket is not reachable by other users: the policy decides for the owner and root",
				Decisions: map[string]uint64{"allow": 12}},
		},
		Audit: &api.AuditStatus{Log: "/s/cam4/audit.jsonl", Head: "57:9c0e", Records: 57, LastRecordAt: &lastRecord, Bytes: 20480, Files: 2},
		IDS: &api.IDSStatus{IntervalSeconds: 5, Scans: 40, ScanErrors: 1, LastScanAt: &lastScan, LastScanMillis: 42.5,
			LastError: "", Findings: map[string]int{"high": 1, "medium": 2},
			NotChecked: []string{"syscall-table: the table is not readable"}, Unread: map[string]string{"sockets": "2 entries skipped"}},
		Events: &api.EventsStatus{Log: "/s/cam4/events.jsonl", MaxSize: 10 << 20, Keep: 3, Seq: 1234,
			Aggregated: 500, Aggregates: 4, Rotations: 2, WriteErrors: 1, LastError: "write: no space left on device",
			Oversized: 2, DroppedFollowers: 1},
		Responses: &api.ResponsesStatus{Dropped: 2, Responses: []api.ResponseStatus{{Name: "stop_hogs", Action: "stop", Taken: 3, Failed: 1, Limited: 4}}},
		Stop:      &api.StopStatus{Forced: true, Outcome: "the guest did not power off within 30s: QEMU was told to quit", Done: false},
	}
}

// TestStatusText renders fullStatus and compares with
// testdata/status_full.golden (-update rewrites it).
func TestStatusText(t *testing.T) {
	st := fullStatus()
	var b bytes.Buffer
	printStatus(&b, &st)
	got := b.String()
	checkTerminalSafe(t, got)
	golden := filepath.Join("testdata", "status_full.golden")
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
}

// statusLeaf is one leaf field of api.Status as TestStatusTextShowsEveryField
// set it: want is the text its value must show as (none for a bool),
// change sets it to another value and undo back; hostile, for a string,
// sets it to text that attacks the terminal.
type statusLeaf struct {
	path                  string
	want                  []string
	change, undo, hostile func()
}

// TestStatusTextShowsEveryField walks api.Status, sets every leaf field to a
// value of its own, and checks that the text form shows it and changes when
// it changes: a field added to api.Status (or a nested struct) that
// printStatus does not render fails here, by name. Then every string is
// made hostile (allHostile): the output must stay as many lines, and
// terminal-safe.
func TestStatusTextShowsEveryField(t *testing.T) {
	var st api.Status
	var leaves []statusLeaf
	n := 0
	fillLeaves(t, reflect.ValueOf(&st).Elem(), "Status", &n, &leaves)
	if len(leaves) < 80 {
		t.Fatalf("only %d leaves found in api.Status: the walk is broken", len(leaves))
	}
	render := func() string {
		var b bytes.Buffer
		printStatus(&b, &st)
		return b.String()
	}
	base := render()
	checkTerminalSafe(t, base)
	for _, l := range leaves {
		for _, w := range l.want {
			if !strings.Contains(base, w) {
				t.Errorf("%s: its value %q is not in the text output", l.path, w)
			}
		}
		l.change()
		if render() == base {
			t.Errorf("%s: changing it does not change the text output", l.path)
		}
		l.undo()
	}
	if t.Failed() {
		t.Logf("output:\n%s", base)
	}
	for _, l := range leaves {
		if l.hostile != nil {
			l.hostile()
		}
	}
	got := render()
	checkTerminalSafe(t, got)
	if n, want := strings.Count(got, "\n"), strings.Count(base, "\n"); n != want {
		t.Errorf("%d lines with hostile strings, %d without: a string forged a line:\n%s", n, want, got)
	}
}

// fillLeaves sets every leaf under v (a settable value) to a distinct value
// and records it. *n numbers the leaves.
func fillLeaves(t *testing.T, v reflect.Value, path string, n *int, leaves *[]statusLeaf) {
	t.Helper()
	if v.Type() == reflect.TypeOf(time.Time{}) {
		*n++
		tm := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(*n) * time.Hour)
		v.Set(reflect.ValueOf(tm))
		*leaves = append(*leaves, statusLeaf{path: path, want: []string{tm.Format(time.RFC3339)},
			change: func() { v.Set(reflect.ValueOf(tm.Add(24 * time.Hour))) },
			undo:   func() { v.Set(reflect.ValueOf(tm)) }})
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				t.Fatalf("%s.%s: unexported field in an API type", path, f.Name)
			}
			fillLeaves(t, v.Field(i), path+"."+f.Name, n, leaves)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fillLeaves(t, v.Elem(), path, n, leaves)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fillLeaves(t, v.Index(0), path+"[0]", n, leaves)
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			t.Fatalf("%s: map with %s keys: teach fillLeaves", path, v.Type().Key())
		}
		v.Set(reflect.MakeMap(v.Type()))
		key := reflect.ValueOf("k-" + path).Convert(v.Type().Key())
		elem := reflect.New(v.Type().Elem()).Elem()
		var leaf []statusLeaf
		fillLeaves(t, elem, path+"[k]", n, &leaf)
		if len(leaf) != 1 {
			t.Fatalf("%s: map of %s: teach fillLeaves", path, v.Type().Elem())
		}
		v.SetMapIndex(key, elem)
		l := leaf[0]
		*leaves = append(*leaves, statusLeaf{path: path, want: append([]string{key.String()}, l.want...),
			change: func() { l.change(); v.SetMapIndex(key, elem) },
			undo:   func() { l.undo(); v.SetMapIndex(key, elem) }})
	case reflect.String:
		s := "s-" + path
		v.SetString(s)
		*leaves = append(*leaves, statusLeaf{path: path, want: []string{s},
			change: func() { v.SetString(s + "-changed") }, undo: func() { v.SetString(s) },
			hostile: func() { v.SetString(s + allHostile) }})
	case reflect.Bool:
		v.SetBool(true)
		*leaves = append(*leaves, statusLeaf{path: path,
			change: func() { v.SetBool(false) }, undo: func() { v.SetBool(true) }})
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		*n++
		x := int64(*n*1000 + *n)
		v.SetInt(x)
		*leaves = append(*leaves, statusLeaf{path: path, want: []string{fmt.Sprint(x)},
			change: func() { v.SetInt(x + 500) }, undo: func() { v.SetInt(x) }})
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		*n++
		x := uint64(*n*1000 + *n)
		v.SetUint(x)
		*leaves = append(*leaves, statusLeaf{path: path, want: []string{fmt.Sprint(x)},
			change: func() { v.SetUint(x + 500) }, undo: func() { v.SetUint(x) }})
	case reflect.Float32, reflect.Float64:
		*n++
		x := float64(*n) + 0.25
		v.SetFloat(x)
		*leaves = append(*leaves, statusLeaf{path: path, want: []string{fmt.Sprintf("%.2f", x)},
			change: func() { v.SetFloat(x + 1) }, undo: func() { v.SetFloat(x) }})
	default:
		t.Fatalf("%s: a %s field: teach fillLeaves (and printStatus) about it", path, v.Kind())
	}
}
