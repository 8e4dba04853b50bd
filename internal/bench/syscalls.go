package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/kit"
)

// SyscallResult is one case's measurement over all rounds.
type SyscallResult struct {
	SyscallCase
	// Seconds are each round's time for the case's iterations: the
	// guest's clock (GuestSeconds) plus the time the VM was stopped at the
	// loop's stops, which the guest's clock does not see under TCG
	// (api.Status.StoppedMicros; see caseSamples).
	Seconds       []float64 `json:"seconds"`
	GuestSeconds  []float64 `json:"guest_seconds"`
	MedianSeconds float64   `json:"median_seconds"`
	PerIterMicros float64   `json:"median_per_iteration_us"`
	// Against the baseline: relative difference, and the cost of one trap
	// (per-iteration difference / traps per iteration), in all and the
	// part of it the guest's clock sees.
	DiffPercent float64 `json:"diff_percent,omitempty"`
	// PairedDiff is the median, lowest and highest of the per-round
	// differences per iteration from the baseline run in the same round,
	// in percent.
	PairedDiff         []float64 `json:"paired_diff_percent,omitempty"`
	PerTrapMicros      float64   `json:"per_trap_us,omitempty"`
	GuestPerTrapMicros float64   `json:"per_trap_guest_us,omitempty"`
	BaselineMicros     float64   `json:"baseline_per_iteration_us,omitempty"`
	// StopsPerIter are the gate's breakpoint stops per iteration, counted
	// by the monitor (api.SyscallGateStatus); HandleMicros is the
	// monitor's share of each stop (reading, deciding, enforcing).
	StopsPerIter float64 `json:"stops_per_iteration"`
	HandleMicros float64 `json:"monitor_us_per_stop,omitempty"`
}

// SyscallsReport is what Syscalls measured.
type SyscallsReport struct {
	Accel  string `json:"accel"`
	CPUs   int    `json:"cpus"` // the VM's vCPUs
	Rounds int    `json:"rounds"`
	// PolicyLoad times 'policy load' of a generated 1,000-rule policy.
	PolicyLoad *PolicyLoad `json:"policy_load,omitempty"`
	// Breakpoints are each policy's, "symbol@site" or "symbol".
	Breakpoints map[string][]string `json:"breakpoints"`
	Results     []SyscallResult     `json:"results"`
}

// SyscallsOptions are Syscalls's parameters.
type SyscallsOptions struct {
	Rounds         int // each runs every case once
	Iters          int // iterations of the loops that trap
	UntrappedIters int // iterations of the shell loops that do not trap
	Calls          int // syscalls per run of the in-guest sysloop program
	CPUs           int // the VM's vCPUs (0: 1); on more than one the gate uses breakpoints
	// IoTPolicy is the path of the device policy measured as "iot" (its
	// includes resolve from there) and IoTSource its text.
	IoTPolicy string
	IoTSource []byte
	// Kit, when set, boots that built kit (such as the arm64 one) instead
	// of the default kit, and runs the shell loops only: sysloop is built
	// with the host's gcc for the host's architecture, and the device
	// policy needs a network and the default kit's hooks.
	Kit string
}

// bigPolicyRules is the size of the policy whose load is timed.
const bigPolicyRules = 1000

