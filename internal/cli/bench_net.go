package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/vmdir"
	"github.com/gatevisor/gatevisor/internal/vnet"
)

// benchNetPolicy is the guests' policy: DHCP, and the three workloads'
// destinations (address, HTTP port, discard and echo ports). The HTTP
// requests are alerts, so that each of their decisions reaches the event
// stream with its attribution time (attribute_us); the audit log they also
// go to is on tmpfs when /dev/shm exists.
const benchNetPolicy = `# gatevisor bench net: the guests' policy.
net default: deny(ECONNREFUSED)
  dhcp: protoEq("udp") and (portEq(67) or localPortEq(68)) allow
  bench_http: dirIs(out) and protoEq("tcp") and addrEq("%[1]s") and portEq(%[2]d) alert
  bench_tcp: dirIs(out) and protoEq("tcp") and addrEq("%[1]s") and portEq(%[3]d, %[4]d) allow
`

// benchNetTarget is where the workloads go: the isolated network's
// services (10.0.2.2), or, with --net user, listeners of this process on
// the host's loopback, which the guests reach through their NATs at
// 192.168.127.254.
type benchNetTarget struct {
	net, addr, leasePrefix  string
	discard, http, echoPort int
}

var isolatedTarget = benchNetTarget{net: "isolated", addr: vnet.GatewayAddr.String(), leasePrefix: "10.0.2.",
	discard: vnet.DiscardPort, http: vnet.HTTPPort, echoPort: vnet.EchoPort}

// hostServices serves discard, HTTP and echo on the host's 127.0.0.1 until
// the returned function is called.
func hostServices() (benchNetTarget, func(), error) {
	t := benchNetTarget{net: "user", addr: vnet.UserHostLoopback.String(), leasePrefix: "192.168.127."}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		lns   []net.Listener
		srv   = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "gatevisor bench net\n")
		})}
	)
	closeAll := func() {
		srv.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lns {
			l.Close()
		}
		for c := range conns {
			c.Close()
		}
	}
	serve := func(port *int, handle func(net.Conn)) error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		mu.Lock()
		lns = append(lns, l)
		mu.Unlock()
		*port = l.Addr().(*net.TCPAddr).Port
		if handle == nil {
			go func() { _ = srv.Serve(l) }()
			return nil
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns[c] = true
				mu.Unlock()
				go func() {
					handle(c)
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
			}
		}()
		return nil
	}
	for _, s := range []struct {
		port   *int
		handle func(net.Conn)
	}{
		{&t.discard, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }},
		{&t.echoPort, func(c net.Conn) { _, _ = io.Copy(c, c) }},
		{&t.http, nil},
	} {
		if err := serve(s.port, s.handle); err != nil {
			closeAll()
			return t, nil, fmt.Errorf("host services: %w", err)
		}
	}
	return t, closeAll, nil
}

// The two configurations.
const (
	cfgGate   = "gate"
	cfgNoGate = "no gate"
)

// netBenchCase is one workload's samples in both configurations.
type netBenchCase struct {
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
	PairedRatio       medianInterval  `json:"paired_ratio"`
	PairedAddedMicros *medianInterval `json:"paired_added_us,omitempty"`
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
	GateCPUPerFrame medianInterval `json:"gate_cpu_us_per_frame"`
	// GateCPUPerOp is the same per request or round trip (µs).
	GateCPUPerOp *medianInterval `json:"gate_cpu_us_per_op,omitempty"`
	frames       []uint64
}

