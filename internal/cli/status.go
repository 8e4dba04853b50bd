package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newStatusCmd) }

func newStatusCmd() *cobra.Command {
	var (
		asJSON    bool
		waitReady time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a VM's status",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			st, err := waitStatus(cmd.Context(), c, waitReady)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(os.Stdout, &st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&waitReady, "wait-ready", 0, "wait up to this long for the guest to be ready")
	return cmd
}

// printStatus writes the text form of a VM's status. Every string is
// escaped (termtext.Escape): names and paths are the user's, but the command
// line, QEMU's status and whatever the guest reports may hold anything, and
// none of it may forge a line or reach the terminal as a control sequence.
// The --json output is not escaped.
func printStatus(w io.Writer, st *api.Status) {
	esc := termtext.Escape
	guest := "booting"
	if st.GuestReady {
		guest = fmt.Sprintf("ready (booted in %.2fs)", st.BootSeconds)
	}
	fmt.Fprintf(w, "name:        %s\nstate:       %s (qemu: %s)\nguest:       %s\naccel:       %s — %s\nmachine:     %s, %dM, %d vCPU\nkernel:      %s\ninitrd:      %s\nappend:      %s\nmonitor pid: %d\nqemu pid:    %d\nstarted:     %s\nruntime dir: %s\nconsole log: %s\n",
		esc(st.Name), esc(st.State), esc(st.QEMUStatus), guest, esc(st.Accel), esc(st.AccelReason), esc(st.Machine), st.MemMiB, st.CPUs,
		esc(st.Kernel), esc(st.Initrd), esc(st.Append), st.MonitorPID, st.QEMUPID, st.StartedAt.Format(time.RFC3339), esc(st.RuntimeDir), esc(st.ConsoleLog))
	if g := st.SyscallGate; g != nil {
		per := 0.0
		if g.Stops > 0 {
			per = float64(g.HandleMicros) / float64(g.Stops)
		}
		fmt.Fprintf(w, "kernel gate: %d traps; %d stops (%d decided, %d skipped, %d fault-ins), %.0f µs handling per stop\n",
			g.Breakpoints, g.Stops, g.Decided, g.Skipped, g.FaultIns, per)
	}
	if p := st.Policy; p != nil {
		fmt.Fprintf(w, "policy:      %s (seq %d, %s)\n", esc(p.Path), p.Seq, p.Digest)
		for _, n := range p.NotEnforced {
			fmt.Fprintf(w, "  not enforced (advisory): %s\n", esc(n))
		}
	} else {
		fmt.Fprintf(w, "policy:      none (every gated event is denied; the API is the owner's and root's)\n")
	}
	for _, g := range st.Gates {
		state := "not armed"
		if g.Armed {
			state = "armed"
		}
		line := fmt.Sprintf("%-6s %s", g.Name, state)
		if g.Traps > 0 {
			line += fmt.Sprintf(", %d traps (%d watchpoints, %d breakpoints)", g.Traps, g.Watchpoints, g.Traps-g.Watchpoints)
		}
		if len(g.Classes) > 0 {
			line += " for " + strings.Join(g.Classes, ", ")
		}
		if g.Note != "" {
			line += " — " + g.Note
		}
		fmt.Fprintf(w, "gate:        %s\n", esc(line))
		for _, bp := range g.Breakpoints {
			fmt.Fprintf(w, "             %s\n", esc(breakpointLine(bp)))
		}
	}
	if a := st.Audit; a != nil {
		fmt.Fprintf(w, "audit log:   %s (head %s)\n", esc(a.Log), a.Head)
	}
	if e := st.Events; e != nil {
		fmt.Fprintf(w, "events:      %s (seq %d; %d decisions folded into %d aggregates; kept: %d × %d bytes)\n",
			esc(cmp.Or(e.Log, "no file")), e.Seq, e.Aggregated, e.Aggregates, e.Keep+1, e.MaxSize)
		if e.WriteErrors+e.Oversized > 0 {
			fmt.Fprintf(w, "events:      %d not written to the file (last: %s), %d written without their payload\n",
				e.WriteErrors, esc(e.LastError), e.Oversized)
		}
	}
	if n := st.Net; n != nil {
		fmt.Fprintf(w, "network:     %s%s%s\n", esc(n.Mode), esc(prefixed(":", n.Network)), esc(prefixed(":", n.Tap)))
		if g := n.Gate; g != nil {
			fmt.Fprintf(w, "net gate:    %d new flows (%d allowed, %d denied, %d unattributed), %d frames dropped, %d resets\n",
				g.NewFlows, g.Allowed, g.Denied, g.Unattributed, g.Dropped, g.Resets)
			if g.Overload+g.TableFull+g.RateLimited+g.FlowLimited > 0 {
				fmt.Fprintf(w, "net gate:    refused by the gate itself: %d over a process's rate, %d over its share of the table; dropped undecided: %d (decision queue full), %d (table full)\n",
					g.RateLimited, g.FlowLimited, g.Overload, g.TableFull)
			}
		}
	}
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

// waitStatus returns the status, polling until the guest is ready when wait > 0.
func waitStatus(ctx context.Context, c *apiclient.Client, wait time.Duration) (api.Status, error) {
	deadline := time.Now().Add(wait)
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.Status(sctx)
		cancel()
		if err != nil || wait <= 0 || st.GuestReady {
			return st, err
		}
		if time.Now().After(deadline) {
			return st, withExitCode(3, fmt.Errorf("the guest of %s was not ready within %v", st.Name, wait))
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
