package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
)

func init() { addSubcommand(newDumpCmd) }

func newDumpCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "dump NAME -o FILE",
		Short: "Write an ELF dump of a running VM's memory (for 'gatevisor ids --dump'): a new file, yours, mode 0600",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("name the dump file with -o FILE")
			}
			abs, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			res, err := c.Dump(ctx, abs)
			if err != nil {
				return err
			}
			fmt.Printf("wrote %s (%d MiB) in %.2fs\n", res.Path, res.Size>>20, float64(res.ElapsedMicros)/1e6)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "dump file to write")
	return cmd
}
