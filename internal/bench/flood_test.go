package bench

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/policy"
)

const (
	tcpSummary = "gvflood1 mode=tcp secs=5.034 attempts=27851 ok=0 refused=24622 timeouts=3229 errors=0 blocked=0 last_errno=0 rate=5532.2 start=6.721 end=11.755 unresolved=0 maxopen=256 life_ms=20\n"
	pinSummary = "gvflood1 mode=pin secs=10.003 attempts=401744 ok=401473 refused=0 timeouts=0 errors=0 blocked=271 last_errno=0 rate=40162.3 start=94.358 end=104.361 cycles=3.35 cycle_s=2.979 distinct=120000 addresses=4096\n"
	latSummary = "gvflood1 mode=connect-latency secs=0.080 attempts=4 ok=3 refused=1 timeouts=0 errors=0 blocked=0 last_errno=0 rate=62.3 start=7921.692 end=7921.773 skipped=2 p50_us=108 p99_us=128 max_us=128 lat_us=122,108,128 fail_us=5000123\n"
)

func TestParseFloodOutput(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  string
		want FloodOutput
		err  string // a substring of the error; "" for none
	}{
		{"tcp", tcpSummary, FloodOutput{Mode: "tcp", Seconds: 5.034, Attempts: 27851, Refused: 24622, Timeouts: 3229, Rate: 5532.2, Start: 6.721, End: 11.755}, ""},
		{"pin", pinSummary, FloodOutput{Mode: "pin", Seconds: 10.003, Attempts: 401744, OK: 401473, Blocked: 271, Rate: 40162.3, Start: 94.358, End: 104.361,
			Distinct: 120000, Cycles: 3.35, CycleSeconds: 2.979}, ""},
		{"latency", latSummary, FloodOutput{Mode: "connect-latency", Seconds: 0.08, Attempts: 4, OK: 3, Refused: 1, Rate: 62.3, Start: 7921.692, End: 7921.773,
			Skipped: 2, Latencies: []int64{122, 108, 128}, Failures: []int64{5000123}}, ""},
		// Other lines around it (the harness's own, a shell's) are skipped;
		// the last summary counts.
		{"among other lines", "flood-exit 0\n" + pinSummary + tcpSummary + "trailing\n", FloodOutput{Mode: "tcp", Seconds: 5.034, Attempts: 27851,
			Refused: 24622, Timeouts: 3229, Rate: 5532.2, Start: 6.721, End: 11.755}, ""},
		{"latency, none ok", "gvflood1 mode=open-latency secs=1 attempts=2 ok=0 refused=2 timeouts=0 errors=0 rate=2 start=1 end=2 lat_us= fail_us=3,4",
			FloodOutput{Mode: "open-latency", Seconds: 1, Attempts: 2, Refused: 2, Rate: 2, Start: 1, End: 2, Failures: []int64{3, 4}}, ""},
		{"none", "usage: flood ...\n", FloodOutput{}, "no gvflood1"},
		{"empty", "", FloodOutput{}, "no gvflood1"},
		{"not the magic", "gvflood2 mode=tcp\n", FloodOutput{}, "no gvflood1"},
		{"field without =", strings.Replace(tcpSummary, "ok=0", "ok", 1), FloodOutput{}, "bad or repeated"},
		{"repeated field", strings.Replace(tcpSummary, "ok=0", "attempts=1", 1), FloodOutput{}, "bad or repeated"},
		{"missing field", strings.Replace(tcpSummary, "rate=5532.2 ", "", 1), FloodOutput{}, "no rate"},
		{"negative count", strings.Replace(tcpSummary, "ok=0", "ok=-1", 1), FloodOutput{}, "bad count"},
		{"huge count", strings.Replace(tcpSummary, "ok=0", "ok=99999999999999999999", 1), FloodOutput{}, "bad count"},
		{"not a number", strings.Replace(tcpSummary, "secs=5.034", "secs=NaN", 1), FloodOutput{}, "bad number"},
		{"infinite", strings.Replace(tcpSummary, "rate=5532.2", "rate=+Inf", 1), FloodOutput{}, "bad number"},
		{"errno", strings.Replace(tcpSummary, "last_errno=0", "last_errno=5000", 1), FloodOutput{}, "bad errno"},
		{"unknown mode", strings.Replace(tcpSummary, "mode=tcp", "mode=\x1b[31m", 1), FloodOutput{}, "unknown mode"},
		{"ends before it starts", strings.Replace(tcpSummary, "start=6.721", "start=60.721", 1), FloodOutput{}, "before it starts"},
		{"samples short", strings.Replace(latSummary, "lat_us=122,108,128", "lat_us=122,108", 1), FloodOutput{}, "3 samples for 4 attempts"},
		{"no samples", strings.Replace(latSummary, " fail_us=5000123", "", 1), FloodOutput{}, "without its samples"},
		{"bad sample", strings.Replace(latSummary, "lat_us=122,108,128", "lat_us=122,,128", 1), FloodOutput{}, "bad count"},
		{"too many samples", strings.Replace(latSummary, "lat_us=122,108,128", "lat_us="+strings.Repeat("1,", maxFloodSamples)+"1", 1), FloodOutput{}, "more than"},
		{"too long", strings.Repeat("x", maxFloodLine+1), FloodOutput{}, "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFloodOutput([]byte(tc.out))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseFloodOutput: the guest writes the summary; whatever it writes,
// the parser returns an error or a summary whose numbers are in range and
// whose samples match its attempts, and never panics.
func FuzzParseFloodOutput(f *testing.F) {
	for _, s := range []string{tcpSummary, pinSummary, latSummary, "gvflood1 mode=open", "gvflood1 lat_us=1,2,3"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, out []byte) {
		o, err := ParseFloodOutput(out)
		if err != nil {
			return
		}
		if o.End < o.Start || o.Attempts < 0 || o.Rate < 0 || !slices.Contains(floodModes, o.Mode) {
			t.Fatalf("accepted %+v", o)
		}
		if strings.HasSuffix(o.Mode, "-latency") && int64(len(o.Latencies)+len(o.Failures)) != o.Attempts {
			t.Fatalf("accepted %d samples for %d attempts", len(o.Latencies)+len(o.Failures), o.Attempts)
		}
	})
}

var floodModes = []string{"tcp", "udp", "pin", "open", "connect-latency", "open-latency"}

// TestFloodProgram builds benchdata/flood.c as the benchmark does, checks
// that it compiles without warnings, refuses bad arguments, and that what
// it prints on this host is what ParseFloodOutput reads.
func TestFloodProgram(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc: install gcc and libc6-dev (scripts/install-deps)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "flood.c")
	if err := os.WriteFile(src, floodSource, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", src).CombinedOutput(); err != nil {
		t.Fatalf("gcc -Wall -Wextra -Werror: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := BuildFlood(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	// A loopback port nothing listens on: connects to it are refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	hostname := filepath.Join(dir, "hostname")
	if err := os.WriteFile(hostname, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{}, {"nope"}, {"tcp", "10.0.2.2", "1", "2", "61"}, {"tcp", "10.0.2.2", "2", "1", "1"}, {"tcp", "host", "1", "2", "1"},
		{"tcp", "10.0.2.2", "1", "2", "1", "4097"}, {"tcp", "10.0.2.2", "1", "2", "1", "1", "0"}, {"udp", "10.0.2.2", "1", "2", "1", "5"},
		{"pin", "198.18.0.0", "1"}, {"pin", "198.18.0.0/31", "1"}, {"pin", "198.18.0.0/15", "1", "0"}, {"open", "/x", "0"},
		{"connect-latency", "10.0.2.2", "80", "0", "10"}, {"open-latency", "/x", "1", "10", "601"}, {"open-latency", "/x", "1", "x"},
	} {
		err := exec.CommandContext(ctx, bin, args...).Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("flood %q: %v, want exit status 2", args, err)
		}
	}
	for _, tc := range []struct {
		args []string
		want func(o FloodOutput) bool
	}{
		{[]string{"open-latency", hostname, "3", "1"}, func(o FloodOutput) bool { return o.Attempts == 3 && o.OK == 3 && len(o.Latencies) == 3 }},
		{[]string{"open-latency", filepath.Join(dir, "none"), "2", "1"}, func(o FloodOutput) bool { return o.Errors == 2 && o.LastErrno == 2 && len(o.Failures) == 2 }},
		{[]string{"open", filepath.Join(dir, "none"), "1"}, func(o FloodOutput) bool { return o.Attempts > 0 && o.Errors == o.Attempts && o.End-o.Start >= 0.9 }},
		{[]string{"connect-latency", "127.0.0.1", closed, "2", "1"}, func(o FloodOutput) bool { return o.Refused == 2 && len(o.Failures) == 2 }},
		{[]string{"tcp", "127.0.0.1", closed, closed, "1", "4", "5"}, func(o FloodOutput) bool { return o.Attempts > 0 && o.Refused > 0 }},
		{[]string{"udp", "127.0.0.1", "9", "10", "1"}, func(o FloodOutput) bool { return o.Attempts > 0 && o.Distinct == 2 }},
		{[]string{"pin", "127.0.0.0/8", "1", "1000"}, func(o FloodOutput) bool { return o.Attempts > 0 && o.Distinct == 1000 && o.CycleSeconds > 0 }},
	} {
		out, err := exec.CommandContext(ctx, bin, tc.args...).Output()
		if err != nil {
			t.Errorf("flood %q: %v", tc.args, err)
			continue
		}
		o, err := ParseFloodOutput(out)
		if err != nil || !tc.want(o) || o.Mode != tc.args[0] {
			t.Errorf("flood %q: %+v, %v; output %q", tc.args, o, err, out)
		}
	}
}

// TestFloodPolicy compiles the benchmark's policy and checks that
// floodPolicyRules are its rules, so that a deny by any other is the
// gate's own.
func TestFloodPolicy(t *testing.T) {
	if _, err := policy.NewSnapshot("flood.policy", []byte(FloodPolicy), nil); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^  ([a-z_]+): `).FindAllStringSubmatch(FloodPolicy, -1) {
		names = append(names, m[1])
	}
	if diff := cmp.Diff(floodPolicyRules, names); diff != "" {
		t.Errorf("floodPolicyRules (-want +got):\n%s", diff)
	}
	for rule, want := range map[string]bool{"egress_default": true, "net default": true, "default": true, "gate-overload": false,
		"audit-failure": false, "": false} {
		if got := isPolicyRule(rule); got != want {
			t.Errorf("isPolicyRule(%q) = %v, want %v", rule, got, want)
		}
	}
}

func TestFloodScenarios(t *testing.T) {
	o := FloodOptions{Seconds: 20, IntervalMillis: 250}
	seen := map[string]bool{}
	for _, s := range floodScenarios {
		if seen[s.key] || s.key == "" || s.name == "" || (s.cpus != 1 && s.cpus != 2) {
			t.Errorf("scenario %+v: a key twice, or no key, name or 1 or 2 vCPUs", s)
		}
		seen[s.key] = true
		if s.flood != nil && !slices.Contains(s.flood(20), "20") {
			t.Errorf("%s: flood %q does not run for the flood's seconds", s.key, s.flood(20))
		}
	}
	// 18 s of the 20 (1 s to settle, 1 s of margin), 250 ms apart.
	if diff := cmp.Diff([]string{FloodGuestPath, "connect-latency", "10.0.2.2", "80", "73", "250", "18"}, bystanderArgv(floodScenarios[0], o)); diff != "" {
		t.Errorf("connect bystander (-want +got):\n%s", diff)
	}
	last := floodScenarios[len(floodScenarios)-1]
	if diff := cmp.Diff([]string{FloodGuestPath, "open-latency", "/etc/hostname", "73", "250", "18"}, bystanderArgv(last, o)); diff != "" {
		t.Errorf("open bystander (-want +got):\n%s", diff)
	}
	got, err := chooseScenarios([]string{"open-2cpu", "tcp"})
	if err != nil || len(got) != 2 || got[0].key != "tcp" || got[1].key != "open-2cpu" {
		t.Errorf("chooseScenarios = %v, %v; want tcp then open-2cpu, in the run's order", got, err)
	}
	if _, err := chooseScenarios([]string{"tcp", "smurf"}); err == nil {
		t.Error("chooseScenarios took an unknown scenario")
	}
	if all, _ := chooseScenarios(nil); len(all) != len(floodScenarios) {
		t.Error("no scenario named is not all of them")
	}
}

func TestParseWget(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want *WgetResult
	}{
		{"gvflood1 mode=...\nwget 0 10.50 10.75\n", &WgetResult{Exit: 0, Seconds: 0.25, endUptime: 10.75}},
		{"wget 1 10.50 30.50", &WgetResult{Exit: 1, Seconds: 20, endUptime: 30.5}},
		{"wget 0 10.50 10.25", nil},
		{"wget x 10.50 10.75", nil},
		{"wget 0 10.50", nil},
		{"", nil},
	} {
		got, err := parseWget([]byte(tc.out))
		if (err == nil) != (tc.want != nil) || !cmp.Equal(tc.want, got, cmp.AllowUnexported(WgetResult{}), cmpopts.EquateApprox(0, 1e-9)) {
			t.Errorf("parseWget(%q) = %+v, %v; want %+v", tc.out, got, err, tc.want)
		}
	}
}

// floodStatus is a status with the given gate counters.
func floodStatus(g api.NetGateStats, stops, handle uint64, head string) api.Status {
	return api.Status{Net: &api.NetStatus{Gate: &g}, SyscallGate: &api.SyscallGateStatus{Stops: stops, Decided: stops, HandleMicros: handle},
		Audit: &api.AuditStatus{Head: head}}
}

// TestFloodRoundSummarize checks a round's window arithmetic: counter
// deltas, the flow table's samples, memory, the logs' growth and the
// backlog, then what the logs add: decisions against undecided denies.
func TestFloodRoundSummarize(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	pre := floodSample{at: t0, rssKiB: 1000, eventsSize: 100, auditSize: 200, monCPU: 1e9, qemuCPU: 2e9,
		st: floodStatus(api.NetGateStats{NewFlows: 10, Allowed: 5, Denied: 5, Flows: 3, DropReasons: map[string]uint64{"x": 1}}, 7, 700, "12:ab")}
	mid := floodSample{at: at(5), rssKiB: 3000, st: floodStatus(api.NetGateStats{Flows: flowTableCapacity}, 0, 0, "")}
	mid2 := floodSample{at: at(7.5), rssKiB: 2500, st: floodStatus(api.NetGateStats{Flows: flowTableCapacity + 1}, 0, 0, "")}
	end := floodSample{at: at(10), rssKiB: 2000, hwmKiB: 3500, eventsSize: 1100, auditSize: 5200, monCPU: 6e9, qemuCPU: 12e9,
		st: floodStatus(api.NetGateStats{NewFlows: 1010, Allowed: 15, Denied: 1005, Resets: 900, Dropped: 50, Unattributed: 4, Flows: 100,
			DropReasons: map[string]uint64{"x": 1, "flow table full": 49}}, 107, 20700, "112:cd")}
	late := floodSample{at: at(11), rssKiB: 9999, st: floodStatus(api.NetGateStats{Flows: 9}, 0, 0, "")}
	quiet := floodSample{at: at(14), st: floodStatus(api.NetGateStats{Allowed: 15, Denied: 1205}, 0, 0, "")}
	var r FloodRound
	r.summarize(pre, end, []floodSample{mid, mid2, end, late}, quiet, true)
	r.addLogs(floodLogs{auditDecisions: map[string]uint64{"net": 90}, netPolicyDenies: 90, netOtherDenies: 0,
		denyRules: map[string]uint64{"egress_default": 90, "gate-overload": 910}, attr: []attrSample{{100, 1}, {300, 5}, {200, 1}}})
	want := FloodRound{WindowSeconds: 10,
		Gate: FloodKernel{Stops: 100, Decided: 100, StopsPerSec: 10, HandleMicros: 200},
		Logs: FloodLogs{AuditRecords: 100, AuditDecisions: map[string]uint64{"net": 90}, AuditBytes: 5000, EventsBytes: 1000},
		RSS:  FloodMemory{StartKiB: 1000, PeakKiB: 3000, HWMKiB: 3500},
		CPU:  FloodCPU{MonitorPercent: 50, QEMUPercent: 100},
		Net: &FloodNet{NewFlows: 1000, Allowed: 10, Denied: 1000, Resets: 900, Dropped: 50, Unattributed: 4,
			DropReasons: map[string]uint64{"flow table full": 49},
			// 10 allowed and 90 denies by the policy's rules; the other 910
			// denies no rule made.
			Decisions: 100, DecisionsPerSec: 10, Undecided: 910, UndecidedShare: 910.0 / 1010,
			DenyRules:  map[string]uint64{"egress_default": 90, "gate-overload": 910},
			AttributeN: 3, AttributeP50: 200, AttributeP90: 300, AttributeRetried: 1,
			FlowsMax: flowTableCapacity + 1, FlowsEnd: 100, FullSeconds: 5,
			Flows:   []FlowsSample{{5, flowTableCapacity}, {7.5, flowTableCapacity + 1}, {10, 100}},
			Backlog: 200, DrainSeconds: 4},
	}
	if diff := cmp.Diff(want, r, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	// Without the network (the syscall bystander) and without a kernel
	// gate in the status, only the rest.
	var o FloodRound
	pre.st.SyscallGate = nil
	o.summarize(pre, end, nil, floodSample{}, false)
	o.addLogs(floodLogs{})
	if o.Net != nil || o.Gate != (FloodKernel{}) || o.Logs.AuditRecords != 100 {
		t.Errorf("without the network: %+v", o)
	}
}

func TestFloodMedians(t *testing.T) {
	round := func(rate, p50 float64, wget *WgetResult, dps float64) FloodRound {
		return FloodRound{Flood: &FloodOutput{Rate: 2 * rate}, FloodWallRate: rate, HostPerGuest: 2, BystanderP50: p50, BystanderP99: 2 * p50,
			Bystander: FloodOutput{Attempts: 2, Latencies: []int64{1}, Failures: []int64{2}}, Failed: 1, Wget: wget,
			Net: &FloodNet{DecisionsPerSec: dps, FlowsMax: int(dps)}, Logs: FloodLogs{AuditRecords: uint64(dps)}}
	}
	none := round(400, 0, &WgetResult{Exit: 1, Seconds: 20}, 80)
	none.Bystander.Latencies = nil
	rounds := []FloodRound{
		round(100, 10, &WgetResult{Exit: 0, Seconds: 1, InFlood: true}, 50),
		round(300, 30, &WgetResult{Exit: 1, Seconds: 20}, 70),
		// Succeeded, but after the flood ended: not counted as a success.
		round(200, 20, &WgetResult{Exit: 0, Seconds: 15}, 60),
		// No attempt of the bystander succeeded: no percentiles.
		none,
	}
	got := floodMedians(rounds, true)
	want := FloodMedians{FloodRate: 250, FloodGuestRate: 500, HostPerGuest: 2, DecisionsPerSec: 65, AuditRecords: 65, BystanderP50: 20,
		BystanderP99: 40, BystanderFailed: 1, BystanderAttempts: 2, WgetOK: 1, WgetRounds: 4, WgetSeconds: 17.5, FlowsMax: 65}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// Without a flood a wget that worked counts.
	if got := floodMedians(rounds[2:3], false); got.WgetOK != 1 || got.FloodRate != 0 {
		t.Errorf("no flood: %+v", got)
	}
}

func TestFloodClocks(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	r := FloodRound{Flood: &FloodOutput{Attempts: 1000, Start: 101, End: 111}}
	// 25 host seconds for 10 guest seconds: the VM stood still for 15.
	r.clocks(guestClock{t0, 100}, guestClock{t0.Add(25 * time.Second), 110})
	if r.HostPerGuest != 2.5 || r.FloodWallRate != 40 {
		t.Errorf("host per guest %v, wall rate %v; want 2.5 and 40", r.HostPerGuest, r.FloodWallRate)
	}
	var b FloodRound
	b.clocks(guestClock{t0, 100}, guestClock{t0, 100}) // no guest time: nothing
	if b.HostPerGuest != 0 {
		t.Errorf("no guest time: %v", b.HostPerGuest)
	}
	for _, tc := range []struct {
		out string
		ok  bool
	}{
		{"uptime 12.34\n", true}, {"flood-exit 0\nuptime 1.5\n", true}, {"uptime x\n", false}, {"uptime -1\n", false}, {"", false},
	} {
		c, err := parseUptime(api.ExecResult{Stdout: []byte(tc.out)}, t0)
		if (err == nil) != tc.ok || (tc.ok && (c.guest <= 0 || !c.host.Equal(t0))) {
			t.Errorf("parseUptime(%q) = %+v, %v; want ok %v", tc.out, c, err, tc.ok)
		}
	}
}

// TestReadFloodLogs reads the part of an event and an audit log after
// the window's starting sizes, keeping what happened in the window.
func TestReadFloodLogs(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	ts := func(s int) string { return t0.Add(time.Duration(s) * time.Second).Format(time.RFC3339Nano) }
	events := strings.Join([]string{
		`{"type":"net-deny","net":{"time":"` + ts(1) + `","verdict":"deny","rule":"egress_default"}}`, // before the offset
		`{"type":"net-deny","net":{"time":"` + ts(2) + `","verdict":"deny","rule":"egress_default","attribute_us":100,"attempts":1}}`,
		`{"type":"net-deny","net":{"time":"` + ts(3) + `","verdict":"deny","rule":"gate-overload"}}`,
		`{"type":"net-deny","net":{"time":"` + ts(3) + `","verdict":"deny","rule":"gate-overload"},"repeat":{"count":99}}`,
		`{"type":"net-deny","net":{"time":"` + ts(3) + `","verdict":"deny","rule":"egress_default","attribute_us":300,"attempts":5}}`,
		`{"type":"syscall","time":"` + ts(3) + `"}`,
		`{"type":"net-alert","net":{"time":"` + ts(4) + `","verdict":"alert","rule":"updater","attribute_us":50,"attempts":1}}`,
		`{"type":"net-deny","net":{"time":"` + ts(20) + `","verdict":"deny","rule":"egress_default"}}`, // after the window
		`{"type":"net-deny","net":` + strings.Repeat(" ", 2<<20) + `}`,                                 // too long: skipped
		`not json`,
		`{"type":"net-deny","net":{"time":"` + ts(3) + `","verdict":"deny","rule":"egress_default"}`, // no newline: being written
	}, "\n")
	audit := strings.Join([]string{
		`{"n":1,"kind":"open","time":"` + ts(0) + `"}`,
		`{"n":2,"time":"` + ts(2) + `","verdict":"deny","rule":"egress_default","event":{"class":"net"}}`,
		`{"n":3,"time":"` + ts(2) + `","verdict":"deny","rule":"egress_default","event":{"class":"net"},"repeat":{"count":40}}`,
		`{"n":4,"time":"` + ts(3) + `","verdict":"deny","rule":"gate-overload","event":{"class":"net"},"repeat":{"count":7}}`,
		`{"n":5,"time":"` + ts(3) + `","verdict":"deny","rule":"flood_denied_open","event":{"class":"file"}}`,
		`{"n":6,"kind":"policy","time":"` + ts(3) + `"}`,
		`{"n":7,"time":"` + ts(30) + `","verdict":"deny","rule":"egress_default","event":{"class":"net"}}`,
	}, "\n") + "\n"
	ev, au := filepath.Join(dir, "events.jsonl"), filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(ev, []byte(events), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(au, []byte(audit), 0o600); err != nil {
		t.Fatal(err)
	}
	first := int64(strings.Index(events, "\n") + 1)
	pre := floodSample{at: t0.Add(time.Second + time.Millisecond), eventsSize: first, auditSize: 0}
	end := floodSample{at: t0.Add(10 * time.Second)}
	got, err := readFloodLogs(ev, au, pre, end)
	if err != nil {
		t.Fatal(err)
	}
	want := floodLogs{auditDecisions: map[string]uint64{"net": 48, "file": 1}, netPolicyDenies: 41, netOtherDenies: 7,
		denyRules: map[string]uint64{"egress_default": 2, "gate-overload": 100}, attr: []attrSample{{100, 1}, {300, 5}, {50, 1}}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(floodLogs{}, attrSample{})); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// An audit log that shrank rotated: the rest of the rotated file is
	// read, then the new one.
	if err := os.Rename(au, au+".1"); err != nil {
		t.Fatal(err)
	}
	rest := `{"n":8,"time":"` + ts(5) + `","verdict":"deny","rule":"egress_default","event":{"class":"net"}}` + "\n"
	if err := os.WriteFile(au, []byte(rest), 0o600); err != nil {
		t.Fatal(err)
	}
	pre.auditSize = int64(strings.Index(audit, `{"n":5`))
	got, err = readFloodLogs(ev, au, pre, end)
	if err != nil || got.netPolicyDenies != 1 || got.auditDecisions["file"] != 1 || got.auditDecisions["net"] != 1 {
		t.Errorf("rotated: %+v, %v; want n=5 and n=8", got, err)
	}
	// The growth of a log that rotated: the rest of FILE.1, then FILE.
	if g := logGrowth(au, pre.auditSize, int64(len(rest))); g != int64(len(audit))-pre.auditSize+int64(len(rest)) {
		t.Errorf("growth of a rotated log: %d", g)
	}
	if g := logGrowth(au, 10, 25); g != 15 {
		t.Errorf("growth: %d, want 15", g)
	}
	// No event log (yet): no events, no error.
	if _, err := readFloodLogs(filepath.Join(dir, "none"), au, floodSample{}, end); err != nil {
		t.Errorf("no event log: %v", err)
	}
}

func TestFmt(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{fmtMicros(850), "850 µs"}, {fmtMicros(12345), "12.3 ms"}, {fmtMicros(4950000), "4.95 s"},
		{fmtBytes(512 * 1024), "512 KiB"}, {fmtBytes(5.5 * (1 << 20)), "5.5 MiB"},
		{fmtCounts(nil), "none"}, {fmtCounts(map[string]uint64{"b": 2, "a": 1}), "{a: 1, b: 2}"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
