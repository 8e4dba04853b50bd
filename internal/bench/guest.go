package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// guestSh runs script in the guest's shell through the exec channel.
func guestSh(ctx context.Context, c *apiclient.Client, script string, timeoutSecs int) (api.ExecResult, error) {
	return c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", script}, TimeoutSeconds: timeoutSecs})
}

// guestSpan runs a script that prints its start and end by the guest's
// /proc/uptime ("a b", read by the shell's builtin read: no fork, 10 ms
// resolution) and returns them.
func guestSpan(ctx context.Context, c *apiclient.Client, script string, timeoutSecs int) (start, end float64, err error) {
	res, err := guestSh(ctx, c, script, timeoutSecs)
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || len(f) != 2 {
		return 0, 0, fmt.Errorf("exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	a, err1 := strconv.ParseFloat(f[0], 64)
	b, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || b < a {
		return 0, 0, fmt.Errorf("bad times %q", res.Stdout)
	}
	return a, b, nil
}
