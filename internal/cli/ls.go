package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/termtext"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

func init() { addSubcommand(newLsCmd) }

type lsRow struct {
	Name string `json:"name"`
	// Owner is the user the VM belongs to: a user's own VMs, and root's
	// (from /run/gatevisor) when root shares them.
	Owner   string      `json:"owner"`
	UID     uint32      `json:"uid"`
	Live    bool        `json:"live"`
	Private bool        `json:"private,omitempty"` // another user's VM, not shared with the caller
	Status  *api.Status `json:"status,omitempty"`
	Error   string      `json:"error,omitempty"`
	errCode string
}

func newLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List VMs: yours, and root's that root shares with you",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			entries, err := vmdir.ListAll()
			if err != nil {
				return err
			}
			rows := make([]lsRow, 0, len(entries))
			for _, e := range entries {
				row := lsRow{Name: e.Name, Owner: ownerName(e.Owner), UID: e.Owner, Live: e.Live, Private: e.Private}
				if e.Live {
					ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
					st, err := apiclient.New(filepath.Join(e.Path, vmdir.APISocket)).Status(ctx)
					cancel()
					if err != nil {
						row.Error = err.Error()
						if api.IsCode(err, api.CodeForbidden) {
							row.errCode = api.CodeForbidden
						}
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
			return printLs(os.Stdout, rows, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printLs writes the text form of 'ls'. VM names are validated (a-z 0-9
// . _ -), but owners come from the password database and states, accel
// and errors from the monitors: every string is escaped (termtext.Escape)
// so that none can forge a row or reach the terminal as a control
// sequence. The --json output is not escaped.
func printLs(w io.Writer, rows []lsRow, now time.Time) error {
	esc := termtext.Escape
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tOWNER\tSTATE\tGUEST\tACCEL\tMEM\tCPUS\tPID\tUPTIME")
	for _, r := range rows {
		state := ""
		switch {
		case r.Private:
			state = "private"
		case !r.Live:
			state = "stale"
		case r.errCode == api.CodeForbidden:
			state = "forbidden"
		case r.Status == nil:
			state = "unreachable"
		}
		if state != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t-\t-\n", esc(r.Name), esc(r.Owner), state)
			continue
		}
		s := r.Status
		guest := "booting"
		if s.GuestReady {
			guest = "ready"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%dM\t%d\t%d\t%s\n", esc(r.Name), esc(r.Owner), esc(s.State), guest, esc(s.Accel), s.MemMiB, s.CPUs, s.MonitorPID, now.Sub(s.StartedAt).Round(time.Second))
	}
	return tw.Flush()
}
