package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/vnet"
)

// The memory benchmark (issue 19, the monitor's memory): what the monitor
// process holds, at rest and under a bounded workload, for each
// combination of what it can be asked to do. /proc splits a process's
// resident memory three ways, and the report keeps them apart:
//
//	RssAnon   the monitor's own heap, stacks and Go runtime
//	RssFile   file pages: the gatevisor binary's code and data, libc
//	RssShmem  guest RAM pages the monitor has touched through its mapping
//	          of the memory backend: the guest's memory, shared with QEMU
//	          and paid once whoever maps it, not allocated by the monitor
//
// The monitor's own memory is RssAnon + RssFile; the goals count that.

// The goals (issue 19), on the monitor's own memory: at rest with every
// gate armed and the IDS scanning, and at its peak.
const (
	MemorySteadyGoalKiB = 30 << 10
	MemoryPeakGoalKiB   = 64 << 10
)

// memSampleEvery is the load's (and the boot's) sampling period;
// memWindowEvery the steady state's.
const (
	memSampleEvery = 100 * time.Millisecond
	memWindowEvery = 500 * time.Millisecond
)

// memoryConfig is one configuration of the monitor: which of the IDS
// scan, a policy (every gate it arms) and a network it runs with.
type memoryConfig struct {
	key              string
	ids, policy, net bool
}

// memoryConfigs are every configuration, in the order of a first round.
var memoryConfigs = []memoryConfig{
	{key: "none"},
	{key: "ids", ids: true},
	{key: "policy", policy: true},
	{key: "net", net: true},
	{key: "all", ids: true, policy: true, net: true},
}

// MemoryConfigNames are the configurations' keys.
func MemoryConfigNames() []string {
	var names []string
	for _, c := range memoryConfigs {
		names = append(names, c.key)
	}
	return names
}

// MemoryOptions are Memory's parameters.
type MemoryOptions struct {
	Rounds int // each boots every configuration once
	// Settle is how long the guest stays idle after it is ready before
	// the steady state is read; Window how long that reading lasts
	// (samples every 500 ms, their medians).
	Settle, Window time.Duration
	// The load: Iters iterations of the in-guest exec/open loop (every
	// configuration), Queries pairs of `ids ps` and `ids check` through
	// the API (with the IDS), Lookups iterations of the network loop
	// (with a network).
	Iters, Queries, Lookups int
	IDSInterval             string // --ids-interval of the IDS configurations
	// Policy is the path of the device policy (its text PolicySource):
	// "all" runs it as it is; "policy", which has no network, runs it
	// with "advisory net;" prepended (its network rules are then
	// accepted unenforced), from a temporary file.
	Policy       string
	PolicySource []byte
	Configs      []string // keys to run (MemoryConfigNames); empty: all
	Accel, Mem   string   // the guests'
	Command      string   // the command line, recorded in the report
}

// MemoryRun is one boot of one configuration.
type MemoryRun struct {
	Round       int     `json:"round"` // from 1
	Order       int     `json:"order"` // its place in the round, from 1
	BootSeconds float64 `json:"boot_seconds"`
	// Ready is read when `run --detach` returned: VmHWM is the boot's
	// peak (VmRSS, the guest pages included). ToRest is sampled every
	// 100 ms from when the API first answered until the load starts
	// (the boot, the settle period, the steady state's window), Ready
	// included.
	Ready  ProcMemory  `json:"at_ready"`
	ToRest MemoryPeaks `json:"to_rest_sampled"`
	// Steady is the medians of the samples taken every 500 ms over the
	// window that follows the settle period; SteadySmaps is read at the
	// window's end.
	Steady      ProcMemory  `json:"steady"`
	SteadySmaps SmapsRollup `json:"steady_smaps_rollup"`
	Load        MemoryLoad  `json:"load"`
}

