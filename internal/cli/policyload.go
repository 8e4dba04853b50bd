package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/policy"
)

func newPolicyLoadCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "load NAME FILE",
		Short: "Hot-reload a running VM's policy; the syscall gate's breakpoints follow it",
		Long: `Load FILE as the security policy of the running VM NAME, without restarting the
guest. The syscall gate traps exactly the syscalls the new policy names (none:
every breakpoint is removed). A policy that does not compile is rejected and
the one in force stays.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			abs, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			src, err := readCapped(abs, policy.MaxFileSize)
			if err != nil {
				return err
			}
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Minute)
			defer cancel()
			res, err := c.LoadPolicy(ctx, api.PolicyRequest{Path: abs, Source: string(src)})
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			watches := 0
			for _, bp := range res.Breakpoints {
				if bp.Watchpoint {
					watches++
				}
			}
			fmt.Printf("policy %s in force (seq %d); syscall gate: %d breakpoints", res.Path, res.Seq, len(res.Breakpoints)-watches)
			if watches > 0 {
				fmt.Printf(" and %d watchpoints", watches)
			}
			if len(res.Syscalls) > 0 {
				fmt.Printf(" for %s", strings.Join(res.Syscalls, ", "))
			}
			if res.Removed > 0 {
				fmt.Printf("; %d removed", res.Removed)
				if res.TextRestored != nil {
					fmt.Printf(", kernel text restored: %v", *res.TextRestored)
				}
			}
			fmt.Println()
			if len(res.Missing) > 0 {
				fmt.Printf("no handler in this kernel for: %s\n", strings.Join(res.Missing, ", "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
