package cli

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestMedianCI(t *testing.T) {
	seq := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = float64(n - i) // descending: medianCI sorts
		}
		return v
	}
	for _, tc := range []struct {
		name string
		in   []float64
		want medianInterval
	}{
		{"none", nil, medianInterval{}},
		{"one", []float64{3}, medianInterval{Median: 3, Lo: 3, Hi: 3, Confidence: 0}},
		// Fewer than 6 samples: [min, max], at 1-2/2^5.
		{"five", seq(5), medianInterval{Median: 3, Lo: 1, Hi: 5, Confidence: 1 - 2.0/32}},
		// 6 samples: [min, max] at 96.9%.
		{"six", seq(6), medianInterval{Median: 3.5, Lo: 1, Hi: 6, Confidence: 1 - 2.0/64}},
		// 10: the 2nd and 9th, at 1-2*11/1024.
		{"ten", seq(10), medianInterval{Median: 5.5, Lo: 2, Hi: 9, Confidence: 1 - 22.0/1024}},
		// 20: the 6th and 15th (P(X<=5) = 0.0207).
		{"twenty", seq(20), medianInterval{Median: 10.5, Lo: 6, Hi: 15, Confidence: 1 - 2*21700.0/1048576}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, medianCI(tc.in), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
				t.Errorf("medianCI (-want +got):\n%s", diff)
			}
		})
	}
	if math.IsNaN(medianCI([]float64{1, 2}).Confidence) {
		t.Error("NaN confidence")
	}
}
