package ids

import (
	"fmt"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// CheckCPUHog is a process that kept a CPU busy for a whole window: a DoS
// (a fork or CPU bomb) or a miner, seen from the kernel's own accounting.
const CheckCPUHog = "cpu-hog"

// CheckNames are the checks whose findings the IDS reports (ids check and
// the continuous scan), sorted.
func CheckNames() []string {
	return []string{CheckCommExe, CheckCorrupt, CheckCPUHog, CheckCredentials, CheckFtrace, CheckGuestView, CheckHiddenModule,
		CheckHiddenProcess, CheckHiddenSocket, CheckIDT, CheckInline, CheckKprobe, CheckOpsTables, CheckDispatch, CheckSyscallTable,
		CheckTaskFlags, CheckUnexpectedRoot}
}

// Limits of the CPU-hog detector.
const (
	// MaxHogWindow bounds the window (and so the samples kept).
	MaxHogWindow = time.Hour
	// maxHogSamples bounds the samples kept, whatever the scan interval.
	maxHogSamples = 4096
)

// HogDetector finds processes whose CPU time over the last Window is at
// least Threshold of one CPU, from successive scans' process listings: the
// scheduler's own sum_exec_runtime of the whole thread group (live and
// exited threads), which a process cannot hide from without hiding from
// the task list itself. It keeps one map of runtimes per scan inside the
// window; not safe for concurrent use.
type HogDetector struct {
	Threshold float64       // fraction of one CPU, e.g. 0.9; 0 disables
	Window    time.Duration // how long the use must last
	samples   []hogSample   // oldest first
}

type hogSample struct {
	at      time.Time
	runtime map[string]uint64 // GroupRuntime by taskKey
}

// Observe records a scan's processes taken at now and returns a finding
// for every process that used at least Threshold of a CPU over the whole
// window, and the check's status (it has run once a sample is a window old).
func (h *HogDetector) Observe(now time.Time, procs []linux.Task) ([]Finding, CheckStatus) {
	st := CheckStatus{Name: CheckCPUHog}
	if h.Threshold <= 0 || h.Window <= 0 {
		st.NotApplicable = "off (run --cpu-hog-threshold)"
		return nil, st
	}
	cur := hogSample{at: now, runtime: make(map[string]uint64, len(procs))}
	byKey := make(map[string]linux.Task, len(procs))
	for _, p := range procs {
		if p.KernelThread {
			continue
		}
		k := taskKey(p)
		cur.runtime[k] = p.GroupRuntime
		byKey[k] = p
	}
	// The baseline: the newest sample at least a window old; older ones
	// are dropped.
	base := -1
	for i, s := range h.samples {
		if now.Sub(s.at) >= h.Window {
			base = i
		}
	}
	if base > 0 {
		h.samples = h.samples[base:]
		base = 0
	}
	h.samples = append(h.samples, cur)
	if len(h.samples) > maxHogSamples {
		h.samples = h.samples[len(h.samples)-maxHogSamples:]
	}
	if base < 0 {
		st.NotApplicable = fmt.Sprintf("waiting for a whole window (%v) of samples", h.Window)
		return nil, st
	}
	st.Ran = true
	old := h.samples[base]
	wall := now.Sub(old.at)
	var out []Finding
	for k, rt := range cur.runtime {
		was, ok := old.runtime[k]
		if !ok || rt < was {
			continue // new since the baseline, or not the same process
		}
		share := float64(rt-was) / float64(wall.Nanoseconds())
		if share < h.Threshold {
			continue
		}
		p := byKey[k]
		out = append(out, Finding{Check: CheckCPUHog, Severity: SeverityWarning, PID: p.PID, Name: p.Comm,
			Summary: fmt.Sprintf("process %d (%s, %s) used %.0f%% of a CPU over the last %v (threshold %.0f%%)",
				p.PID, p.Comm, p.Exe, 100*share, wall.Round(100*time.Millisecond), 100*h.Threshold)})
	}
	st.Findings = len(out)
	return out, st
}
