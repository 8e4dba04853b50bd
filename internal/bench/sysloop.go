package bench

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// sysloopSource is the in-guest program of the untrapped-syscall loops,
// built static with the host's gcc when the benchmark starts.
//
//go:embed benchdata/sysloop.c
var sysloopSource []byte

// sysloopGuestPath is where the benchmark VM has sysloop.
const sysloopGuestPath = "/usr/bin/sysloop"

// buildSysloop compiles sysloop.c into dir and returns the binary's path.
func buildSysloop(ctx context.Context, dir string) (string, error) {
	return buildStatic(ctx, dir, "sysloop", sysloopSource)
}

// sysloopRun runs sysloop in the guest and returns its steady cost in
// seconds for n calls: the median batch's time per call, by the guest's
// monotonic clock, times n.
func sysloopRun(ctx context.Context, c *apiclient.Client, op string, n int) (float64, error) {
	res, err := c.Exec(ctx, api.ExecRequest{Argv: []string{sysloopGuestPath, op, strconv.Itoa(n)}, TimeoutSeconds: 1800})
	if err != nil {
		return 0, err
	}
	return parseSysloop(op, n, res)
}

// parseSysloop reads sysloop's output: the loop's time in ns, n, and the
// median and lowest time of a batch of 1,000 calls.
func parseSysloop(op string, n int, res api.ExecResult) (float64, error) {
	f := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || len(f) != 4 || f[1] != strconv.Itoa(n) {
		return 0, fmt.Errorf("sysloop %s %d: exit %d, stdout %q, stderr %q", op, n, res.ExitCode, res.Stdout, res.Stderr)
	}
	perBatch, err := strconv.ParseInt(f[2], 10, 64) // ns per 1,000 calls
	if err != nil || perBatch <= 0 {
		return 0, fmt.Errorf("sysloop %s %d: bad time %q", op, n, f[2])
	}
	return float64(perBatch) / 1e12 * float64(n), nil
}
