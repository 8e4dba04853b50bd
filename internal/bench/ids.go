package bench

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// IDSReport is what IDS measured.
type IDSReport struct {
	Processes        int     `json:"guest_processes"`
	Rounds           int     `json:"rounds"`
	MedianRAMMicros  float64 `json:"median_ram_us"`
	MedianGDBMicros  float64 `json:"median_gdbstub_us"`
	Ratio            float64 `json:"gdbstub_over_ram"`
	ProfileBuildSecs float64 `json:"profile_build_seconds"`
	ProfileLoadSecs  float64 `json:"profile_load_cached_seconds"`
	ImageSHA256      string  `json:"kernel_image_sha256"`
	Kit              string  `json:"kit,omitempty"`
	// Check is `ids check` on the same guest, and the continuous scan's cost.
	Check *IDSCheckReport `json:"check,omitempty"`
}

// IDSOptions are IDS's parameters.
type IDSOptions struct {
	Procs  int // sleeping processes to start in the guest
	Rounds int // queries per memory source
	// Window is how long the monitor's CPU is measured, idle and then
	// scanning every ScanInterval (a second guest); 0 skips that part.
	Window, ScanInterval time.Duration
	// Kit, when set, is another built kit to boot (a name of kit ls,
	// such as the arm64 one) instead of the default.
	Kit string
}

// idsSources are the memory sources `ids ps` is timed from, in the order
// each round queries them.
var idsSources = []string{"ram", "gdbstub"}

// IDS times building a kernel profile from the default kit's image
// (uncached and cached), then boots the kit (512M), starts o.Procs
// sleeping processes in it and times `ids ps` o.Rounds times from each
// memory source, alternating: the live guest-RAM mapping (the guest keeps
// running) and the gdbstub (the guest pauses for the query). The times
// are the monitor's own (elapsed_us), without the API round trip.
func IDS(ctx context.Context, env Env, o IDSOptions) (*IDSReport, error) {
	k, err := kit.EnsureDefault(ctx, kit.Options{Progress: env.progress()})
	if err != nil {
		return nil, err
	}
	args := []string{"--mem", "512M"}
	if o.Kit != "" && o.Kit != kit.DefaultName {
		cache, err := kit.CacheDir()
		if err != nil {
			return nil, err
		}
		if k, err = kit.Find(cache, o.Kit); err != nil {
			return nil, err
		}
		args = append(args, "--kit", o.Kit)
	}
	rep := &IDSReport{Processes: o.Procs, Rounds: o.Rounds, Kit: o.Kit}
	if err := timeProfile(k.Kernel, rep); err != nil {
		return nil, err
	}
	c, stopVM, err := env.bootVM(ctx, fmt.Sprintf("bench-ids-%d", os.Getpid()), args...)
	if err != nil {
		return nil, err
	}
	stop := sync.OnceFunc(stopVM)
	defer stop()
	if err := startSleepers(ctx, c, o.Procs); err != nil {
		return nil, err
	}
	times, count, err := timePS(ctx, c, o.Rounds)
	if err != nil {
		return nil, err
	}
	if count < o.Procs {
		return nil, fmt.Errorf("ids ps saw %d processes, fewer than the %d started", count, o.Procs)
	}
	rep.Processes = count
	rep.MedianRAMMicros = Median(times["ram"])
	rep.MedianGDBMicros = Median(times["gdbstub"])
	rep.Ratio = rep.MedianGDBMicros / rep.MedianRAMMicros
	if rep.Check, err = timeCheck(ctx, c, o.Rounds); err != nil {
		return nil, err
	}
	if o.Window <= 0 {
		return rep, nil
	}
	if rep.Check.MonitorCPUIdle, err = monitorCPU(ctx, c, o.Window); err != nil {
		return nil, err
	}
	stop()
	if err := scanCost(ctx, env, o.Procs, o.ScanInterval, o.Window, rep.Check, args[2:]...); err != nil {
		return nil, err
	}
	return rep, nil
}

// timeProfile times building the profile of kernel image path, and a
// load of it from the cache.
func timeProfile(path string, rep *IDSReport) error {
	img, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	rep.ImageSHA256 = fmt.Sprintf("%x", sha256.Sum256(img))
	start := time.Now()
	if _, err := linux.NewProfile(img); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	rep.ProfileBuildSecs = time.Since(start).Seconds()
	if _, err := linux.LoadProfile(path, ""); err != nil {
		return err
	}
	// The first LoadProfile may have built and cached it; time a cached load.
	start = time.Now()
	if _, err := linux.LoadProfile(path, ""); err != nil {
		return err
	}
	rep.ProfileLoadSecs = time.Since(start).Seconds()
	return nil
}

// startSleepers starts n sleeping processes in the guest.
func startSleepers(ctx context.Context, c *apiclient.Client, n int) error {
	if n <= 0 {
		return nil
	}
	script := "i=0; while [ $i -lt " + strconv.Itoa(n) + " ]; do sleep 100000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done"
	res, err := guestSh(ctx, c, script, 600)
	if err != nil || res.ExitCode != 0 {
		return fmt.Errorf("start %d processes in the guest: %v (exit %d, %s)", n, err, res.ExitCode, res.Stderr)
	}
	return nil
}

// timePS runs `ids ps` rounds times from each memory source and returns
// the monitor's times (µs) by source, and the processes the last query saw.
func timePS(ctx context.Context, c *apiclient.Client, rounds int) (map[string][]float64, int, error) {
	times := map[string][]float64{}
	count := 0
	for range rounds {
		for _, src := range idsSources {
			res, err := c.IDS(ctx, "ps", src)
			if err != nil {
				return nil, 0, fmt.Errorf("ids ps from %s: %w", src, err)
			}
			var tasks []linux.Task
			if err := json.Unmarshal(res.Result, &tasks); err != nil {
				return nil, 0, err
			}
			count = len(tasks)
			times[src] = append(times[src], float64(res.ElapsedMicros))
		}
	}
	return times, count, nil
}
