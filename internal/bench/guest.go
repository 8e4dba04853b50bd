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

// The guest's clock for the shell loops: "now at N nsecs", the third line
// of /proc/timer_list (ktime_get, the monotonic clock), read by the
// shell's builtin read: no fork, and nanoseconds where /proc/uptime has
// 10 ms (a 50-iteration loop of trapped calls takes ~10 ms on a fast
// host). clockA and clockB set $a and $b; spanEcho prints them.
const (
	clockA   = `{ read _c; read _c; read _c _c a _c; } </proc/timer_list`
	clockB   = `{ read _c; read _c; read _c _c b _c; } </proc/timer_list`
	spanEcho = `echo "$a $b"`
)

// guestSpan runs a script that reads the guest's clock into $a and $b
// (clockA, clockB) around its work and prints them (spanEcho), and
// returns the seconds between the two.
func guestSpan(ctx context.Context, c *apiclient.Client, script string, timeoutSecs int) (float64, error) {
	res, err := guestSh(ctx, c, script, timeoutSecs)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || len(f) != 2 {
		return 0, fmt.Errorf("exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	a, err1 := strconv.ParseInt(f[0], 10, 64)
	b, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || a < 0 || b <= a {
		return 0, fmt.Errorf("bad clock readings %q (want two nanosecond counts from /proc/timer_list, the second after the first)", res.Stdout)
	}
	return float64(b-a) / 1e9, nil
}

// guestLoop runs body iters times in the guest's shell and returns the
// loop's time by the guest's clock.
func guestLoop(ctx context.Context, c *apiclient.Client, body string, iters int) (float64, error) {
	script := fmt.Sprintf(`%s; i=0; while [ $i -lt %d ]; do %s; i=$((i+1)); done >/dev/null 2>&1; %s; %s`, clockA, iters, body, clockB, spanEcho)
	secs, err := guestSpan(ctx, c, script, 1800)
	if err != nil {
		return 0, fmt.Errorf("loop %q: %w", body, err)
	}
	return secs, nil
}
