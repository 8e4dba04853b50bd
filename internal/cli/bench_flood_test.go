package cli

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func TestParseFloodScenarios(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{"all", nil, true},
		{"tcp", []string{"tcp"}, true},
		{"open-2cpu, tcp,pin", []string{"open-2cpu", "tcp", "pin"}, true},
		{"tcp,tcp", nil, false},
		{"tcp,", nil, false},
		{"", nil, false},
		{"all,tcp", nil, false},
		{"smurf", nil, false},
	} {
		got, err := parseFloodScenarios(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("parseFloodScenarios(%q): error %v, want ok %v", tc.in, err, tc.ok)
			continue
		}
		if diff := cmp.Diff(tc.want, got); tc.ok && diff != "" {
			t.Errorf("parseFloodScenarios(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestCheckFloodOptions(t *testing.T) {
	good := bench.FloodOptions{Rounds: 3, Seconds: 20, IntervalMillis: 250, Accel: "auto"}
	if err := checkFloodOptions(good); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	for name, change := range map[string]func(o *bench.FloodOptions){
		"no rounds":         func(o *bench.FloodOptions) { o.Rounds = 0 },
		"too many rounds":   func(o *bench.FloodOptions) { o.Rounds = 51 },
		"too short":         func(o *bench.FloodOptions) { o.Seconds = 4 },
		"over 60 s":         func(o *bench.FloodOptions) { o.Seconds = 61 }, // the flood program's limit
		"interval 0":        func(o *bench.FloodOptions) { o.IntervalMillis = 0 },
		"interval too long": func(o *bench.FloodOptions) { o.IntervalMillis = 5001 },
		"accel":             func(o *bench.FloodOptions) { o.Accel = "hvf" },
	} {
		o := good
		change(&o)
		if err := checkFloodOptions(o); err == nil {
			t.Errorf("%s: %+v accepted", name, o)
		}
	}
	for _, edge := range []func(o *bench.FloodOptions){
		func(o *bench.FloodOptions) { o.Rounds, o.Seconds, o.IntervalMillis, o.Accel = 1, 5, 10, "tcg" },
		func(o *bench.FloodOptions) { o.Rounds, o.Seconds, o.IntervalMillis, o.Accel = 50, 60, 5000, "kvm" },
	} {
		o := good
		edge(&o)
		if err := checkFloodOptions(o); err != nil {
			t.Errorf("%+v refused: %v", o, err)
		}
	}
}
