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
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func newPolicyLoadCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "load NAME FILE",
		Short: "Hot-reload a running VM's policy: every gate takes it, or none does",
		Long: `Load FILE as the security policy of the running VM NAME, without restarting the
guest. The policy is compiled and checked against the VM's gates (a rule no
gate enforces is refused, as for run --policy), then every gate takes it in
one transaction with the VM stopped: the kernel gate traps exactly what the
new policy needs (none: every trap is removed), the network and API gates
decide by it. If any step fails, the policy in force stays in force on every
gate.`,
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
			fmt.Println(policyLoadLine(res))
			if len(res.Missing) > 0 {
				fmt.Printf("no handler in this kernel for: %s\n", strings.Join(res.Missing, ", "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// policyLoadLine is the one-line summary of a policy load.
func policyLoadLine(res api.PolicyResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s in force (seq %d, %s); kernel gate: %d traps", res.Path, res.Seq, res.Digest, len(res.Breakpoints))
	watches := 0
	classes := map[string]int{}
	for _, bp := range res.Breakpoints {
		if bp.Watchpoint {
			watches++
		}
		for _, c := range bp.Classes {
			classes[c]++
		}
	}
	if len(res.Breakpoints) > 0 {
		fmt.Fprintf(&b, " (%d watchpoints, %d breakpoints)", watches, len(res.Breakpoints)-watches)
	}
	var names []string
	for _, c := range []string{"syscall", "file", "exec", "module"} {
		if classes[c] > 0 {
			names = append(names, c)
		}
	}
	if len(names) > 0 {
		fmt.Fprintf(&b, " for %s", strings.Join(names, ", "))
	}
	if len(res.Syscalls) > 0 {
		fmt.Fprintf(&b, "; syscalls %s", strings.Join(res.Syscalls, ", "))
	}
	if res.Removed > 0 {
		fmt.Fprintf(&b, "; %d removed", res.Removed)
		if res.TextRestored != nil {
			fmt.Fprintf(&b, ", kernel text restored: %v", *res.TextRestored)
		}
	}
	models := map[string]int{}
	for _, bp := range res.Breakpoints {
		models[bp.Model]++
	}
	if models["own-entry"] > 0 {
		fmt.Fprintf(&b, "; %d hooks on the gate's own entries, %d on their list heads", models["own-entry"], models["head"])
	}
	for _, bp := range res.Breakpoints {
		if !bp.Watchpoint || bp.Cost != "" {
			// A breakpoint, or a hook left on its list head where the
			// gate has its own page (the cost says why).
			b.WriteString("\n  " + termtext.Escape(trapLine(bp)))
		}
	}
	return b.String()
}

// breakpointLine says what one execution breakpoint is for and costs.
func breakpointLine(bp api.Breakpoint) string {
	s := "breakpoint " + bp.Symbol
	if bp.Site != "" {
		s += " at " + bp.Site
	}
	if len(bp.Rules) > 0 {
		s += " for " + strings.Join(bp.Rules, "; ")
	}
	if bp.Cost != "" {
		s += ": " + bp.Cost
	}
	return s
}
