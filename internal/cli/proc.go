package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newProcCmd) }

func newProcCmd() *cobra.Command {
	var (
		start   uint64
		asJSON  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "proc stop|cont|kill|freeze|thaw NAME PID",
		Short: "Stop, continue, kill, freeze or thaw a guest process from below",
		Long: `Act on a guest process from outside the VM, with no agent and no guest
syscall: at the next timer interrupt a vCPU is made to call the guest
kernel's send_sig_info, which delivers SIGSTOP (stop, freeze), SIGCONT
(cont, thaw) or SIGKILL (kill) the kernel's own way. It works on a busy
loop that makes no syscalls, on a process that blocks every signal it can
(SIGSTOP and SIGKILL cannot be blocked), and where a rootkit hooks kill.

freeze keeps the process stopped: whatever resumes it in the guest (root,
a rootkit), gatevisor stops it again, until thaw. The command returns once
guest memory shows the new state, and prints it. Each action is an API
event (proc.stop, proc.kill, ...) the policy decides, and is audited
before it is taken and with its outcome after.

PID is the process id 'gatevisor ids ps --vm NAME' shows; --start refuses
the action if that pid now names another process.`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			action, name := args[0], args[1]
			if !slices.Contains(api.ProcActions, action) {
				return fmt.Errorf("unknown action %q: use one of %s", action, strings.Join(api.ProcActions, ", "))
			}
			pid, err := strconv.Atoi(args[2])
			if err != nil || pid < 1 || pid > api.MaxPID {
				return fmt.Errorf("PID %q: give a process id from 1 to %d, as 'gatevisor ids ps --vm %s' shows it", args[2], api.MaxPID, name)
			}
			c, err := clientFor(name)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			res, err := c.Proc(ctx, action, api.ProcRequest{PID: pid, Start: start})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: pid %d (%s): %s -> %s\n", action, res.PID, termtext.Escape(res.Comm), res.StateBefore, res.StateAfter)
			fmt.Fprintln(cmd.OutOrStdout(), termtext.Escape(res.Outcome))
			return nil
		},
	}
	cmd.Flags().Uint64Var(&start, "start", 0, "the process's start time (start_ns of 'ids ps --json'): refuse if the pid now names another process")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up waiting for the answer after this long")
	return cmd
}
