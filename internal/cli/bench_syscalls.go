package cli

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/policy"
)

// The syscall-gate benchmark's policies. "off" names no syscall (no
// breakpoint); "open" traps the open family and denies only /etc/passwd;
// "execve" traps only execve, so open is a syscall the policy does not name.
// Each leaves every other class open, explicitly: the global default
// applies to every class a gate observes. "iot" is the shipped default
// policy (--policy), read when the benchmark starts.
var benchSyscallPolicies = map[string]string{
	"off":  benchOpen,
	"open": benchOpen + "open default: allow\n  bench_deny: fileEq(\"/etc/passwd\") deny(EPERM)\n",
	"execve": benchOpen + "syscall default: allow\n" +
		"  bench_exec: opEq(\"execve\") and filePrefixEq(\"/nonexistent/\") deny(EPERM)\n",
	// cold traps syscalls none of the loops makes, at 24 handlers (x86-64
	// and i386 entries): what breakpoints cost code that never reaches them.
	"cold": benchOpen + "syscall default: allow\n" +
		"  bench_cold: opEq(" + coldSyscalls + ") deny(EPERM)\n",
}

// benchOpen leaves every class open and the API to root.
const benchOpen = "default: allow;\nrole admin: *;\nsubject roles admin when uidEq(0);\n"

// benchPolicyOrder is the order the report lists the policies in.
var benchPolicyOrder = []string{"off", "execve", "open", "cold", "iot"}

const coldSyscalls = `"acct", "bpf", "chroot", "delete_module", "finit_module", "init_module", "kexec_file_load", "kexec_load", "pivot_root", "ptrace", "reboot", "swapon"`

// sysloopSource is the in-guest program of the untrapped-syscall loops,
// built static with the host's gcc when the benchmark starts.
//
//go:embed benchdata/sysloop.c
var sysloopSource []byte

// benchSyscallCase is one in-guest loop under one policy: a shell loop
// running Body, or (Op set) sysloop making syscall Op Iters times.
type benchSyscallCase struct {
	Name   string `json:"name"`
	Policy string `json:"policy"`
	Body   string `json:"loop_body,omitempty"`
	Op     string `json:"sysloop_op,omitempty"`
	Iters  int    `json:"iterations"`
	// Base is the case with the gate off that this one is compared with.
	Base string `json:"baseline,omitempty"`
}

type benchSyscallResult struct {
	benchSyscallCase
	Seconds       []float64 `json:"seconds"`
	MedianSeconds float64   `json:"median_seconds"`
	PerIterMicros float64   `json:"median_per_iteration_us"`
	// Against the baseline: relative difference, and the cost of one trap
	// (per-iteration difference / traps per iteration).
	DiffPercent float64 `json:"diff_percent,omitempty"`
	// PairedDiff is the median, lowest and highest of the per-round
	// differences from the baseline run in the same round, in percent.
	PairedDiff     []float64 `json:"paired_diff_percent,omitempty"`
	PerTrapMicros  float64   `json:"per_trap_us,omitempty"`
	BaselineMicros float64   `json:"baseline_per_iteration_us,omitempty"`
	// StopsPerIter are the gate's breakpoint stops per iteration, counted
	// by the monitor (api.SyscallGateStatus); HandleMicros is the
	// monitor's share of each stop (reading, deciding, enforcing).
	StopsPerIter float64 `json:"stops_per_iteration"`
	HandleMicros float64 `json:"monitor_us_per_stop,omitempty"`
}

type benchSyscallReport struct {
	Accel  string `json:"accel"`
	Rounds int    `json:"rounds"`
	// PolicyLoad times 'policy load' of a generated 1,000-rule policy.
	PolicyLoad *benchPolicyLoad `json:"policy_load,omitempty"`
	// Breakpoints are each policy's, "symbol@site" or "symbol".
	Breakpoints map[string][]string  `json:"breakpoints"`
	Results     []benchSyscallResult `json:"results"`
}

