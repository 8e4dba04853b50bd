package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/policy"
)

// TestSyscallCases checks the case list at the command's defaults against
// testdata/syscall_cases.json (the list the harness ran before it left
// internal/cli), and what every list must hold: unique names, each case
// either a sysloop or a shell loop, a known policy, and a baseline that is
// an earlier gate-off case.
func TestSyscallCases(t *testing.T) {
	cases := syscallCases(1000, 20000, 200000)
	want, err := os.ReadFile(filepath.Join("testdata", "syscall_cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	enc := json.NewEncoder(&got)
	enc.SetIndent("", "  ")
	if err := enc.Encode(cases); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got.String()); diff != "" {
		t.Errorf("cases (-want +got):\n%s", diff)
	}

	seen := map[string]SyscallCase{}
	for _, c := range syscallCases(10, 20, 100) {
		if _, dup := seen[c.Name]; dup {
			t.Errorf("%q: two cases of this name", c.Name)
		}
		if (c.Op == "") == (c.Body == "") {
			t.Errorf("%q: op %q, body %q: want exactly one", c.Name, c.Op, c.Body)
		}
		if !slices.Contains(SyscallPolicyNames(), c.Policy) {
			t.Errorf("%q: policy %q is not one of %v", c.Name, c.Policy, SyscallPolicyNames())
		}
		if c.Op != "" && c.Iters != 100 || c.Op == "" && c.Iters != 10 && c.Iters != 20 {
			t.Errorf("%q: %d iterations", c.Name, c.Iters)
		}
		if base, ok := seen[c.Base]; c.Base != "" && (!ok || base.Policy != "off") {
			t.Errorf("%q: baseline %q is not an earlier gate-off case", c.Name, c.Base)
		}
		seen[c.Name] = c
	}
}

// TestBenchPoliciesCompile compiles every policy the harnesses load.
func TestBenchPoliciesCompile(t *testing.T) {
	srcs := map[string]string{
		"big":          bigPolicy(bigPolicyRules),
		"net isolated": netPolicyFor(isolatedTarget),
		"net user":     netPolicyFor(netTarget{addr: "192.168.127.254", http: 40001, discard: 40002, echoPort: 40003}),
	}
	for name, src := range syscallPolicies {
		srcs["syscalls "+name] = src
	}
	for name, src := range srcs {
		t.Run(name, func(t *testing.T) {
			if _, err := policy.NewSnapshot(name+".policy", []byte(src), nil); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, p := range SyscallPolicyNames() {
		if _, ok := syscallPolicies[p]; !ok && p != "iot" {
			t.Errorf("policy %q is listed but has no source", p)
		}
	}
}

func TestCheckTraps(t *testing.T) {
	bp := []api.Breakpoint{{Symbol: "x"}}
	for _, tc := range []struct {
		policy string
		res    api.PolicyResult
		ok     bool
	}{
		{"off", api.PolicyResult{}, true},
		{"off", api.PolicyResult{Breakpoints: bp}, false},
		{"open", api.PolicyResult{Syscalls: []string{"open"}, Breakpoints: bp}, true},
		{"open", api.PolicyResult{Syscalls: []string{"open"}}, false},
		{"open", api.PolicyResult{Syscalls: []string{"open", "execve"}, Breakpoints: bp}, false},
		{"execve", api.PolicyResult{Syscalls: []string{"execve"}, Breakpoints: bp}, true},
		{"cold", api.PolicyResult{Syscalls: []string{"acct", "bpf", "chroot", "delete_module", "finit_module", "init_module",
			"kexec_file_load", "kexec_load", "pivot_root", "ptrace", "reboot", "swapon"}, Breakpoints: bp}, true},
		{"cold", api.PolicyResult{Syscalls: []string{"acct"}, Breakpoints: bp}, false},
		{"iot", api.PolicyResult{Breakpoints: bp}, true},
		{"iot", api.PolicyResult{}, false},
	} {
		if err := checkTraps(tc.policy, tc.res); (err == nil) != tc.ok {
			t.Errorf("checkTraps(%s, %v traps %d breakpoints) = %v; want ok %v", tc.policy, tc.res.Syscalls, len(tc.res.Breakpoints), err, tc.ok)
		}
	}
}

func TestBreakpointNames(t *testing.T) {
	got := breakpointNames(api.PolicyResult{Breakpoints: []api.Breakpoint{{Symbol: "a"}, {Symbol: "b", Site: "c+0x1"},
		{Symbol: "security_file_open", Site: "read of the gate's entry on security_hook_heads.file_open", Model: "own-entry"}}})
	if diff := cmp.Diff([]string{"a", "b@c+0x1", "security_file_open@read of the gate's entry on security_hook_heads.file_open[own-entry]"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// None is an empty list, not null, in the report's JSON.
	if got := breakpointNames(api.PolicyResult{}); got == nil {
		t.Error("breakpointNames of none = nil, want an empty list")
	}
}

func TestParseSysloop(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  api.ExecResult
		want float64
		ok   bool
	}{
		// 2,000 ns per 1,000 calls: 2 ns a call, 1 µs for 500.
		{"ok", api.ExecResult{Stdout: []byte("1234567 500 2000 1900\n")}, 1e-6, true},
		{"exit status", api.ExecResult{ExitCode: 1, Stdout: []byte("1 500 2000 1900")}, 0, false},
		{"other count", api.ExecResult{Stdout: []byte("1 501 2000 1900")}, 0, false},
		{"short", api.ExecResult{Stdout: []byte("1 500 2000")}, 0, false},
		{"zero time", api.ExecResult{Stdout: []byte("1 500 0 0")}, 0, false},
		{"garbage time", api.ExecResult{Stdout: []byte("1 500 x 0")}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSysloop("getpid", 500, tc.res)
			if (err == nil) != tc.ok || !cmp.Equal(got, tc.want, cmpopts.EquateApprox(0, 1e-12)) {
				t.Errorf("parseSysloop = %v, %v; want %v, ok %v", got, err, tc.want, tc.ok)
			}
		})
	}
}

// TestSyscallResults checks the arithmetic of a result against its
// baseline: medians per iteration, the difference of the medians, the
// paired differences, the cost per stop and the monitor's share.
func TestSyscallResults(t *testing.T) {
	cases := []SyscallCase{
		{Name: "loop, gate off", Policy: "off", Body: "x", Iters: 1000},
		{Name: "loop, trapped", Policy: "open", Body: "x", Iters: 1000, Base: "loop, gate off"},
		{Name: "loop, few stops", Policy: "open", Body: "x", Iters: 1000, Base: "loop, gate off"},
		// Half the iterations of its base: compared per iteration.
		{Name: "loop, shorter", Policy: "open", Body: "x", Iters: 500, Base: "loop, gate off"},
	}
	samples := []caseSamples{
		{seconds: []float64{0.010, 0.012, 0.011}, guestSeconds: []float64{0.010, 0.012, 0.011}},
		// 3 rounds' stops per iteration sum to 3: 1 per iteration; 3000
		// stops took the monitor 150,000 µs. The guest's clock saw 12 of
		// the 30 µs per iteration (median).
		{seconds: []float64{0.030, 0.036, 0.022}, guestSeconds: []float64{0.012, 0.014, 0.010}, stopsPerIter: 3, stops: 3000, handleMicros: 150000},
		{seconds: []float64{0.011, 0.012, 0.011}, guestSeconds: []float64{0.011, 0.012, 0.011}, stopsPerIter: 0.3, stops: 300, handleMicros: 3000},
		{seconds: []float64{0.015, 0.006, 0.011}, guestSeconds: []float64{0.015, 0.006, 0.011}, stopsPerIter: 3, stops: 1500, handleMicros: 15000},
	}
	got := syscallResults(cases, samples, 3)
	want := []SyscallResult{
		{SyscallCase: cases[0], Seconds: samples[0].seconds, GuestSeconds: samples[0].guestSeconds, MedianSeconds: 0.011, PerIterMicros: 11},
		{SyscallCase: cases[1], Seconds: samples[1].seconds, GuestSeconds: samples[1].guestSeconds, MedianSeconds: 0.030, PerIterMicros: 30,
			DiffPercent: (30.0 - 11) / 11 * 100, PairedDiff: []float64{200, 100, 200}, PerTrapMicros: 19, GuestPerTrapMicros: 1,
			BaselineMicros: 11, StopsPerIter: 1, HandleMicros: 50},
		// Under half a stop per iteration: no cost per stop.
		{SyscallCase: cases[2], Seconds: samples[2].seconds, GuestSeconds: samples[2].guestSeconds, MedianSeconds: 0.011, PerIterMicros: 11,
			PairedDiff: []float64{0, 0, 10}, BaselineMicros: 11, StopsPerIter: 0.1, HandleMicros: 10},
		// Per iteration 30, 12, 22 µs against 10, 12, 11.
		{SyscallCase: cases[3], Seconds: samples[3].seconds, GuestSeconds: samples[3].guestSeconds, MedianSeconds: 0.011, PerIterMicros: 22,
			DiffPercent: 100, PairedDiff: []float64{100, 0, 200}, PerTrapMicros: 11, GuestPerTrapMicros: 11, BaselineMicros: 11,
			StopsPerIter: 1, HandleMicros: 10},
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("syscallResults (-want +got):\n%s", diff)
	}
}

// Another kit runs the shell loops of the off, execve and open policies
// only: no sysloop case (built for the host), nothing of iot.
func TestShellCases(t *testing.T) {
	got := shellCases(syscallCases(100, 1000, 1000))
	var names []string
	for _, c := range got {
		if c.Op != "" || c.Policy == "iot" || c.Policy == "cold" {
			t.Errorf("case %q (policy %s, op %q) kept", c.Name, c.Policy, c.Op)
		}
		names = append(names, c.Name)
	}
	want := []string{"open, gate off", "open, not trapped", "open, trapped+allowed", "open, denied", "kill -0, gate off", "kill -0, not named", "cat, gate off", "cat, trapped+allowed", "cat, denied"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("shell cases (-want +got):\n%s", diff)
	}
}
