package cli

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

type idsBenchReport struct {
	Processes        int     `json:"guest_processes"`
	Rounds           int     `json:"rounds"`
	MedianRAMMicros  float64 `json:"median_ram_us"`
	MedianGDBMicros  float64 `json:"median_gdbstub_us"`
	Ratio            float64 `json:"gdbstub_over_ram"`
	ProfileBuildSecs float64 `json:"profile_build_seconds"`
	ProfileLoadSecs  float64 `json:"profile_load_cached_seconds"`
	ImageSHA256      string  `json:"kernel_image_sha256"`
}

func newBenchIDSCmd() *cobra.Command {
	var (
		procs, rounds int
		asJSON        bool
	)
	cmd := &cobra.Command{
		Use:   "ids",
		Short: "Time `ids ps` on a guest with many processes: live RAM mapping against the gdbstub memory path",
		Long: `Boot the default kit (512M) in the background, start --procs sleeping
processes in it, then run 'ids ps' --rounds times from each memory source,
alternating: the live guest-RAM mapping (the guest keeps running) and the
gdbstub (the guest pauses for the query). Times are the monitor's own
(elapsed_us), without the API round trip. Also times building a kernel
profile from the kit's image, uncached and cached.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if procs < 0 || procs > 5000 || rounds < 1 || rounds > 1000 {
				return fmt.Errorf("--procs 0..5000 and --rounds 1..1000")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := benchIDS(ctx, procs, rounds)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			fmt.Printf("ids ps over %d guest processes, %d rounds each, alternating:\n", rep.Processes, rep.Rounds)
			fmt.Printf("  live RAM mapping  median %8.0f µs (goal <= 2000)\n  gdbstub           median %8.0f µs\n  ratio             %.1fx\n", rep.MedianRAMMicros, rep.MedianGDBMicros, rep.Ratio)
			fmt.Printf("kernel profile from the kit's image: build %.2fs, load from cache %.3fs\n", rep.ProfileBuildSecs, rep.ProfileLoadSecs)
			return nil
		},
	}
	cmd.Flags().IntVar(&procs, "procs", 1000, "sleeping processes to start in the guest")
	cmd.Flags().IntVar(&rounds, "rounds", 21, "queries per memory source")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func benchIDS(ctx context.Context, procs, rounds int) (*idsBenchReport, error) {
	k, err := kit.EnsureDefault(ctx, kit.Options{Progress: os.Stderr})
	if err != nil {
		return nil, err
	}
	rep := &idsBenchReport{Processes: procs, Rounds: rounds}
	img, err := os.ReadFile(k.Kernel)
	if err != nil {
		return nil, err
	}
	rep.ImageSHA256 = fmt.Sprintf("%x", sha256.Sum256(img))
	start := time.Now()
	if _, err := linux.NewProfile(img); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	rep.ProfileBuildSecs = time.Since(start).Seconds()
	if _, err := linux.LoadProfile(k.Kernel, ""); err != nil {
		return nil, err
	}
	// The first LoadProfile may have built and cached it; time a cached load.
	start = time.Now()
	if _, err := linux.LoadProfile(k.Kernel, ""); err != nil {
		return nil, err
	}
	rep.ProfileLoadSecs = time.Since(start).Seconds()

	c, stop, err := bootBenchVM(ctx, fmt.Sprintf("bench-ids-%d", os.Getpid()), "--mem", "512M")
	if err != nil {
		return nil, err
	}
	defer stop()
	if procs > 0 {
		script := "i=0; while [ $i -lt " + strconv.Itoa(procs) + " ]; do sleep 100000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done"
		res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", script}, TimeoutSeconds: 600})
		if err != nil || res.ExitCode != 0 {
			return nil, fmt.Errorf("start %d processes in the guest: %v (exit %d, %s)", procs, err, res.ExitCode, res.Stderr)
		}
	}
	var ram, gdb []float64
	count := 0
	for i := 0; i < rounds; i++ {
		for _, src := range []string{"ram", "gdbstub"} {
			res, err := c.IDS(ctx, "ps", src)
			if err != nil {
				return nil, fmt.Errorf("ids ps from %s: %w", src, err)
			}
			var tasks []linux.Task
			if err := json.Unmarshal(res.Result, &tasks); err != nil {
				return nil, err
			}
			count = len(tasks)
			if src == "ram" {
				ram = append(ram, float64(res.ElapsedMicros))
			} else {
				gdb = append(gdb, float64(res.ElapsedMicros))
			}
		}
	}
	if count < procs {
		return nil, fmt.Errorf("ids ps saw %d processes, fewer than the %d started", count, procs)
	}
	rep.Processes = count
	rep.MedianRAMMicros = median(ram)
	rep.MedianGDBMicros = median(gdb)
	rep.Ratio = rep.MedianGDBMicros / rep.MedianRAMMicros
	return rep, nil
}
