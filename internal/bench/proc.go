package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// ProcOptions are Proc's parameters.
type ProcOptions struct {
	Rounds int // stop/cont pairs timed per side; each gap load makes 2*Rounds operations
	CPUs   int // the VM's vCPUs (0: 1)
	// GapThreshold is the shortest gap between two reads of the guest's
	// clock that counts as an interruption.
	GapThreshold time.Duration
	// Spacing is the time from one operation's start to the next in a
	// gap window.
	Spacing time.Duration
}

// Percentiles summarizes a sample: its median, 90th percentile (nearest
// rank below) and maximum.
type Percentiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	Max float64 `json:"max"`
}

// percentiles returns v's Percentiles; zero for none.
func percentiles(v []float64) Percentiles {
	if len(v) == 0 {
		return Percentiles{}
	}
	return Percentiles{N: len(v), P50: Median(v), P90: percentile(v, 90), Max: slices.Max(v)}
}

// ProcActionTimes are one action's timings, gatevisor's and the peer's
// (stop: `proc stop` and in-guest kill -STOP; cont: `proc cont` and kill
// -CONT), in ms unless the name says µs.
type ProcActionTimes struct {
	// CommandMillis is `proc ACTION`'s round trip through the API: from
	// the call to the answer, which comes once guest memory shows the new
	// state. SafePointMillis, CallMicros and TookMillis are the answer's:
	// the wait for a vCPU at a timer interrupt, the kernel call (VM stops
	// included), the whole action in the monitor.
	CommandMillis   Percentiles `json:"command_ms"`
	SafePointMillis Percentiles `json:"safe_point_ms"`
	CallMicros      Percentiles `json:"call_us"`
	TookMillis      Percentiles `json:"took_ms"`
	// SeenMillis is from the call to the first `ids ps` that shows the
	// state; PeerSeenMillis the same for the peer, from the exec call;
	// PeerExecMillis the exec's round trip (the in-guest kill returned).
	SeenMillis     Percentiles `json:"seen_ms"`
	PeerExecMillis Percentiles `json:"peer_exec_ms"`
	PeerSeenMillis Percentiles `json:"peer_seen_ms"`
	// Ratio is SeenMillis's median over PeerSeenMillis's.
	Ratio float64 `json:"gatevisor_over_peer"`
	// The samples by round.
	Seen     []float64 `json:"seen_ms_by_round"`
	PeerSeen []float64 `json:"peer_seen_ms_by_round"`
}

// ProcReport is what Proc measured.
type ProcReport struct {
	Accel    string `json:"accel"`
	CPUs     int    `json:"cpus"`
	Rounds   int    `json:"rounds"`
	HostCPUs int    `json:"host_cpus"`
	// LoadAvg is the host's load average before and after; OtherQEMUs
	// counts the QEMU processes that ran at the start besides ours.
	LoadAvg    [2]string `json:"load_average_before_after"`
	OtherQEMUs int       `json:"other_qemu_processes"`
	// Target is what stop/cont act on; Observation how both sides' new
	// state is seen from outside.
	Target      string          `json:"target"`
	Observation string          `json:"observation"`
	Stop        ProcActionTimes `json:"stop"`
	Cont        ProcActionTimes `json:"cont"`
	// The guest-visible pause: each load's gaps over GapCycles windows,
	// the first load idle; operations GapSpacing apart.
	GapThresholdMicros float64     `json:"gap_threshold_us"`
	GapTarget          string      `json:"gap_target"`
	GapCycles          int         `json:"gap_windows_per_load"`
	GapSpacing         string      `json:"gap_spacing"`
	Gaps               []GapWindow `json:"gap_loads"`
}

const (
	// procPollEvery is how often `ids ps` is polled for a new state: as
	// often as the monitor's own confirmation reads guest memory.
	procPollEvery = 10 * time.Millisecond
	// procStateWait bounds the wait for a state.
	procStateWait = 15 * time.Second
	// procSettle separates the timed operations.
	procSettle = 100 * time.Millisecond
)

// procSamples are one action's samples over the rounds.
type procSamples struct {
	command, safePoint, call, took, seen []float64
	peerExec, peerSeen                   []float64
}

func (s *procSamples) times() ProcActionTimes {
	t := ProcActionTimes{
		CommandMillis: percentiles(s.command), SafePointMillis: percentiles(s.safePoint), CallMicros: percentiles(s.call),
		TookMillis: percentiles(s.took), SeenMillis: percentiles(s.seen), PeerExecMillis: percentiles(s.peerExec),
		PeerSeenMillis: percentiles(s.peerSeen), Seen: s.seen, PeerSeen: s.peerSeen,
	}
	if t.PeerSeenMillis.P50 > 0 {
		t.Ratio = t.SeenMillis.P50 / t.PeerSeenMillis.P50
	}
	return t
}

