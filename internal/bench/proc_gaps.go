package bench

import (
	"context"
	_ "embed"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// The guest-visible pause of a process action: procgap (benchdata/procgap.c)
// reads the guest's CLOCK_MONOTONIC in a loop on an otherwise idle guest
// and records every gap between two reads over a threshold; the windows
// differ only in what the harness does meanwhile from outside. A pause the
// guest's clock does not see (QEMU stops the guest's clocks with the VM)
// does not show here: what shows is the time the loop lost while the
// guest ran other code or its vCPU thread did not run.

// procgapSource is the in-guest program of `bench proc`, built static with
// the host's gcc when the benchmark starts.
//
//go:embed benchdata/procgap.c
var procgapSource []byte

const (
	// procgapGuestPath is where the benchmark VM has procgap.
	procgapGuestPath = "/usr/bin/procgap"
	// procgapOut is the file procgap writes its gaps to in the guest.
	procgapOut = "/tmp/procgap.out"
	// gapWarmup is procgap's time before its window opens (the exec that
	// started it ends meanwhile); gapLead is the host's further wait
	// before the first operation, and gapSlack the window's time after
	// the last operation's start, less the spacing.
	gapWarmup = time.Second
	gapLead   = 300 * time.Millisecond
	gapSlack  = time.Second
	// gapReadWait bounds the wait for procgap's output once its window
	// should have closed.
	gapReadWait = time.Minute
	// maxGapLines is what procgap keeps at most (MAXGAPS in procgap.c).
	maxGapLines = 100000
)

// GapWindow is what the guest's clock showed over one window: the gaps
// between consecutive reads longer than the threshold (interruptions).
type GapWindow struct {
	Name string `json:"name"`
	Load string `json:"load"` // what the harness did meanwhile
	// Operations counts those that started and ended inside the window;
	// OpMillis times each from outside (the API call to its answer).
	Operations    int         `json:"operations"`
	OpMillis      Percentiles `json:"operation_ms"`
	WindowSeconds float64     `json:"window_seconds"` // by the guest's clock
	Reads         int64       `json:"reads"`
	Interruptions int64       `json:"interruptions"`
	// Truncated is set when procgap kept fewer gaps than it saw (the
	// statistics are then over those it kept, the first).
	Truncated bool `json:"truncated,omitempty"`
	// GapMicros summarizes every interruption; TopMicros the K longest,
	// K the operations of a batch (the same K for every window): an
	// operation's pause, if each makes one gap longer than the rest.
	GapMicros Percentiles `json:"gap_us"`
	TopK      int         `json:"top_k"`
	TopMicros Percentiles `json:"top_k_gap_us"`
	// StolenMillis is the interruptions' sum; ExcessPerOpMillis that less
	// the idle window's (scaled to this window's length), per operation.
	StolenMillis      float64 `json:"stolen_ms"`
	ExcessPerOpMillis float64 `json:"excess_per_operation_ms,omitempty"`
}

// gapRun is what procgap wrote.
type gapRun struct {
	windowNs, reads, over, thresholdNs int64
	gaps                               []int64 // ns, in the order seen
}

// parseProcgap parses procgap's output (see benchdata/procgap.c), which
// the guest wrote: every number is checked before it is used.
func parseProcgap(out []byte) (gapRun, error) {
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	head := strings.Fields(lines[0])
	if len(head) != 6 || head[0] != "procgap1" {
		return gapRun{}, fmt.Errorf("procgap: bad header %q", lines[0])
	}
	var run gapRun
	var kept int64
	for i, dst := range []*int64{&run.windowNs, &run.reads, &run.over, &kept, &run.thresholdNs} {
		key := []string{"window_ns", "reads", "over", "kept", "threshold_ns"}[i]
		v, ok := strings.CutPrefix(head[i+1], key+"=")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || n < 0 {
			return gapRun{}, fmt.Errorf("procgap: bad %s in %q", key, lines[0])
		}
		*dst = n
	}
	if kept > maxGapLines || kept > run.over || int64(len(lines)-1) != kept || run.windowNs == 0 {
		return gapRun{}, fmt.Errorf("procgap: %d gap lines for kept=%d over=%d (at most %d) in a window of %d ns", len(lines)-1, kept, run.over, maxGapLines, run.windowNs)
	}
	run.gaps = make([]int64, 0, kept)
	for _, l := range lines[1:] {
		g, err := strconv.ParseInt(l, 10, 64)
		if err != nil || g <= run.thresholdNs || g > run.windowNs {
			return gapRun{}, fmt.Errorf("procgap: bad gap %q (threshold %d ns, window %d ns)", l, run.thresholdNs, run.windowNs)
		}
		run.gaps = append(run.gaps, g)
	}
	return run, nil
}

// gapStats summarizes run, with the k longest gaps apart.
func gapStats(run gapRun, k int) GapWindow {
	us := make([]float64, len(run.gaps))
	var sum int64
	for i, g := range run.gaps {
		us[i] = float64(g) / 1000
		sum += g
	}
	slices.Sort(us)
	top := us[max(0, len(us)-k):]
	return GapWindow{
		WindowSeconds: float64(run.windowNs) / 1e9, Reads: run.reads, Interruptions: run.over,
		Truncated: int64(len(run.gaps)) < run.over, GapMicros: percentiles(us), TopK: k, TopMicros: percentiles(top),
		StolenMillis: float64(sum) / 1e6,
	}
}

// excessPerOp is w's stolen time less idle's (per second of window), per
// operation of w; 0 without operations.
func excessPerOp(w, idle GapWindow) float64 {
	if w.Operations == 0 || idle.WindowSeconds <= 0 {
		return 0
	}
	return (w.StolenMillis - idle.StolenMillis*w.WindowSeconds/idle.WindowSeconds) / float64(w.Operations)
}

// gapLoad is what the harness does from outside during a window: op(i)
// for i in 0..K-1, or nothing.
type gapLoad struct {
	name, load string
	op         func(ctx context.Context, i int) error
}

// gapCycles is how many windows each load's operations are split over:
// the loads take turns, in a rotated order each cycle, so that the
// host's load (which the guest's clock sees too) falls on all of them.
const gapCycles = 4

// gapWindows starts a sleeping process and measures procgap's gaps idle,
// while each side stops and continues it 2*o.Rounds times, and while the
// VM is paused as often for `ids ps` through the gdbstub (a pause with no
// kernel call, for comparison), over gapCycles windows each; then it kills
// the sleeper. The first window returned is idle's.
func gapWindows(ctx context.Context, env Env, c *apiclient.Client, o ProcOptions) ([]GapWindow, error) {
	pid, err := guestStart(ctx, c, "sleep 1000000")
	if err != nil {
		return nil, err
	}
	if _, _, err := waitState(ctx, c, pid, func(s string) bool { return s == "S" }); err != nil {
		return nil, fmt.Errorf("the sleeping process: %w", err)
	}
	loads := gapLoads(c, pid)
	runs := make([]gapRun, len(loads))
	ops := make([]int, len(loads))
	opMillis := make([][]float64, len(loads))
	pairs := splitEven(o.Rounds, min(gapCycles, o.Rounds))
	for cycle, n := range pairs {
		for j := range loads {
			li := (j + cycle) % len(loads)
			run, times, done, err := gapWindow(ctx, c, loads[li], 2*n, o)
			if err != nil {
				return nil, fmt.Errorf("gap window %s: %w", loads[li].name, err)
			}
			runs[li] = runs[li].add(run)
			ops[li] += done
			opMillis[li] = append(opMillis[li], times...)
			env.logf("gaps, cycle %d, %-14s %2d ops: %d interruptions, longest %.0f µs\n", cycle+1, loads[li].name, done, run.over, float64(slices.Max(append(run.gaps, 0)))/1000)
		}
	}
	out := make([]GapWindow, len(loads))
	for i, l := range loads {
		out[i] = gapStats(runs[i], 2*o.Rounds)
		out[i].Name, out[i].Load, out[i].Operations, out[i].OpMillis = l.name, l.load, ops[i], percentiles(opMillis[i])
		if i > 0 {
			out[i].ExcessPerOpMillis = excessPerOp(out[i], out[0])
		}
	}
	res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"kill", "-KILL", strconv.Itoa(pid)}, TimeoutSeconds: 30})
	if err != nil || res.ExitCode != 0 {
		return nil, fmt.Errorf("kill the sleeping process: %v (exit %d)", err, res.ExitCode)
	}
	return out, nil
}

