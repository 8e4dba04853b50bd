package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
)

// NetCase is one workload's samples in both configurations.
type NetCase struct {
	Name string `json:"name"`
	Unit string `json:"unit"` // of the medians: MiB/s, ms per request, µs per round trip
	// Seconds are the guest-timed durations of each round's run.
	GateSeconds   []float64 `json:"gate_seconds"`
	NoGateSeconds []float64 `json:"no_gate_seconds"`
	MedianGate    float64   `json:"median_gate"`
	MedianNoGate  float64   `json:"median_no_gate"`
	MinGate       float64   `json:"min_gate"`
	MaxGate       float64   `json:"max_gate"`
	MinNoGate     float64   `json:"min_no_gate"`
	MaxNoGate     float64   `json:"max_no_gate"`
	Ratio         float64   `json:"ratio"` // gate / no gate, of the medians
	// Each round's gate run against the same round's no-gate run, which
	// ran right before or after it, under the same load: the median of the
	// per-round ratios and, for requests and round trips, of the time the
	// gate added per operation.
	PairedRatio       MedianInterval  `json:"paired_ratio"`
	PairedAddedMicros *MedianInterval `json:"paired_added_us,omitempty"`
	// Gate counters over the measured runs (the gated VM).
	Frames   uint64 `json:"gate_frames"`
	NewFlows uint64 `json:"gate_new_flows"`
	Dropped  uint64 `json:"gate_dropped"`
	// FramesPerOp is frames through the gate per request or round trip.
	FramesPerOp float64 `json:"gate_frames_per_op,omitempty"`
	// Host CPU time of each run (ms), from the schedstat of every thread:
	// the monitor (the gate, the frame codec, the switch and the network's
	// services) and QEMU (the guest's vCPU and its NIC).
	MonitorCPUGate   []float64 `json:"monitor_cpu_ms_gate"`
	MonitorCPUNoGate []float64 `json:"monitor_cpu_ms_no_gate"`
	QEMUCPUGate      []float64 `json:"qemu_cpu_ms_gate"`
	QEMUCPUNoGate    []float64 `json:"qemu_cpu_ms_no_gate"`
	// GateCPUPerFrame is each round's monitor CPU with the gate less
	// without, over the frames the gate saw in that round's run (µs): what
	// the gate costs the host per frame, measured in place. Both guests
	// ran the same workload, so their frame counts are close but not equal.
	GateCPUPerFrame MedianInterval `json:"gate_cpu_us_per_frame"`
	// GateCPUPerOp is the same per request or round trip (µs).
	GateCPUPerOp *MedianInterval `json:"gate_cpu_us_per_op,omitempty"`
	frames       []uint64        // through the gate, each round's run
}

// NetReport is what Net measured.
type NetReport struct {
	Command  string    `json:"command"`
	Net      string    `json:"net"` // isolated or user
	Accel    string    `json:"accel"`
	HostCPUs int       `json:"host_cpus"`
	Rounds   int       `json:"rounds"`
	MiB      int       `json:"mib"`
	Requests int       `json:"requests"`
	Echoes   int       `json:"echoes"`
	LoadAvg  [2]string `json:"load_average_before_after"`
	// OtherQEMUs counts QEMU processes at the start that are not the
	// benchmark's (they share the CPUs).
	OtherQEMUs int       `json:"other_qemu_processes"`
	Cases      []NetCase `json:"cases"`
	// AddedPerPacketMicros is the echo case's added time per round trip
	// over the two gate crossings on its critical path (request out, echo
	// in): the fast-path goal is at most 20 µs.
	AddedPerPacketMicros MedianInterval `json:"added_us_per_packet"`
	// Goals: "met", "missed" or "not resolved" (the interval straddles
	// it), judged on the paired intervals: the bulk ratio, and the echo's
	// added time per gate crossing.
	ThroughputGoal string `json:"throughput_goal"`
	PerPacketGoal  string `json:"per_packet_goal"`
	// PerPacketCPUGoal judges the per-packet goal on the monitor's CPU per
	// frame (with the gate less without, in the bulk and echo workloads),
	// which bounds what the gate does inline per frame and is far less
	// noisy than the guests' clocks; PerPacketCPUMicros is the higher
	// upper bound of the two intervals.
	PerPacketCPUGoal   string  `json:"per_packet_cpu_goal"`
	PerPacketCPUMicros float64 `json:"per_packet_cpu_us_upper"`
	// Attribution of the HTTP requests' flows in the gated VM (the
	// attribute_us of their net-alert events).
	AttributeN        int               `json:"attribute_samples"`
	AttributeMedianUS float64           `json:"attribute_median_us"`
	AttributeP90US    float64           `json:"attribute_p90_us"`
	AttributeRetried  int               `json:"attribute_retried"` // needed more than one walk of the guest
	DropReasons       map[string]uint64 `json:"gate_drop_reasons"`
}

