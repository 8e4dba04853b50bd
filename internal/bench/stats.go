package bench

import (
	"math"
	"slices"
	"sort"
)

// Median returns the median of v (the mean of the middle two for an even
// count), 0 for none. v is not changed.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// MedianInterval is a median with a distribution-free confidence interval
// (order statistics of the sample: no assumption about the noise's shape).
type MedianInterval struct {
	Median     float64 `json:"median"`
	Lo         float64 `json:"lo"`
	Hi         float64 `json:"hi"`
	Confidence float64 `json:"confidence"`
}

// MedianCI returns v's median and the narrowest interval [v(k), v(n+1-k)]
// of sorted v that holds the true median with probability >= 95% (by the
// binomial distribution of how many samples fall below it); with fewer
// than 6 samples no such interval exists and it is [min, max] with its
// actual confidence.
func MedianCI(v []float64) MedianInterval {
	n := len(v)
	if n == 0 {
		return MedianInterval{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	// cdf = P(Binomial(n, 1/2) <= j)
	cdf, c := 0.0, 1.0
	k, tail := 1, math.Pow(0.5, float64(n))
	for j := 0; j < n/2; j++ {
		cdf += c * math.Pow(0.5, float64(n))
		c = c * float64(n-j) / float64(j+1)
		if cdf > 0.025 {
			break
		}
		k, tail = j+1, cdf
	}
	return MedianInterval{Median: Median(s), Lo: s[k-1], Hi: s[n-k], Confidence: 1 - 2*tail}
}

// scaled returns xs, each times k.
func scaled(xs []float64, k float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x * k
	}
	return out
}

// pairedDiff returns the median, lowest and highest of the per-round
// differences of xs from base, in percent (rounds where both ran and base
// is positive); nil if there are none.
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
	return []float64{Median(d), slices.Min(d), slices.Max(d)}
}

// goal is the verdict on a goal from a confidence interval: met if it lies
// within the goal, missed if outside, and no verdict from fewer than 5
// rounds (an interval of less than 90%).
func goal(confidence float64, met, missed bool) string {
	switch {
	case confidence < 0.9:
		return "too few rounds for a verdict"
	case met:
		return "met"
	case missed:
		return "missed"
	}
	return "not resolved at this noise"
}

func mapf(v []float64, f func(float64) float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = f(x)
	}
	return out
}

// minMax returns the lowest and highest of v, 0 and 0 for none.
func minMax(v []float64) (float64, float64) {
	if len(v) == 0 {
		return 0, 0
	}
	return slices.Min(v), slices.Max(v)
}

// medianMax returns the median (the upper middle for an even count) and
// the maximum of v, 0 and 0 for none.
func medianMax(v []int64) (int64, int64) {
	if len(v) == 0 {
		return 0, 0
	}
	s := slices.Sorted(slices.Values(v))
	return s[len(s)/2], s[len(s)-1]
}

// percentile returns the p-th percentile (0 < p < 100) of v by the
// nearest rank below, 0 for none.
func percentile(v []float64, p int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	return s[min(len(s)-1, len(s)*p/100)]
}
