package fleet

import (
	"encoding/json"
	"testing"
)

func TestSummary(t *testing.T) {
	for _, c := range []struct {
		kind, data string
		want       Summary
	}{
		{KindAudit, `{"n":7,"verdict":"deny","rule":"r1","event":{"class":"exec","op":"exec","path":"/tmp/x","subject":{"pid":42,"comm":"sh"}}}`,
			Summary{Number: 7, Verdict: "deny", Class: "exec", Op: "exec", Path: "/tmp/x", PID: 42, Comm: "sh", Rule: "r1"}},
		{KindAudit, `{"n":1,"kind":"policy","policy":"sha256:ab"}`, Summary{Number: 1, Text: "audit log: policy sha256:ab"}},
		{"decision.exec", `{"seq":3,"class":"exec","pid":5,"comm":"nc","path":"/bin/nc","verdict":"kill","rule":"r2"}`,
			Summary{Number: 3, Verdict: "kill", Class: "exec", Path: "/bin/nc", PID: 5, Comm: "nc", Rule: "r2"}},
		{"ids.finding", `{"seq":9,"finding":{"check":"hidden-module","severity":"high","summary":"rk"}}`,
			Summary{Number: 9, Verdict: "high", Text: "hidden-module: rk"}},
		{"decision.net-deny", `{"seq":5,"net":{"dir":"out","proto":"tcp","local":"10.0.2.15:4000","remote":"203.0.113.9:23","verdict":"kill","rule":"no_telnet_out","subject":{"pid":77,"comm":"nc"}}}`,
			Summary{Number: 5, Verdict: "kill", Class: "net", Op: "tcp out", Path: "10.0.2.15:4000 -> 203.0.113.9:23", PID: 77, Comm: "nc", Rule: "no_telnet_out"}},
		{"notice.proc", `{"seq":4,"detail":"pid 9 stopped"}`, Summary{Number: 4, Text: "pid 9 stopped"}},
		{"notice.x", `not json`, Summary{}},
	} {
		got := Event{Where: Where{Kind: c.kind}, Data: json.RawMessage(c.data)}.Summary()
		if got != c.want {
			t.Errorf("%s %s:\n got %+v\nwant %+v", c.kind, c.data, got, c.want)
		}
	}
}
