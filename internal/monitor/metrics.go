package monitor

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/metrics"
)

// Metrics implements api.VM: the VM's Prometheus metrics (package metrics),
// in the text exposition format.
func (m *Monitor) Metrics(_ context.Context, w io.Writer) error {
	return m.metrics.WriteText(w)
}

// hostFigures reads QEMU's CPU time and the monitor's resident memory from
// /proc at scrape time.
func hostFigures(st api.Status) metrics.Host {
	var h metrics.Host
	if st.QEMUPID > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", st.QEMUPID)); err == nil {
			h.QEMUCPUSeconds = procStatCPUSeconds(string(b))
		}
	}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			if pages, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				h.MonitorRSSBytes = float64(pages) * float64(os.Getpagesize())
			}
		}
	}
	return h
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times (100 on
// every Linux architecture gatevisor runs on).
const clockTicks = 100

// procStatCPUSeconds is utime+stime of a /proc/PID/stat line, in seconds;
// 0 when the line does not parse. The command name, in parentheses, may
// hold spaces and parentheses: fields count from its last ')'.
func procStatCPUSeconds(stat string) float64 {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	// After the name: state is field 3, utime 14 and stime 15.
	if len(f) < 13 {
		return 0
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return float64(u+s) / clockTicks
}

// timedLog is the audit log as the security server writes it, each write's
// latency observed.
type timedLog struct {
	*audit.Log
	m *metrics.VM
}

// Append implements secserver.Sink.
func (l timedLog) Append(r *audit.Record) error {
	start := time.Now()
	err := l.Log.Append(r)
	metrics.Observe(l.m.AuditWriteSeconds, time.Since(start))
	return err
}

// AppendBatch implements secserver.BatchSink.
func (l timedLog) AppendBatch(rs []*audit.Record) error {
	start := time.Now()
	err := l.Log.AppendBatch(rs)
	metrics.Observe(l.m.AuditWriteSeconds, time.Since(start))
	return err
}
