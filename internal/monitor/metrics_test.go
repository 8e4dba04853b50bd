package monitor

import "testing"

func TestProcStatCPUSeconds(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want float64
	}{
		{"4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 100 1000 200", 3},
		{"7 (a) b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0", 0.03},
		{"7 (short) R 1", 0},
		{"garbage", 0},
		{"7 (x) R 1 7 7 0 -1 0 0 0 0 0 x y 0 0", 0},
	} {
		if got := procStatCPUSeconds(tc.stat); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.stat, got, tc.want)
		}
	}
}
