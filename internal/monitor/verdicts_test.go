package monitor

import (
	"maps"
	"testing"

	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// TestVerdictCountsCrossAHandover: the counts a monitor hands over come
// back the same in the one that replaces it, added to its own.
func TestVerdictCountsCrossAHandover(t *testing.T) {
	var old verdictCounts
	for _, v := range []policy.Verdict{policy.VerdictAllow, policy.VerdictDeny, policy.VerdictDeny, policy.VerdictKill} {
		old.add(secserver.Decision{Verdict: v})
	}
	var nw verdictCounts
	nw.restore(old.snapshot())
	nw.restore(map[string]uint64{"no-such-verdict": 7})
	if got, want := nw.snapshot(), old.snapshot(); !maps.Equal(got, want) {
		t.Fatalf("restored %v, want %v", got, want)
	}
	nw.add(secserver.Decision{Verdict: policy.VerdictDeny})
	if got := nw.snapshot()[policy.VerdictDeny.String()]; got != 3 {
		t.Fatalf("deny after one more: %d, want 3", got)
	}
}
