package cli

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzEventsText: whatever the event stream holds, --text prints one line
// per non-blank input line, with nothing a terminal would act on.
func FuzzEventsText(f *testing.F) {
	for _, s := range []string{
		`{"time":"2026-01-02T03:04:05Z","vm":"a","type":"process-start","process":{"pid":1,"comm":"x\n1 0 0 S init"}}`,
		`{"type":"net-deny","net":{"subject":{"comm":"\u202e","exe":"a b"},"args":[1,[2,{"k":null}]]}}`,
		"not json \x1b[2J",
		`{"a":1} {"b":2}`,
		`[1,2]`,
		`{"\u001b":"\u009b"}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var b bytes.Buffer
		if err := printEventsText(&b, strings.NewReader(in)); err != nil {
			return // a line over maxEventLine
		}
		want := 0
		for _, l := range strings.Split(in, "\n") {
			// bufio.ScanLines drops one \r before the \n.
			if len(bytes.TrimSpace([]byte(strings.TrimSuffix(l, "\r")))) > 0 {
				want++
			}
		}
		got := b.String()
		if n := strings.Count(got, "\n"); n != want {
			t.Fatalf("%d lines out for %d in:\n%q\n%q", n, want, in, got)
		}
		checkTerminalSafe(t, got)
	})
}
