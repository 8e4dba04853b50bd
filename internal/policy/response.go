package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/gatevisor/gatevisor/internal/event"
)

// Responses: what the monitor does, on its own, when the IDS reports a
// finding or a gate takes a verdict:
//
//	response freeze_hogs: on finding("cpu-hog") do freeze limit 5;
//	response kill_telnet: on verdict(kill) in net do kill;
//
// A finding trigger names IDS checks (the continuous scan's findings); a
// verdict trigger names verdicts and, optionally, the classes whose gate
// took them. The action applies to the process the finding or the event
// names. Each response is rate-limited (limit N a minute, 10 by default)
// and audited before it takes effect.

// Response actions.
const (
	RespKill    = "kill"
	RespStop    = "stop"
	RespFreeze  = "freeze"
	RespIsolate = "isolate" // the VM's network, not a process
	// RespRollback rolls the whole VM back to its snapshot "ready" (run
	// --snapshot-ready): the guest's memory, processes and modules as
	// they were right after boot.
	RespRollback = "rollback"
)

// VMWide reports whether action acts on the whole VM rather than on the
// process an event or a finding names.
func VMWide(action string) bool { return action == RespIsolate || action == RespRollback }

// respActions are the actions a response may take, with what they do.
var respActions = map[string]string{
	RespKill:     "SIGKILL to the process, from below",
	RespStop:     "SIGSTOP to the process, from below",
	RespFreeze:   "SIGSTOP, and stopped again whenever resumed",
	RespIsolate:  "the network gate denies every flow until gatevisor net restore",
	RespRollback: "the VM is rolled back to its snapshot \"ready\", taken right after boot",
}

// respUnsupported are actions the language reserves that gatevisor does
// not perform yet: a policy naming one is refused, not accepted unenforced.
var respUnsupported = map[string]string{
	"pause":    "pausing the VM from a response is not implemented yet",
	"snapshot": "a response does not take snapshots (each writes the guest's RAM to disk at the guest's pace); take them with gatevisor snapshot",
}

const (
	// DefaultResponseLimit is a response's default rate: per minute.
	DefaultResponseLimit = 10
	// MaxResponseLimit bounds limit N.
	MaxResponseLimit = 10000
	// MaxResponses bounds the responses of a policy.
	MaxResponses = 256
)

// ResponseStmt is a `response` statement as parsed.
type ResponseStmt struct {
	Pos      Pos
	Name     Ident
	Findings []Ident // finding("a", "b"): check names, as strings
	Verdicts []Ident // verdict(kill, deny)
	Classes  []Ident // in net, exec
	Action   Ident
	Limit    int
}

// response parses `response NAME: on TRIGGER do ACTION [limit N];`.
func (p *parser) response() {
	pos := p.next().pos
	const hint = `response freeze_hogs: on finding("cpu-hog") do freeze;  or  response r: on verdict(kill) in net do kill limit 5;`
	r := ResponseStmt{Pos: pos, Name: p.ident("a response name", hint), Limit: DefaultResponseLimit}
	p.expectPunct(":", hint)
	p.expectWord("on", hint)
	switch {
	case p.acceptWord("finding"):
		p.expectPunct("(", hint)
		for {
			t := p.peek()
			if t.kind != tString {
				p.fail("an IDS check name in quotes", hint)
			}
			p.next()
			r.Findings = append(r.Findings, Ident{Name: t.text, Pos: t.pos})
			if !p.acceptPunct(",") {
				break
			}
		}
		p.expectPunct(")", hint)
	case p.acceptWord("verdict"):
		p.expectPunct("(", hint)
		r.Verdicts = p.identList("a verdict (allow, alert, deny, kill)", hint)
		p.expectPunct(")", hint)
		if p.acceptWord("in") {
			r.Classes = p.identList("an event class", hint)
		}
	default:
		p.fail("finding(...) or verdict(...)", hint)
	}
	p.expectWord("do", hint)
	r.Action = p.ident("a response action (kill, stop, freeze, isolate, rollback)", hint)
	if p.acceptWord("limit") {
		t := p.peek()
		if t.kind != tInt || t.val < 1 || t.val > MaxResponseLimit {
			p.fail(fmt.Sprintf("a number of responses a minute, 1 to %d", MaxResponseLimit), hint)
		}
		p.next()
		r.Limit = int(t.val)
	}
	p.semi("end the response with ';'")
	p.spec.Responses = append(p.spec.Responses, r)
}

// Response is a compiled response.
type Response struct {
	Name     string
	Pos      Pos
	Findings []string       // IDS check names; or
	Verdicts []Verdict      // verdicts,
	Classes  []event.Class  // of these classes (none: any)
	Action   string         // RespKill, RespStop, RespFreeze
	Limit    int            // a minute
	findPos  map[string]Pos // where each finding is named
	clsPos   map[string]Pos // where each class is named
	_        [0]func()      // not comparable
}

// String is the response as the policy states it.
func (r Response) String() string {
	var on string
	if len(r.Findings) > 0 {
		q := make([]string, len(r.Findings))
		for i, f := range r.Findings {
			q[i] = strconv.Quote(f)
		}
		on = "finding(" + strings.Join(q, ", ") + ")"
	} else {
		v := make([]string, len(r.Verdicts))
		for i, x := range r.Verdicts {
			v[i] = x.String()
		}
		on = "verdict(" + strings.Join(v, ", ") + ")"
		if len(r.Classes) > 0 {
			c := make([]string, len(r.Classes))
			for i, x := range r.Classes {
				c[i] = x.String()
			}
			on += " in " + strings.Join(c, ", ")
		}
	}
	return fmt.Sprintf("response %s: on %s do %s limit %d", r.Name, on, r.Action, r.Limit)
}

