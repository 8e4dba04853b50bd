package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

// newNetFlowsCmd is `gatevisor net flows NAME`.
func newNetFlowsCmd() *cobra.Command {
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "flows NAME",
		Short: "The network gate's flows, newest first, each with its process, verdict and rule",
		Long: `List the flows the VM's network gate holds now, newest first: each
flow's protocol, direction and ends (the guest's first), its state
(pending, allowed, denied; closed), the verdict, action and policy rule
that decided it, the guest process it was attributed to (pid, uid, comm,
exe; or why it has none), its frames each way and its age. Flows leave
the table when they time out (a denied one 10 s after its decision), so
this is what the gate holds now; the audit log and 'gatevisor events'
keep every decision. The guest's names are escaped in the text output;
--json prints them exactly.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 1 || limit > api.MaxNetFlowsLimit {
				return fmt.Errorf("--limit %d: ask for 1 to %d flows", limit, api.MaxNetFlowsLimit)
			}
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				fl, err := c.NetFlows(ctx, limit)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(fl)
				}
				return printNetFlows(cmd.OutOrStdout(), &fl, time.Now())
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the guest's names exact)")
	cmd.Flags().IntVar(&limit, "limit", api.DefaultNetFlowsLimit, "at most this many flows, the newest")
	return cmd
}

// printNetFlows writes the flows as a table, then a line of totals. The
// process's comm and exe are the guest's, and the rule and reason may
// quote it: every string is escaped (termtext.Escape), so that a process
// name cannot forge a row or reach the terminal as a control sequence.
func printNetFlows(w io.Writer, fl *api.NetFlows, now time.Time) error {
	esc := termtext.Escape
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tDIR\tLOCAL\tREMOTE\tSTATE\tVERDICT\tRULE\tPID\tUID\tCOMM\tEXE\tFRAMES OUT/IN\tAGE")
	for _, f := range fl.Flows {
		state := f.State
		if f.Closed {
			state += ",closed"
		}
		if f.Revoked {
			state += ",revoked"
		}
		verdict := "-"
		if f.Verdict != "" {
			verdict = f.Verdict
			if f.Action != "" {
				verdict += " (" + f.Action + ")"
			}
		}
		pid, uid, comm, exe := "-", "-", "-", "-"
		if p := f.Process; p != nil {
			pid, uid, comm, exe = strconv.Itoa(int(p.PID)), strconv.FormatUint(uint64(p.UID), 10), esc(p.Comm), esc(p.Exe)
		} else if f.NoProcess != "" {
			comm = "(" + esc(f.NoProcess) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", esc(f.Proto), esc(f.Dir), esc(f.Local), esc(f.Remote),
			esc(state), esc(verdict), dash(esc(f.Rule)), pid, uid, comm, exe, f.FramesOut, f.FramesIn, now.Sub(f.Created).Round(time.Second))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var note []string
	if len(fl.Flows) < fl.Total {
		note = append(note, fmt.Sprintf("the newest %d of %d (--limit)", len(fl.Flows), fl.Total))
	} else {
		note = append(note, fmt.Sprintf("%d flows", fl.Total))
	}
	if fl.Isolated != "" {
		note = append(note, "network isolated: "+esc(fl.Isolated))
	}
	_, err := fmt.Fprintln(w, strings.Join(note, "; "))
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
