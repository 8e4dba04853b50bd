package metrics

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// FuzzMerge: whatever a monitor answers, Merge returns an error or a valid
// exposition that merges again; it never panics.
func FuzzMerge(f *testing.F) {
	var b bytes.Buffer
	_ = newVM("cam1").WriteText(&b)
	f.Add(b.String())
	f.Add("# TYPE x counter\nx_total{vm=\"a\"} 1\n")
	f.Add("x{le=\"+Inf\"} NaN\n")
	f.Add("# HELP x\n# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_sum 1\nx_count 1\n")
	f.Fuzz(func(t *testing.T, in string) {
		var out bytes.Buffer
		if err := Merge(&out, map[string]io.Reader{"vm": strings.NewReader(in)}); err != nil {
			return
		}
		var again bytes.Buffer
		if err := Merge(&again, map[string]io.Reader{"vm": bytes.NewReader(out.Bytes())}); err != nil {
			t.Fatalf("a merged exposition does not merge again: %v\n%s", err, out.String())
		}
	})
}
