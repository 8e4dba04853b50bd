package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func TestBenchMemoryOptions(t *testing.T) {
	valid := func() bench.MemoryOptions {
		return bench.MemoryOptions{Rounds: 3, Settle: 20 * time.Second, Window: 5 * time.Second, Iters: 200, Queries: 5,
			Lookups: 20, IDSInterval: "2s", Accel: "auto"}
	}
	for _, tc := range []struct {
		name    string
		change  func(*bench.MemoryOptions)
		configs string
		want    []string // the configurations chosen
		errText string
	}{
		{name: "the defaults", configs: "none,ids,policy,net,all", want: []string{"none", "ids", "policy", "net", "all"}},
		// "all" is a configuration (everything on), not every configuration.
		{name: "only all", configs: "all", want: []string{"all"}},
		{name: "spaces", configs: "ids, net", want: []string{"ids", "net"}},
		{name: "unknown", configs: "none,gpu", errText: `unknown configuration "gpu"`},
		{name: "twice", configs: "ids,ids", errText: `"ids" twice`},
		{name: "no rounds", change: func(o *bench.MemoryOptions) { o.Rounds = 0 }, configs: "all", errText: "--rounds"},
		{name: "negative settle", change: func(o *bench.MemoryOptions) { o.Settle = -time.Second }, configs: "all", errText: "--settle"},
		{name: "bad interval", change: func(o *bench.MemoryOptions) { o.IDSInterval = "0s" }, configs: "all", errText: "--ids-interval"},
		{name: "bad accel", change: func(o *bench.MemoryOptions) { o.Accel = "hvf" }, configs: "all", errText: "--accel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := valid()
			if tc.change != nil {
				tc.change(&o)
			}
			err := checkMemoryOptions(&o, tc.configs)
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("error %v, want one saying %s", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, o.Configs); diff != "" {
				t.Errorf("configurations (-want +got):\n%s", diff)
			}
		})
	}
}
