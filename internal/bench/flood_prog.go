package bench

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// floodSource is the in-guest attacker and bystander program of the flood
// benchmark (issue 21), built static with the host's gcc at run time.
//
//go:embed benchdata/flood.c
var floodSource []byte

// FloodGuestPath is where the flood benchmark's VMs have the program.
const FloodGuestPath = "/usr/bin/flood"

// BuildFlood compiles benchdata/flood.c into dir (gcc -static -O2 -Wall
// -Wextra) and returns the binary's path, for the benchmark and for tests
// that attack a guest the same way.
func BuildFlood(ctx context.Context, dir string) (string, error) {
	return buildStatic(ctx, dir, "flood", floodSource)
}

// buildStatic compiles the C source src into dir/name, static.
func buildStatic(ctx context.Context, dir, name string, src []byte) (string, error) {
	c := filepath.Join(dir, name+".c")
	bin := filepath.Join(dir, name)
	if err := os.WriteFile(c, src, 0o644); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", bin, c).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the in-guest %s program (needs gcc and libc6-dev; scripts/install-deps installs them): %v\n%s", name, err, out)
	}
	return bin, nil
}

// FloodOutput is the summary line the flood program prints (see the
// comment at the top of benchdata/flood.c), as parsed by
// ParseFloodOutput.
type FloodOutput struct {
	Mode     string  `json:"mode"`
	Seconds  float64 `json:"seconds"`
	Attempts int64   `json:"attempts"`
	// OK counts connects that succeeded, datagrams sent or opens that
	// worked; Refused ECONNREFUSED (a TCP RST) or, for opens, EACCES and
	// EPERM; Timeouts connects that did not resolve in time; Blocked
	// sends that found the socket buffer full; Errors the rest, the last
	// of them LastErrno.
	OK        int64 `json:"ok"`
	Refused   int64 `json:"refused"`
	Timeouts  int64 `json:"timeouts"`
	Errors    int64 `json:"errors"`
	Blocked   int64 `json:"blocked,omitempty"`
	LastErrno int   `json:"last_errno,omitempty"`
	// Rate is attempts per second.
	Rate float64 `json:"rate_per_s"`
	// Start and End are the guest's CLOCK_BOOTTIME, the clock of its
	// /proc/uptime, in seconds.
	Start float64 `json:"start"`
	End   float64 `json:"end"`
	// The pinning pattern: distinct destinations, whole cycles over them,
	// and the mean time of a cycle (how often each is sent to again).
	Distinct     int64   `json:"distinct,omitempty"`
	Cycles       float64 `json:"cycles,omitempty"`
	CycleSeconds float64 `json:"cycle_seconds,omitempty"`
	// The latency modes: attempts not made (the time bound came first),
	// and each attempt's time in µs, successful and failed.
	Skipped   int64   `json:"skipped,omitempty"`
	Latencies []int64 `json:"latencies_us,omitempty"`
	Failures  []int64 `json:"failures_us,omitempty"`
}

// floodMagic starts every summary line.
const floodMagic = "gvflood1"

// Bounds on a summary, which the guest writes: its length and its lists.
const (
	maxFloodLine    = 4 << 20
	maxFloodSamples = 100000
)

// errNoSummary means the program's output held no summary line.
var errNoSummary = errors.New("no gvflood1 summary line")

