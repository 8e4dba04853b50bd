package cli

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestBenchFlags pins each bench subcommand's flags and their defaults:
// docs/benchmarks.md and scripts call them.
func TestBenchFlags(t *testing.T) {
	want := map[string]map[string]string{
		"boot":       {"rounds": "5", "accel": "auto", "timeout": "5m0s", "json": "false", "kit": ""},
		"fleet":      {"events": "20000", "json": "false", "rounds": "3", "vms": "[1,10,50]"},
		"rejuvenate": {"mem": "[256,1024,2048]", "rounds": "3", "fill-mib": "128", "tick": "5ms", "net": "", "json": "false"},
		"ids":        {"procs": "1000", "rounds": "21", "json": "false", "window": "20s", "scan-interval": "1s", "kit": ""},
		"syscalls": {"rounds": "5", "iters": "1000", "untrapped-iters": "20000", "calls": "200000", "cpus": "1",
			"policy": "policies/iot-default.policy", "json": "false", "kit": ""},
		"net": {"rounds": "5", "mib": "32", "requests": "100", "echoes": "1000", "accel": "auto", "mem": "256M",
			"net": "isolated", "json": "false"},
		"flood": {"rounds": "3", "seconds": "20", "interval": "250", "scenarios": "all", "accel": "auto", "mem": "256M", "json": "false"},
		"memory": {"rounds": "3", "settle": "20s", "window": "5s", "iters": "200", "queries": "5", "lookups": "20", "ids-interval": "2s",
			"policy": "policies/iot-default.policy", "configs": "none,ids,policy,net,all", "accel": "auto", "mem": "256M", "json": "false"},
		"files": {"rounds": "3", "mib": "16", "small": "500", "json": "false"},
		"proc":  {"rounds": "20", "cpus": "1", "gap-threshold": "20µs", "spacing": "300ms", "json": "false"},
	}
	got := map[string]map[string]string{}
	for _, sub := range newBenchCmd().Commands() {
		// Each flag's usage is one line: "  -x, --name type  usage".
		flags := map[string]string{}
		for line := range strings.Lines(sub.Flags().FlagUsages()) {
			name, _, _ := strings.Cut(strings.TrimSpace(line[strings.Index(line, "--")+2:]), " ")
			if f := sub.Flags().Lookup(name); f != nil {
				flags[f.Name] = f.DefValue
			} else {
				flags[name] = "?"
			}
		}
		got[sub.Name()] = flags
		if sub.Args == nil || sub.Args(sub, []string{"x"}) == nil {
			t.Errorf("bench %s takes arguments", sub.Name())
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bench flags (-want +got):\n%s", diff)
	}
}

type fakeReport struct {
	N   int `json:"n"`
	err error
}

func (r *fakeReport) WriteText(w io.Writer) error {
	if r.err != nil {
		return r.err
	}
	_, err := io.WriteString(w, "text\n")
	return err
}

func TestPrintBenchReport(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rep    *fakeReport
		asJSON bool
		want   string
		err    bool
	}{
		{"text", &fakeReport{N: 1}, false, "text\n", false},
		{"json, indented", &fakeReport{N: 1}, true, "{\n  \"n\": 1\n}\n", false},
		// A report that fails halfway prints nothing.
		{"text fails", &fakeReport{err: errors.New("no")}, false, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			err := printBenchReport(&b, tc.rep, tc.asJSON)
			if (err != nil) != tc.err {
				t.Errorf("error %v, want error %v", err, tc.err)
			}
			if diff := cmp.Diff(tc.want, b.String()); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
}
