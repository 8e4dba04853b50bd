package bench

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// textReport is a report that renders itself as text.
type textReport interface{ WriteText(io.Writer) error }

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// TestReports reads each report in testdata/report_*.json, written by the
// harnesses' earlier home in internal/cli, and checks that it encodes back
// to the same bytes (field names, order and omissions are what
// docs/benchmarks.md and scripts read) and that its text is
// testdata/report_*.golden (go test -run TestReports -update rewrites
// those).
func TestReports(t *testing.T) {
	for _, tc := range []struct {
		name string
		new  func() textReport
	}{
		{"boot", func() textReport { return &BootReport{} }},
		{"ids", func() textReport { return &IDSReport{} }},
		{"syscalls", func() textReport { return &SyscallsReport{} }},
		{"net", func() textReport { return &NetReport{} }},
		{"net_one_round", func() textReport { return &NetReport{} }},
		{"flood", func() textReport { return &FloodReport{} }},   // a real run, its samples shortened
		{"memory", func() textReport { return &MemoryReport{} }}, // gatevisor bench memory --json
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", "report_"+tc.name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			rep := tc.new()
			dec := json.NewDecoder(bytes.NewReader(in))
			dec.DisallowUnknownFields()
			if err := dec.Decode(rep); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			enc := json.NewEncoder(&out)
			enc.SetIndent("", "  ")
			if err := enc.Encode(rep); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(in), out.String()); diff != "" {
				t.Errorf("JSON (-want +got):\n%s", diff)
			}
			var text bytes.Buffer
			if err := rep.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "report_"+tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, text.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), text.String()); diff != "" {
				t.Errorf("text (-want +got):\n%s", diff)
			}
		})
	}
}
