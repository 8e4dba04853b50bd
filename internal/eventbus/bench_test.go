package eventbus

import (
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkPublishFlood publishes a flood of identical decisions (one
// process's denied flows, as a guest measured at ~385 bytes each) on the
// real clock, with aggregation (the defaults) and without it (every point
// a line), into a rotating events.jsonl. It reports points published per
// second and bytes written to the file per point.
//
//	go test -run '^$' -bench PublishFlood -benchtime 2s ./internal/eventbus/
func BenchmarkPublishFlood(b *testing.B) {
	for _, bc := range []struct {
		name string
		opt  Options
	}{
		{"aggregated", Options{}},
		{"individual", Options{PerKey: 1 << 30, Budget: 1 << 30}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opt := bc.opt
			opt.VM, opt.Path = "cam", filepath.Join(b.TempDir(), "events.jsonl")
			bus, err := Open(opt)
			if err != nil {
				b.Fatal(err)
			}
			p := netDeny(42, "10.0.2.3:80", time.Now())
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				bus.Publish(p)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			bus.Close() // writes what is pending
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "points/s")
			b.ReportMetric(float64(bus.log.written)/float64(b.N), "B/point")
			b.ReportMetric(float64(bus.Stats().Seq), "lines")
		})
	}
}
