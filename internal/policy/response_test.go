package policy

import (
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
)

func TestResponses(t *testing.T) {
	src := `default: allow;
response freeze_hogs: on finding("cpu-hog", "hidden-process") do freeze limit 5;
response kill_telnet: on verdict(kill, deny) in net, exec do kill;
`
	p := compileSrc(t, src)
	rs := p.Responses()
	if len(rs) != 2 {
		t.Fatalf("%d responses, want 2", len(rs))
	}
	if got, want := rs[0].String(), `response freeze_hogs: on finding("cpu-hog", "hidden-process") do freeze limit 5`; got != want {
		t.Errorf("String: %q, want %q", got, want)
	}
	if got, want := rs[1].String(), `response kill_telnet: on verdict(kill, deny) in net, exec do kill limit 10`; got != want {
		t.Errorf("String: %q, want %q", got, want)
	}
	if !rs[0].OnFinding("cpu-hog") || rs[0].OnFinding("kprobe") || rs[0].OnVerdict(VerdictKill, event.ClassNet) {
		t.Error("freeze_hogs answers the wrong triggers")
	}
	if !rs[1].OnVerdict(VerdictDeny, event.ClassExec) || rs[1].OnVerdict(VerdictDeny, event.ClassFile) || rs[1].OnVerdict(VerdictAlert, event.ClassNet) {
		t.Error("kill_telnet answers the wrong triggers")
	}
	cov := Coverage{Observers: map[event.Class]Observer{event.ClassNet: {Gate: "net", All: true}, event.ClassExec: {Gate: "kernel", All: true}},
		Findings: map[string]bool{"cpu-hog": true, "hidden-process": true}}
	if errs := p.CheckResponses(cov); len(errs) != 0 {
		t.Errorf("CheckResponses on a VM that has everything: %v", errs)
	}
	noScan := cov
	noScan.Findings = nil
	errs := p.CheckResponses(noScan)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "2:34:") || !strings.Contains(errs[0].Error(), "--ids-interval") {
		t.Errorf("without a continuous scan: %v", errs)
	}
	noNet := cov
	noNet.Observers = map[event.Class]Observer{event.ClassExec: {Gate: "kernel", All: true}}
	noNet.Absent = map[event.Class]string{event.ClassNet: "the network gate needs a network"}
	if errs := p.CheckResponses(noNet); len(errs) != 1 || !strings.Contains(errs[0].Error(), "the network gate needs a network") {
		t.Errorf("without a network: %v", errs)
	}
	unknown := cov
	unknown.Findings = map[string]bool{"cpu-hog": true}
	if errs := p.CheckResponses(unknown); len(errs) != 1 || !strings.Contains(errs[0].Error(), `"hidden-process", which no check reports`) {
		t.Errorf("an unknown check: %v", errs)
	}
}

func TestRollbackResponse(t *testing.T) {
	p := compileSrc(t, `default: allow;
response back: on finding("hidden-module") do rollback limit 2;
`)
	r := p.Responses()[0]
	if r.Action != RespRollback || !VMWide(r.Action) || VMWide(RespKill) {
		t.Errorf("response %s: action %q, VM-wide %v", r.Name, r.Action, VMWide(r.Action))
	}
	cov := Coverage{Findings: map[string]bool{"hidden-module": true}, ReadySnapshot: true}
	if errs := p.CheckResponses(cov); len(errs) != 0 {
		t.Errorf("a VM that takes snapshot ready: %v", errs)
	}
	cov.ReadySnapshot = false
	if errs := p.CheckResponses(cov); len(errs) != 1 || !strings.Contains(errs[0].Error(), "--snapshot-ready") || !strings.Contains(errs[0].Error(), "2:1:") {
		t.Errorf("a VM that takes no snapshot ready: %v", errs)
	}
}

func TestResponseErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`response r: on finding("cpu-hog") do pause;`, "1:38: response action \"pause\" is not supported"},
		{`response r: on finding("cpu-hog") do snapshot;`, "a response does not take snapshots"},
		{`response r: on finding("cpu-hog") do nuke;`, "unknown response action \"nuke\""},
		{`response r: on verdict(maybe) do kill;`, "unknown verdict \"maybe\""},
		{`response r: on verdict(kill) in disk do kill;`, "unknown event class \"disk\""},
		{`response r: on finding(cpu) do kill;`, "an IDS check name in quotes"},
		{`response r: on crash do kill;`, "finding(...) or verdict(...)"},
		{`response r: on finding("x") do kill limit 0;`, "a number of responses a minute"},
		{`response r: on finding("x") do kill; response r: on finding("y") do stop;`, "response r declared twice"},
	} {
		_, err := compileErr(tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.src, err, tc.want)
		}
	}
}

// compileErr parses and compiles src, returning the first error.
func compileErr(src string) (*Policy, error) {
	s, err := Parse("t.policy", []byte(src))
	if err != nil {
		return nil, err
	}
	return Compile(s)
}