// MemoryLoad is the monitor's memory under the configuration's workload.
type MemoryLoad struct {
	Seconds float64 `json:"seconds"` // by the host's clock
	// Peaks are sampled every 100 ms over the load; HWM is VmHWM after
	// it, reset just before it (so the load's exact peak of VmRSS, guest
	// pages included) unless HWMSinceBoot says the reset failed and it
	// is the peak since boot.
	// HWMBefore is VmHWM just before the reset: the peak since the
	// monitor started, up to the load.
	Peaks        MemoryPeaks `json:"sampled"`
	HWMBefore    int64       `json:"hwm_before_kib"`
	HWM          int64       `json:"hwm_kib"`
	HWMSinceBoot bool        `json:"hwm_since_boot,omitempty"`
	After        ProcMemory  `json:"after"`
	AfterSmaps   SmapsRollup `json:"after_smaps_rollup"`
	// What the load did: the exec/open loop's time by the guest's clock,
	// the API queries answered, the network loop's lease and the network
	// gate's flows over the load, the kernel gate's stops over the load.
	LoopSeconds float64 `json:"loop_guest_seconds"`
	IDSQueries  int     `json:"ids_queries,omitempty"`
	Lease       *bool   `json:"dhcp_lease,omitempty"`
	NewFlows    uint64  `json:"net_new_flows,omitempty"`
	Allowed     uint64  `json:"net_allowed,omitempty"`
	Denied      uint64  `json:"net_denied,omitempty"`
	GateStops   uint64  `json:"kernel_gate_stops,omitempty"`
}

// MemoryConfigResult is one configuration over all rounds.
type MemoryConfigResult struct {
	Key  string   `json:"key"`
	Args []string `json:"run_args"` // of `gatevisor run`, besides --detach and --name
	// Workload describes the load.
	Workload string `json:"workload"`
	// Median are the medians over the rounds.
	Median MemoryMedians `json:"median"`
	// Worst are the largest over the rounds of the goals' numbers: own
	// memory at rest, and its peak (the larger of the sampled peaks up to
	// rest and under the load).
	WorstSteadyOwn int64       `json:"worst_steady_own_kib"`
	WorstPeakOwn   int64       `json:"worst_peak_own_kib"`
	SteadyMet      bool        `json:"steady_goal_met"`
	PeakMet        bool        `json:"peak_goal_met"`
	Runs           []MemoryRun `json:"runs"`
}

// MemoryMedians are a configuration's medians over its rounds, in KiB.
type MemoryMedians struct {
	Steady         ProcMemory `json:"steady"`
	SteadyOwn      int64      `json:"steady_own_kib"`
	SteadyPss      int64      `json:"steady_pss_kib"`
	SteadyPssShmem int64      `json:"steady_pss_shmem_kib"`
	ReadyHWM       int64      `json:"ready_hwm_kib"`
	RestPeakOwn    int64      `json:"to_rest_peak_own_kib"`
	RestHWM        int64      `json:"to_rest_hwm_kib"`
	LoadPeakOwn    int64      `json:"load_peak_own_kib"`
	LoadPeakRSS    int64      `json:"load_peak_rss_kib"`
	LoadPeakShmem  int64      `json:"load_peak_shmem_kib"`
	LoadHWM        int64      `json:"load_hwm_kib"`
	PeakOwn        int64      `json:"peak_own_kib"` // the larger of RestPeakOwn and LoadPeakOwn, per round
	LoopSeconds    float64    `json:"loop_guest_seconds"`
	LoadSeconds    float64    `json:"load_seconds"`
}

// MemoryReport is what Memory measured.
type MemoryReport struct {
	Command  string `json:"command"`
	Started  string `json:"started"` // RFC 3339, the host's clock
	Accel    string `json:"accel"`
	Mem      string `json:"guest_mem"`
	HostCPUs int    `json:"host_cpus"`
	Rounds   int    `json:"rounds"`
	Settle   string `json:"settle"`
	Window   string `json:"window"`
	// LoadAvg is the host's load average before and after; OtherQEMUs
	// the QEMU processes running at the start (they share the CPUs).
	LoadAvg        [2]string            `json:"load_average_before_after"`
	OtherQEMUs     int                  `json:"other_qemu_processes"`
	SteadyGoalKiB  int64                `json:"steady_goal_kib"`
	PeakGoalKiB    int64                `json:"peak_goal_kib"`
	PolicyNote     string               `json:"policy_note,omitempty"`
	Configurations []MemoryConfigResult `json:"configurations"`
}

