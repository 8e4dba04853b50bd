package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestPercentiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want Percentiles
	}{
		{"none", nil, Percentiles{}},
		{"one", []float64{7}, Percentiles{N: 1, P50: 7, P90: 7, Max: 7}},
		// p90 by the nearest rank below: the 10th of 10 is s[9].
		{"ten, unsorted", []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5}, Percentiles{N: 10, P50: 5.5, P90: 10, Max: 10}},
		// 20 samples: s[18], the 19th.
		{"twenty", seqFloats(20), Percentiles{N: 20, P50: 10.5, P90: 19, Max: 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, percentiles(tc.in)); diff != "" {
				t.Errorf("percentiles(%v) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

// seqFloats returns n, n-1, ..., 1.
func seqFloats(n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = float64(n - i)
	}
	return v
}

func TestParseProcgap(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    gapRun
		wantErr bool
	}{
		{"gaps", "procgap1 window_ns=2000000000 reads=900 over=3 kept=3 threshold_ns=20000\n25000\n13000000\n21000\n",
			gapRun{windowNs: 2e9, reads: 900, over: 3, thresholdNs: 20000, gaps: []int64{25000, 13000000, 21000}}, false},
		{"none", "procgap1 window_ns=5 reads=1 over=0 kept=0 threshold_ns=20000\n",
			gapRun{windowNs: 5, reads: 1, thresholdNs: 20000, gaps: []int64{}}, false},
		{"kept fewer than seen", "procgap1 window_ns=2000000000 reads=9 over=5 kept=1 threshold_ns=1\n2\n",
			gapRun{windowNs: 2e9, reads: 9, over: 5, thresholdNs: 1, gaps: []int64{2}}, false},
		{"empty", "", gapRun{}, true},
		{"another program", "gvflood1 mode=tcp\n", gapRun{}, true},
		{"fields out of order", "procgap1 reads=900 window_ns=2000000000 over=0 kept=0 threshold_ns=20000\n", gapRun{}, true},
		{"negative", "procgap1 window_ns=2000000000 reads=-1 over=0 kept=0 threshold_ns=20000\n", gapRun{}, true},
		{"zero window", "procgap1 window_ns=0 reads=0 over=0 kept=0 threshold_ns=20000\n", gapRun{}, true},
		{"a line missing", "procgap1 window_ns=2000000000 reads=9 over=2 kept=2 threshold_ns=20000\n25000\n", gapRun{}, true},
		{"a line too many", "procgap1 window_ns=2000000000 reads=9 over=1 kept=1 threshold_ns=20000\n25000\n25000\n", gapRun{}, true},
		{"kept more than seen", "procgap1 window_ns=2000000000 reads=9 over=1 kept=2 threshold_ns=20000\n25000\n25000\n", gapRun{}, true},
		{"kept more than procgap can", "procgap1 window_ns=2000000000 reads=9 over=200000 kept=100001 threshold_ns=20000\n", gapRun{}, true},
		{"gap under the threshold", "procgap1 window_ns=2000000000 reads=9 over=1 kept=1 threshold_ns=20000\n19999\n", gapRun{}, true},
		{"gap longer than the window", "procgap1 window_ns=2000000000 reads=9 over=1 kept=1 threshold_ns=20000\n2000000001\n", gapRun{}, true},
		{"not a number", "procgap1 window_ns=2000000000 reads=9 over=1 kept=1 threshold_ns=20000\n25000 ns\n", gapRun{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcgap([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseProcgap(%q): %v, want error %v", tc.in, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(gapRun{}), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("parseProcgap(%q) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

// FuzzParseProcgap: the guest writes procgap's output; whatever it
// writes, the parser returns an error or gaps that are within the
// threshold and the window, no more than procgap can keep or said it saw,
// and never panics.
func FuzzParseProcgap(f *testing.F) {
	for _, s := range []string{
		"procgap1 window_ns=2000000000 reads=900 over=3 kept=3 threshold_ns=20000\n25000\n13000000\n21000\n",
		"procgap1 window_ns=5 reads=1 over=0 kept=0 threshold_ns=20000\n",
		"procgap1 window_ns=2000000000 reads=9 over=5 kept=1 threshold_ns=1\n2\n",
		"procgap1 window_ns=1 reads=1 over=1 kept=1 threshold_ns=0\n-1\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, out []byte) {
		run, err := parseProcgap(out)
		if err != nil {
			return
		}
		if len(run.gaps) > maxGapLines || int64(len(run.gaps)) > run.over || run.windowNs <= 0 || run.reads < 0 || run.thresholdNs < 0 {
			t.Fatalf("accepted %d gaps, %+v", len(run.gaps), run)
		}
		for _, g := range run.gaps {
			if g <= run.thresholdNs || g > run.windowNs {
				t.Fatalf("accepted gap %d (threshold %d, window %d)", g, run.thresholdNs, run.windowNs)
			}
		}
		w := gapStats(run, 3)
		if w.GapMicros.N != len(run.gaps) || w.StolenMillis < 0 || w.TopMicros.N > 3 {
			t.Fatalf("stats %+v of %+v", w, run)
		}
	})
}

func TestGapStats(t *testing.T) {
	// Eight gaps (µs 21, 22, 23, 24, 25, 30, 12000, 15000), two of them
	// the operations'; ten seen in all.
	run := gapRun{windowNs: 4e9, reads: 1000, over: 10, thresholdNs: 20000,
		gaps: []int64{30000, 21000, 12000000, 22000, 23000, 15000000, 24000, 25000}}
	want := GapWindow{
		WindowSeconds: 4, Reads: 1000, Interruptions: 10, Truncated: true,
		GapMicros: Percentiles{N: 8, P50: 24.5, P90: 15000, Max: 15000},
		TopK:      2, TopMicros: Percentiles{N: 2, P50: 13500, P90: 15000, Max: 15000},
		StolenMillis: 27.145,
	}
	if diff := cmp.Diff(want, gapStats(run, 2), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("gapStats (-want +got):\n%s", diff)
	}
	if run.gaps[0] != 30000 {
		t.Errorf("gapStats reordered its input: %v", run.gaps)
	}
	// More operations than gaps: every gap is among the longest.
	if got := gapStats(run, 20).TopMicros; got.N != 8 || got.Max != 15000 {
		t.Errorf("gapStats(run, 20).TopMicros = %+v, want all 8", got)
	}
	if got := gapStats(gapRun{windowNs: 1}, 4); got.GapMicros != (Percentiles{}) || got.TopMicros != (Percentiles{}) || got.Truncated {
		t.Errorf("no gaps: %+v", got)
	}
}

func TestExcessPerOp(t *testing.T) {
	idle := GapWindow{WindowSeconds: 10, StolenMillis: 50}
	for _, tc := range []struct {
		name string
		w    GapWindow
		want float64
	}{
		// Twice idle's window: 100 ms is idle's share.
		{"longer window", GapWindow{Operations: 40, WindowSeconds: 20, StolenMillis: 500}, 10},
		{"as idle", GapWindow{Operations: 4, WindowSeconds: 10, StolenMillis: 50}, 0},
		{"less than idle", GapWindow{Operations: 5, WindowSeconds: 10, StolenMillis: 40}, -2},
		{"no operations", GapWindow{WindowSeconds: 10, StolenMillis: 500}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := excessPerOp(tc.w, idle); got != tc.want {
				t.Errorf("excessPerOp = %v, want %v", got, tc.want)
			}
		})
	}
	if got := excessPerOp(GapWindow{Operations: 1, StolenMillis: 5}, GapWindow{}); got != 0 {
		t.Errorf("against an empty idle window: %v, want 0", got)
	}
}

func TestSplitEven(t *testing.T) {
	for _, tc := range []struct {
		n, parts int
		want     []int
	}{
		{20, 4, []int{5, 5, 5, 5}},
		{7, 4, []int{2, 2, 2, 1}},
		{3, 3, []int{1, 1, 1}},
		{5, 1, []int{5}},
		{5, 0, nil},
	} {
		if diff := cmp.Diff(tc.want, splitEven(tc.n, tc.parts)); diff != "" {
			t.Errorf("splitEven(%d, %d) (-want +got):\n%s", tc.n, tc.parts, diff)
		}
	}
}

func TestGapRunAdd(t *testing.T) {
	a := gapRun{windowNs: 10, reads: 100, over: 3, thresholdNs: 1, gaps: make([]int64, 2, 8)}
	a.gaps[0], a.gaps[1] = 4, 5
	b := gapRun{windowNs: 20, reads: 50, over: 1, thresholdNs: 1, gaps: []int64{6}}
	sum := a.add(b)
	want := gapRun{windowNs: 30, reads: 150, over: 4, thresholdNs: 1, gaps: []int64{4, 5, 6}}
	if diff := cmp.Diff(want, sum, cmp.AllowUnexported(gapRun{})); diff != "" {
		t.Errorf("add (-want +got):\n%s", diff)
	}
	// a's spare capacity is not written through.
	_ = a.add(gapRun{gaps: []int64{9}})
	if sum.gaps[2] != 6 {
		t.Errorf("a second add overwrote the first's gaps: %v", sum.gaps)
	}
	if diff := cmp.Diff(want, (gapRun{}).add(want), cmp.AllowUnexported(gapRun{})); diff != "" {
		t.Errorf("zero.add (-want +got):\n%s", diff)
	}
}

// TestProcgapProgram builds benchdata/procgap.c as the benchmark does,
// checks that it compiles without warnings, refuses bad arguments, spins
// until killed, and that what its gaps mode writes on this host is what
// parseProcgap reads.
func TestProcgapProgram(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc: install gcc and libc6-dev (scripts/install-deps)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "procgap.c")
	if err := os.WriteFile(src, procgapSource, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", src).CombinedOutput(); err != nil {
		t.Fatalf("gcc -Wall -Wextra -Werror: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := buildStatic(ctx, dir, "procgap", procgapSource)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "gaps.out")
	for _, args := range [][]string{
		{}, {"nope"}, {"spin", "1"}, {"gaps", "0", "1", "1"}, {"gaps", "-1", "1", "1", out}, {"gaps", "0", "0", "1", out},
		{"gaps", "0", "600001", "1", out}, {"gaps", "0", "1", "0", out}, {"gaps", "0", "1x", "1", out},
	} {
		err := exec.CommandContext(ctx, bin, args...).Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("procgap %q: %v, want exit status 2", args, err)
		}
	}
	spin := exec.CommandContext(ctx, bin, "spin")
	if err := spin.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- spin.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("procgap spin ended by itself: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	spin.Process.Kill()
	<-done
	if err := exec.CommandContext(ctx, bin, "gaps", "50", "200", "20000", out).Run(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("%s.tmp is left: %v", out, err)
	}
	run, err := parseProcgap(b)
	if err != nil {
		t.Fatalf("%v; output:\n%s", err, b)
	}
	if run.windowNs < 200e6 || run.windowNs > 2e9 || run.reads < 1000 || run.thresholdNs != 20000 {
		t.Errorf("procgap gaps 50 200 20000: %+v", run)
	}
}

// TestProcReportText renders a report and checks its rows.
func TestProcReportText(t *testing.T) {
	times := ProcActionTimes{CommandMillis: Percentiles{N: 2, P50: 30, P90: 40, Max: 40}, CallMicros: Percentiles{N: 2, P50: 4000, P90: 5000, Max: 5000},
		SeenMillis: Percentiles{N: 2, P50: 32, P90: 42, Max: 42}, PeerSeenMillis: Percentiles{N: 2, P50: 120, P90: 200, Max: 200}, Ratio: 32.0 / 120}
	rep := &ProcReport{Accel: "tcg", CPUs: 1, Rounds: 2, HostCPUs: 2, LoadAvg: [2]string{"1.00 1.00 1.00", "2.00 1.00 1.00"},
		Target: "procgap spin", Observation: "ids ps", Stop: times, Cont: times, GapThresholdMicros: 20, GapTarget: "sleep", GapCycles: 2, GapSpacing: "300ms",
		Gaps: []GapWindow{
			{Name: "idle", Load: "nothing", WindowSeconds: 6.4, Interruptions: 900, TopK: 4, GapMicros: Percentiles{P50: 30, P90: 90, Max: 2500}, TopMicros: Percentiles{P50: 1500, Max: 2500}, StolenMillis: 80},
			{Name: "gatevisor", Load: "proc stop, proc cont", Operations: 4, OpMillis: Percentiles{N: 4, P50: 31.25}, WindowSeconds: 6.4, Interruptions: 950, Truncated: true, TopK: 4,
				GapMicros: Percentiles{P50: 31, P90: 95, Max: 16000}, TopMicros: Percentiles{P50: 13000, Max: 16000}, StolenMillis: 150, ExcessPerOpMillis: 17.5},
		}}
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"process actions from below (issue 13): tcg, 1 vCPU, 2 rounds",
		"  command round trip, ms                 30.00     40.00     40.00\n",
		"    kernel call (answer), µs           4000.00   5000.00   5000.00\n",
		"gatevisor / in-guest, medians to T seen: 0.27\n",
		"gatevisor / in-guest, medians to running seen: 0.27\n",
		"the 4 longest of each load",
		"  idle              0             6.40      900       30       90     2500     1500     2500      80.0           \n",
		"  gatevisor*        4     31.2    6.40      950       31       95    16000    13000    16000     150.0   +17.5 ms\n",
		"procgap kept only the first 100000",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}
