package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
)

var approx = cmpopts.EquateApprox(0, 1e-9)

// TestNetCaseSummarize checks each workload's conversion to its unit and
// the paired statistics over two rounds.
func TestNetCaseSummarize(t *testing.T) {
	loads := netWorkloads(isolatedTarget, 8, 100, 1000)
	runs := func() NetCase {
		c := NetCase{GateSeconds: []float64{0.5, 0.6}, NoGateSeconds: []float64{0.4, 0.4},
			MonitorCPUNoGate: []float64{5, 5}, QEMUCPUNoGate: []float64{1, 1}}
		c.addGated(0.5, 10, 1, api.NetGateStats{Frames: 100}, api.NetGateStats{Frames: 1100, NewFlows: 1})
		c.addGated(0.6, 20, 1, api.NetGateStats{Frames: 1100}, api.NetGateStats{Frames: 1100, Dropped: 2})
		c.GateSeconds = c.GateSeconds[2:] // addGated appended them again
		return c
	}
	half := MedianInterval{Confidence: 0.5} // two samples: [min, max] at 1-2/4
	interval := func(m, lo, hi float64) MedianInterval {
		i := half
		i.Median, i.Lo, i.Hi = m, lo, hi
		return i
	}
	// The monitor's CPU with the gate less without: 5 and 15 ms, over
	// 1,000 and 0 (counted as 1) frames.
	perFrame := interval(7502.5, 5, 15000)
	for _, tc := range []struct {
		load int
		want func(c *NetCase)
	}{
		{0, func(c *NetCase) { // bulk: MiB/s
			c.MedianGate, c.MedianNoGate, c.MinGate, c.MaxGate, c.MinNoGate, c.MaxNoGate = (16+8/0.6)/2, 20, 8/0.6, 16, 20, 20
			c.Ratio = c.MedianGate / 20
			c.PairedRatio = interval((0.8+8/0.6/20)/2, 8/0.6/20, 0.8)
		}},
		{1, func(c *NetCase) { // HTTP: ms per request
			c.MedianGate, c.MedianNoGate, c.MinGate, c.MaxGate, c.MinNoGate, c.MaxNoGate = 5.5, 4, 5, 6, 4, 4
			c.Ratio = 5.5 / 4
			c.PairedRatio = interval(1.375, 1.25, 1.5)
			c.PairedAddedMicros = &MedianInterval{Median: 1500, Lo: 1000, Hi: 2000, Confidence: 0.5}
			c.FramesPerOp = 1000.0 / 200
			c.GateCPUPerOp = &MedianInterval{Median: 100, Lo: 50, Hi: 150, Confidence: 0.5}
		}},
		{2, func(c *NetCase) { // echo: µs per round trip
			c.MedianGate, c.MedianNoGate, c.MinGate, c.MaxGate, c.MinNoGate, c.MaxNoGate = 550, 400, 500, 600, 400, 400
			c.Ratio = 550.0 / 400
			c.PairedRatio = interval(1.375, 1.25, 1.5)
			c.PairedAddedMicros = &MedianInterval{Median: 150, Lo: 100, Hi: 200, Confidence: 0.5}
			c.FramesPerOp = 1000.0 / 2000
			c.GateCPUPerOp = &MedianInterval{Median: 10, Lo: 5, Hi: 15, Confidence: 0.5}
		}},
	} {
		t.Run(loads[tc.load].unit, func(t *testing.T) {
			got := runs()
			got.summarize(loads[tc.load], 8, 2)
			want := runs()
			want.GateCPUPerFrame = perFrame
			tc.want(&want)
			if diff := cmp.Diff(want, got, approx, cmp.AllowUnexported(NetCase{})); diff != "" {
				t.Errorf("summarize (-want +got):\n%s", diff)
			}
			if got.Frames != 1000 || got.NewFlows != 1 || got.Dropped != 2 {
				t.Errorf("counters: %d frames, %d new flows, %d dropped; want 1000, 1, 2", got.Frames, got.NewFlows, got.Dropped)
			}
		})
	}
}

