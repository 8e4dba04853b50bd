package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func newKitLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [--json]",
		Short: "List the built kits: name, arch, kernel release, suite, size, default, verified",
		Long: `List the kits built in the cache directory: the default kit and the named
kits ('kit build --kernel-suite'), each verified against its manifest
(every file's SHA-256). 'run --kit NAME' boots one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kits, err := kit.List("")
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if kits == nil {
					kits = []kit.Entry{}
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(kits)
			}
			if len(kits) == 0 {
				fmt.Fprintln(out, "no kits built: run 'gatevisor kit build' (the default kit) or 'gatevisor kit build --kernel-suite bookworm-backports'")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tARCH\tKERNEL\tSUITE\tSIZE\tDEFAULT\tVERIFIED")
			for _, k := range kits {
				def, ver := "", "yes"
				if k.Default {
					def = "yes"
				}
				if !k.Verified {
					ver = "no: " + k.Error
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", termtext.Escape(k.Name), k.Arch, termtext.Escape(k.KernelRelease),
					termtext.Escape(k.Suite), humanSize(k.Size), def, termtext.Escape(ver))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
