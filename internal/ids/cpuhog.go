package ids

import (
	"fmt"
	"sort"
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
		CheckHiddenProcess, CheckHiddenSocket, CheckIDT, CheckInline, CheckKprobe, CheckLSM, CheckOpsTables, CheckDispatch, CheckSyscallTable,
		CheckTaskFlags, CheckUnexpectedRoot}
}

// Limits of the CPU-hog detector.
const (
	// MaxHogWindow bounds the window.
	MaxHogWindow = time.Hour
	// hogSamples is how many runtime samples each process keeps, taken at
	// least a quarter window apart: two windows of history, whatever the
	// scan interval, so that the memory is bounded by the process count
	// (itself bounded by the task listing) and not by window / interval.
	hogSamples = 8
)

// HogDetector finds processes whose CPU time over the last Window is at
// least Threshold of one CPU, from successive scans' process listings: the
// scheduler's own sum_exec_runtime of the whole thread group (live and
// exited threads), which a process cannot hide from without hiding from
// the task list itself. Not safe for concurrent use.
type HogDetector struct {
	Threshold float64       // fraction of one CPU, e.g. 0.9; 0 disables
	Window    time.Duration // how long the use must last
	procs     map[string]*hogTrack
}

// hogTrack is one process's runtime samples, oldest first.
type hogTrack struct {
	at      [hogSamples]time.Time
	runtime [hogSamples]uint64
	n       int
}

func (t *hogTrack) add(at time.Time, rt uint64) {
	if t.n == hogSamples {
		copy(t.at[:], t.at[1:])
		copy(t.runtime[:], t.runtime[1:])
		t.n--
	}
	t.at[t.n], t.runtime[t.n] = at, rt
	t.n++
}

// Observe records a scan's processes taken at now and returns a finding
// for every process that used at least Threshold of a CPU over the whole
// window, and the check's status (it ran for the processes with a sample
// at least a window old).
func (h *HogDetector) Observe(now time.Time, procs []linux.Task) ([]Finding, CheckStatus) {
	st := CheckStatus{Name: CheckCPUHog}
	if h.Threshold <= 0 || h.Window <= 0 {
		st.NotApplicable = "off (run --cpu-hog-threshold)"
		return nil, st
	}
	if h.procs == nil {
		h.procs = map[string]*hogTrack{}
	}
	spacing := h.Window / 4
	seen := make(map[string]bool, len(procs))
	var out []Finding
	for _, p := range procs {
		if p.KernelThread {
			continue
		}
		k := taskKey(p)
		seen[k] = true
		t := h.procs[k]
		if t == nil {
			t = &hogTrack{}
			h.procs[k] = t
		}
		// The baseline: the newest sample at least a window old.
		var (
			baseAt time.Time
			was    uint64
		)
		for i := 0; i < t.n; i++ {
			if now.Sub(t.at[i]) >= h.Window {
				baseAt, was = t.at[i], t.runtime[i]
			}
		}
		if t.n == 0 || now.Sub(t.at[t.n-1]) >= spacing {
			t.add(now, p.GroupRuntime)
		}
		if baseAt.IsZero() {
			continue
		}
		st.Ran = true
		wall := now.Sub(baseAt)
		if p.GroupRuntime < was || wall <= 0 {
			continue
		}
		share := float64(p.GroupRuntime-was) / float64(wall.Nanoseconds())
		if share < h.Threshold {
			continue
		}
		out = append(out, Finding{Check: CheckCPUHog, Severity: SeverityWarning, PID: p.PID, Name: p.Comm,
			Summary: fmt.Sprintf("process %d (%s, %s) used %.0f%% of a CPU over the last %v (threshold %.0f%%)",
				p.PID, p.Comm, p.Exe, 100*share, wall.Round(100*time.Millisecond), 100*h.Threshold)})
	}
	for k := range h.procs {
		if !seen[k] {
			delete(h.procs, k) // exited
		}
	}
	if !st.Ran {
		st.NotApplicable = fmt.Sprintf("waiting for a whole window (%v) of samples", h.Window)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].PID < out[b].PID })
	st.Findings = len(out)
	return out, st
}