func TestNetJudge(t *testing.T) {
	ci := func(lo, hi float64) MedianInterval {
		return MedianInterval{Median: (lo + hi) / 2, Lo: lo, Hi: hi, Confidence: 0.96}
	}
	report := func(ratio, echoAdded, cpuBulk, cpuEcho MedianInterval) *NetReport {
		return &NetReport{Cases: []NetCase{
			{PairedRatio: ratio, GateCPUPerFrame: cpuBulk},
			{},
			{PairedAddedMicros: &echoAdded, GateCPUPerFrame: cpuEcho},
		}}
	}
	for _, tc := range []struct {
		name               string
		rep                *NetReport
		throughput, packet string
		cpu                string
		cpuUpper           float64
	}{
		// The echo's added time is over two crossings: 30 µs is 15 each.
		{"all met", report(ci(0.92, 0.99), ci(10, 30), ci(1, 3), ci(2, 4)), "met", "met", "met", 4},
		{"all missed", report(ci(0.5, 0.8), ci(50, 60), ci(21, 30), ci(1, 2)), "missed", "missed", "missed", 30},
		{"straddling", report(ci(0.85, 0.95), ci(30, 50), ci(15, 25), ci(1, 2)), "not resolved at this noise", "not resolved at this noise", "not resolved at this noise", 25},
		{"too few rounds", report(MedianInterval{Lo: 1, Hi: 1, Confidence: 0.5}, ci(0, 0), ci(0, 0), ci(0, 0)),
			"too few rounds for a verdict", "too few rounds for a verdict", "too few rounds for a verdict", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.rep.judge()
			got := []string{tc.rep.ThroughputGoal, tc.rep.PerPacketGoal, tc.rep.PerPacketCPUGoal}
			if diff := cmp.Diff([]string{tc.throughput, tc.packet, tc.cpu}, got); diff != "" {
				t.Errorf("goals: throughput, per packet, per packet by CPU (-want +got):\n%s", diff)
			}
			if tc.rep.PerPacketCPUMicros != tc.cpuUpper {
				t.Errorf("per-packet CPU upper bound %v, want %v", tc.rep.PerPacketCPUMicros, tc.cpuUpper)
			}
			echo := tc.rep.Cases[netEcho].PairedAddedMicros
			if a := tc.rep.AddedPerPacketMicros; a.Lo != echo.Lo/2 || a.Hi != echo.Hi/2 {
				t.Errorf("added per packet %+v, want half of the echo's %+v", a, *echo)
			}
		})
	}
}

func TestNetAttribution(t *testing.T) {
	attr := map[string]attrSample{}
	for i := range 20 {
		attr[fmt.Sprint(i)] = attrSample{micros: int64(100 * (i + 1)), attempts: 1 + i%7/6} // i%7 == 6: 2 attempts
	}
	var rep NetReport
	rep.attribution(attr)
	want := NetReport{AttributeN: 20, AttributeMedianUS: 1050, AttributeP90US: 1900, AttributeRetried: 2}
	if diff := cmp.Diff(want, rep); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	var none NetReport
	none.attribution(nil)
	if diff := cmp.Diff(NetReport{}, none); diff != "" {
		t.Errorf("no samples (-want +got):\n%s", diff)
	}
}

// TestNetVMs checks that the two guests differ only by the network gate
// (and their networks and audit logs' names).
func TestNetVMs(t *testing.T) {
	for _, mode := range []string{"isolated", "user"} {
		t.Run(mode, func(t *testing.T) {
			vms := netVMs(NetOptions{Net: mode, Accel: "tcg", Mem: "128M"}, "/p/bench.policy", "/p/nogate.policy", "/shm/a")
			if len(vms) != 2 || vms[0].cfg != cfgGate || vms[1].cfg != cfgNoGate {
				t.Fatalf("got %d VMs; want the gated one, then the other", len(vms))
			}
			g, n := strings.Join(vms[0].args, " "), strings.Join(vms[1].args, " ")
			for _, a := range []string{"--accel tcg", "--mem 128M", "--audit-log /shm/a/"} {
				if !strings.Contains(g, a) || !strings.Contains(n, a) {
					t.Errorf("want %q in both:\n%s\n%s", a, g, n)
				}
			}
			if !strings.Contains(g, "--policy /p/bench.policy") || !strings.Contains(n, "--policy /p/nogate.policy") {
				t.Errorf("want the gated guest's policy, and the advisory one for the other:\n%s\n%s", g, n)
			}
			if strings.Contains(g, "--net-no-gate") || !strings.Contains(n, "--net-no-gate") {
				t.Errorf("--net-no-gate: want it in the second only:\n%s\n%s", g, n)
			}
			netOf := func(args []string) string { return args[slices.Index(args, "--net")+1] }
			if mode == "user" && (netOf(vms[0].args) != "user" || netOf(vms[1].args) != "user") ||
				mode == "isolated" && (!strings.HasPrefix(netOf(vms[0].args), "isolated:") || netOf(vms[0].args) == netOf(vms[1].args)) {
				t.Errorf("networks %q and %q for --net %s", netOf(vms[0].args), netOf(vms[1].args), mode)
			}
		})
	}
}

