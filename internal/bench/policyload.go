package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/policy"
)

// PolicyLoad is the policy-load measurement of the syscall benchmark.
type PolicyLoad struct {
	Rules         int     `json:"rules"`
	Loads         int     `json:"loads"`
	MedianMillis  float64 `json:"median_ms"`
	MinMillis     float64 `json:"min_ms"`
	MaxMillis     float64 `json:"max_ms"`
	CompileMillis float64 `json:"compile_median_ms"`
}

// policyFile is a policy as the benchmark loads it: where it is, for its
// includes, and its text.
type policyFile struct {
	path, source string
}

// bigPolicy is a policy of rules rules of the shape a device maker writes:
// file rules on many paths and a syscall block, each rule its own path.
func bigPolicy(rules int) string {
	var b strings.Builder
	b.WriteString(openPolicy)
	b.WriteString("file default: allow\n")
	for i := 0; i < rules-1; i++ {
		fmt.Fprintf(&b, "  r%d: fileEq(\"/opt/app/%d/config\") and opEq(\"write\", \"unlink\") deny(EROFS)\n", i, i)
	}
	b.WriteString("open default: allow\n  last: fileEq(\"/etc/passwd\") and uidIn(1000, 59999) deny(EPERM)\n")
	return b.String()
}

// timeLoads times loads through the API of a generated policy of rules
// rules (and its compile alone), ending with base back in force.
func timeLoads(ctx context.Context, c *apiclient.Client, dir string, rules, loads int, base policyFile) (*PolicyLoad, error) {
	big := policyFile{path: filepath.Join(dir, "big.policy"), source: bigPolicy(rules)}
	if err := os.WriteFile(big.path, []byte(big.source), 0o644); err != nil {
		return nil, err
	}
	var ms, cms []float64
	for range loads {
		t0 := time.Now()
		if _, err := policy.NewSnapshot("big.policy", []byte(big.source), nil); err != nil {
			return nil, err
		}
		cms = append(cms, millisSince(t0))
		// Alternate with base, so that every load changes the traps.
		t0 = time.Now()
		if _, err := c.LoadPolicy(ctx, api.PolicyRequest{Path: big.path, Source: big.source}); err != nil {
			return nil, fmt.Errorf("load the %d-rule policy: %w", rules, err)
		}
		ms = append(ms, millisSince(t0))
		if _, err := c.LoadPolicy(ctx, api.PolicyRequest{Path: base.path, Source: base.source}); err != nil {
			return nil, err
		}
	}
	return &PolicyLoad{Rules: rules, Loads: loads, MedianMillis: Median(ms), MinMillis: slices.Min(ms), MaxMillis: slices.Max(ms), CompileMillis: Median(cms)}, nil
}

// millisSince is the time since t0 in ms, to the µs.
func millisSince(t0 time.Time) float64 { return float64(time.Since(t0).Microseconds()) / 1000 }
