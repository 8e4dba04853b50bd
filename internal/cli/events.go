package cli

import (
	"io"
	"os"

	"github.com/spf13/cobra"
)

func init() { addSubcommand(newEventsCmd) }

func newEventsCmd() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "events NAME",
		Short: "Print a VM's IDS events as JSON lines (needs 'run --ids-interval'); -f follows",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			body, err := c.Events(cmd.Context(), follow)
			if err != nil {
				return err
			}
			defer body.Close()
			_, err = io.Copy(os.Stdout, body)
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	return cmd
}