// TestHostServices talks to the three services --net user serves on the
// host's loopback, then checks that closing them ends open connections.
func TestHostServices(t *testing.T) {
	tgt, stop, err := targetFor("user")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if tgt.addr != "192.168.127.254" || tgt.discard == 0 || tgt.echoPort == 0 || tgt.http == 0 {
		t.Fatalf("target %+v", tgt)
	}
	dial := func(port int) net.Conn {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	echo := dial(tgt.echoPort)
	fmt.Fprintln(echo, "x")
	if l, err := bufio.NewReader(echo).ReadString('\n'); err != nil || l != "x\n" {
		t.Errorf("echo: %q, %v", l, err)
	}
	discard := dial(tgt.discard)
	if _, err := discard.Write(make([]byte, 1<<16)); err != nil {
		t.Errorf("discard: %v", err)
	}
	res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", tgt.http))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != "gatevisor bench net\n" {
		t.Errorf("HTTP: %q", body)
	}
	stop()
	if _, err := echo.Read(make([]byte, 1)); err == nil {
		t.Error("an echo connection outlived the services")
	}
	discard.Close()
	echo.Close()

	if tgt, stop, err := targetFor("isolated"); err != nil || tgt != isolatedTarget {
		t.Errorf("isolated: %+v, %v", tgt, err)
	} else {
		stop()
	}
}

// TestNetPolicies: the two guests' policies differ only by "advisory
// net;" (the guest without the gate cannot enforce net rules, and a VM
// refuses a policy it cannot enforce), and both compile.
func TestNetPolicies(t *testing.T) {
	gated := netPolicyFor(netTarget{addr: "10.0.2.2", http: 80, discard: 9, echoPort: 7})
	other := netNoGatePolicy(gated)
	rest, ok := strings.CutPrefix(other, "advisory net;")
	if !ok || !strings.HasSuffix(rest, gated) || strings.Count(rest, "\n") != strings.Count(gated, "\n")+1 {
		t.Fatalf("the no-gate policy is not the gated one with \"advisory net;\" first:\n%s", other)
	}
	// What each guest's gates observe: the syscall gate only the calls a
	// policy names; the network gate only in the gated guest.
	syscalls := policy.Observer{Gate: "the syscall gate", AnyOp: true}
	withNet := policy.Coverage{Observers: map[event.Class]policy.Observer{
		event.ClassSyscall: syscalls, event.ClassNet: {Gate: "the network gate", All: true, AnyOp: true}}}
	noNet := policy.Coverage{Observers: map[event.Class]policy.Observer{event.ClassSyscall: syscalls},
		Absent: map[event.Class]string{event.ClassNet: "--net-no-gate"}}
	for _, c := range []struct {
		text string
		cov  policy.Coverage
	}{{gated, withNet}, {other, noNet}} {
		spec, err := policy.Parse("bench-net.policy", []byte(c.text))
		if err != nil {
			t.Fatalf("%v\n%s", err, c.text)
		}
		p, err := policy.Compile(spec)
		if err != nil {
			t.Fatalf("%v\n%s", err, c.text)
		}
		for _, pr := range p.Check(c.cov) {
			if !pr.Advisory {
				t.Errorf("a guest would refuse its policy: %s\n%s", pr, c.text)
			}
		}
	}
}
