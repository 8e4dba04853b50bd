package monitor

import "testing"

func TestKernelInGFPRange(t *testing.T) {
	for _, tc := range []struct {
		release string
		ok      bool
	}{
		{"6.1.0-57-amd64", true}, {"5.0.0", true}, {"6.12.9+bpo-amd64", true}, {"5.10.0-30-amd64", true},
		{"4.19.0-27-amd64", false}, {"4.4.0", false}, {"6.13.0", false}, {"3.16.0-6-amd64", false}, {"", false}, {"linux", false},
	} {
		if err := kernelInGFPRange(tc.release); (err == nil) != tc.ok {
			t.Errorf("kernelInGFPRange(%q) = %v; want ok %v", tc.release, err, tc.ok)
		}
	}
}