// gapLoads are the windows' loads on process pid, idle first; each of
// the others takes an even number of operations (stop, then cont), so
// that pid sleeps again between windows.
func gapLoads(c *apiclient.Client, pid int) []gapLoad {
	stopCont := func(i int) (procAction, string) {
		if i%2 == 0 {
			return procStop, "-STOP"
		}
		return procCont, "-CONT"
	}
	return []gapLoad{
		{"idle", "nothing", nil},
		{"gatevisor", "proc stop, proc cont, alternating", func(ctx context.Context, i int) error {
			a, _ := stopCont(i)
			res, err := c.Proc(ctx, a.action, api.ProcRequest{PID: pid})
			if err == nil && !a.done(res.StateAfter) {
				err = fmt.Errorf("state %s", res.StateAfter)
			}
			if err != nil {
				return fmt.Errorf("proc %s %d: %w", a.action, pid, err)
			}
			return nil
		}},
		{"in-guest kill", "kill -STOP, kill -CONT through the exec channel, alternating", func(ctx context.Context, i int) error {
			_, sig := stopCont(i)
			res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"kill", sig, strconv.Itoa(pid)}, TimeoutSeconds: 30})
			if err != nil || res.ExitCode != 0 {
				return fmt.Errorf("in-guest kill %s %d: %v (exit %d, %s)", sig, pid, err, res.ExitCode, res.Stderr)
			}
			return nil
		}},
		{"gdbstub pause", "ids ps --source gdbstub (the VM paused for each query)", func(ctx context.Context, _ int) error {
			_, err := c.IDS(ctx, "ps", "gdbstub")
			return err
		}},
	}
}

