// Package metrics exposes one VM's state and counters as Prometheus
// metrics (github.com/prometheus/client_golang), and merges the metrics of
// several VMs into one exposition for the host daemon (gatevisor serve).
//
// Most values are read at scrape time from the VM's api.Status, the same
// numbers `gatevisor status` shows (a collector, so the two cannot
// disagree); the latencies the status has no room for — a kernel-gate
// stop, an IDS scan, an audit write — are histograms the monitor observes
// as they happen. Names follow Prometheus' conventions: a gatevisor_
// prefix, base units (seconds, bytes), _total for counters; the only
// labels are the VM's name and small closed sets (gate, verdict, reason,
// check, severity), never a pid, an address or a path.
package metrics

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/gatevisor/gatevisor/internal/api"
)

// Namespace prefixes every metric.
const Namespace = "gatevisor"

// Host is what the monitor reads of its host processes at scrape time.
type Host struct {
	QEMUCPUSeconds  float64 // QEMU's user+system CPU time
	MonitorRSSBytes float64 // the monitor's resident memory
}

// VM is one VM's metrics: a registry holding the status collector and
// the latency histograms.
type VM struct {
	reg *prometheus.Registry
	// TrapSeconds is the monitor's time at a kernel-gate stop (from
	// QEMU's stop reply to the decision enforced; QEMU's stopping and
	// resuming are in the status's StoppedMicros); ScanSeconds an IDS
	// scan; AuditWriteSeconds a durable audit write (fsync included).
	TrapSeconds, ScanSeconds, AuditWriteSeconds prometheus.Histogram
}

// New returns the metrics of VM name, whose status and host figures are
// read at each scrape from status and host.
func New(name string, status func(context.Context) api.Status, host func(api.Status) Host) *VM {
	labels := prometheus.Labels{"vm": name}
	hist := func(sub, n, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub, Name: n, Help: help,
			ConstLabels: labels, Buckets: buckets})
	}
	v := &VM{
		reg: prometheus.NewRegistry(),
		TrapSeconds: hist("kernel_gate", "stop_seconds", "The monitor's time at one kernel-gate stop, from QEMU's stop reply to the decision enforced (QEMU's own stopping and resuming not included: see vm_stopped_seconds_total).",
			prometheus.ExponentialBuckets(25e-6, 2, 14)),
		ScanSeconds: hist("ids", "scan_duration_seconds", "Duration of one continuous IDS scan of the guest.",
			prometheus.ExponentialBuckets(1e-3, 2, 14)),
		AuditWriteSeconds: hist("audit", "write_seconds", "Duration of one durable audit-log write, fsync included.",
			prometheus.ExponentialBuckets(25e-6, 2, 14)),
	}
	v.reg.MustRegister(v.TrapSeconds, v.ScanSeconds, v.AuditWriteSeconds, &collector{vm: name, status: status, host: host})
	return v
}

// Observe records d in h (nil-safe, for a VM without metrics).
func Observe(h prometheus.Histogram, d time.Duration) {
	if h != nil {
		h.Observe(d.Seconds())
	}
}

// WriteText writes the VM's metrics in Prometheus' text exposition format.
func (v *VM) WriteText(w io.Writer) error {
	mfs, err := v.reg.Gather()
	if err != nil {
		return fmt.Errorf("metrics: gather: %w", err)
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return fmt.Errorf("metrics: encode %s: %w", mf.GetName(), err)
		}
	}
	return nil
}

// Registry returns the VM's registry (tests lint it).
func (v *VM) Registry() *prometheus.Registry { return v.reg }

// ContentType is the exposition's HTTP content type.
var ContentType = string(expfmt.NewFormat(expfmt.TypeTextPlain))