// Memory boots the default kit once per configuration and round (the
// configurations in a different order each round), and for each: waits
// o.Settle with the guest idle, reads the monitor's memory over o.Window
// (the steady state), then runs the configuration's workload while
// sampling the monitor's VmRSS every 100 ms, and stops the VM. Every VM
// is stopped before Memory returns, whatever happens.
func Memory(ctx context.Context, env Env, o MemoryOptions) (*MemoryReport, error) {
	cfgs, err := chooseMemoryConfigs(o.Configs)
	if err != nil {
		return nil, err
	}
	rep := &MemoryReport{Command: o.Command, Started: time.Now().Format(time.RFC3339), Mem: o.Mem, HostCPUs: runtime.NumCPU(),
		Rounds: o.Rounds, Settle: o.Settle.String(), Window: o.Window.String(), OtherQEMUs: countQEMUs(),
		SteadyGoalKiB: MemorySteadyGoalKiB, PeakGoalKiB: MemoryPeakGoalKiB}
	rep.LoadAvg[0] = loadAvg()
	tmp, err := os.MkdirTemp("", "gatevisor-bench-mem-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	b := &memBench{env: env, o: o, runs: map[string][]MemoryRun{}}
	if b.policy, b.policyNoNet, err = memoryPolicies(tmp, o.Policy, o.PolicySource); err != nil {
		return nil, err
	}
	rep.PolicyNote = fmt.Sprintf("policy: %s with \"advisory net;\" prepended (%s): without a network its net rules are accepted unenforced; all: %s as it is",
		o.Policy, b.policyNoNet, o.Policy)
	for r := range o.Rounds {
		for i := range cfgs {
			// Rotate the order each round: no configuration always boots
			// first, on a host that has just been quiet.
			cfg := cfgs[(i+r)%len(cfgs)]
			run, err := b.run(ctx, cfg, r, i)
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", r+1, cfg.key, err)
			}
			b.runs[cfg.key] = append(b.runs[cfg.key], run)
			if rep.Accel == "" {
				rep.Accel = b.accel
			}
		}
	}
	rep.LoadAvg[1] = loadAvg()
	for _, cfg := range cfgs {
		res := summarizeMemory(cfg.key, b.runs[cfg.key])
		res.Args = b.args(cfg, "NAME")
		res.Workload = b.workload(cfg)
		rep.Configurations = append(rep.Configurations, res)
	}
	return rep, nil
}

// chooseMemoryConfigs returns the configurations keys names, in
// memoryConfigs' order; every one for none.
func chooseMemoryConfigs(keys []string) ([]memoryConfig, error) {
	if len(keys) == 0 {
		return memoryConfigs, nil
	}
	var out []memoryConfig
	for _, c := range memoryConfigs {
		if slices.Contains(keys, c.key) {
			out = append(out, c)
		}
	}
	for _, k := range keys {
		if !slices.Contains(MemoryConfigNames(), k) {
			return nil, fmt.Errorf("unknown configuration %q (want some of %s)", k, strings.Join(MemoryConfigNames(), ","))
		}
	}
	return out, nil
}

// memoryPolicies returns the policy the "all" configuration runs (path,
// absolute) and writes the one "policy" runs to dir: the same text with
// "advisory net;" first, since that configuration has no network gate to
// enforce its network rules. The policy's includes, if any, would not
// resolve from dir: the VM then fails to start, saying which.
func memoryPolicies(dir, path string, source []byte) (withNet, noNet string, err error) {
	if withNet, err = filepath.Abs(path); err != nil {
		return "", "", err
	}
	noNet = filepath.Join(dir, strings.TrimSuffix(filepath.Base(path), ".policy")+"-advisory-net.policy")
	text := "# " + filepath.Base(path) + " for a VM without a network (gatevisor bench memory)\nadvisory net;\n" + string(source)
	if err := os.WriteFile(noNet, []byte(text), 0o644); err != nil {
		return "", "", err
	}
	return withNet, noNet, nil
}

// memBench is the state of one Memory run across its rounds.
type memBench struct {
	env                 Env
	o                   MemoryOptions
	policy, policyNoNet string
	accel               string
	runs                map[string][]MemoryRun
}

// args are the `gatevisor run` flags of configuration cfg for VM name
// (its network is named after it: a private network the VM hosts).
func (b *memBench) args(cfg memoryConfig, name string) []string {
	a := []string{"--accel", b.o.Accel, "--mem", b.o.Mem}
	if cfg.net {
		a = append(a, "--net", "isolated:"+name)
	}
	switch {
	case cfg.policy && cfg.net:
		a = append(a, "--policy", b.policy)
	case cfg.policy:
		a = append(a, "--policy", b.policyNoNet)
	}
	if cfg.ids {
		a = append(a, "--ids-interval", b.o.IDSInterval)
	}
	return a
}