func newBenchSyscallsCmd() *cobra.Command {
	var (
		rounds, iters, fastIters, calls int
		asJSON                          bool
		iotPolicy                       string
	)
	cmd := &cobra.Command{
		Use:   "syscalls",
		Short: "Cost of the syscall gate: in-guest open loops with the gate off, not matched, denied, and not trapped",
		Long: `Boot the default kit in the background and time in-guest loops, switching
policies with a hot reload (the same guest throughout) and alternating the
configurations in every round:

  off      a policy that names no syscall: no breakpoint
  open     traps the open family (open/openat/creat/openat2), denies /etc/passwd
  execve   traps only execve: open is a syscall the policy does not name
  cold     traps 12 syscalls no loop makes (24 breakpoints): the cost of
           breakpoints to code that never reaches them
  iot      the shipped default policy (--policy): file, exec and module
           hooks, open and ptrace, from boot

Syscalls a policy does not trap are timed by sysloop (benchdata/sysloop.c,
built static with the host's gcc and added to the guest), which makes one
syscall --calls times and reads the guest's monotonic clock around the
loop: getpid, a 1-byte read of /dev/zero, stat, kill(self, 0), and
open+close (trapped only by the open policy, so measured under execve).
Each run follows a warm-up run of a twentieth of the calls.

Trapped calls are timed in the guest's ash by its /proc/uptime:
'true </etc/hostname' opens without forking (one openat per iteration);
'cat /etc/hostname' forks and execs busybox (one openat in the child);
'kill -0 $$' is one kill syscall per iteration, untrapped here.
Under iot, a file-write loop (': > f; rm f': create, open for writing,
truncate, unlink) and an exec loop ('/bin/busybox true': the exec's hooks).
It also times 'policy load' of a generated 1,000-rule policy (compile,
coverage check, trap plan and apply, through the API) and its compile alone.
Reports medians, the difference from the gate-off loop (of the medians,
and paired: per round, against the gate-off run of the same round), the
breakpoint stops per iteration as the monitor counted them, and the cost
per stop (difference / stops per iteration) with the monitor's share.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 || rounds > 50 || iters < 10 || iters > 1000000 || fastIters < 10 || fastIters > 10000000 || calls < 100 || calls > 100000000 {
				return fmt.Errorf("--rounds 1..50, --iters 10..1000000, --untrapped-iters 10..10000000, --calls 100..100000000")
			}
			// Ctrl-C or SIGTERM ends the run through its error path, which
			// stops the benchmark VM.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := benchSyscalls(ctx, rounds, iters, fastIters, calls, iotPolicy)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			fmt.Printf("kernel gate, %s, %d rounds alternating, medians:\n", rep.Accel, rep.Rounds)
			for _, p := range benchPolicyOrder {
				fmt.Printf("  policy %-7s %2d traps %s\n", p, len(rep.Breakpoints[p]), strings.Join(rep.Breakpoints[p], " "))
			}
			if l := rep.PolicyLoad; l != nil {
				fmt.Printf("  policy load of a %d-rule policy (compile, check, plan, apply; through the API): median %.1f ms [%.1f, %.1f] over %d loads; compile alone %.1f ms\n",
					l.Rules, l.MedianMillis, l.MinMillis, l.MaxMillis, l.Loads, l.CompileMillis)
			}
			fmt.Printf("  %-24s %-7s %8s %10s %8s %-24s %10s %9s %11s\n", "case", "policy", "iters", "µs/iter", "vs off", "paired: median [min, max]", "stops/iter", "µs/stop", "monitor µs")
			for _, r := range rep.Results {
				diff, paired, trap, handle := "", "", "", ""
				if len(r.PairedDiff) == 3 {
					paired = fmt.Sprintf("%+.1f%% [%+.1f, %+.1f]", r.PairedDiff[0], r.PairedDiff[1], r.PairedDiff[2])
				}
				if r.Base != "" {
					diff = fmt.Sprintf("%+.1f%%", r.DiffPercent)
					if r.StopsPerIter > 0 {
						trap = fmt.Sprintf("%.0f", r.PerTrapMicros)
					}
				}
				if r.StopsPerIter > 0 {
					handle = fmt.Sprintf("%.0f", r.HandleMicros)
				}
				fmt.Printf("  %-24s %-7s %8d %10.3f %8s %-24s %10.2f %9s %11s\n", r.Name, r.Policy, r.Iters, r.PerIterMicros, diff, paired, r.StopsPerIter, trap, handle)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&rounds, "rounds", 5, "rounds; each runs every case once")
	cmd.Flags().IntVar(&iters, "iters", 1000, "iterations of the loops that trap")
	cmd.Flags().IntVar(&fastIters, "untrapped-iters", 20000, "iterations of the loops that do not trap")
	cmd.Flags().IntVar(&calls, "calls", 200000, "syscalls per run of the in-guest sysloop program")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&iotPolicy, "policy", "policies/iot-default.policy", "the device policy measured as \"iot\" (the VM has a network for it)")
	return cmd
}

// sysloopOps are the syscalls of the untrapped loops, by label: getpid
// (the control), and calls that pass through code near the hooks:
// read (security_file_permission), stat (path lookup), kill
// (security_task_kill), open+close (not trapped under execve and cold).
var sysloopOps = [][2]string{
	{"getpid", "getpid()"}, {"read", "read() 1 byte"}, {"stat", "stat()"}, {"kill0", "kill(self, 0)"}, {"open", "open()+close()"},
}

func benchSyscallCases(iters, fastIters, calls int) []benchSyscallCase {
	var loops []benchSyscallCase
	for _, op := range sysloopOps {
		off := op[1] + ", gate off"
		loops = append(loops, benchSyscallCase{Name: off, Policy: "off", Op: op[0], Iters: calls})
		for _, p := range []string{"execve", "open", "cold"} {
			if op[0] == "open" && p == "open" {
				continue // trapped: the shell loops below measure it
			}
			loops = append(loops, benchSyscallCase{Name: op[1] + ", " + p, Policy: p, Op: op[0], Iters: calls, Base: off})
		}
	}
	for _, op := range sysloopOps {
		loops = append(loops, benchSyscallCase{Name: op[1] + ", iot", Policy: "iot", Op: op[0], Iters: calls, Base: op[1] + ", gate off"})
	}
	return append(loops, []benchSyscallCase{
		{Name: "file write, gate off", Policy: "off", Body: ": > /tmp/bench-f; rm /tmp/bench-f", Iters: iters},
		{Name: "file write, iot", Policy: "iot", Body: ": > /tmp/bench-f; rm /tmp/bench-f", Iters: iters, Base: "file write, gate off"},
		{Name: "exec, gate off", Policy: "off", Body: "/bin/busybox true", Iters: iters},
		{Name: "exec, iot", Policy: "iot", Body: "/bin/busybox true", Iters: iters, Base: "exec, gate off"},
		{Name: "open, gate off", Policy: "off", Body: "true </etc/hostname", Iters: fastIters},
		{Name: "open, not trapped", Policy: "execve", Body: "true </etc/hostname", Iters: fastIters, Base: "open, gate off"},
		{Name: "open, trapped+allowed", Policy: "open", Body: "true </etc/hostname", Iters: iters, Base: "open, gate off"},
		{Name: "open, denied", Policy: "open", Body: "true </etc/passwd", Iters: iters, Base: "open, gate off"},
		{Name: "kill -0, gate off", Policy: "off", Body: "kill -0 $$", Iters: fastIters},
		{Name: "kill -0, not named", Policy: "open", Body: "kill -0 $$", Iters: fastIters, Base: "kill -0, gate off"},
		{Name: "cat, gate off", Policy: "off", Body: "cat /etc/hostname", Iters: iters},
		{Name: "cat, trapped+allowed", Policy: "open", Body: "cat /etc/hostname", Iters: iters, Base: "cat, gate off"},
		{Name: "cat, denied", Policy: "open", Body: "cat /etc/passwd", Iters: iters, Base: "cat, gate off"},
	}...)
}

// buildSysloop compiles sysloop.c into dir and returns the binary's path.
func buildSysloop(ctx context.Context, dir string) (string, error) {
	src := filepath.Join(dir, "sysloop.c")
	bin := filepath.Join(dir, "sysloop")
	if err := os.WriteFile(src, sysloopSource, 0o644); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "gcc", "-static", "-O2", "-o", bin, src).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the in-guest loop program (needs gcc and libc6-dev; scripts/install-deps installs them): %v\n%s", err, out)
	}
	return bin, nil
}

// sysloopRun runs sysloop in the guest and returns its steady cost in
// seconds for n calls: the median batch's time per call, by the guest's
// monotonic clock, times n.
func sysloopRun(ctx context.Context, c *apiclient.Client, op string, n int) (float64, error) {
	res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"/usr/bin/sysloop", op, strconv.Itoa(n)}, TimeoutSeconds: 1800})
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || len(f) != 4 || f[1] != strconv.Itoa(n) {
		return 0, fmt.Errorf("sysloop %s %d: exit %d, stdout %q, stderr %q", op, n, res.ExitCode, res.Stdout, res.Stderr)
	}
	perBatch, err := strconv.ParseInt(f[2], 10, 64) // ns per 1,000 calls
	if err != nil || perBatch <= 0 {
		return 0, fmt.Errorf("sysloop %s %d: bad time %q", op, n, f[2])
	}
	return float64(perBatch) / 1e12 * float64(n), nil
}

// benchPolicyLoad is the policy-load measurement.
type benchPolicyLoad struct {
	Rules         int     `json:"rules"`
	Loads         int     `json:"loads"`
	MedianMillis  float64 `json:"median_ms"`
	MinMillis     float64 `json:"min_ms"`
	MaxMillis     float64 `json:"max_ms"`
	CompileMillis float64 `json:"compile_median_ms"`
}

// bigPolicy is a 1,000-rule policy of the shape a device maker writes:
// file rules on many paths and a syscall block, each rule its own path.
func bigPolicy(rules int) string {
	var b strings.Builder
	b.WriteString(benchOpen)
	b.WriteString("file default: allow\n")
	for i := 0; i < rules-1; i++ {
		fmt.Fprintf(&b, "  r%d: fileEq(\"/opt/app/%d/config\") and opEq(\"write\", \"unlink\") deny(EROFS)\n", i, i)
	}
	b.WriteString("open default: allow\n  last: fileEq(\"/etc/passwd\") and uidIn(1000, 59999) deny(EPERM)\n")
	return b.String()
}

// benchLoads times loads of a generated policy of rules rules (and its
// compile alone), ending with base back in force.
func benchLoads(ctx context.Context, c *apiclient.Client, dir string, rules, loads int, base, basePath string) (*benchPolicyLoad, error) {
	src := bigPolicy(rules)
	p := filepath.Join(dir, "big.policy")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		return nil, err
	}
	var ms, cms []float64
	for i := 0; i < loads; i++ {
		t0 := time.Now()
		if _, err := policy.NewSnapshot("big.policy", []byte(src), nil); err != nil {
			return nil, err
		}
		cms = append(cms, float64(time.Since(t0).Microseconds())/1000)
		// Alternate with base, so that every load changes the traps.
		t0 = time.Now()
		if _, err := c.LoadPolicy(ctx, api.PolicyRequest{Path: p, Source: src}); err != nil {
			return nil, fmt.Errorf("load the %d-rule policy: %w", rules, err)
		}
		ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
		if _, err := c.LoadPolicy(ctx, api.PolicyRequest{Path: basePath, Source: base}); err != nil {
			return nil, err
		}
	}
	return &benchPolicyLoad{Rules: rules, Loads: loads, MedianMillis: median(ms), MinMillis: slices.Min(ms), MaxMillis: slices.Max(ms), CompileMillis: median(cms)}, nil
}

func benchSyscalls(ctx context.Context, rounds, iters, fastIters, calls int, iotPolicy string) (*benchSyscallReport, error) {
	tmp, err := os.MkdirTemp("", "gatevisor-bench-sg-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	sysloop, err := buildSysloop(ctx, tmp)
	if err != nil {
		return nil, err
	}
	iot, err := readCapped(iotPolicy, policy.MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("--policy: %w", err)
	}
	sources := maps.Clone(benchSyscallPolicies)
	sources["iot"] = string(iot)
	files := map[string]string{}
	for name, src := range sources {
		p := filepath.Join(tmp, name+".policy")
		if name == "iot" {
			// Where it is, so that its includes resolve.
			if p, err = filepath.Abs(iotPolicy); err != nil {
				return nil, err
			}
		} else if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			return nil, err
		}
		files[name] = p
	}
	name := fmt.Sprintf("bench-sg-%d", os.Getpid())
	c, stop, err := bootBenchVM(ctx, name, "--policy", files["off"], "--add", sysloop+":/usr/bin/sysloop", "--net", "isolated:"+name)
	if err != nil {
		return nil, err
	}
	defer stop()
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	rep := &benchSyscallReport{Accel: st.Accel, Rounds: rounds, Breakpoints: map[string][]string{}}
	cases := benchSyscallCases(iters, fastIters, calls)
	samples := make([][]float64, len(cases))
	stops := make([]float64, len(cases))  // stops per iteration, summed over rounds
	handle := make([]float64, len(cases)) // monitor µs, summed over rounds
	nstops := make([]float64, len(cases)) // stops, summed over rounds
	gateStatus := func() api.SyscallGateStatus {
		if st, err := c.Status(ctx); err == nil && st.SyscallGate != nil {
			return *st.SyscallGate
		}
		return api.SyscallGateStatus{}
	}
	cur := ""
	for r := 0; r < rounds; r++ {
		for i, bc := range cases {
			if bc.Policy != cur {
				res, err := c.LoadPolicy(ctx, api.PolicyRequest{Path: files[bc.Policy], Source: sources[bc.Policy]})
				if err != nil {
					return nil, fmt.Errorf("load the %s policy: %w", bc.Policy, err)
				}
				if err := checkBenchTraps(bc.Policy, res); err != nil {
					return nil, err
				}
				if _, ok := rep.Breakpoints[bc.Policy]; !ok {
					bps := []string{}
					for _, bp := range res.Breakpoints {
						if bp.Site != "" {
							bps = append(bps, bp.Symbol+"@"+bp.Site)
						} else {
							bps = append(bps, bp.Symbol)
						}
					}
					rep.Breakpoints[bc.Policy] = bps
				}
				cur = bc.Policy
			}
			if bc.Op != "" {
				// Warm up: translate the loop's code after the reload.
				if _, err := sysloopRun(ctx, c, bc.Op, max(1000, bc.Iters/20)); err != nil {
					return nil, err
				}
			}
			g0 := gateStatus()
			var secs float64
			if bc.Op != "" {
				secs, err = sysloopRun(ctx, c, bc.Op, bc.Iters)
			} else {
				secs, err = guestLoop(ctx, c, bc.Body, bc.Iters)
			}
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", r+1, bc.Name, err)
			}
			g1 := gateStatus()
			samples[i] = append(samples[i], secs)
			// The loop's own stops, less the exec channel's around it (a
			// few, for the shell the agent starts).
			stops[i] += float64(g1.Stops-g0.Stops) / float64(bc.Iters)
			nstops[i] += float64(g1.Stops - g0.Stops)
			handle[i] += float64(g1.HandleMicros - g0.HandleMicros)
			fmt.Fprintf(os.Stderr, "round %d: %-22s %8.3fs\n", r+1, bc.Name, secs)
		}
	}
	if rep.PolicyLoad, err = benchLoads(ctx, c, tmp, 1000, max(5, rounds), sources["off"], files["off"]); err != nil {
		return nil, err
	}
	perIter := map[string]float64{}
	for i, bc := range cases {
		res := benchSyscallResult{benchSyscallCase: bc, Seconds: samples[i], MedianSeconds: median(samples[i])}
		res.PerIterMicros = res.MedianSeconds / float64(bc.Iters) * 1e6
		res.StopsPerIter = stops[i] / float64(rounds)
		if nstops[i] > 0 {
			res.HandleMicros = handle[i] / nstops[i]
		}
		perIter[bc.Name] = res.PerIterMicros
		if bi := caseIndex(cases, bc.Base); bi >= 0 {
			res.PairedDiff = pairedDiff(samples[i], samples[bi])
		}
		if base, ok := perIter[bc.Base]; ok && base > 0 {
			res.BaselineMicros = base
			res.DiffPercent = (res.PerIterMicros - base) / base * 100
			if res.StopsPerIter >= 0.5 {
				res.PerTrapMicros = (res.PerIterMicros - base) / res.StopsPerIter
			}
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

func caseIndex(cases []benchSyscallCase, name string) int {
	for i, c := range cases {
		if name != "" && c.Name == name {
			return i
		}
	}
	return -1
}

// pairedDiff returns the median, lowest and highest of the per-round
// differences of xs from base, in percent (rounds where both ran).
func pairedDiff(xs, base []float64) []float64 {
	var d []float64
	for r := range min(len(xs), len(base)) {
		if base[r] > 0 {
			d = append(d, (xs[r]-base[r])/base[r]*100)
		}
	}
	if len(d) == 0 {
		return nil
	}
	return []float64{median(d), slices.Min(d), slices.Max(d)}
}

// checkBenchTraps makes sure a benchmark policy trapped what it should.
func checkBenchTraps(policy string, res api.PolicyResult) error {
	if policy == "iot" {
		if len(res.Breakpoints) == 0 {
			return fmt.Errorf("the iot policy armed no traps")
		}
		return nil
	}
	want := map[string]string{"off": "", "open": "open", "execve": "execve", "cold": strings.NewReplacer(`"`, "", " ", "").Replace(coldSyscalls)}[policy]
	got := strings.Join(res.Syscalls, ",")
	if got != want || (want != "" && len(res.Breakpoints) == 0) || (want == "" && len(res.Breakpoints) != 0) {
		return fmt.Errorf("the %s policy trapped %q with %d breakpoints; want %q", policy, got, len(res.Breakpoints), want)
	}
	return nil
}

// guestLoop runs body iters times in the guest's shell and returns the
// loop's time by the guest's clock (/proc/uptime, read by the shell's
// builtin read: no fork, 10 ms resolution).
func guestLoop(ctx context.Context, c *apiclient.Client, body string, iters int) (float64, error) {
	script := fmt.Sprintf(`read a x </proc/uptime; i=0; while [ $i -lt %d ]; do %s; i=$((i+1)); done >/dev/null 2>&1; read b x </proc/uptime; echo "$a $b"`, iters, body)
	res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", script}, TimeoutSeconds: 1800})
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || len(f) != 2 {
		return 0, fmt.Errorf("loop %q: exit %d, stdout %q, stderr %q", body, res.ExitCode, res.Stdout, res.Stderr)
	}
	a, err1 := strconv.ParseFloat(f[0], 64)
	b, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || b < a {
		return 0, fmt.Errorf("loop %q: bad times %q", body, res.Stdout)
	}
	return b - a, nil
}