// ParseFloodOutput reads the flood program's summary from its output: the
// last line that starts with gvflood1. The output comes from the guest:
// every field is bounded and checked, unknown fields are ignored.
func ParseFloodOutput(out []byte) (FloodOutput, error) {
	if len(out) > maxFloodLine {
		return FloodOutput{}, fmt.Errorf("flood output of %d bytes: more than %d", len(out), maxFloodLine)
	}
	var line string
	for l := range strings.Lines(string(out)) {
		if strings.HasPrefix(l, floodMagic+" ") {
			line = strings.TrimRight(l, "\r\n")
		}
	}
	if line == "" {
		return FloodOutput{}, errNoSummary
	}
	var o FloodOutput
	seen := map[string]bool{}
	for _, f := range strings.Fields(line)[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok || seen[k] {
			return FloodOutput{}, fmt.Errorf("flood summary: bad or repeated field %.40q", f)
		}
		seen[k] = true
		if err := o.set(k, v); err != nil {
			return FloodOutput{}, fmt.Errorf("flood summary: %s: %w", k, err)
		}
	}
	for _, k := range []string{"mode", "secs", "attempts", "ok", "refused", "timeouts", "errors", "rate", "start", "end"} {
		if !seen[k] {
			return FloodOutput{}, fmt.Errorf("flood summary: no %s", k)
		}
	}
	if o.End < o.Start {
		return FloodOutput{}, fmt.Errorf("flood summary: ends (%.3f) before it starts (%.3f)", o.End, o.Start)
	}
	if o.Mode == "connect-latency" || o.Mode == "open-latency" {
		if !seen["lat_us"] || !seen["fail_us"] {
			return FloodOutput{}, fmt.Errorf("flood summary: %s without its samples", o.Mode)
		}
		if int64(len(o.Latencies)+len(o.Failures)) != o.Attempts {
			return FloodOutput{}, fmt.Errorf("flood summary: %d samples for %d attempts", len(o.Latencies)+len(o.Failures), o.Attempts)
		}
	}
	return o, nil
}

// set parses field k of a summary.
func (o *FloodOutput) set(k, v string) error {
	asCount := func(p *int64) error { return parseCount(v, p) }
	asReal := func(p *float64) error { return parseReal(v, p) }
	switch k {
	case "mode":
		switch v {
		case "tcp", "udp", "pin", "open", "connect-latency", "open-latency":
			o.Mode = v
			return nil
		}
		return fmt.Errorf("unknown mode %.20q", v)
	case "secs":
		return asReal(&o.Seconds)
	case "attempts":
		return asCount(&o.Attempts)
	case "ok":
		return asCount(&o.OK)
	case "refused":
		return asCount(&o.Refused)
	case "timeouts":
		return asCount(&o.Timeouts)
	case "errors":
		return asCount(&o.Errors)
	case "blocked":
		return asCount(&o.Blocked)
	case "last_errno":
		var n int64
		if err := asCount(&n); err != nil || n > 4095 {
			return fmt.Errorf("bad errno %.20q", v)
		}
		o.LastErrno = int(n)
		return nil
	case "rate":
		return asReal(&o.Rate)
	case "start":
		return asReal(&o.Start)
	case "end":
		return asReal(&o.End)
	case "distinct":
		return asCount(&o.Distinct)
	case "cycles":
		return asReal(&o.Cycles)
	case "cycle_s":
		return asReal(&o.CycleSeconds)
	case "skipped":
		return asCount(&o.Skipped)
	case "lat_us":
		return parseSamples(v, &o.Latencies)
	case "fail_us":
		return parseSamples(v, &o.Failures)
	}
	return nil // p50_us, maxopen, ...: the harness computes or ignores them
}

// parseCount parses a count: a decimal integer in [0, 2^53).
func parseCount(v string, p *int64) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n >= 1<<53 {
		return fmt.Errorf("bad count %.20q", v)
	}
	*p = n
	return nil
}

// parseReal parses a finite, non-negative decimal number below 1e12.
func parseReal(v string, p *float64) error {
	x, err := strconv.ParseFloat(v, 64)
	if err != nil || !(x >= 0 && x < 1e12) {
		return fmt.Errorf("bad number %.20q", v)
	}
	*p = x
	return nil
}

// parseSamples parses a comma-separated list of at most maxFloodSamples
// counts; an empty value is an empty list.
func parseSamples(v string, p *[]int64) error {
	if v == "" {
		return nil
	}
	if n := strings.Count(v, ",") + 1; n > maxFloodSamples {
		return fmt.Errorf("%d samples: more than %d", n, maxFloodSamples)
	}
	s := make([]int64, 0, strings.Count(v, ",")+1)
	for f := range strings.SplitSeq(v, ",") {
		var n int64
		if err := parseCount(f, &n); err != nil {
			return err
		}
		s = append(s, n)
	}
	*p = s
	return nil
}