// procAction is an action on a process and the test of the state that
// shows it took.
type procAction struct {
	action string            // stop or cont
	done   func(string) bool // the state it leads to
}

var (
	procStop = procAction{"stop", func(s string) bool { return s == "T" || s == "t" }}
	procCont = procAction{"cont", func(s string) bool { return s != "T" && s != "t" && s != "gone" }}
)

// Proc measures process actions from below (issue 13) on one guest of the
// default kit with procgap added: `proc stop` and `proc cont` on a busy
// loop against in-guest kill -STOP/-CONT through the exec channel, timed
// the same way to the state seen in guest memory, alternating which side
// goes first each round; then the guest-visible pause, by the gaps a loop
// reading the guest's clock sees, idle and during batches of each side's
// operations on a sleeping process (proc_gaps.go).
func Proc(ctx context.Context, env Env, o ProcOptions) (*ProcReport, error) {
	tmp, err := os.MkdirTemp("", "gatevisor-bench-proc-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	procgap, err := buildStatic(ctx, tmp, "procgap", procgapSource)
	if err != nil {
		return nil, err
	}
	rep := &ProcReport{CPUs: max(o.CPUs, 1), Rounds: o.Rounds, HostCPUs: runtime.NumCPU(), OtherQEMUs: countQEMUs(),
		Target:             "procgap spin: a busy loop that makes no system call",
		Observation:        fmt.Sprintf("'ids ps' from the live RAM mapping (the guest keeps running), polled every %v as the monitor's own confirmation polls; the first poll right after the command's answer", procPollEvery),
		GapThresholdMicros: float64(o.GapThreshold.Nanoseconds()) / 1000,
		GapTarget:          "a sleeping process (sleep)",
		GapCycles:          min(gapCycles, o.Rounds),
		GapSpacing:         o.Spacing.String(),
	}
	rep.LoadAvg[0] = loadAvg()
	c, stop, err := env.bootVM(ctx, fmt.Sprintf("bench-proc-%d", os.Getpid()), "--add", procgap+":"+procgapGuestPath, "--cpus", strconv.Itoa(rep.CPUs))
	if err != nil {
		return nil, err
	}
	defer stop()
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	rep.Accel = st.Accel
	if err := procRounds(ctx, env, c, o.Rounds, rep); err != nil {
		return nil, err
	}
	if rep.Gaps, err = gapWindows(ctx, env, c, o); err != nil {
		return nil, err
	}
	rep.LoadAvg[1] = loadAvg()
	return rep, nil
}

// procRounds starts the busy loop and times each side's stop and cont on
// it rounds times, after an untimed warm-up of each, then kills it.
func procRounds(ctx context.Context, env Env, c *apiclient.Client, rounds int, rep *ProcReport) error {
	pid, err := guestStart(ctx, c, procgapGuestPath+" spin")
	if err != nil {
		return err
	}
	if _, _, err := waitState(ctx, c, pid, func(s string) bool { return s == "R" }); err != nil {
		return fmt.Errorf("the busy loop: %w", err)
	}
	var stopS, contS procSamples
	sides := []func() error{
		func() error { return gatevisorPair(ctx, c, pid, &stopS, &contS) },
		func() error { return peerPair(ctx, c, pid, &stopS, &contS) },
	}
	// Warm-up: the first action loads the kernel profile; the first exec
	// starts the shell's caches. Not counted.
	var warm procSamples
	if err := gatevisorPair(ctx, c, pid, &warm, &warm); err != nil {
		return err
	}
	if err := peerPair(ctx, c, pid, &warm, &warm); err != nil {
		return err
	}
	for r := range rounds {
		first := r % 2
		for i := range sides {
			if err := sides[(first+i)%2](); err != nil {
				return fmt.Errorf("round %d: %w", r+1, err)
			}
		}
		env.logf("round %d: stop %.1f ms (peer %.1f), cont %.1f ms (peer %.1f)\n", r+1,
			stopS.seen[r], stopS.peerSeen[r], contS.seen[r], contS.peerSeen[r])
	}
	rep.Stop, rep.Cont = stopS.times(), contS.times()
	_, err = c.Exec(ctx, api.ExecRequest{Argv: []string{"kill", "-KILL", strconv.Itoa(pid)}, TimeoutSeconds: 30})
	if err == nil {
		_, _, err = waitState(ctx, c, pid, func(s string) bool { return s == "gone" })
	}
	return err
}

// gatevisorPair times `proc stop` and `proc cont` on pid, each from the
// API call to its answer and to the first `ids ps` that shows the state,
// and checks the guest's own view of the stop.
func gatevisorPair(ctx context.Context, c *apiclient.Client, pid int, stopS, contS *procSamples) error {
	for _, a := range []procAction{procStop, procCont} {
		s := stopS
		if a.action == "cont" {
			s = contS
		}
		time.Sleep(procSettle)
		t0 := time.Now()
		res, err := c.Proc(ctx, a.action, api.ProcRequest{PID: pid})
		answered := time.Since(t0)
		if err != nil {
			return fmt.Errorf("proc %s %d: %w", a.action, pid, err)
		}
		seenAt, _, err := waitState(ctx, c, pid, a.done)
		if err != nil {
			return fmt.Errorf("after proc %s %d (state_after %s): %w", a.action, pid, res.StateAfter, err)
		}
		if a.action == "stop" {
			if err := checkGuestState(ctx, c, pid, "T"); err != nil {
				return fmt.Errorf("after proc stop: %w", err)
			}
		}
		s.command = append(s.command, ms(answered))
		s.seen = append(s.seen, ms(seenAt.Sub(t0)))
		s.safePoint = append(s.safePoint, res.SafePointMillis)
		s.call = append(s.call, res.CallMicros)
		s.took = append(s.took, res.TookMillis)
	}
	return nil
}

// peerPair times in-guest kill -STOP and kill -CONT of pid through the
// exec channel, each to the exec's answer and to the first `ids ps` that
// shows the state, and checks the guest's own view of the stop.
func peerPair(ctx context.Context, c *apiclient.Client, pid int, stopS, contS *procSamples) error {
	for _, a := range []procAction{procStop, procCont} {
		s, sig := stopS, "-STOP"
		if a.action == "cont" {
			s, sig = contS, "-CONT"
		}
		time.Sleep(procSettle)
		t0 := time.Now()
		res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"kill", sig, strconv.Itoa(pid)}, TimeoutSeconds: 30})
		answered := time.Since(t0)
		if err != nil || res.ExitCode != 0 {
			return fmt.Errorf("in-guest kill %s %d: %v (exit %d, %s)", sig, pid, err, res.ExitCode, res.Stderr)
		}
		seenAt, _, err := waitState(ctx, c, pid, a.done)
		if err != nil {
			return fmt.Errorf("after kill %s %d: %w", sig, pid, err)
		}
		if a.action == "stop" {
			if err := checkGuestState(ctx, c, pid, "T"); err != nil {
				return fmt.Errorf("after kill -STOP: %w", err)
			}
		}
		s.peerExec = append(s.peerExec, ms(answered))
		s.peerSeen = append(s.peerSeen, ms(seenAt.Sub(t0)))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// guestStart starts command in the guest in the background and returns
