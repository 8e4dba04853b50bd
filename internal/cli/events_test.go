package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
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
		if _, err := printEvents(&b, strings.NewReader(in), true); err != nil {
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

func TestEventsFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want api.EventsQuery
		err  string
	}{
		{nil, api.EventsQuery{}, ""},
		{[]string{"-f"}, api.EventsQuery{Follow: true}, ""},
		{[]string{"--limit", "20"}, api.EventsQuery{Limit: 20}, ""},
		{[]string{"--limit", "20", "-f"}, api.EventsQuery{Limit: 20, Follow: true}, ""},
		{[]string{"--before", "900"}, api.EventsQuery{Before: 900, Limit: api.DefaultEventsLimit}, ""},
		{[]string{"--after", "0"}, api.EventsQuery{HasAfter: true, Limit: api.DefaultEventsLimit}, ""},
		{[]string{"--after", "5", "-f"}, api.EventsQuery{HasAfter: true, After: 5, Follow: true}, ""},
		{[]string{"--before", "0"}, api.EventsQuery{}, "--before 0"},
		{[]string{"--limit", "0"}, api.EventsQuery{}, "--limit 0"},
		{[]string{"--limit", "10001"}, api.EventsQuery{}, "1 to 10000"},
		{[]string{"--before", "9", "-f"}, api.EventsQuery{}, "cannot follow"},
		{[]string{"--after", "9", "--before", "10"}, api.EventsQuery{}, "select no event"},
		{[]string{"--after", "9", "--limit", "3", "-f"}, api.EventsQuery{}, "drop limit"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var o eventsOptions
			cmd := &cobra.Command{}
			o.flags(cmd)
			if err := cmd.ParseFlags(tc.args); err != nil {
				t.Fatal(err)
			}
			q, err := o.query(cmd)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, q); diff != "" {
				t.Errorf("query (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEventsPageHint(t *testing.T) {
	lines := `{"time":"t","type":"audit","seq":41}` + "\n" + `{"time":"t","type":"audit","seq":42}` + "\n"
	var out bytes.Buffer
	pg, err := printEvents(&out, strings.NewReader(lines), false)
	if err != nil || out.String() != lines || pg != (pageInfo{n: 2, first: 41, last: 42}) {
		t.Fatalf("printEvents = %+v, %v, %q", pg, err, out.String())
	}
	for _, tc := range []struct {
		q    api.EventsQuery
		pg   pageInfo
		want string
	}{
		{api.EventsQuery{Before: 50, Limit: 2}, pg, "--before 41 --limit 2"},
		{api.EventsQuery{Limit: 2}, pg, "--before 41 --limit 2"},
		{api.EventsQuery{HasAfter: true, After: 40, Limit: 2}, pg, "--after 42 --limit 2"},
		{api.EventsQuery{Before: 50, Limit: 5}, pg, ""}, // not full: nothing more
		{api.EventsQuery{Before: 50, Limit: 5}, pageInfo{}, "no events"},
	} {
		var w bytes.Buffer
		pageHint(&w, "cam", tc.q, tc.pg)
		if tc.want == "" && w.Len() != 0 || !strings.Contains(w.String(), tc.want) {
			t.Errorf("%+v %+v: hint %q, want %q", tc.q, tc.pg, w.String(), tc.want)
		}
	}
}

func TestEventsRetentionFlags(t *testing.T) {
	for _, tc := range []struct {
		size string
		keep int
		want int64
		err  string
	}{
		{"16M", 4, 16 << 20, ""},
		{"64K", 1, 64 << 10, ""},
		{"1G", 100, 1 << 30, ""},
		{"63K", 4, 0, "at least 64K"},
		{"lots", 4, 0, "--events-max-size \"lots\""},
		{"16M", 0, 0, "--events-keep 0: keep 1 to 100"},
		{"16M", 101, 0, "--events-keep 101"},
	} {
		got, err := validateEventsRetention(tc.size, tc.keep)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s/%d: err = %v, want %q", tc.size, tc.keep, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s/%d = %d, %v; want %d", tc.size, tc.keep, got, err, tc.want)
		}
	}
}

func TestStatusShowsEvents(t *testing.T) {
	st := api.Status{Name: "cam", Events: &api.EventsStatus{Log: "/s/events.jsonl", MaxSize: 16 << 20, Keep: 4, Seq: 900,
		Aggregated: 5000, Aggregates: 12, WriteErrors: 3, LastError: "write /s/events.jsonl: no space left on device\x1b[2J"}}
	var b bytes.Buffer
	printStatus(&b, &st)
	out := b.String()
	for _, want := range []string{
		"events:          /s/events.jsonl\n",
		"seq:           900 ",
		"5000 decisions folded into 12 aggregate events",
		"keeps 4 rotated files (at most 5 × 16777216 bytes)",
		"3 events the file did not take (last: write /s/events.jsonl: no space left on device\\x1b[2J)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	checkTerminalSafe(t, out)
}
