package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/ids"
)

// IDSCheckReport is what timing `ids check` measured: the whole check's
// and each check's median time over the rounds (the monitor's own times),
// and the monitor's CPU with and without the continuous scan.
type IDSCheckReport struct {
	Rounds       int     `json:"rounds"`
	MedianMicros float64 `json:"median_us"`
	// ViewsMicros is the median time of the kernel views' reading the
	// checks share; MemoryMicros the median of that plus every check but
	// the guest view (which waits on the guest, concurrently).
	ViewsMicros  float64            `json:"median_views_us"`
	MemoryMicros float64            `json:"median_memory_us"`
	ByCheck      map[string]float64 `json:"median_us_by_check"`
	// NotRun names the checks that did not run or did not apply.
	NotRun []string `json:"not_run,omitempty"`
	// Monitor CPU (per cent of one host core) over Window on a guest with
	// the same processes: idle, and scanning every ScanInterval.
	Window             string  `json:"window"`
	ScanInterval       string  `json:"scan_interval"`
	MonitorCPUIdle     float64 `json:"monitor_cpu_idle_percent"`
	MonitorCPUScanning float64 `json:"monitor_cpu_scanning_percent"`
}

// timeCheck runs `ids check` rounds times from the live mapping. A finding
// fails the benchmark: the guest is a clean one, and a check that finds
// something on it is a false positive to fix, not a time to report.
func timeCheck(ctx context.Context, c *apiclient.Client, rounds int) (*IDSCheckReport, error) {
	r := &IDSCheckReport{Rounds: rounds, ByCheck: map[string]float64{}}
	var total, views, memory []float64
	by := map[string][]float64{}
	for range rounds {
		res, err := c.IDS(ctx, "check", "ram")
		if err != nil {
			return nil, fmt.Errorf("ids check: %w", err)
		}
		var rep ids.Report
		if err := json.Unmarshal(res.Result, &rep); err != nil {
			return nil, err
		}
		if len(rep.Findings) > 0 {
			return nil, fmt.Errorf("ids check found %d things on the clean benchmark guest, the first: %s", len(rep.Findings), rep.Findings[0].Summary)
		}
		total = append(total, float64(res.ElapsedMicros))
		views = append(views, float64(rep.ViewsMicros))
		mem := float64(rep.ViewsMicros)
		r.NotRun = r.NotRun[:0]
		for _, st := range rep.Checks {
			by[st.Name] = append(by[st.Name], float64(st.ElapsedMicros))
			if st.Name != ids.CheckGuestView {
				mem += float64(st.ElapsedMicros)
			}
			if !st.Ran {
				r.NotRun = append(r.NotRun, st.Name)
			}
		}
		memory = append(memory, mem)
	}
	r.MedianMicros = Median(total)
	r.ViewsMicros = Median(views)
	r.MemoryMicros = Median(memory)
	for name, v := range by {
		r.ByCheck[name] = Median(v)
	}
	return r, nil
}

// monitorCPU returns the monitor's CPU over window, in per cent of one
// core (its threads' schedstat run time).
func monitorCPU(ctx context.Context, c *apiclient.Client, window time.Duration) (float64, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return 0, err
	}
	t0, n0 := time.Now(), cpuNanos(st.MonitorPID)
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(window):
	}
	return float64(cpuNanos(st.MonitorPID)-n0) / float64(time.Since(t0).Nanoseconds()) * 100, nil
}

// scanCost boots a second guest like the first but scanning every
// interval, starts the same processes, and measures the monitor's CPU
// over window, after one scan has profiled the kernel.
func scanCost(ctx context.Context, env Env, procs int, interval, window time.Duration, r *IDSCheckReport, kitArgs ...string) error {
	c, stop, err := env.bootVM(ctx, fmt.Sprintf("bench-ids-scan-%d", os.Getpid()), append([]string{"--mem", "512M", "--ids-interval", interval.String()}, kitArgs...)...)
	if err != nil {
		return err
	}
	defer stop()
	if err := startSleepers(ctx, c, procs); err != nil {
		return err
	}
	time.Sleep(3 * interval) // the first scans build the baseline
	r.ScanInterval, r.Window = interval.String(), window.String()
	r.MonitorCPUScanning, err = monitorCPU(ctx, c, window)
	return err
}

// sortedChecks returns the report's check names, slowest first.
func (r *IDSCheckReport) sortedChecks() []string {
	var names []string
	for n := range r.ByCheck {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return r.ByCheck[names[i]] > r.ByCheck[names[j]] })
	return names
}