// splitEven splits n into parts parts as even as can be, the larger
// first; none for parts < 1.
func splitEven(n, parts int) []int {
	if parts < 1 {
		return nil
	}
	out := make([]int, parts)
	for i := range out {
		out[i] = n / parts
		if i < n%parts {
			out[i]++
		}
	}
	return out
}

// add returns r and s as one run: their windows end to end.
func (r gapRun) add(s gapRun) gapRun {
	return gapRun{windowNs: r.windowNs + s.windowNs, reads: r.reads + s.reads, over: r.over + s.over,
		thresholdNs: max(r.thresholdNs, s.thresholdNs), gaps: append(slices.Clip(r.gaps), s.gaps...)}
}

// gapWindow runs procgap over a window long enough for k operations
// o.Spacing apart, runs l's operations in it, and returns what procgap
// saw, each operation's time and how many started and ended inside the
// window.
func gapWindow(ctx context.Context, c *apiclient.Client, l gapLoad, k int, o ProcOptions) (gapRun, []float64, int, error) {
	window := time.Duration(k)*o.Spacing + gapSlack
	script := fmt.Sprintf("rm -f %[1]s %[1]s.tmp; %[2]s gaps %[3]d %[4]d %[5]d %[1]s </dev/null >/dev/null 2>&1 &",
		procgapOut, procgapGuestPath, gapWarmup.Milliseconds(), window.Milliseconds(), o.GapThreshold.Nanoseconds())
	begin := time.Now()
	if res, err := guestSh(ctx, c, script, 30); err != nil || res.ExitCode != 0 {
		return gapRun{}, nil, 0, fmt.Errorf("start procgap: %v (exit %d, %s)", err, res.ExitCode, res.Stderr)
	}
	// The window opens gapWarmup after procgap started by the guest's
	// clock, which runs no faster than the host's: so after the exec
	// returned plus gapWarmup, and it closes no earlier than begin plus
	// gapWarmup plus window.
	first := time.Now().Add(gapWarmup + gapLead)
	closes := begin.Add(gapWarmup + window)
	ops := 0
	var times []float64
	if l.op != nil {
		for i := range k {
			if err := sleepUntil(ctx, first.Add(time.Duration(i)*o.Spacing)); err != nil {
				return gapRun{}, nil, 0, err
			}
			t0 := time.Now()
			if err := l.op(ctx, i); err != nil {
				return gapRun{}, nil, 0, err
			}
			times = append(times, ms(time.Since(t0)))
			if time.Now().Before(closes) {
				ops++
			}
		}
	}
	if err := sleepUntil(ctx, closes.Add(500*time.Millisecond)); err != nil {
		return gapRun{}, nil, 0, err
	}
	out, err := readGapOut(ctx, c)
	if err != nil {
		return gapRun{}, nil, 0, err
	}
	run, err := parseProcgap(out)
	return run, times, ops, err
}

// readGapOut waits for procgap's output file and returns it.
func readGapOut(ctx context.Context, c *apiclient.Client) ([]byte, error) {
	deadline := time.Now().Add(gapReadWait)
	for {
		res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"cat", procgapOut}, TimeoutSeconds: 30})
		if err != nil {
			return nil, err
		}
		if res.ExitCode == 0 {
			return res.Stdout, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no %s after %v: %s", procgapOut, gapReadWait, res.Stderr)
		}
		if err := sleepUntil(ctx, time.Now().Add(500*time.Millisecond)); err != nil {
			return nil, err
		}
	}
}

// sleepUntil waits until t or until ctx ends.
func sleepUntil(ctx context.Context, t time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Until(t)):
		return nil
	}
}