// OnFinding reports whether r answers a finding of check.
func (r *Response) OnFinding(check string) bool { return slices.Contains(r.Findings, check) }

// OnVerdict reports whether r answers verdict v on an event of class c.
func (r *Response) OnVerdict(v Verdict, c event.Class) bool {
	return slices.Contains(r.Verdicts, v) && (len(r.Classes) == 0 || slices.Contains(r.Classes, c))
}

// Responses returns the policy's responses, in source order.
func (p *Policy) Responses() []Response { return p.responses }

func (c *compiler) compileResponses() {
	if len(c.spec.Responses) > MaxResponses {
		c.fail(c.spec.Responses[MaxResponses].Pos, "too many responses", fmt.Sprintf("at most %d", MaxResponses))
	}
	seen := map[string]bool{}
	for _, s := range c.spec.Responses {
		if seen[s.Name.Name] {
			c.fail(s.Name.Pos, "response "+s.Name.Name+" declared twice", "")
		}
		seen[s.Name.Name] = true
		r := Response{Name: s.Name.Name, Pos: s.Pos, Limit: s.Limit, Action: s.Action.Name, findPos: map[string]Pos{}, clsPos: map[string]Pos{}}
		if why, ok := respUnsupported[s.Action.Name]; ok {
			c.fail(s.Action.Pos, fmt.Sprintf("response action %q is not supported: %s", s.Action.Name, why), "use kill, stop, freeze, isolate or rollback")
		}
		if _, ok := respActions[s.Action.Name]; !ok {
			c.fail(s.Action.Pos, fmt.Sprintf("unknown response action %q", s.Action.Name), "kill, stop, freeze, isolate or rollback")
		}
		for _, f := range s.Findings {
			if f.Name == "" || len(f.Name) > MaxIdentLen {
				c.fail(f.Pos, "empty or too long IDS check name", "e.g. \"cpu-hog\" (see 'gatevisor ids check')")
			}
			r.Findings = append(r.Findings, f.Name)
			r.findPos[f.Name] = f.Pos
		}
		for _, v := range s.Verdicts {
			vd, ok := ParseVerdict(v.Name)
			if !ok {
				c.fail(v.Pos, fmt.Sprintf("unknown verdict %q", v.Name), "allow, alert, deny or kill")
			}
			r.Verdicts = append(r.Verdicts, vd)
		}
		for _, cl := range s.Classes {
			r.Classes = append(r.Classes, c.class(cl))
			r.clsPos[cl.Name] = cl.Pos
		}
		c.p.responses = append(c.p.responses, r)
	}
}

// CheckResponses returns an error for every response this VM cannot carry
// out (cov.Findings: the checks its continuous scan reports, none without
// one; a verdict trigger's classes must be observed by a gate), in source
// order.
func (p *Policy) CheckResponses(cov Coverage) []error {
	var out []error
	for _, r := range p.responses {
		for _, f := range r.Findings {
			pos := r.findPos[f]
			if cov.Findings == nil {
				out = append(out, errAt(ErrCoverage, pos, fmt.Sprintf("response %s cannot be carried out: it answers IDS findings, and this VM runs no continuous scan", r.Name), "", "start the VM with --ids-interval 5s (or another interval)"))
				break
			}
			if !cov.Findings[f] {
				out = append(out, errAt(ErrCoverage, pos, fmt.Sprintf("response %s answers IDS findings of %q, which no check reports", r.Name, f), "", "one of: "+strings.Join(sortedKeys(cov.Findings), ", ")))
			}
		}
		if (r.Action == RespKill || r.Action == RespStop || r.Action == RespFreeze) && cov.NoProcActions != "" {
			out = append(out, errAt(ErrCoverage, r.Pos, fmt.Sprintf("response %s acts on a guest process (%s), and this VM cannot: %s", r.Name, r.Action, cov.NoProcActions), "", "answer with isolate or rollback instead, or only audit the finding"))
		}
		if r.Action == RespRollback && !cov.ReadySnapshot {
			out = append(out, errAt(ErrCoverage, r.Pos, fmt.Sprintf("response %s rolls the VM back to its snapshot \"ready\", and this VM takes none", r.Name), "", "start the VM with --snapshot-ready"))
		}
		if r.Action == RespIsolate {
			if _, ok := cov.Observers[event.ClassNet]; !ok {
				out = append(out, errAt(ErrCoverage, r.Pos, fmt.Sprintf("response %s isolates the VM's network, and the VM has no gated network", r.Name), "", "start the VM with --net isolated (or user, or tap:IF)"))
			}
		}
		for _, cl := range r.Classes {
			if _, ok := cov.Observers[cl]; !ok {
				why := cov.Absent[cl]
				if why == "" {
					why = "no gate of this VM observes " + cl.String() + " events"
				}
				out = append(out, errAt(ErrCoverage, r.clsPos[cl.String()], fmt.Sprintf("response %s answers verdicts on %s events: %s", r.Name, cl, why), "", ""))
			}
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
