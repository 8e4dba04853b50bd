package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchIDSCmd() *cobra.Command {
	var o bench.IDSOptions
	cmd := &cobra.Command{
		Use:   "ids",
		Short: "Time `ids ps` on a guest with many processes: live RAM mapping against the gdbstub memory path",
		Long: `Boot the default kit (512M) in the background, start --procs sleeping
processes in it, then run 'ids ps' --rounds times from each memory source,
alternating: the live guest-RAM mapping (the guest keeps running) and the
gdbstub (the guest pauses for the query). Times are the monitor's own
(elapsed_us), without the API round trip. Also times building a kernel
profile from the kit's image, uncached and cached.`,
	}
	cmd.Flags().IntVar(&o.Procs, "procs", 1000, "sleeping processes to start in the guest")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 21, "queries per memory source")
	check := func() error {
		if o.Procs < 0 || o.Procs > 5000 || o.Rounds < 1 || o.Rounds > 1000 {
			return fmt.Errorf("--procs 0..5000 and --rounds 1..1000")
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.IDSReport, error) {
		return bench.IDS(ctx, env, o)
	})
}
