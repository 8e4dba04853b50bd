package metrics

import (
	"context"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatevisor/gatevisor/internal/api"
)

// scrapeTimeout bounds the status read of one scrape.
const scrapeTimeout = 5 * time.Second

// collector turns a VM's status into metrics at each scrape. It is
// unchecked (Describe sends nothing): which metrics exist depends on the
// VM (a network gate, a policy, a scan).
type collector struct {
	vm     string
	status func(context.Context) api.Status
	host   func(api.Status) Host
}

func (c *collector) Describe(chan<- *prometheus.Desc) {}

// emit sends metrics with the VM's label.
type emit struct {
	vm string
	ch chan<- prometheus.Metric
}

func (e emit) metric(kind prometheus.ValueType, name, help string, v float64, labels ...string) {
	var keys, vals []string
	for i := 0; i+1 < len(labels); i += 2 {
		keys = append(keys, labels[i])
		vals = append(vals, labels[i+1])
	}
	desc := prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, keys, prometheus.Labels{"vm": e.vm})
	e.ch <- prometheus.MustNewConstMetric(desc, kind, v, vals...)
}

func (e emit) gauge(name, help string, v float64, labels ...string) {
	e.metric(prometheus.GaugeValue, name, help, v, labels...)
}

func (e emit) counter(name, help string, v float64, labels ...string) {
	e.metric(prometheus.CounterValue, name, help, v, labels...)
}

