//go:build memprof

package cli

// A measuring aid, only in builds with -tags memprof (docs/benchmarks.md,
// "Monitor memory"): SIGUSR2 makes the process collect, print its
// runtime.MemStats and RSS to stderr (a monitor's monitor.log) before and
// after, and write its heap profile to $GATEVISOR_MEMPROF_DIR (default the
// temporary directory) as heap-PID-N.pprof. GATEVISOR_MEMPROF_RATE sets
// runtime.MemProfileRate (bytes per sample; the runtime's default 512 KiB
// misses small allocations, 4096 is exact enough and costs ~2 MB).

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
)

func init() {
	if r, err := strconv.Atoi(os.Getenv("GATEVISOR_MEMPROF_RATE")); err == nil && r > 0 {
		runtime.MemProfileRate = r
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR2)
	go func() {
		dir := os.Getenv("GATEVISOR_MEMPROF_DIR")
		if dir == "" {
			dir = os.TempDir()
		}
		for n := 0; ; n++ {
			<-ch
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			runtime.GC()
			runtime.ReadMemStats(&after)
			st, _ := os.ReadFile("/proc/self/status")
			var rss []string
			for _, l := range strings.Split(string(st), "\n") {
				if strings.HasPrefix(l, "Rss") || strings.HasPrefix(l, "VmHWM") {
					rss = append(rss, strings.Join(strings.Fields(l), " "))
				}
			}
			for _, m := range []*runtime.MemStats{&before, &after} {
				fmt.Fprintf(os.Stderr, "memprof %d: %s; KiB: HeapAlloc %d HeapInuse %d HeapIdle %d HeapReleased %d StackInuse %d GCSys %d OtherSys %d NextGC %d Sys %d; NumGC %d\n",
					n, strings.Join(rss, ", "), m.HeapAlloc>>10, m.HeapInuse>>10, m.HeapIdle>>10, m.HeapReleased>>10,
					m.StackInuse>>10, m.GCSys>>10, m.OtherSys>>10, m.NextGC>>10, m.Sys>>10, m.NumGC)
			}
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("heap-%d-%d.pprof", os.Getpid(), n)))
			if err != nil {
				continue
			}
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}()
}