type netBenchReport struct {
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
	OtherQEMUs int            `json:"other_qemu_processes"`
	Cases      []netBenchCase `json:"cases"`
	// AddedPerPacketMicros is the echo case's added time per round trip
	// over the two gate crossings on its critical path (request out, echo
	// in): the fast-path goal is at most 20 µs.
	AddedPerPacketMicros medianInterval `json:"added_us_per_packet"`
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

func newBenchNetCmd() *cobra.Command {
	var (
		rounds, mib, requests, echoes int
		accelF, mem, netF             string
		asJSON                        bool
	)
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Cost of the network gate: two guests at once, one behind the gate, one without, on the same workloads",
		Long: `Boot the default kit twice at once, each on its own isolated network: one
behind the network gate (a policy allowing the workloads' ports), one with
its NIC straight on the network (the hidden --net-no-gate). In every round
run each workload in both guests, alternating which goes first:

  bulk    --mib MiB from the guest's tmpfs to the discard service
          (10.0.2.2:9) with busybox nc, which exits once the service has
          read everything and closed (it does not idle)
  http    --requests sequential 'wget http://10.0.2.2/': each a new
          process and a new flow, attributed and decided by the gate
  echo    --echoes round trips of one line over one established
          connection to the echo service (10.0.2.2:7): the fast path

With --net user each guest has its own user-mode NAT instead, and the three
services are listeners of this process on the host's 127.0.0.1, which the
guests reach at 192.168.127.254.

Both guests get the same policy (with no syscall to trap), so that they
differ only by the network gate. Every run is timed by the guest's
/proc/uptime (10 ms resolution); the monitor's and QEMU's CPU time over each
run is read from their threads' schedstat.

Reports per workload the medians of both configurations and their ratio,
and, pairing each round's two runs (back to back, under the same load), the
median ratio and the time the gate adds per request or round trip, with a
distribution-free confidence interval for the median (order statistics; 96%
at 20 rounds). Then the goals of issue 6 (throughput >= 0.9 of no gate; <= 20
µs added per packet on the fast path, from the echo's round trips), the
attribution time of the HTTP flows (attribute_us of their events), and the
gate's counters. Records the load average and other QEMUs: the guests share
the host's CPUs with whatever else runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 || rounds > 100 || mib < 1 || mib > 64 || requests < 1 || requests > 10000 || echoes < 10 || echoes > 1000000 {
				return fmt.Errorf("--rounds 1..100, --mib 1..64, --requests 1..10000, --echoes 10..1000000")
			}
			if netF != "isolated" && netF != "user" {
				return fmt.Errorf("--net %q: isolated or user", netF)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := benchNet(ctx, netF, rounds, mib, requests, echoes, accelF, mem)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("interrupted: both benchmark VMs stopped")
				}
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printNetBench(rep)
			return nil
		},
	}
	cmd.Flags().IntVar(&rounds, "rounds", 5, "rounds; each runs every workload in both guests")
	cmd.Flags().IntVar(&mib, "mib", 32, "MiB per bulk transfer (from the guest's tmpfs)")
	cmd.Flags().IntVar(&requests, "requests", 100, "sequential HTTP requests per run")
	cmd.Flags().IntVar(&echoes, "echoes", 1000, "round trips per echo run")
	cmd.Flags().StringVar(&accelF, "accel", "auto", "accelerator for both guests: auto, kvm or tcg")
	cmd.Flags().StringVar(&mem, "mem", "256M", "memory of each guest")
	cmd.Flags().StringVar(&netF, "net", "isolated", "the guests' network: isolated (to the network's services) or user (through the NAT to this process on the host's loopback)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// benchNetVM is one of the two guests.
type benchNetVM struct {
	cfg             string
	name            string
	c               *apiclient.Client
	stop            func()
	monPID, qemuPID int
}

func benchNet(ctx context.Context, netMode string, rounds, mib, requests, echoes int, accelF, mem string) (*netBenchReport, error) {
	rep := &netBenchReport{Command: "gatevisor " + strings.Join(os.Args[1:], " "), Net: netMode, HostCPUs: runtime.NumCPU(), Rounds: rounds, MiB: mib,
		Requests: requests, Echoes: echoes, OtherQEMUs: countQEMUs()}
	tgt := isolatedTarget
	if netMode == "user" {
		var stop func()
		var err error
		if tgt, stop, err = hostServices(); err != nil {
			return nil, err
		}
		defer stop()
	}
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
	pol := filepath.Join(tmp, "bench-net.policy")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(benchNetPolicy, tgt.addr, tgt.http, tgt.discard, tgt.echoPort)), 0o600); err != nil {
		return nil, err
	}
	pid := os.Getpid()
	vms := []*benchNetVM{
		{cfg: cfgGate, name: fmt.Sprintf("bench-net-gate-%d", pid)},
		{cfg: cfgNoGate, name: fmt.Sprintf("bench-net-nogate-%d", pid)},
	}
	nets := map[string]string{cfgGate: fmt.Sprintf("isolated:bench-gate-%d", pid), cfgNoGate: fmt.Sprintf("isolated:bench-nogate-%d", pid)}
	if netMode == "user" {
		nets = map[string]string{cfgGate: "user", cfgNoGate: "user"}
	}
	args := map[string][]string{
		cfgGate: {"--net", nets[cfgGate], "--policy", pol, "--audit-log", filepath.Join(auditDir, "audit.jsonl")},
		// The same policy and audit log placement, so that the guests
		// differ only by the network gate (the policy also arms the
		// syscall gate, with no syscall to trap).
		cfgNoGate: {"--net", nets[cfgNoGate], "--net-no-gate", "--policy", pol, "--audit-log", filepath.Join(auditDir, "audit-nogate.jsonl")},
	}
	// Boot both at once; whatever happens next, stop both.
	defer func() {
		var wg sync.WaitGroup
		for _, vm := range vms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if vm.stop != nil {
					vm.stop()
				} else {
					stopBenchVMByName(vm.name)
				}
			}()
		}
		wg.Wait()
	}()
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := append([]string{"--accel", accelF, "--mem", mem}, args[vm.cfg]...)
			vm.c, vm.stop, errs[i] = bootBenchVM(ctx, vm.name, a...)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, vm := range vms {
		st, err := vm.c.Status(ctx)
		if err != nil {
			return nil, err
		}
		vm.monPID, vm.qemuPID = st.MonitorPID, st.QEMUPID
	}
	st, err := vms[0].c.Status(ctx)
	if err != nil {
		return nil, err
	}
	rep.Accel = st.Accel
	if st.Net == nil || st.Net.Gate == nil {
		return nil, fmt.Errorf("the gated VM has no network gate in its status")
	}
	for _, vm := range vms {
		if err := prepareNetBench(ctx, vm, tgt, mib); err != nil {
			return nil, err
		}
	}
	gateStats := func() (api.NetGateStats, error) {
		st, err := vms[0].c.Status(ctx)
		if err != nil {
			return api.NetGateStats{}, err
		}
		if st.Net == nil || st.Net.Gate == nil {
			return api.NetGateStats{}, errors.New("the gated VM's status lost its network gate")
		}
		return *st.Net.Gate, nil
	}
	type workload struct {
		name, unit string
		script     string
		ops        float64 // requests or round trips per run
	}
	loads := []workload{
		{fmt.Sprintf("bulk TCP, %d MiB to discard", mib), "MiB/s", fmt.Sprintf(benchBulkScript, tgt.addr, tgt.discard), 0},
		{fmt.Sprintf("HTTP GET x%d, a new flow each", requests), "ms/request", fmt.Sprintf(benchHTTPScript, requests, tgt.addr, tgt.http), float64(requests)},
		{fmt.Sprintf("echo x%d, one connection", echoes), "µs/round trip", fmt.Sprintf(benchEchoScript, tgt.addr, tgt.echoPort, echoes), float64(echoes)},
	}
	cases := make([]netBenchCase, len(loads))
	for i, l := range loads {
		cases[i] = netBenchCase{Name: l.name, Unit: l.unit}
	}
	// Warm up: one short run of each workload in each guest, not counted.
	for _, vm := range vms {
		for _, s := range []string{fmt.Sprintf(benchHTTPScript, 3, tgt.addr, tgt.http), fmt.Sprintf(benchEchoScript, tgt.addr, tgt.echoPort, 10)} {
			if _, err := guestTimed(ctx, vm, s); err != nil {
				return nil, fmt.Errorf("warm-up in the %s guest: %w", vm.cfg, err)
			}
		}
	}
	attr := map[string]netAttrSample{}
	measured := time.Now() // the warm-up's flows are older
	for r := 0; r < rounds; r++ {
		order := vms
		if r%2 == 1 {
			order = []*benchNetVM{vms[1], vms[0]}
		}
		for i, l := range loads {
			for _, vm := range order {
				c := &cases[i]
				var before api.NetGateStats
				if vm.cfg == cfgGate {
					if before, err = gateStats(); err != nil {
						return nil, err
					}
				}
				mon0, qemu0 := cpuNanos(vm.monPID), cpuNanos(vm.qemuPID)
				secs, err := guestTimed(ctx, vm, l.script)
				if err != nil {
					return nil, fmt.Errorf("round %d, %s, %s: %w", r+1, l.name, vm.cfg, err)
				}
				mon, qemu := float64(cpuNanos(vm.monPID)-mon0)/1e6, float64(cpuNanos(vm.qemuPID)-qemu0)/1e6
				if vm.cfg == cfgGate {
					after, err := gateStats()
					if err != nil {
						return nil, err
					}
					c.frames = append(c.frames, after.Frames-before.Frames)
					c.Frames += after.Frames - before.Frames
					c.NewFlows += after.NewFlows - before.NewFlows
					c.Dropped += after.Dropped - before.Dropped
					c.GateSeconds = append(c.GateSeconds, secs)
					c.MonitorCPUGate, c.QEMUCPUGate = append(c.MonitorCPUGate, mon), append(c.QEMUCPUGate, qemu)
				} else {
					c.NoGateSeconds = append(c.NoGateSeconds, secs)
					c.MonitorCPUNoGate, c.QEMUCPUNoGate = append(c.MonitorCPUNoGate, mon), append(c.QEMUCPUNoGate, qemu)
				}
				fmt.Fprintf(os.Stderr, "round %d: %-32s %-8s %7.2fs\n", r+1, l.name, vm.cfg, secs)
			}
		}
		// The event history is bounded: collect the HTTP flows' attribution
		// times every round.
		if err := collectAttribution(ctx, vms[0].c, measured, attr); err != nil {
			return nil, err
		}
	}
	for i, l := range loads {
		c := &cases[i]
		// Per-run values in the case's unit.
		conv := func(secs float64) float64 {
			switch {
			case l.ops == 0:
				return float64(mib) / secs
			case l.unit == "ms/request":
				return secs / l.ops * 1e3
			}
			return secs / l.ops * 1e6
		}
		g, n := mapf(c.GateSeconds, conv), mapf(c.NoGateSeconds, conv)
		c.MedianGate, c.MedianNoGate = median(g), median(n)
		c.MinGate, c.MaxGate = minMax(g)
		c.MinNoGate, c.MaxNoGate = minMax(n)
		c.Ratio = c.MedianGate / c.MedianNoGate
		ratios := make([]float64, len(g))
		for r := range g {
			ratios[r] = g[r] / n[r]
		}
		c.PairedRatio = medianCI(ratios)
		if l.ops > 0 {
			added := make([]float64, len(g))
			for r := range g {
				added[r] = (c.GateSeconds[r] - c.NoGateSeconds[r]) / l.ops * 1e6
			}
			ci := medianCI(added)
			c.PairedAddedMicros = &ci
			c.FramesPerOp = float64(c.Frames) / (l.ops * float64(rounds))
		}
		perFrame, perOp := make([]float64, len(g)), make([]float64, len(g))
		for r := range g {
			d := (c.MonitorCPUGate[r] - c.MonitorCPUNoGate[r]) * 1e3 // µs
			perFrame[r] = d / float64(max(c.frames[r], 1))
			perOp[r] = d / max(l.ops, 1)
		}
		c.GateCPUPerFrame = medianCI(perFrame)
		if l.ops > 0 {
			ci := medianCI(perOp)
			c.GateCPUPerOp = &ci
		}
	}
	rep.Cases = cases
	pp := *cases[2].PairedAddedMicros
	rep.AddedPerPacketMicros = medianInterval{Median: pp.Median / 2, Lo: pp.Lo / 2, Hi: pp.Hi / 2, Confidence: pp.Confidence}
	conf := cases[0].PairedRatio.Confidence
	rep.ThroughputGoal = goal(conf, cases[0].PairedRatio.Lo >= 0.9, cases[0].PairedRatio.Hi < 0.9)
	rep.PerPacketGoal = goal(conf, rep.AddedPerPacketMicros.Hi <= 20, rep.AddedPerPacketMicros.Lo > 20)
	rep.PerPacketCPUMicros = max(cases[0].GateCPUPerFrame.Hi, cases[2].GateCPUPerFrame.Hi)
	rep.PerPacketCPUGoal = goal(conf, rep.PerPacketCPUMicros <= 20, max(cases[0].GateCPUPerFrame.Lo, cases[2].GateCPUPerFrame.Lo) > 20)
	var us []float64
	for _, s := range attr {
		us = append(us, float64(s.micros))
		if s.attempts > 1 {
			rep.AttributeRetried++
		}
	}
	sort.Float64s(us)
	rep.AttributeN = len(us)
	if len(us) > 0 {
		rep.AttributeMedianUS = median(us)
		rep.AttributeP90US = us[min(len(us)-1, len(us)*9/10)]
	}
	final, err := gateStats()
	if err != nil {
		return nil, err
	}
	rep.DropReasons = final.DropReasons
	rep.LoadAvg[1] = loadAvg()
	return rep, nil
}

// The workloads, each printing its start and end by /proc/uptime. An
// exit status other than 0 fails the benchmark.
const (
	benchBulkScript = `read a x </proc/uptime; nc %s %d </tmp/blob || exit 1; read b x </proc/uptime; echo "$a $b"`
	benchHTTPScript = `read a x </proc/uptime; i=0; while [ $i -lt %d ]; do wget -qO /dev/null http://%s:%d/ || exit 1; i=$((i+1)); done; read b x </proc/uptime; echo "$a $b"`
	// One connection to the echo service; the shell writes a line into a
	// FIFO that nc reads and waits for the echo on another, so each round
	// trip is one request and one answer (after a first, untimed one).
	benchEchoScript = `cd /tmp && rm -f pin pout && mkfifo pin pout || exit 1
nc %s %d <pin >pout &
exec 3>pin 4<pout
echo x >&3; read l <&4 || exit 1
read a x </proc/uptime
i=0; while [ $i -lt %d ]; do echo x >&3; read l <&4 || exit 1; i=$((i+1)); done
read b x </proc/uptime
exec 3>&- 4<&-; wait; rm -f pin pout
echo "$a $b"`
)

// prepareNetBench makes sure the guest has its DHCP lease and writes the
// bulk workload's file to its tmpfs.
func prepareNetBench(ctx context.Context, vm *benchNetVM, tgt benchNetTarget, mib int) error {
	script := fmt.Sprintf(`ip -4 addr show eth0 | grep -q 'inet %[1]s' || udhcpc -i eth0 -n -q -t 5 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1
ip -4 addr show eth0 | grep -q 'inet %[1]s' || { echo "no DHCP lease"; exit 1; }
dd if=/dev/zero of=/tmp/blob bs=1M count=%[2]d 2>/dev/null`, tgt.leasePrefix, mib)
	res, err := vm.c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", script}, TimeoutSeconds: 120})
	if err != nil {
		return fmt.Errorf("prepare the %s guest: %w", vm.cfg, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("prepare the %s guest: exit %d: %s%s", vm.cfg, res.ExitCode, res.Stdout, res.Stderr)
	}
	return nil
}

// guestTimed runs a workload script and returns its duration by the
// guest's clock.
func guestTimed(ctx context.Context, vm *benchNetVM, script string) (float64, error) {
	res, err := vm.c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", script}, TimeoutSeconds: 900})
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || len(f) != 2 {
		return 0, fmt.Errorf("exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	a, err1 := strconv.ParseFloat(f[0], 64)
	b, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || b < a {
		return 0, fmt.Errorf("bad times %q", res.Stdout)
	}
	if b == a {
		b = a + 0.005 // below the clock's 10 ms resolution: half a tick
	}
	return b - a, nil
}

type netAttrSample struct {
	micros   int64
	attempts int
}

// collectAttribution adds the attribution times of the HTTP flows' alerts
// decided since the time since in the VM's event history to into, keyed by
// time and flow.
func collectAttribution(ctx context.Context, c *apiclient.Client, since time.Time, into map[string]netAttrSample) error {
	rc, err := c.Events(ctx, false)
	if err != nil {
		return err
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev struct {
			Type string `json:"type"`
			Net  struct {
				Time            time.Time `json:"time"`
				Local           string    `json:"local"`
				Rule            string    `json:"rule"`
				AttributeMicros int64     `json:"attribute_us"`
				Attempts        int       `json:"attempts"`
			} `json:"net"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Type != "net-alert" || ev.Net.Rule != "bench_http" || ev.Net.Time.Before(since) {
			continue
		}
		into[ev.Net.Time.String()+" "+ev.Net.Local] = netAttrSample{ev.Net.AttributeMicros, ev.Net.Attempts}
	}
	return sc.Err()
}

// stopBenchVMByName stops a benchmark VM whose boot did not return (an
// error or Ctrl-C while `run --detach` waited): its background monitor may
// be starting still, so look for it for a few seconds.
func stopBenchVMByName(name string) {
	root, err := vmdir.Root()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for deadline := time.Now().Add(10 * time.Second); ; {
		e, err := vmdir.Lookup(root, name)
		if err == nil && e.Live {
			if c, err := clientFor(name); err == nil {
				_, _ = c.Stop(ctx, api.StopRequest{Force: true})
				_ = waitGone(ctx, name)
				return
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func printNetBench(rep *netBenchReport) {
	fmt.Printf("network gate, --net %s: %d rounds, each workload in both guests, alternating which goes first; %s, host %d CPUs\n", rep.Net, rep.Rounds, rep.Accel, rep.HostCPUs)
	fmt.Printf("load average before: %s; after: %s; other QEMU processes at start: %d\n", rep.LoadAvg[0], rep.LoadAvg[1], rep.OtherQEMUs)
	conf := 0.0
	if len(rep.Cases) > 0 {
		conf = rep.Cases[0].PairedRatio.Confidence * 100
	}
	fmt.Printf("  %-32s %-13s %15s %15s %6s  %-21s  %s\n", "workload", "unit", "gate median", "no gate median", "ratio",
		"paired ratio", "paired added per op")
	fmt.Printf("  %-32s %-13s %15s %15s %6s  %-21s  %s\n", "", "", "(min-max)", "(min-max)", "", fmt.Sprintf("[%.0f%% CI]", conf), fmt.Sprintf("[%.0f%% CI]", conf))
	for _, c := range rep.Cases {
		added := ""
		if a := c.PairedAddedMicros; a != nil {
			added = fmt.Sprintf("%+.0f µs [%+.0f, %+.0f]", a.Median, a.Lo, a.Hi)
		}
		fmt.Printf("  %-32s %-13s %15s %15s %6.3f  %-21s  %s\n", c.Name, c.Unit, fmtNum(c.MedianGate), fmtNum(c.MedianNoGate), c.Ratio,
			fmt.Sprintf("%.3f [%.3f, %.3f]", c.PairedRatio.Median, c.PairedRatio.Lo, c.PairedRatio.Hi), added)
		fmt.Printf("  %-32s %-13s %15s %15s\n", "", "", "("+fmtNum(c.MinGate)+"-"+fmtNum(c.MaxGate)+")", "("+fmtNum(c.MinNoGate)+"-"+fmtNum(c.MaxNoGate)+")")
	}
	fmt.Println("host CPU per run, medians in ms: monitor with/without the gate, QEMU with/without; monitor with less without, per frame and per op (paired;")
	fmt.Println("it also counts the monitor's wake-ups and batching, which differ with the guests' pace, so it can come out negative):")
	for _, c := range rep.Cases {
		op := ""
		if c.GateCPUPerOp != nil {
			op = fmt.Sprintf("  %+.1f µs/op [%+.1f, %+.1f]", c.GateCPUPerOp.Median, c.GateCPUPerOp.Lo, c.GateCPUPerOp.Hi)
		}
		fmt.Printf("  %-32s monitor %7.0f %7.0f  QEMU %7.0f %7.0f  %+.2f µs/frame [%+.2f, %+.2f]%s\n", c.Name,
			median(c.MonitorCPUGate), median(c.MonitorCPUNoGate), median(c.QEMUCPUGate), median(c.QEMUCPUNoGate),
			c.GateCPUPerFrame.Median, c.GateCPUPerFrame.Lo, c.GateCPUPerFrame.Hi, op)
	}
	pp, b := rep.AddedPerPacketMicros, rep.Cases[0]
	fmt.Printf("goals: throughput >= 0.9 of no gate: %s (paired ratio %.3f [%.3f, %.3f])\n", rep.ThroughputGoal, b.PairedRatio.Median, b.PairedRatio.Lo, b.PairedRatio.Hi)
	fmt.Printf("       <= 20 µs added per packet on the fast path, by the guests' clocks: %s (the echo's added time per round trip over its 2 gate crossings: %+.1f µs [%+.1f, %+.1f])\n",
		rep.PerPacketGoal, pp.Median, pp.Lo, pp.Hi)
	fmt.Printf("       <= 20 µs added per packet on the fast path, by the monitor's CPU per frame: %s (at most %+.2f µs: the higher upper bound of bulk and echo)\n",
		rep.PerPacketCPUGoal, rep.PerPacketCPUMicros)
	fmt.Printf("attributing a new flow (attribute_us of %d HTTP flows): median %.0f µs, p90 %.0f µs; %d needed more than one walk\n",
		rep.AttributeN, rep.AttributeMedianUS, rep.AttributeP90US, rep.AttributeRetried)
	fmt.Println("gate counters over the measured runs:")
	for _, c := range rep.Cases {
		per := ""
		if c.FramesPerOp > 0 {
			per = fmt.Sprintf(" (%.1f per op)", c.FramesPerOp)
		}
		fmt.Printf("  %-32s %9d frames%s, %d new flows, %d dropped\n", c.Name, c.Frames, per, c.NewFlows, c.Dropped)
	}
	if len(rep.DropReasons) > 0 {
		fmt.Printf("  drop reasons since boot: %v\n", rep.DropReasons)
	}
}

func fmtNum(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// medianInterval is a median with a distribution-free confidence interval
// (order statistics of the sample: no assumption about the noise's shape).
type medianInterval struct {
	Median     float64 `json:"median"`
	Lo         float64 `json:"lo"`
	Hi         float64 `json:"hi"`
	Confidence float64 `json:"confidence"`
}

// medianCI returns v's median and the narrowest interval [v(k), v(n+1-k)]
// of sorted v that holds the true median with probability >= 95% (by the
// binomial distribution of how many samples fall below it); with fewer
// than 6 samples no such interval exists and it is [min, max] with its
// actual confidence.
func medianCI(v []float64) medianInterval {
	n := len(v)
	if n == 0 {
		return medianInterval{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	// below[j] = P(Binomial(n, 1/2) <= j)
	cdf, c := 0.0, 1.0
	k, tail := 1, math.Pow(0.5, float64(n))
	for j := 0; j < n/2; j++ {
		cdf += c * math.Pow(0.5, float64(n))
		c = c * float64(n-j) / float64(j+1)
		if cdf > 0.025 {
			break
		}
		k, tail = j+1, cdf
	}
	return medianInterval{Median: median(s), Lo: s[k-1], Hi: s[n-k], Confidence: 1 - 2*tail}
}

// goal is the verdict on a goal from a confidence interval: met if it lies
// within the goal, missed if outside, and no verdict from fewer than 5
// rounds (an interval of less than 90%).
func goal(confidence float64, met, missed bool) string {
	switch {
	case confidence < 0.9:
		return "too few rounds for a verdict"
	case met:
		return "met"
	case missed:
		return "missed"
	}
	return "not resolved at this noise"
}

func mapf(v []float64, f func(float64) float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = f(x)
	}
	return out
}

func minMax(v []float64) (float64, float64) {
	if len(v) == 0 {
		return 0, 0
	}
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// cpuNanos is the CPU time of process pid's threads in ns (the first
// field of each thread's schedstat); 0 if it cannot be read.
func cpuNanos(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, _ := os.ReadDir(dir)
	var n int64
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			n += v
		}
	}
	return n
}

// countQEMUs counts the host's QEMU processes (before the benchmark's own
// start).
func countQEMUs() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(comm), "qemu-system") {
			n++
		}
	}
	return n
}
