//go:build !gatevisor_monitor

package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/accel"
	"github.com/gatevisor/gatevisor/internal/bench"
)

func newBenchBootCmd() *cobra.Command {
	var (
		o      bench.BootOptions
		accelF string
	)
	cmd := &cobra.Command{
		Use:   "boot",
		Short: "Time `gatevisor run` to the guest's ready marker against the same kit under plain QEMU",
		Long: `Boot the default kit alternately with 'gatevisor run' and with the
equivalent plain qemu-system-x86_64 command line (same machine, accelerator,
memory backend, devices, kernel, initrd and command line, but no monitor
channels), timing each from process start to the guest's ready marker on the
serial console. Reports medians, their ratio, and the monitor's peak RSS
(VmHWM of the gatevisor process, QEMU excluded). --kit boots a named kit
instead (an arm64 kit with qemu-system-aarch64 -machine virt on both sides).`,
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 5, "boots of each kind")
	cmd.Flags().StringVar(&accelF, "accel", "auto", "accelerator for both: auto, kvm or tcg")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 5*time.Minute, "longest one boot may take")
	cmd.Flags().StringVar(&o.Kit, "kit", "", "boot this built kit (a name of 'gatevisor kit ls', such as the arm64 kit) instead of the default kit")
	check := func() error {
		if o.Rounds < 1 || o.Rounds > 50 {
			return fmt.Errorf("--rounds %d: use 1 to 50", o.Rounds)
		}
		var err error
		if o.Accel, err = accel.ParseMode(accelF); err != nil {
			return fmt.Errorf("--accel: %w", err)
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.BootReport, error) {
		return bench.Boot(ctx, env, o)
	})
}
