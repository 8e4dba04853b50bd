package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/bench"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
)

// eventsMaxSize is the test VM's --events-max-size: what the floods must
// not push events.jsonl past.
const eventsMaxSize = 256 << 10

// TestGatesUnderAttack floods the gates of a 2-vCPU guest from one guest
// process (the static program internal/bench/benchdata/flood.c) while
// another process does what the policy allows: TCP connects, UDP to many
// ports, the flow-table pinning pattern, and a denied-open loop. During
// each, the bystander's connects (or trapped opens) must all succeed; after
// each, the audit log names the flooding process, in aggregated records
// where it flooded, and still verifies; events.jsonl stays under its bound.
// How long the bystander waited is the benchmark's to measure
// (gatevisor bench flood), not this test's.
func TestGatesUnderAttack(t *testing.T) {
	needVM(t)
	const vm = "flood"
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	flood, err := bench.BuildFlood(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "flood.policy")
	if err := os.WriteFile(pol, []byte(bench.FloodPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	denied := filepath.Join(dir, "flood-denied")
	if err := os.WriteFile(denied, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bootVMs(t, vmSpec{vm, []string{"--cpus", "2", "--net", "isolated:it-flood", "--policy", pol,
		"--add", flood + ":" + bench.FloodGuestPath, "--add", denied + ":" + bench.FloodDeniedPath,
		"--events-max-size", strconv.Itoa(eventsMaxSize), "--events-keep", "1"}})
	leaseIPv4(t, vm, "10.0.2.")
	vmDir := filepath.Join(env.stateDir, "gatevisor", "vms", vm)
	auditPath := filepath.Join(vmDir, "audit.jsonl")

	// attack runs the flood in the background, the bystander after a
	// second, a wget, and returns the two summaries.
	attack := func(t *testing.T, floodArgs, bystander string) (fl, by bench.FloodOutput, out string) {
		t.Helper()
		script := fmt.Sprintf(`flood %s >/tmp/flood.out 2>&1 & F=$!
sleep 1
flood %s; echo "bystander=$?"
wait $F; echo "flood=$?"; cat /tmp/flood.out`, floodArgs, bystander)
		// The flood runs 10 s of guest time; every trapped call stops the
		// VM, so the wall time grows with how fast the gate lets the
		// flood go (tens of seconds with watchpoints on this host).
		r := gv(t, 3*time.Minute, "exec", vm, "--timeout", "150s", "--", "sh", "-c", script)
		out = r.stdout + r.stderr
		var sums []bench.FloodOutput
		for _, line := range strings.Split(r.stdout, "\n") {
			if s, err := bench.ParseFloodOutput([]byte(line)); err == nil && line != "" {
				sums = append(sums, s)
			}
		}
		if len(sums) != 2 || !strings.Contains(r.stdout, "bystander=0") || !strings.Contains(r.stdout, "flood=0") {
			t.Fatalf("flood %s / %s:\n%s", floodArgs, bystander, out)
		}
		return sums[1], sums[0], out
	}
	// logGate logs what the gate did during a flood.
	logGate := func(t *testing.T, before, after *api.NetGateStats) {
		t.Helper()
		t.Logf("gate: %d new flows, %d allowed, %d denied, %d rate-limited, %d flow-limited, %d dropped undecided (%d queue, %d table), "+
			"%d evicted, %d passes, %d walks (%d µs in all), %d flows now",
			after.NewFlows-before.NewFlows, after.Allowed-before.Allowed, after.Denied-before.Denied, after.RateLimited-before.RateLimited,
			after.FlowLimited-before.FlowLimited, after.Overload+after.TableFull-before.Overload-before.TableFull,
			after.Overload-before.Overload, after.TableFull-before.TableFull, after.Evicted-before.Evicted, after.Passes-before.Passes,
			after.Walks-before.Walks, after.WalkMicros-before.WalkMicros, after.Flows)
	}
	// bystanderOK checks that every one of the bystander's attempts worked.
	bystanderOK := func(t *testing.T, by bench.FloodOutput, n int64, out string) {
		t.Helper()
		if by.OK != n || by.Refused+by.Timeouts+by.Errors+by.Skipped != 0 {
			t.Errorf("bystander: %d of %d succeeded (refused %d, timeouts %d, errors %d, skipped %d)\n%s",
				by.OK, n, by.Refused, by.Timeouts, by.Errors, by.Skipped, out)
		}
	}

	t.Run("TCP connect flood", func(t *testing.T) {
		before := netStatus(t, vm).Gate
		fl, by, out := attack(t, "tcp 10.0.2.2 1024 65535 12", "connect-latency 10.0.2.2 80 10 500 11")
		bystanderOK(t, by, 10, out)
		if fl.Attempts < 1000 || fl.Refused == 0 {
			t.Errorf("the flood did not flood: %+v", fl)
		}
		r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", `timeout 20 wget -qO- http://10.0.2.2/ >/dev/null; echo "wget=$?"`)
		if !strings.Contains(r.stdout, "wget=0") {
			t.Errorf("wget after the flood: %s%s", r.stdout, r.stderr)
		}
		g := netStatus(t, vm).Gate
		logGate(t, before, g)
		if g.RateLimited == 0 || g.ResetReasons[gatenet.ResetDenied] == 0 {
			t.Errorf("gate counters after a connect flood: %+v", g)
		}
		floodRecords(t, auditPath, gatenet.RuleFlowRate, "egress_default")
	})

	t.Run("UDP flood", func(t *testing.T) {
		before := netStatus(t, vm).Gate
		fl, by, out := attack(t, "udp 10.0.2.2 1024 65535 10", "connect-latency 10.0.2.2 80 10 500 9")
		bystanderOK(t, by, 10, out)
		if fl.Attempts < 1000 {
			t.Errorf("the flood did not flood: %+v", fl)
		}
		logGate(t, before, netStatus(t, vm).Gate)
		floodRecords(t, auditPath, gatenet.RuleFlowRate, "egress_default")
	})

	t.Run("flow-table pinning", func(t *testing.T) {
		before := netStatus(t, vm).Gate
		fl, by, out := attack(t, "pin 198.18.0.0/15 12 120000", "connect-latency 10.0.2.2 80 10 500 11")
		bystanderOK(t, by, 10, out)
		g := netStatus(t, vm).Gate
		if g.TableFull != before.TableFull || g.Flows > gatenet.DefaultMaxFlows {
			t.Errorf("the table was held full: %d frames dropped for want of room; %d flows", g.TableFull-before.TableFull, g.Flows)
		}
		t.Logf("pinning: %d datagrams, %d distinct destinations", fl.Attempts, fl.Distinct)
		logGate(t, before, g)
	})

	t.Run("denied-open loop on 2 vCPUs", func(t *testing.T) {
		fl, by, out := attack(t, "open "+bench.FloodDeniedPath+" 10", "open-latency /etc/hostname 20 200 9")
		bystanderOK(t, by, 20, out)
		if fl.Refused == 0 || fl.OK != 0 {
			t.Errorf("denied opens: %+v", fl)
		}
		st := status(t, vm)
		if st.SyscallGate == nil || st.SyscallGate.Decided == 0 {
			t.Fatalf("syscall gate: %+v", st.SyscallGate)
		}
		t.Logf("syscall gate: %d stops, %d handled on a vCPU QEMU did not report", st.SyscallGate.Stops, st.SyscallGate.SiblingStops)
		findAudit(t, auditPath, func(r audit.Record) bool {
			return r.Rule == "flood_denied_open" && r.Event.Subject.Comm == "flood"
		})
	})

	t.Run("the logs after the floods", func(t *testing.T) {
		var total int64
		for _, name := range []string{"events.jsonl", "events.jsonl.1"} {
			if fi, err := os.Stat(filepath.Join(vmDir, name)); err == nil {
				if fi.Size() > eventsMaxSize {
					t.Errorf("%s is %d bytes, over --events-max-size %d", name, fi.Size(), eventsMaxSize)
				}
				total += fi.Size()
			}
		}
		if _, err := os.Stat(filepath.Join(vmDir, "events.jsonl.2")); err == nil {
			t.Error("events.jsonl.2 kept with --events-keep 1")
		}
		r := gv(t, time.Minute, "audit", "--verify", "--file", auditPath)
		if r.code != 0 {
			t.Errorf("the audit log does not verify after the floods:\n%s%s", r.stdout, r.stderr)
		}
		st := status(t, vm)
		rss := monitorPeakRSS(t, st.MonitorPID)
		t.Logf("events files %d bytes; monitor peak RSS %d MiB", total, rss>>20)
		if rss > 1<<30 {
			t.Errorf("the monitor's peak RSS is %d MiB", rss>>20)
		}
	})
}

// floodRecords checks that the audit log names the flooding process in
// aggregated records of each rule.
func floodRecords(t *testing.T, path string, rules ...string) {
	t.Helper()
	recs := readAudit(t, path)
	for _, rule := range rules {
		var one, agg int
		var covered uint64
		for _, r := range recs {
			if r.Rule != rule || r.Event.Subject.Comm != "flood" || r.Event.Subject.PID == 0 {
				continue
			}
			if r.Repeat != nil {
				agg++
				covered += r.Repeat.Count
			} else {
				one++
			}
		}
		if one == 0 || agg == 0 || covered == 0 {
			t.Errorf("rule %s: %d records of the flood's own, %d aggregated ones covering %d decisions; want both", rule, one, agg, covered)
		}
	}
}

// monitorPeakRSS returns the monitor's peak resident set (VmHWM).
func monitorPeakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
