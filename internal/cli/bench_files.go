//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchFilesCmd() *cobra.Command {
	var o bench.FilesOptions
	cmd := &cobra.Command{
		Use:   "files",
		Short: "The file gate (virtio-fs and 9P) against QEMU's own virtio-9p export of the same directory: throughput, small-file latency, monitor CPU per decision",
		Long: `Boot the default kit in the background with a temporary host directory
served three times: through the file gate over virtio-fs (--files
gate=DIR, the monitor's vhost-user-fs backend, direct I/O) and over 9P
(--files gate9p=DIR,9p, 9P over virtio-serial), every request attributed
and decided (the policy allows everything), and by QEMU's own virtio-9p
(-fsdev local, no gate, cache=none). Each round, rotating which goes first, times
in the guest (/proc/uptime around each command, 10 ms resolution): dd of the --mib file to
/dev/null (128 KiB blocks), dd of --mib MiB of zeros to a new file, and one
cat over --small 4 KiB files (open, read, close each, no fork). On each gate
side it reads the monitor's CPU time (/proc), the gate's decision count
and the gate's own CPU clock around its decisions (attribution and the
security server) around the small-file phase. Reports medians, the ratios
gate / QEMU, the monitor CPU per decided request and the decision's part
of it.`,
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds, each timing both sides")
	cmd.Flags().IntVar(&o.MiB, "mib", 16, "size of the sequential file, MiB")
	cmd.Flags().IntVar(&o.Small, "small", 500, "small files read per round")
	check := func() error {
		if o.Rounds < 1 || o.Rounds > 50 || o.MiB < 1 || o.MiB > 512 || o.Small < 1 || o.Small > 5000 {
			return fmt.Errorf("--rounds 1..50, --mib 1..512, --small 1..5000")
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.FilesReport, error) {
		return bench.Files(ctx, env, o)
	})
}
