package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/monitor"
)

func init() { addSubcommand(newStopCmd) }

func newStopCmd() *cobra.Command {
	var (
		force   bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Shut a VM down (ACPI power button, then quit after --timeout)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout < time.Second || timeout > api.MaxStopTimeout*time.Second {
				return fmt.Errorf("--timeout %v: use 1s to %ds", timeout, api.MaxStopTimeout)
			}
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			_, err = c.Stop(ctx, api.StopRequest{Force: force, TimeoutSeconds: int(timeout / time.Second)})
			cancel()
			if err != nil {
				return err
			}
			wctx, cancel := context.WithTimeout(cmd.Context(), timeout+15*time.Second)
			defer cancel()
			return waitGone(wctx, args[0])
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "quit QEMU at once instead of an ACPI shutdown")
	cmd.Flags().DurationVar(&timeout, "timeout", monitor.DefaultStopTimeout, "how long the guest may take to power off before QEMU is told to quit")
	return cmd
}