// NetOptions are Net's parameters.
type NetOptions struct {
	Net      string // the guests' network: "isolated" or "user"
	Rounds   int    // each runs every workload in both guests
	MiB      int    // per bulk transfer
	Requests int    // sequential HTTP requests per run
	Echoes   int    // round trips per echo run
	Accel    string // both guests' accelerator: auto, kvm or tcg
	Mem      string // each guest's memory
	// Command is the command line, recorded in the report.
	Command string
}

// Net measures the network gate: it boots the default kit twice at once,
// one guest behind the network gate and one without, each on its own
// network, and in every round runs each workload in both, alternating
// which goes first. Runs are timed by the guests' clocks; the monitor's
// and QEMU's CPU time over each run is read from their threads.
func Net(ctx context.Context, env Env, o NetOptions) (*NetReport, error) {
	rep := &NetReport{Command: o.Command, Net: o.Net, HostCPUs: runtime.NumCPU(), Rounds: o.Rounds, MiB: o.MiB,
		Requests: o.Requests, Echoes: o.Echoes, OtherQEMUs: countQEMUs()}
	tgt, stopTarget, err := targetFor(o.Net)
	if err != nil {
		return nil, err
	}
	defer stopTarget()
	rep.LoadAvg[0] = loadAvg()
	tmp, err := os.MkdirTemp("", "gatevisor-bench-net-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	auditDir := tmp
	if d, err := os.MkdirTemp("/dev/shm", "gatevisor-bench-net-*"); err == nil {
		auditDir = d
		defer os.RemoveAll(d)
	}
	pol, polNoGate := filepath.Join(tmp, "bench-net.policy"), filepath.Join(tmp, "bench-net-nogate.policy")
	if err := os.WriteFile(pol, []byte(netPolicyFor(tgt)), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(polNoGate, []byte(netNoGatePolicy(netPolicyFor(tgt))), 0o600); err != nil {
		return nil, err
	}
	vms := netVMs(o, pol, polNoGate, auditDir)
	defer stopAll(vms) // whatever happens, stop both
	if err := env.bootAll(ctx, vms); err != nil {
		return nil, err
	}
	run := &netRun{env: env, vms: vms, loads: netWorkloads(tgt, o.MiB, o.Requests, o.Echoes), attr: map[string]attrSample{}}
	if rep.Accel, err = run.setUp(ctx, tgt, o.MiB); err != nil {
		return nil, err
	}
	for r := range o.Rounds {
		if err := run.round(ctx, r); err != nil {
			return nil, err
		}
	}
	final, err := gateStats(ctx, vms[0].c)
	if err != nil {
		return nil, err
	}
	rep.summarize(run, final)
	rep.LoadAvg[1] = loadAvg()
	return rep, nil
}

// netRun is the state of one Net run across its rounds.
type netRun struct {
	env      Env
	vms      []*netVM // the gated one first
	loads    []netWorkload
	cases    []NetCase // by workload
	attr     map[string]attrSample
	measured time.Time // runs start after it; the warm-up's are older
}

// setUp checks that the gated VM has its gate, prepares both guests and
// warms them up, and returns the accelerator.
func (n *netRun) setUp(ctx context.Context, tgt netTarget, mib int) (string, error) {
	st, err := n.vms[0].c.Status(ctx)
	if err != nil {
		return "", err
	}
	if st.Net == nil || st.Net.Gate == nil {
		return "", fmt.Errorf("the gated VM has no network gate in its status")
	}
	for _, vm := range n.vms {
		if err := vm.prepare(ctx, tgt, mib); err != nil {
			return "", err
		}
	}
	// Warm up: one short run of each workload in each guest, not counted.
	for _, vm := range n.vms {
		for _, s := range netWarmUps(tgt) {
			if _, err := guestTimed(ctx, vm.c, s); err != nil {
				return "", fmt.Errorf("warm-up in the %s guest: %w", vm.cfg, err)
			}
		}
	}
	n.cases = make([]NetCase, len(n.loads))
	for i, l := range n.loads {
		n.cases[i] = NetCase{Name: l.name, Unit: l.unit}
	}
	n.measured = time.Now()
	return st.Accel, nil
}

// round runs every workload in both guests, the gated one first in even
// rounds, and collects the HTTP flows' attribution times.
func (n *netRun) round(ctx context.Context, r int) error {
	order := n.vms
	if r%2 == 1 {
		order = []*netVM{n.vms[1], n.vms[0]}
	}
	for i := range n.loads {
		for _, vm := range order {
			if err := n.measure(ctx, r, i, vm); err != nil {
				return err
			}
		}
	}
	// The event history is bounded: collect every round.
	return collectAttribution(ctx, n.vms[0].c, n.measured, n.attr)
}

// measure runs workload i once in vm, in round r, and adds its time, the
// host CPU it took and (gated) the gate's counters to its case.
func (n *netRun) measure(ctx context.Context, r, i int, vm *netVM) error {
	l, c := n.loads[i], &n.cases[i]
	var before api.NetGateStats
	if vm.cfg == cfgGate {
		var err error
		if before, err = gateStats(ctx, vm.c); err != nil {
			return err
		}
	}
	mon0, qemu0 := cpuNanos(vm.monPID), cpuNanos(vm.qemuPID)
	secs, err := guestTimed(ctx, vm.c, l.script)
	if err != nil {
		return fmt.Errorf("round %d, %s, %s: %w", r+1, l.name, vm.cfg, err)
	}
	mon, qemu := float64(cpuNanos(vm.monPID)-mon0)/1e6, float64(cpuNanos(vm.qemuPID)-qemu0)/1e6
	if vm.cfg == cfgGate {
		after, err := gateStats(ctx, vm.c)
		if err != nil {
			return err
		}
		c.addGated(secs, mon, qemu, before, after)
	} else {
		c.NoGateSeconds = append(c.NoGateSeconds, secs)
		c.MonitorCPUNoGate, c.QEMUCPUNoGate = append(c.MonitorCPUNoGate, mon), append(c.QEMUCPUNoGate, qemu)
	}
	n.env.logf("round %d: %-32s %-8s %7.2fs\n", r+1, l.name, vm.cfg, secs)
	return nil
}

// addGated adds a gated run: its time, host CPU (ms) and the gate's
// counters before and after it.
func (c *NetCase) addGated(secs, mon, qemu float64, before, after api.NetGateStats) {
	c.frames = append(c.frames, after.Frames-before.Frames)
	c.Frames += after.Frames - before.Frames
	c.NewFlows += after.NewFlows - before.NewFlows
	c.Dropped += after.Dropped - before.Dropped
	c.GateSeconds = append(c.GateSeconds, secs)
	c.MonitorCPUGate, c.QEMUCPUGate = append(c.MonitorCPUGate, mon), append(c.QEMUCPUGate, qemu)
}