// its pid.
func guestStart(ctx context.Context, c *apiclient.Client, command string) (int, error) {
	res, err := guestSh(ctx, c, command+" </dev/null >/dev/null 2>&1 & echo $!", 30)
	if err != nil {
		return 0, fmt.Errorf("start %q in the guest: %w", command, err)
	}
	pid, perr := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if res.ExitCode != 0 || perr != nil || pid < 2 {
		return 0, fmt.Errorf("start %q in the guest: exit %d, stdout %q, stderr %q", command, res.ExitCode, res.Stdout, res.Stderr)
	}
	return pid, nil
}

// waitState polls `ids ps` every procPollEvery, the first time at once,
// until done(pid's state) ("gone" once there is no such process), and
// returns when a poll showed it and the state.
func waitState(ctx context.Context, c *apiclient.Client, pid int, done func(string) bool) (time.Time, string, error) {
	deadline := time.Now().Add(procStateWait)
	for {
		state, err := psState(ctx, c, pid)
		if err != nil {
			return time.Time{}, "", err
		}
		if done(state) {
			return time.Now(), state, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, state, fmt.Errorf("pid %d's state is still %s after %v", pid, state, procStateWait)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, state, ctx.Err()
		case <-time.After(procPollEvery):
		}
	}
}

// psState returns process pid's state letter by `ids ps` from the live
// RAM mapping, "gone" if there is no such process.
func psState(ctx context.Context, c *apiclient.Client, pid int) (string, error) {
	res, err := c.IDS(ctx, "ps", "ram")
	if err != nil {
		return "", fmt.Errorf("ids ps: %w", err)
	}
	var tasks []linux.Task
	if err := json.Unmarshal(res.Result, &tasks); err != nil {
		return "", fmt.Errorf("ids ps: %w", err)
	}
	for _, t := range tasks {
		if t.PID == pid {
			return t.State, nil
		}
	}
	return "gone", nil
}

// checkGuestState checks the guest's own view of pid's state (the third
// field of its /proc/PID/stat, read through the exec channel).
func checkGuestState(ctx context.Context, c *apiclient.Client, pid int, want string) error {
	res, err := guestSh(ctx, c, fmt.Sprintf("cut -d' ' -f3 /proc/%d/stat", pid), 30)
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(res.Stdout)); res.ExitCode != 0 || got != want {
		return fmt.Errorf("the guest's /proc/%d/stat says state %q (exit %d, %s), not %s", pid, got, res.ExitCode, res.Stderr, want)
	}
	return nil
}
