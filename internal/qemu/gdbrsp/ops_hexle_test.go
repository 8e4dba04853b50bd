package gdbrsp

import "testing"

// TestHexLE checks hexLE against decodeHex and leUint, which it replaces in
// the 'g' reply's decoding.
func TestHexLE(t *testing.T) {
	for _, s := range []string{"", "00", "ff", "0102", "efbeadde", "0123456789abcdef", "FFFFFFFFFFFFFFFF", "1", "zz", "0g", "0123456789abcdef00"} {
		want, werr := decodeHex([]byte(s))
		got, err := hexLE([]byte(s))
		if werr != nil || len(want) > 8 {
			if err == nil {
				t.Errorf("hexLE(%q) = %#x, want an error", s, got)
			}
			continue
		}
		if err != nil || got != leUint(want) {
			t.Errorf("hexLE(%q) = %#x, %v; want %#x", s, got, err, leUint(want))
		}
	}
}

// FuzzHexLE checks hexLE against decodeHex and leUint on any input.
func FuzzHexLE(f *testing.F) {
	for _, s := range []string{"", "00", "efbeadde", "0123456789abcdef", "0123456789abcdef00", "x0", "f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, werr := decodeHex([]byte(s))
		got, err := hexLE([]byte(s))
		if werr != nil || len(want) > 8 {
			if err == nil {
				t.Fatalf("hexLE(%q) = %#x, want an error", s, got)
			}
			return
		}
		if err != nil || got != leUint(want) {
			t.Fatalf("hexLE(%q) = %#x, %v; want %#x", s, got, err, leUint(want))
		}
	})
}
