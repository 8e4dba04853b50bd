package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newNetCmd) }

func newNetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Cut a VM's network off, or restore it; list its gate's flows",
	}
	var reason string
	isolate := &cobra.Command{
		Use:   "isolate NAME",
		Short: "Cut the VM's network: the network gate denies every flow and resets the open ones, until 'net restore'",
		Long: `Cut the VM's network off: the network gate denies every new flow and
resets (TCP) or drops every open one, each decision audited, until
'gatevisor net restore'. gatevisor's own channels to the guest (exec,
console, introspection, proc) are not on the guest's network and keep
working. A policy's response can do the same on its own ('do isolate').`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				res, err := c.NetIsolate(ctx, reason)
				if err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: network isolated (%s); 'gatevisor net restore %s' ends it\n", args[0], termtext.Escape(res.Reason), args[0])
				}
				return err
			})
		},
	}
	isolate.Flags().StringVar(&reason, "reason", "", "why, for the audit log and status")
	restore := &cobra.Command{
		Use:   "restore NAME",
		Short: "End an isolation: the policy decides every flow again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				_, err := c.NetRestore(ctx)
				if err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: network restored\n", args[0])
				}
				return err
			})
		},
	}
	cmd.AddCommand(isolate, restore, newNetFlowsCmd())
	return cmd
}

// withVM runs f with a client of VM name, bounded to a minute.
func withVM(cmd *cobra.Command, name string, f func(context.Context, *apiclient.Client) error) error {
	return withVMFor(cmd, name, time.Minute, f)
}
