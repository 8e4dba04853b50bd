package audit

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// BenchmarkAppend measures Append of a typical decision record (about 300
// bytes). It uses only the API the log had before the hash chain, so the
// same file runs against the previous version for an A/B comparison (see
// the package's commit history and docs/benchmarks.md). SyncEvery includes
// an fsync per record: run it with TMPDIR on the disk the log will use.
func BenchmarkAppend(b *testing.B) {
	for _, c := range []struct {
		name string
		sync SyncPolicy
	}{{"SyncNone", SyncNone}, {"SyncEvery", SyncEvery}} {
		b.Run(c.name, func(b *testing.B) {
			l, err := Open(filepath.Join(b.TempDir(), "audit.log"), Options{MaxSize: -1, Sync: c.sync})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			r := &Record{Time: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Verdict: "deny", Errno: 13, Rule: "no_shadow",
				Reason: "file read /etc/shadow denied by no_shadow", PolicySeq: 1,
				Event: event.Event{Class: event.ClassFile, Op: "read", Path: "/etc/shadow",
					Subject: event.Subject{PID: 1234, PPID: 1, Comm: "cat", Exe: "/bin/cat", UID: 1000, GID: 1000}}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := l.Append(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