// byKey emits one sample per key of m, sorted, labelled label=key.
func (e emit) byKey(counter bool, name, help, label string, m map[string]uint64) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if counter {
			e.counter(name, help, float64(m[k]), label, k)
		} else {
			e.gauge(name, help, float64(m[k]), label, k)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// vmStates are the values of gatevisor_vm_state's state label.
var vmStates = []string{api.StateStarting, api.StateRunning, api.StateStopping, api.StateStopped}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	st := c.status(ctx)
	e := emit{vm: c.vm, ch: ch}
	for _, s := range vmStates {
		e.gauge("vm_state", "1 for the VM's state (the monitor's view), 0 for the others.", b2f(st.State == s), "state", s)
	}
	e.gauge("vm_guest_ready", "1 once the guest printed its ready marker.", b2f(st.GuestReady))
	if !st.StartedAt.IsZero() {
		e.gauge("vm_start_time_seconds", "When the VM started, in seconds since the Unix epoch.", float64(st.StartedAt.UnixNano())/1e9)
		e.gauge("vm_uptime_seconds", "Seconds since the VM started.", time.Since(st.StartedAt).Seconds())
	}
	if st.GuestReady {
		e.gauge("vm_boot_seconds", "Seconds from the VM's start to the guest's ready marker.", st.BootSeconds)
	}
	e.gauge("vm_memory_bytes", "The guest's configured memory.", float64(st.MemMiB)*(1<<20))
	e.gauge("vm_vcpus", "The guest's vCPUs.", float64(st.CPUs))
	e.gauge("vm_kvm", "1 when the VM runs under KVM, 0 under TCG.", b2f(st.Accel == "kvm"))
	if st.State == api.StateRunning {
		e.counter("vm_stopped_seconds_total", "Time the VM spent stopped (kernel-gate stops, requests, snapshots) since the monitor attached to its QEMU, by QEMU's STOP and RESUME event timestamps; under TCG the guest's clocks stand still meanwhile.", float64(st.StoppedMicros)/1e6)
		e.counter("vm_stops_total", "The VM's stops counted in vm_stopped_seconds_total.", float64(st.StopIntervals))
	}
	if c.host != nil {
		h := c.host(st)
		e.counter("qemu_cpu_seconds_total", "CPU time QEMU used (user and system), every vCPU and device thread included.", h.QEMUCPUSeconds)
		e.gauge("monitor_resident_memory_bytes", "The monitor's resident memory.", h.MonitorRSSBytes)
	}
	if p := st.Policy; p != nil {
		e.gauge("policy_seq", "The sequence number of the policy snapshot in force (1 at start, +1 per reload).", float64(p.Seq))
		e.gauge("policy_not_enforced_statements", "Statements of the policy in force that its advisory classes accept unenforced.", float64(len(p.NotEnforced)))
		e.counter("policy_reloads_total", "Policy reloads that took effect.", float64(p.Reloads))
		e.counter("policy_reload_failures_total", "Policy reloads refused (the policy in force stayed).", float64(p.FailedReloads))
	}
	for _, g := range st.Gates {
		e.gauge("gate_armed", "1 when the gate is armed.", b2f(g.Armed), "gate", g.Name)
		for _, v := range []string{"allow", "alert", "deny", "kill"} {
			e.counter("gate_decisions_total", "The gate's decisions by verdict.", float64(g.Decisions[v]), "gate", g.Name, "verdict", v)
		}
		if g.Name == "kernel" {
			e.gauge("kernel_gate_watchpoints", "The kernel gate's watchpoints in place.", float64(g.Watchpoints))
			e.gauge("kernel_gate_breakpoints", "The kernel gate's execution breakpoints in place.", float64(g.Traps-g.Watchpoints))
		}
	}
	if g := st.SyscallGate; g != nil {
		e.counter("kernel_gate_stops_total", "VM stops at a kernel-gate trap handled.", float64(g.Stops))
		e.counter("kernel_gate_decided_total", "Trap stops that asked the security server.", float64(g.Decided))
		e.counter("kernel_gate_skipped_total", "Trap stops at a hook that were not the policy's to decide.", float64(g.Skipped))
		e.counter("kernel_gate_fault_ins_total", "Calls sent through the kernel to fault their path in first.", float64(g.FaultIns))
		e.counter("kernel_gate_sibling_stops_total", "Calls handled on a vCPU found at a trap while QEMU reported another.", float64(g.SiblingStops))
		e.counter("kernel_gate_emulated_total", "Watched loads the monitor performed for a vCPU.", float64(g.Emulated))
		e.counter("kernel_gate_handle_seconds_total", "The monitor's time deciding and enforcing at kernel-gate stops (registers read to continue written); the VM's whole stopped time is vm_stopped_seconds_total.", float64(g.HandleMicros)/1e6)
	}
	if n := st.Net; n != nil {
		e.gauge("net_isolated", "1 while the VM's network is cut off (net isolate, a policy response).", b2f(n.Isolated != ""))
		e.counter("net_oversized_frames_total", "Frames from the guest too long for the frame codec, skipped before the gate.", float64(n.OversizedFrames))
		if g := n.Gate; g != nil {
			e.counter("net_frames_total", "Frames through the network gate.", float64(g.Frames))
			e.counter("net_forwarded_frames_total", "Frames the network gate forwarded.", float64(g.Forwarded))
			e.byKey(true, "net_dropped_frames_total", "Frames the network gate dropped, by reason.", "reason", g.DropReasons)
			e.byKey(true, "net_resets_total", "TCP resets the network gate sent, by reason.", "reason", g.ResetReasons)
			e.counter("net_flows_total", "New flows the network gate decided.", float64(g.NewFlows))
			e.counter("net_unattributed_flows_total", "New flows no guest process could be found for.", float64(g.Unattributed))
			e.counter("net_evicted_flows_total", "Flows given up to make room for new ones.", float64(g.Evicted))
			e.counter("net_rate_limited_total", "Flows refused over a process's rate.", float64(g.RateLimited))
			e.counter("net_flow_limited_total", "Flows refused over a process's share of the table.", float64(g.FlowLimited))
			e.counter("net_attribution_walks_total", "Walks of the guest's sockets and tasks to attribute flows.", float64(g.Walks))
			e.counter("net_attribution_seconds_total", "Time spent attributing flows.", float64(g.WalkMicros)/1e6)
			e.gauge("net_flows", "Flows in the network gate's table.", float64(g.Flows))
			e.gauge("net_pending_flows", "Flows waiting for a decision.", float64(g.Pending))
		}
	}
	if d := st.IDS; d != nil {
		e.gauge("ids_scan_interval_seconds", "Time between continuous IDS scans (0: none).", d.IntervalSeconds)
		e.counter("ids_scans_total", "Continuous IDS scans done.", float64(d.Scans))
		e.counter("ids_scan_errors_total", "Continuous IDS scans that could not run.", float64(d.ScanErrors))
		for _, sev := range []string{"critical", "warning"} {
			e.gauge("ids_findings", "Findings of the last scan, by severity.", float64(d.Findings[sev]), "severity", sev)
		}
		e.gauge("ids_checks_not_run", "Checks the last scan could not run (it could not look everywhere).", float64(len(d.NotChecked)))
	}
	if a := st.Audit; a != nil {
		e.counter("audit_records_total", "Records in the audit log's hash chain (every session's).", float64(a.Records))
		e.gauge("audit_bytes", "Bytes in the audit log and its rotated files.", float64(a.Bytes))
	}
	if ev := st.Events; ev != nil {
		e.counter("events_total", "Events published on the VM's event stream.", float64(ev.Seq))
		e.counter("events_write_errors_total", "Events the event log could not write.", float64(ev.WriteErrors))
		e.counter("events_aggregated_total", "Decisions folded into aggregate events under a flood.", float64(ev.Aggregated))
	}
}