// Syscalls measures the syscall gate: it boots the default kit (with
// sysloop added, and an isolated network for the iot policy) and times
// in-guest loops, switching policies with a hot reload (the same guest
// throughout) and running every case once a round; then it times loads of
// a generated 1,000-rule policy. Each result is compared with its case's
// gate-off baseline, of the medians and paired by round.
func Syscalls(ctx context.Context, env Env, o SyscallsOptions) (*SyscallsReport, error) {
	tmp, err := os.MkdirTemp("", "gatevisor-bench-sg-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	pols, err := writePolicies(tmp, o.IoTPolicy, o.IoTSource)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("bench-sg-%d", os.Getpid())
	cpus := max(o.CPUs, 1)
	cases := syscallCases(o.Iters, o.UntrappedIters, o.Calls)
	args := []string{"--policy", pols["off"].path, "--cpus", strconv.Itoa(cpus)}
	if o.Kit != "" && o.Kit != kit.DefaultName {
		cases = shellCases(cases)
		args = append(args, "--kit", o.Kit)
	} else {
		sysloop, err := buildSysloop(ctx, tmp)
		if err != nil {
			return nil, err
		}
		args = append(args, "--add", sysloop+":"+sysloopGuestPath, "--net", "isolated:"+name)
	}
	c, stop, err := env.bootVM(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	defer stop()
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	run := newSyscallRun(env, c, pols, cases)
	rep := &SyscallsReport{Accel: st.Accel, CPUs: cpus, Rounds: o.Rounds, Breakpoints: run.breakpoints}
	for r := range o.Rounds {
		for i := range run.cases {
			if err := run.runCase(ctx, r, i); err != nil {
				return nil, err
			}
		}
	}
	if rep.PolicyLoad, err = timeLoads(ctx, c, tmp, bigPolicyRules, max(5, o.Rounds), pols["off"]); err != nil {
		return nil, err
	}
	rep.Results = syscallResults(run.cases, run.samples, o.Rounds)
	return rep, nil
}

// writePolicies writes the benchmark's policies to dir and returns every
// policy by name, with iot, the device policy, where it is (so that its
// includes resolve).
func writePolicies(dir, iotPath string, iotSource []byte) (map[string]policyFile, error) {
	abs, err := filepath.Abs(iotPath)
	if err != nil {
		return nil, err
	}
	pols := map[string]policyFile{"iot": {path: abs, source: string(iotSource)}}
	for name, src := range syscallPolicies {
		p := filepath.Join(dir, name+".policy")
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			return nil, err
		}
		pols[name] = policyFile{path: p, source: src}
	}
	return pols, nil
}

// caseSamples is one case's measurements, summed over the rounds run.
// seconds are the guest's clock plus the loop's stopped time: under TCG
// QEMU freezes the guest's clocks while the VM is stopped (cpu_disable_ticks),
// so a trapped loop timed by the guest alone leaves out most of each stop
// (QEMU stopping and resuming the VM, the monitor's work).
type caseSamples struct {
	seconds      []float64 // one per round: guest clock + stopped time
	guestSeconds []float64 // one per round: the guest's clock alone
	stopsPerIter float64   // the gate's stops per iteration
	stops        float64   // the gate's stops
	handleMicros float64   // the monitor's time in those stops
}

// stopSample is what the monitor counts of the VM's stops: the kernel
// gate's stops and its time in them, and the time the VM was stopped.
type stopSample struct {
	stops, handleMicros, stoppedMicros float64
}

func (a stopSample) sub(b stopSample) stopSample {
	return stopSample{max(0, a.stops-b.stops), max(0, a.handleMicros-b.handleMicros), max(0, a.stoppedMicros-b.stoppedMicros)}
}

// syscallRun is the state of one Syscalls run across its rounds.
type syscallRun struct {
	env         Env
	c           *apiclient.Client
	pols        map[string]policyFile
	cases       []SyscallCase
	samples     []caseSamples // by case
	cur         string        // the policy in force
	breakpoints map[string][]string
}

func newSyscallRun(env Env, c *apiclient.Client, pols map[string]policyFile, cases []SyscallCase) *syscallRun {
	return &syscallRun{env: env, c: c, pols: pols, cases: cases, samples: make([]caseSamples, len(cases)),
		breakpoints: map[string][]string{}}
}

// runCase runs case i once in round r, under its policy.
func (s *syscallRun) runCase(ctx context.Context, r, i int) error {
	bc := s.cases[i]
	err := s.usePolicy(ctx, bc.Policy)
	if err != nil {
		return err
	}
	var outside stopSample
	if bc.Op != "" {
		// Warm up: translate the loop's code after the reload.
		if _, err := sysloopRun(ctx, s.c, bc.Op, max(1000, bc.Iters/20)); err != nil {
			return err
		}
	} else if outside, err = s.shellStops(ctx, bc.Body); err != nil {
		return fmt.Errorf("round %d, %s: %w", r+1, bc.Name, err)
	}
	g0, err := s.stopSample(ctx)
	if err != nil {
		return err
	}
	var secs float64
	if bc.Op != "" {
		secs, err = sysloopRun(ctx, s.c, bc.Op, bc.Iters)
	} else {
		secs, err = guestLoop(ctx, s.c, bc.Body, bc.Iters)
	}
	if err != nil {
		return fmt.Errorf("round %d, %s: %w", r+1, bc.Name, err)
	}
	g1, err := s.stopSample(ctx)
	if err != nil {
		return err
	}
	d := g1.sub(g0).sub(outside)
	m := &s.samples[i]
	stopsPerIter := d.stops / float64(bc.Iters)
	stopped := d.stoppedMicros / 1e6
	if bc.Op != "" && stopsPerIter < 0.5 {
		// sysloop's time is its median batch's: an untrapped loop's few
		// stops (its exec) are not in it.
		stopped = 0
	}
	if d.stops >= 1 && d.stoppedMicros == 0 {
		return fmt.Errorf("round %d, %s: the VM stopped %.0f times but the monitor counted no stopped time (QEMU's STOP and RESUME events carried no timestamps?): the loop's real time is unknown", r+1, bc.Name, d.stops)
	}
	m.seconds = append(m.seconds, secs+stopped)
	m.guestSeconds = append(m.guestSeconds, secs)
	m.stopsPerIter += stopsPerIter
	m.stops += d.stops
	m.handleMicros += d.handleMicros
	s.env.logf("round %d: %-22s %8.3fs (guest clock %.3fs)\n", r+1, bc.Name, secs+stopped, secs)
	return nil
}

// usePolicy loads policy p unless it is in force, checks its traps and
// records its breakpoints the first time.
func (s *syscallRun) usePolicy(ctx context.Context, p string) error {
	if p == s.cur {
		return nil
	}
	res, err := s.c.LoadPolicy(ctx, api.PolicyRequest{Path: s.pols[p].path, Source: s.pols[p].source})
	if err != nil {
		return fmt.Errorf("load the %s policy: %w", p, err)
	}
	if err := checkTraps(p, res); err != nil {
		return err
	}
	if _, ok := s.breakpoints[p]; !ok {
		s.breakpoints[p] = breakpointNames(res)
	}
	s.cur = p
	return nil
}

// shellStops returns the stops of a shell loop's exec outside the loop's
// span (the shell's own exec and opens), which the loop's time does not
// hold: counted over a run of none of body's iterations.
func (s *syscallRun) shellStops(ctx context.Context, body string) (stopSample, error) {
	a, err := s.stopSample(ctx)
	if err != nil {
		return stopSample{}, err
	}
	if _, err := guestLoop(ctx, s.c, body, 0); err != nil {
		return stopSample{}, err
	}
	b, err := s.stopSample(ctx)
	if err != nil {
		return stopSample{}, err
	}
	return b.sub(a), nil
}

// stopSample reads the monitor's counts of the VM's stops.
func (s *syscallRun) stopSample(ctx context.Context) (stopSample, error) {
	st, err := s.c.Status(ctx)
	if err != nil {
		return stopSample{}, fmt.Errorf("status: %w", err)
	}
	out := stopSample{stoppedMicros: float64(st.StoppedMicros)}
	if g := st.SyscallGate; g != nil {
		out.stops, out.handleMicros = float64(g.Stops), float64(g.HandleMicros)
	}
	return out, nil
}

// syscallResults turns each case's samples over rounds rounds into its
// result: medians, per iteration, and the difference from its baseline,
// of the medians and paired by round.
func syscallResults(cases []SyscallCase, samples []caseSamples, rounds int) []SyscallResult {
	var out []SyscallResult
	perIter := map[string]float64{}
	for i, bc := range cases {
		m := samples[i]
		res := SyscallResult{SyscallCase: bc, Seconds: m.seconds, GuestSeconds: m.guestSeconds, MedianSeconds: Median(m.seconds)}
		res.PerIterMicros = res.MedianSeconds / float64(bc.Iters) * 1e6
		res.StopsPerIter = m.stopsPerIter / float64(rounds)
		if m.stops > 0 {
			res.HandleMicros = m.handleMicros / m.stops
		}
		perIter[bc.Name] = res.PerIterMicros
		if bi := caseIndex(cases, bc.Base); bi >= 0 {
			// Per iteration: a case may run more or fewer than its base.
			res.PairedDiff = pairedDiff(scaled(m.seconds, 1/float64(bc.Iters)), scaled(samples[bi].seconds, 1/float64(cases[bi].Iters)))
		}
		if base, ok := perIter[bc.Base]; ok && base > 0 {
			res.BaselineMicros = base
			res.DiffPercent = (res.PerIterMicros - base) / base * 100
			if res.StopsPerIter >= 0.5 {
				res.PerTrapMicros = (res.PerIterMicros - base) / res.StopsPerIter
				guest := Median(m.guestSeconds) / float64(bc.Iters) * 1e6
				res.GuestPerTrapMicros = (guest - base) / res.StopsPerIter
			}
		}
		out = append(out, res)
	}
	return out
}
