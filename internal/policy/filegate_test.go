package policy

import (
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
)

const fileGatePolicy = `
default: allow;
file default: allow
  conf_auth: filePrefixEq("/mnt/conf/") and labelIs(served) and not authenticated("alice", "bob") deny(EACCES)
  conf_setuid: filePrefixEq("/mnt/conf/") and setuidExec() deny(EPERM) audit
`

func TestAuthenticatedAndSetuid(t *testing.T) {
	spec, err := Parse("f.policy", []byte(fileGatePolicy))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		subj event.Subject
		want Verdict
		rule string
	}{
		{"nobody authenticated", event.Subject{UID: 1000}, VerdictDeny, "conf_auth"},
		{"alice", event.Subject{UID: 1000, Authenticated: []string{"alice"}}, VerdictAllow, ""},
		{"carol only", event.Subject{UID: 1000, Authenticated: []string{"carol"}}, VerdictDeny, "conf_auth"},
		{"alice but setuid", event.Subject{UID: 1000, SetUID: true, Authenticated: []string{"alice"}}, VerdictDeny, "conf_setuid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &event.Event{Class: event.ClassFile, Op: "read", Path: "/mnt/conf/secret", Labels: []string{"served"}, Subject: tc.subj}
			r := p.Evaluate(ev, nil)
			if r.Verdict != tc.want || tc.rule != "" && r.Rule != tc.rule {
				t.Fatalf("verdict %v by %q, want %v by %q", r.Verdict, r.Rule, tc.want, tc.rule)
			}
		})
	}
}

func TestFileGatePredicatesOnlyForFiles(t *testing.T) {
	for _, src := range []string{
		"net default: deny\n  r: authenticated(\"alice\") allow\n",
		"exec default: allow\n  r: setuidExec() deny\n",
		"file default: allow\n  r: setuidExec(1) deny\n",
	} {
		spec, err := Parse("f.policy", []byte(src))
		if err == nil {
			_, err = Compile(spec)
		}
		if err == nil {
			t.Errorf("%q compiled", src)
		}
	}
}

func TestSetuidNeedsFileGate(t *testing.T) {
	spec, _ := Parse("f.policy", []byte(fileGatePolicy))
	p, err := Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	cov := Coverage{Observers: map[event.Class]Observer{event.ClassFile: {Gate: "the kernel gate", All: true, Ops: []string{"open", "read"}}}}
	var found bool
	for _, pr := range p.Check(cov) {
		if strings.Contains(pr.String(), "setuidExec()") && strings.Contains(pr.String(), "--files") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no problem for setuidExec() without the file gate: %v", p.Check(cov))
	}
	cov.FileGate = true
	for _, pr := range p.Check(cov) {
		if strings.Contains(pr.String(), "setuidExec") {
			t.Fatalf("setuidExec() refused with the file gate: %v", pr)
		}
	}
}
