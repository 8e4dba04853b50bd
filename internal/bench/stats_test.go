package bench

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want float64
	}{
		{"none", nil, 0},
		{"one", []float64{4}, 4},
		{"odd, unsorted", []float64{9, 1, 5}, 5},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.in...)
			if got := Median(tc.in); got != tc.want {
				t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
			}
			if diff := cmp.Diff(in, tc.in); diff != "" {
				t.Errorf("Median changed its input (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMedianCI(t *testing.T) {
	seq := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = float64(n - i) // descending: MedianCI sorts
		}
		return v
	}
	for _, tc := range []struct {
		name string
		in   []float64
		want MedianInterval
	}{
		{"none", nil, MedianInterval{}},
		{"one", []float64{3}, MedianInterval{Median: 3, Lo: 3, Hi: 3, Confidence: 0}},
		// Fewer than 6 samples: [min, max], at 1-2/2^5.
		{"five", seq(5), MedianInterval{Median: 3, Lo: 1, Hi: 5, Confidence: 1 - 2.0/32}},
		// 6 samples: [min, max] at 96.9%.
		{"six", seq(6), MedianInterval{Median: 3.5, Lo: 1, Hi: 6, Confidence: 1 - 2.0/64}},
		// 10: the 2nd and 9th, at 1-2*11/1024.
		{"ten", seq(10), MedianInterval{Median: 5.5, Lo: 2, Hi: 9, Confidence: 1 - 22.0/1024}},
		// 20: the 6th and 15th (P(X<=5) = 0.0207).
		{"twenty", seq(20), MedianInterval{Median: 10.5, Lo: 6, Hi: 15, Confidence: 1 - 2*21700.0/1048576}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, MedianCI(tc.in), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
				t.Errorf("MedianCI (-want +got):\n%s", diff)
			}
		})
	}
	if math.IsNaN(MedianCI([]float64{1, 2}).Confidence) {
		t.Error("NaN confidence")
	}
}

func TestPairedDiff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		xs, base []float64
		want     []float64
	}{
		{"none", nil, nil, nil},
		// Per round: +10%, -50%, +100%: median, min, max.
		{"three rounds", []float64{1.1, 1, 4}, []float64{1, 2, 2}, []float64{10, -50, 100}},
		// A round the baseline did not run, or ran in no time, is left out.
		{"uneven and zero", []float64{2, 3, 5}, []float64{0, 2}, []float64{50, 50, 50}},
		{"only zero baselines", []float64{1}, []float64{0}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, pairedDiff(tc.xs, tc.base), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
				t.Errorf("pairedDiff(%v, %v) (-want +got):\n%s", tc.xs, tc.base, diff)
			}
		})
	}
}

func TestGoal(t *testing.T) {
	for _, tc := range []struct {
		conf        float64
		met, missed bool
		want        string
	}{
		{0.89, true, false, "too few rounds for a verdict"},
		{0.9, true, false, "met"},
		{0.96, false, true, "missed"},
		{0.96, false, false, "not resolved at this noise"},
	} {
		if got := goal(tc.conf, tc.met, tc.missed); got != tc.want {
			t.Errorf("goal(%v, %v, %v) = %q, want %q", tc.conf, tc.met, tc.missed, got, tc.want)
		}
	}
}

func TestOrderStatistics(t *testing.T) {
	if lo, hi := minMax(nil); lo != 0 || hi != 0 {
		t.Errorf("minMax(nil) = %v, %v; want 0, 0", lo, hi)
	}
	if lo, hi := minMax([]float64{3, -1, 7}); lo != -1 || hi != 7 {
		t.Errorf("minMax = %v, %v; want -1, 7", lo, hi)
	}
	// The boot report's RSS: the upper middle of an even count.
	if m, x := medianMax([]int64{40, 10, 30, 20}); m != 30 || x != 40 {
		t.Errorf("medianMax = %v, %v; want 30, 40", m, x)
	}
	if m, x := medianMax(nil); m != 0 || x != 0 {
		t.Errorf("medianMax(nil) = %v, %v; want 0, 0", m, x)
	}
	v := make([]float64, 20)
	for i := range v {
		v[i] = float64(20 - i)
	}
	if got := percentile(v, 90); got != 19 {
		t.Errorf("percentile(1..20, 90) = %v, want 19 (the 19th of 20)", got)
	}
	if got := percentile([]float64{5}, 90); got != 5 {
		t.Errorf("percentile of one = %v, want 5", got)
	}
}
