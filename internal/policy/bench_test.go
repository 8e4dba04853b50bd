package policy

import (
	"fmt"
	"strings"
	"testing"
)

// bigPolicySource is a 1,000-rule policy of the shape a device maker
// writes: file rules on many paths, a syscall block, the API to root.
func bigPolicySource(rules int) string {
	var b strings.Builder
	b.WriteString("default: allow;\nrole admin: *;\nsubject roles admin when uidEq(0);\nfile default: allow\n")
	for i := 0; i < rules-1; i++ {
		fmt.Fprintf(&b, "  r%d: fileEq(\"/opt/app/%d/config\") and opEq(\"write\", \"unlink\") deny(EROFS)\n", i, i)
	}
	b.WriteString("open default: allow\n  last: fileEq(\"/etc/passwd\") and uidIn(1000, 59999) deny(EPERM)\n")
	return b.String()
}

// BenchmarkSnapshot1000 is the compile half of 'policy load' of a
// 1,000-rule policy: parse, compile, needs, digest. (The plan and apply
// half runs against a live kernel: 'gatevisor bench syscalls' times the
// whole load.)
func BenchmarkSnapshot1000(b *testing.B) {
	src := []byte(bigPolicySource(1000))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewSnapshot("big.policy", src, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheck1000 is the coverage check of that policy.
func BenchmarkCheck1000(b *testing.B) {
	s, err := NewSnapshot("big.policy", []byte(bigPolicySource(1000)), nil)
	if err != nil {
		b.Fatal(err)
	}
	cov := testCoverage(true)
	b.ReportAllocs()
	for b.Loop() {
		if p := s.Policy.Check(cov); len(p) != 0 {
			b.Fatal(p)
		}
	}
}
