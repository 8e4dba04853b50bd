package metrics

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatevisor/gatevisor/internal/api"
)

func fullStatus(name string) api.Status {
	started := time.Now().Add(-time.Minute)
	return api.Status{Name: name, State: api.StateRunning, GuestReady: true, StartedAt: started, BootSeconds: 5.5,
		MemMiB: 256, CPUs: 1, Accel: "tcg", QEMUPID: 4243, StoppedMicros: 25000, StopIntervals: 60,
		Policy: &api.PolicyStatus{Digest: "sha256:00", Seq: 2, Reloads: 1, FailedReloads: 1},
		Gates: []api.GateStatus{{Name: "kernel", Armed: true, Traps: 16, Watchpoints: 16, Decisions: map[string]uint64{"allow": 40, "deny": 2}},
			{Name: "net", Armed: true, Decisions: map[string]uint64{"deny": 3}}, {Name: "api", Armed: true}},
		SyscallGate: &api.SyscallGateStatus{Stops: 50, Decided: 42, Skipped: 8, HandleMicros: 10000},
		Net: &api.NetStatus{Mode: "isolated", Gate: &api.NetGateStats{Frames: 100, Forwarded: 90, NewFlows: 5, Flows: 2,
			DropReasons: map[string]uint64{"denied": 10}, ResetReasons: map[string]uint64{"denied": 3}}},
		IDS:    &api.IDSStatus{IntervalSeconds: 5, Scans: 9, Findings: map[string]int{"critical": 1}},
		Audit:  &api.AuditStatus{Records: 57, Bytes: 20480, Files: 1},
		Events: &api.EventsStatus{Seq: 77},
	}
}

func newVM(name string) *VM {
	return New(name, func(context.Context) api.Status { return fullStatus(name) },
		func(api.Status) Host { return Host{QEMUCPUSeconds: 12.5, MonitorRSSBytes: 40 << 20} })
}

func TestVMMetrics(t *testing.T) {
	v := newVM("cam1")
	v.TrapSeconds.Observe(0.0002)
	v.ScanSeconds.Observe(0.05)
	v.AuditWriteSeconds.Observe(0.001)
	// client_golang's linter: promtool's checks (names, units, _total,
	// help) on every family.
	problems, err := testutil.GatherAndLint(v.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	var b bytes.Buffer
	if err := v.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		`gatevisor_vm_state{state="running",vm="cam1"} 1`,
		`gatevisor_gate_decisions_total{gate="kernel",verdict="deny",vm="cam1"} 2`,
		`gatevisor_gate_decisions_total{gate="net",verdict="deny",vm="cam1"} 3`,
		`gatevisor_net_dropped_frames_total{reason="denied",vm="cam1"} 10`,
		`gatevisor_kernel_gate_handle_seconds_total{vm="cam1"} 0.01`,
		`gatevisor_vm_stopped_seconds_total{vm="cam1"} 0.025`,
		`gatevisor_vm_stops_total{vm="cam1"} 60`,
		`gatevisor_ids_findings{severity="critical",vm="cam1"} 1`,
		`gatevisor_audit_records_total{vm="cam1"} 57`,
		`gatevisor_policy_reload_failures_total{vm="cam1"} 1`,
		`gatevisor_qemu_cpu_seconds_total{vm="cam1"} 12.5`,
		`gatevisor_kernel_gate_stop_seconds_count{vm="cam1"} 1`,
		`gatevisor_ids_scan_duration_seconds_bucket{vm="cam1",le="0.064"} 1`,
		`gatevisor_audit_write_seconds_sum{vm="cam1"} 0.001`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
}

func TestMerge(t *testing.T) {
	ins := map[string]io.Reader{}
	for _, name := range []string{"cam2", "cam1"} {
		var b bytes.Buffer
		if err := newVM(name).WriteText(&b); err != nil {
			t.Fatal(err)
		}
		ins[name] = &b
	}
	var out bytes.Buffer
	if err := Merge(&out, ins); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if n := strings.Count(s, "# TYPE gatevisor_vm_vcpus gauge"); n != 1 {
		t.Errorf("the family is declared %d times, want once", n)
	}
	for _, want := range []string{`gatevisor_vm_vcpus{vm="cam1"} 1`, `gatevisor_vm_vcpus{vm="cam2"} 1`} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in the merge", want)
		}
	}
	if err := Merge(&out, map[string]io.Reader{"bad": strings.NewReader("not { metrics\n")}); err == nil || !strings.Contains(err.Error(), "metrics of bad") {
		t.Errorf("a bad exposition: %v", err)
	}
	clash := "# HELP gatevisor_vm_vcpus other\n# TYPE gatevisor_vm_vcpus counter\ngatevisor_vm_vcpus{vm=\"x\"} 1\n"
	var one bytes.Buffer
	_ = newVM("cam1").WriteText(&one)
	if err := Merge(&out, map[string]io.Reader{"a": &one, "x": strings.NewReader(clash)}); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Errorf("a clashing family: %v", err)
	}
}

// BenchmarkWriteText is one scrape of one VM's metrics, the status read
// aside (a fake here): what gatevisor serve pays per VM and scrape.
func BenchmarkWriteText(b *testing.B) {
	v := newVM("cam1")
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		if err := v.WriteText(&buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len()), "bytes/scrape")
}

// BenchmarkMerge50 merges 50 VMs' metrics, as gatevisor serve does for a
// host with 50 VMs.
func BenchmarkMerge50(b *testing.B) {
	var one bytes.Buffer
	_ = newVM("cam1").WriteText(&one)
	text := one.String()
	var out bytes.Buffer
	for b.Loop() {
		ins := map[string]io.Reader{}
		for i := range 50 {
			name := "cam" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			ins[name] = strings.NewReader(strings.ReplaceAll(text, `vm="cam1"`, `vm="`+name+`"`))
		}
		out.Reset()
		if err := Merge(&out, ins); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(out.Len()), "bytes/scrape")
}