// workload describes cfg's load.
func (b *memBench) workload(cfg memoryConfig) string {
	w := fmt.Sprintf("%d × exec+open ('%s')", b.o.Iters, memLoopBody)
	if cfg.ids {
		w += fmt.Sprintf("; %d × (ids ps + ids check) through the API, beside it", b.o.Queries)
	}
	if cfg.net {
		w += fmt.Sprintf("; then DHCP and %d × (DNS lookup + HTTP GET of %s) in the guest's background", b.o.Lookups, vnet.GatewayAddr)
	}
	return w
}

// run boots configuration cfg (round r, i-th of the round), measures it
// and stops it.
func (b *memBench) run(ctx context.Context, cfg memoryConfig, r, i int) (MemoryRun, error) {
	run := MemoryRun{Round: r + 1, Order: i + 1}
	name := fmt.Sprintf("bench-mem-%d-%d-%s", os.Getpid(), r+1, cfg.key)
	// Sample from when the API first answers until the load starts: the
	// boot, and the first uses of what the configuration loads lazily
	// (the kernel profile, on the first scan or flow).
	find := func() int {
		c, err := b.env.Client(name)
		if err != nil {
			return 0
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := c.Status(sctx)
		if err != nil {
			return 0
		}
		return st.MonitorPID
	}
	toRest := startMemSampler(ctx, 0, find, memSampleEvery)
	defer toRest.stop()
	start := time.Now()
	c, stopVM, err := b.env.bootVM(ctx, name, b.args(cfg, name)...)
	if err != nil {
		return run, err
	}
	defer stopVM()
	run.BootSeconds = time.Since(start).Seconds()
	st, err := c.Status(ctx)
	if err != nil {
		return run, err
	}
	if !st.GuestReady || st.MonitorPID <= 0 {
		return run, fmt.Errorf("after boot: guest ready %v, monitor pid %d", st.GuestReady, st.MonitorPID)
	}
	b.accel = st.Accel
	pid := st.MonitorPID
	if run.Ready, err = readProcMemory(pid); err != nil {
		return run, err
	}
	b.env.logf("round %d, %-6s booted in %.1fs: at ready VmRSS %s, own %s, VmHWM %s; settling %v\n", r+1, cfg.key, run.BootSeconds,
		mib(run.Ready.VmRSS), mib(run.Ready.Own()), mib(run.Ready.VmHWM), b.o.Settle)
	if err := sleepCtx(ctx, b.o.Settle); err != nil {
		return run, err
	}
	if run.Steady, run.SteadySmaps, err = steadyState(ctx, pid, b.o.Window); err != nil {
		return run, err
	}
	var sampled int
	run.ToRest, sampled = toRest.stop()
	run.ToRest.add(run.Ready)
	if sampled != pid {
		return run, fmt.Errorf("sampled pid %d, but the VM's monitor is pid %d", sampled, pid)
	}
	if run.Load, err = b.load(ctx, c, cfg, pid); err != nil {
		return run, err
	}
	b.env.logf("round %d, %-6s steady own %s (anon %s, file %s) + guest pages %s; to rest peak own %s; load %.1fs: sampled peak own %s, VmRSS %s, VmHWM %s\n",
		r+1, cfg.key, mib(run.Steady.Own()), mib(run.Steady.RssAnon), mib(run.Steady.RssFile), mib(run.Steady.RssShmem),
		mib(run.ToRest.Own), run.Load.Seconds, mib(run.Load.Peaks.Own), mib(run.Load.Peaks.VmRSS), mib(run.Load.HWM))
	return run, nil
}

// steadyState samples pid every 500 ms over window and returns the
// samples' medians and smaps_rollup at the end.
func steadyState(ctx context.Context, pid int, window time.Duration) (ProcMemory, SmapsRollup, error) {
	var samples []ProcMemory
	for end := time.Now().Add(window); ; {
		m, err := readProcMemory(pid)
		if err != nil {
			return ProcMemory{}, SmapsRollup{}, fmt.Errorf("steady state: %w", err)
		}
		samples = append(samples, m)
		if !time.Now().Before(end) {
			break
		}
		if err := sleepCtx(ctx, memWindowEvery); err != nil {
			return ProcMemory{}, SmapsRollup{}, err
		}
	}
	sm, err := readSmapsRollup(pid)
	if err != nil {
		return ProcMemory{}, SmapsRollup{}, fmt.Errorf("steady state: %w", err)
	}
	return medianProcMemory(samples), sm, nil
}

// memLoopBody is an iteration of the in-guest loop: an exec of busybox
// (cat) that opens a file, and an open by the shell itself.
const memLoopBody = "cat /etc/hostname >/dev/null; true </etc/passwd"

// memNetScript returns the network loop: a DHCP lease if the guest has
// none (denied without a policy), then n DNS lookups (a new UDP flow
// each) and n HTTP GETs (a new TCP flow each) to the isolated network's
// services, each bounded by timeout (busybox 1.35's wget -T crashes);
// it prints "lease 0|1".
func memNetScript(n int) string {
	gw := vnet.GatewayAddr.String()
	return fmt.Sprintf(`ip link set eth0 up 2>/dev/null
ip -4 addr show eth0 | grep -q 'inet 10.0.2.' || timeout 15 udhcpc -i eth0 -n -q -t 3 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1
lease=0; ip -4 addr show eth0 | grep -q 'inet 10.0.2.' && lease=1
i=0; while [ $i -lt %d ]; do
  timeout 5 nslookup bench-$i.gatevisor %[2]s >/dev/null 2>&1
  timeout 5 wget -q -O /dev/null http://%[2]s/ >/dev/null 2>&1
  i=$((i+1))
done
echo "lease $lease"`, n, gw)
}

// load runs cfg's workload on the VM whose monitor is pid, sampling the
// monitor's memory meanwhile.
func (b *memBench) load(ctx context.Context, c *apiclient.Client, cfg memoryConfig, pid int) (MemoryLoad, error) {
	var l MemoryLoad
	st0, err := c.Status(ctx)
	if err != nil {
		return l, err
	}
	before, err := readProcMemory(pid)
	if err != nil {
		return l, err
	}
	l.HWMBefore = before.VmHWM
	l.HWMSinceBoot = resetHWM(pid) != nil
	samp := startMemSampler(ctx, pid, nil, memSampleEvery)
	defer samp.stop()
	start := time.Now()
	var (
		wg      sync.WaitGroup
		idsErr  error
		queries int
	)
	if cfg.ids {
		wg.Go(func() { queries, idsErr = idsQueries(ctx, c, b.o.Queries) })
	}
	var loopErr error
	l.LoopSeconds, loopErr = guestLoop(ctx, c, memLoopBody, b.o.Iters)
	// The network loop follows the queries: an 'ids check' holds the
	// introspection lock, which the network gate needs to attribute a
	// new flow, for as long as its guest view waits on the guest.
	wg.Wait()
	l.IDSQueries = queries
	if err := errors.Join(loopErr, idsErr); err != nil {
		return l, err
	}
	if cfg.net {
		if err := b.netLoad(ctx, c, &l); err != nil {
			return l, err
		}
	}
	l.Seconds = time.Since(start).Seconds()
	l.Peaks, _ = samp.stop()
	if l.After, err = readProcMemory(pid); err != nil {
		return l, err
	}
	l.HWM = l.After.VmHWM
	if l.AfterSmaps, err = readSmapsRollup(pid); err != nil {
		return l, err
	}
	st1, err := c.Status(ctx)
	if err != nil {
		return l, err
	}
	if g0, g1 := st0.SyscallGate, st1.SyscallGate; g0 != nil && g1 != nil {
		l.GateStops = g1.Stops - g0.Stops
	}
	if st0.Net != nil && st1.Net != nil && st0.Net.Gate != nil && st1.Net.Gate != nil {
		g0, g1 := st0.Net.Gate, st1.Net.Gate
		l.NewFlows, l.Allowed, l.Denied = g1.NewFlows-g0.NewFlows, g1.Allowed-g0.Allowed, g1.Denied-g0.Denied
	}
	return l, nil
}

// memNetOut is the guest file the network loop writes its lease line to
// when it ends.
const memNetOut = "/tmp/bench-mem-net.out"

// netLoad runs the network loop in the guest's background and waits for
// it, asking every second with a short exec, and records whether the
// guest had a lease. The loop does not hold the exec channel: a command
// that holds it while waiting on the network would stall the IDS's guest
// view (it waits for the channel), and with it, while the IDS holds the
// introspection lock, the network gate's attribution of the command's
// own flows (issue found by this benchmark; see docs/bench-memory.md).
func (b *memBench) netLoad(ctx context.Context, c *apiclient.Client, l *MemoryLoad) error {
	start := fmt.Sprintf("rm -f %[1]s\n( %[2]s ) </dev/null >%[1]s.tmp 2>&1 && mv %[1]s.tmp %[1]s &",
		memNetOut, strings.ReplaceAll(memNetScript(b.o.Lookups), "\n", "\n  "))
	res, err := guestSh(ctx, c, start, 60)
	if err != nil || res.ExitCode != 0 {
		return fmt.Errorf("start the network loop: %v (exit %d, stderr %.300q)", err, res.ExitCode, res.Stderr)
	}
	deadline := time.Now().Add(time.Duration(60+b.o.Lookups*12) * time.Second)
	for {
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
		res, err := guestSh(ctx, c, "cat "+memNetOut+" 2>/dev/null; true", 60)
		if err != nil {
			return fmt.Errorf("network loop: %w", err)
		}
		switch out := string(res.Stdout); {
		case strings.Contains(out, "lease 1"):
			l.Lease = new(true)
			return nil
		case strings.Contains(out, "lease 0"):
			l.Lease = new(false)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the network loop did not end in %v", time.Duration(60+b.o.Lookups*12)*time.Second)
		}
	}
}

// idsQueries runs n pairs of `ids ps` and `ids check` from the live
// mapping and returns how many answered. A finding is not an error here:
// what is measured is the memory the queries take.
func idsQueries(ctx context.Context, c *apiclient.Client, n int) (int, error) {
	done := 0
	for range n {
		for _, q := range []string{"ps", "check"} {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			_, err := c.IDS(qctx, q, "ram")
			cancel()
			if err != nil {
				return done, fmt.Errorf("ids %s: %w", q, err)
			}
			done++
		}
	}
	return done, nil
}

// summarizeMemory is configuration key's result over runs: medians,
// worst rounds and the goals' verdicts (on the worst round).
func summarizeMemory(key string, runs []MemoryRun) MemoryConfigResult {
	res := MemoryConfigResult{Key: key, Runs: runs}
	var steady []ProcMemory
	var own, pss, pssShmem, readyHWM, restOwn, restHWM, loadOwn, loadRSS, loadShmem, loadHWM, peakOwn []int64
	var loop, secs []float64
	for _, r := range runs {
		steady = append(steady, r.Steady)
		own = append(own, r.Steady.Own())
		pss, pssShmem = append(pss, r.SteadySmaps.Pss), append(pssShmem, r.SteadySmaps.PssShmem)
		readyHWM, restOwn, restHWM = append(readyHWM, r.Ready.VmHWM), append(restOwn, r.ToRest.Own), append(restHWM, r.Load.HWMBefore)
		loadOwn, loadRSS = append(loadOwn, r.Load.Peaks.Own), append(loadRSS, r.Load.Peaks.VmRSS)
		loadShmem, loadHWM = append(loadShmem, r.Load.Peaks.RssShmem), append(loadHWM, r.Load.HWM)
		peakOwn = append(peakOwn, max(r.ToRest.Own, r.Load.Peaks.Own))
		loop, secs = append(loop, r.Load.LoopSeconds), append(secs, r.Load.Seconds)
	}
	res.Median = MemoryMedians{Steady: medianProcMemory(steady), SteadyOwn: medianInt(own), SteadyPss: medianInt(pss),
		SteadyPssShmem: medianInt(pssShmem), ReadyHWM: medianInt(readyHWM), RestPeakOwn: medianInt(restOwn), RestHWM: medianInt(restHWM),
		LoadPeakOwn: medianInt(loadOwn), LoadPeakRSS: medianInt(loadRSS), LoadPeakShmem: medianInt(loadShmem),
		LoadHWM: medianInt(loadHWM), PeakOwn: medianInt(peakOwn), LoopSeconds: Median(loop), LoadSeconds: Median(secs)}
	if len(runs) > 0 {
		res.WorstSteadyOwn, res.WorstPeakOwn = slices.Max(own), slices.Max(peakOwn)
		res.SteadyMet = res.WorstSteadyOwn <= MemorySteadyGoalKiB
		res.PeakMet = res.WorstPeakOwn <= MemoryPeakGoalKiB
	}
	return res
}
