package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

func init() { addSubcommand(newLsCmd) }

type lsRow struct {
	Name   string      `json:"name"`
	Live   bool        `json:"live"`
	Status *api.Status `json:"status,omitempty"`
	Error  string      `json:"error,omitempty"`
}

func newLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List VMs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := vmdir.Root()
			if err != nil {
				return err
			}
			entries, err := vmdir.List(root)
			if err != nil {
				return err
			}
			rows := make([]lsRow, 0, len(entries))
			for _, e := range entries {
				row := lsRow{Name: e.Name, Live: e.Live}
				if e.Live {
					ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
					st, err := api.NewClient(filepath.Join(e.Path, vmdir.APISocket)).Status(ctx)
					cancel()
					if err != nil {
						row.Error = err.Error()
					} else {
						row.Status = &st
					}
				}
				rows = append(rows, row)
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tGUEST\tACCEL\tMEM\tCPUS\tPID\tUPTIME")
			for _, r := range rows {
				switch {
				case !r.Live:
					fmt.Fprintf(tw, "%s\tstale\t-\t-\t-\t-\t-\t-\n", r.Name)
				case r.Status == nil:
					fmt.Fprintf(tw, "%s\tunreachable\t-\t-\t-\t-\t-\t-\n", r.Name)
				default:
					s := r.Status
					guest := "booting"
					if s.GuestReady {
						guest = "ready"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dM\t%d\t%d\t%s\n", s.Name, s.State, guest, s.Accel, s.MemMiB, s.CPUs, s.MonitorPID, time.Since(s.StartedAt).Round(time.Second))
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
