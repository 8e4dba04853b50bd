package cli

import (
	"context"
	"errors"
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
			// Waiting for the outcome: the guest may take the whole
			// timeout, then QEMU up to 5 s to quit and 5 s more to die.
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+20*time.Second)
			defer cancel()
			st, err := c.Stop(ctx, api.StopRequest{Force: force, TimeoutSeconds: int(timeout / time.Second), Wait: true})
			var apiErr *api.Error
			if errors.As(err, &apiErr) {
				return err // refused (e.g. by the policy): the VM runs on
			}
			// Otherwise the answer may be lost with a monitor that ended
			// first: what counts is that the VM goes away.
			if err == nil && st.Stop != nil && st.Stop.Forced && !force {
				fmt.Fprintf(cmd.ErrOrStderr(), "gatevisor: %s: %s\n", args[0], st.Stop.Outcome)
			}
			return waitGone(ctx, args[0])
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "quit QEMU at once instead of an ACPI shutdown")
	cmd.Flags().DurationVar(&timeout, "timeout", monitor.DefaultStopTimeout, "how long the guest may take to power off before QEMU is told to quit")
	return cmd
}
