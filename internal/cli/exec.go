package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
)

func init() { addSubcommand(newExecCmd) }

func newExecCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "exec NAME -- CMD [ARG...]",
		Short: "Run a command in the guest and return its output and exit code",
		Long: `Run a command in the guest through the exec channel (a dedicated
virtio-serial port served by the guest's gatevisor-agent). Its stdout and
stderr are printed, and gatevisor exits with its exit code. This is an
operator convenience: the agent runs inside the guest, so no security
feature depends on it.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return fmt.Errorf("usage: gatevisor exec NAME -- CMD [ARG...] (put -- between the VM name and the command)")
			}
			req := api.ExecRequest{Argv: args[1:], TimeoutSeconds: int((timeout + time.Second - 1) / time.Second)}
			if err := api.ValidateExec(&req); err != nil {
				return err
			}
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+10*time.Second)
			defer cancel()
			res, err := c.Exec(ctx, req)
			if err != nil {
				return err
			}
			os.Stdout.Write(res.Stdout)
			os.Stderr.Write(res.Stderr)
			for _, o := range []struct {
				name string
				b    []byte
			}{{"stdout", res.Stdout}, {"stderr", res.Stderr}} {
				if len(o.b) >= api.MaxExecOutput {
					fmt.Fprintf(os.Stderr, "\ngatevisor: the command's %s reached the exec channel's cap of %d bytes and may be cut there: redirect it to a file in the guest and read that in parts\n", o.name, api.MaxExecOutput)
				}
			}
			if res.ExitCode != 0 {
				return withExitCode(res.ExitCode, nil)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "kill the command after this long")
	return cmd
}
