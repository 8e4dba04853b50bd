package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/gatevisor/gatevisor/internal/event"
)

// Need is one thing a policy says about events that only a gate observing
// them can keep: a rule that denies, alerts, kills or audits, a default
// other than a silent allow, a flow that must see events to move, type
// enforcement or MLS levels that deny what they do not allow, roles that
// decide API actions. What a gate does not observe, it cannot enforce; the
// monitor checks every Need against the gates of a VM (Check) and refuses a
// policy with one that no gate covers.
//
// A silent allow (allow without audit) needs no gate: it is what happens
// when nothing intervenes.
type Need struct {
	Class event.Class
	// Op is the op the statement is about; "" means every op of the class.
	Op string
	// Prefix says Op is a prefix (opPrefixEq, a role's `vm.*`).
	Prefix bool
	// Default says the need comes from the global `default:`, which
	// applies only to classes some gate of the VM observes.
	Default bool
	// Grant says the need comes from a role's permission: it names an
	// action that must exist, and decides nothing by itself.
	Grant bool
	// Args, for a need from a rule of an op's block, says the rule can
	// match only events whose argument Args.Arg is one of Args.Values
	// (an `eq {...} (arg)` constraint in every way the condition can
	// hold); nil: any arguments.
	Args *ArgSet
	Pos  Pos
	// What names the statement: "rule no_write_bin", "block `file`", ...
	What string
}

func (n Need) String() string {
	op := n.Op
	switch {
	case op == "":
		op = "every " + n.Class.String() + " event"
	case n.Prefix:
		op = n.Class.String() + " " + op + "*"
	default:
		op = n.Class.String() + " " + op
	}
	return fmt.Sprintf("%s: %s (%s)", n.Pos, n.What, op)
}

// Needs returns what the policy needs observed, in source order.
func (p *Policy) Needs() []Need { return slices.Clone(p.needs) }

// Uses reports whether a statement of the policy is about class c (not
// counting the global default).
func (p *Policy) Uses(c event.Class) bool {
	for _, n := range p.needs {
		if n.Class == c && !n.Default {
			return true
		}
	}
	return false
}

// Advisory reports whether the policy marks class c advisory.
func (p *Policy) Advisory(c event.Class) bool {
	return int(c) < len(p.advisory) && p.advisory[c]
}

// silent reports whether an action needs no gate: a plain allow.
func silent(a Action) bool { return a.Kind == ActAllow && !a.Audit }

// computeNeeds walks the spec once the compiler has checked it.
func (c *compiler) computeNeeds() {
	s, p := c.spec, c.p
	add := func(n Need) { p.needs = append(p.needs, n) }
	for _, id := range s.Advisory {
		p.advisory[c.class(id)] = true
	}
	classBlock := map[event.Class]bool{}
	for _, b := range s.Blocks {
		if b.Op == nil {
			classBlock[c.class(b.Class)] = true
		}
	}
	// The global default decides every event of a class without a class
	// block, except the ops that have their own.
	if s.Default != nil && !silent(*s.Default) || s.Default == nil {
		pos := Pos{File: s.Root, Line: 1, Col: 1}
		what := "the global default (deny, as no `default:` is given)"
		if s.Default != nil {
			pos, what = s.Default.Pos, "the global default ("+s.Default.Kind.String()+")"
		}
		for cl := event.Class(1); int(cl) < event.NumClasses; cl++ {
			if !classBlock[cl] {
				add(Need{Class: cl, Default: true, Pos: pos, What: what})
			}
		}
	}
	for _, b := range s.Blocks {
		cl := c.class(b.Class)
		if b.Op != nil {
			what := "block `" + b.Op.Name + "`"
			if cl != event.ClassSyscall {
				what = "block `" + cl.String() + " " + b.Op.Name + "`"
			}
			if !silent(b.Default) {
				add(Need{Class: cl, Op: b.Op.Name, Pos: b.Pos, What: what + " default " + b.Default.Kind.String()})
			}
			sig := c.sigs[blockKey{cl, b.Op.Name}]
			for _, r := range b.Rules {
				if !silent(r.Action) {
					add(Need{Class: cl, Op: b.Op.Name, Pos: r.Pos, What: ruleName(r), Args: c.argSetOf(r.When, sig)})
				}
			}
			continue
		}
		if !silent(b.Default) {
			add(Need{Class: cl, Pos: b.Pos, What: "block `" + cl.String() + " default: " + b.Default.Kind.String() + "`"})
		}
		for _, r := range b.Rules {
			if silent(r.Action) {
				continue
			}
			addOps(add, Need{Class: cl, Pos: r.Pos, What: ruleName(r)}, r.When)
		}
	}
	for _, te := range s.TE {
		add(Need{Class: c.class(te.Class), Pos: te.Pos, What: fmt.Sprintf("type enforcement `allow %s %s` (confines %s on every %s op)", te.Domain.Name, te.Type.Name, te.Domain.Name, te.Class.Name)})
	}
	for _, o := range s.Objects {
		if o.Level == nil {
			continue
		}
		for _, ops := range []map[string]bool{mlsRead, mlsWrite} {
			for op := range ops {
				add(Need{Class: event.ClassFile, Op: op, Pos: o.Pos, What: "an object level (MLS checks file op " + op + ")"})
			}
		}
		add(Need{Class: event.ClassExec, Pos: o.Pos, What: "an object level (MLS checks every exec)"})
	}
	for _, r := range s.Roles {
		add(Need{Class: event.ClassAPI, Pos: r.Name.Pos, What: "role " + r.Name.Name + " (RBAC decides every API action)"})
		for _, perm := range r.Perms {
			n := Need{Class: event.ClassAPI, Grant: true, Pos: perm.Pos, What: "role " + r.Name.Name + " grants " + perm.Name, Op: perm.Name}
			switch {
			case perm.Name == "*":
				n.Op = ""
			case strings.HasSuffix(perm.Name, ".*"):
				n.Op, n.Prefix = strings.TrimSuffix(perm.Name, "*"), true
			}
			add(n)
		}
	}
	for _, f := range s.Flows {
		for _, m := range flowMatches(f) {
			n := Need{Class: c.class(m.Class), Pos: f.Pos, What: "flow " + f.Name.Name}
			if m.Op != nil {
				n.Op = m.Op.Name
			}
			add(n)
		}
	}
	calls := slices.Clone(s.Calls)
	for _, e := range s.Entities {
		calls = append(calls, e.Stmts...)
	}
	for _, st := range calls {
		n := Need{Pos: st.Pos, What: st.Kind + " statement"}
		switch st.Kind {
		case "execute":
			n.Class = event.ClassExec
		case "call":
			n.Class = event.ClassCall
		case "security":
			n.Class = event.ClassAPI
		}
		if st.Method != nil && st.Kind != "execute" {
			n.Op = st.Method.Name
		}
		add(n)
	}
}

func ruleName(r Rule) string {
	if r.Name != "" {
		return "rule " + r.Name
	}
	return "rule at " + r.Pos.String()
}

func flowMatches(f Flow) []EventMatch {
	var out []EventMatch
	for _, st := range f.Transitions {
		out = append(out, st.On)
	}
	for _, r := range f.Requires {
		out = append(out, r.For)
	}
	return out
}

// ArgSet is a set of values of one argument of an op's signature.
type ArgSet struct {
	Arg    int // index in the op's signature
	Values []int64
}

// argSetOf returns the values of one integer argument of sig that cond
// can hold for, when it restricts one: `eq {...} (arg)` restricts, `and`
// when either side does (both on the same argument: the intersection),
// `or` when both sides restrict the same argument (the union); `not`
// never does. nil: no restriction known.
func (c *compiler) argSetOf(cond Cond, sig []param) *ArgSet {
	switch x := cond.(type) {
	case *Pred:
		if !x.Braced || x.Name != "eq" || len(x.Args) != 1 || x.Args[0].Kind != ValIdent {
			return nil
		}
		for i, prm := range sig {
			if prm.name != x.Args[0].S || prm.str {
				continue
			}
			set := &ArgSet{Arg: i}
			for _, v := range x.Params {
				set.Values = append(set.Values, c.intVal(v))
			}
			return set
		}
	case *And:
		l, r := c.argSetOf(x.L, sig), c.argSetOf(x.R, sig)
		switch {
		case l != nil && r != nil && l.Arg == r.Arg:
			both := &ArgSet{Arg: l.Arg, Values: []int64{}}
			for _, v := range l.Values {
				if slices.Contains(r.Values, v) {
					both.Values = append(both.Values, v)
				}
			}
			return both
		case l != nil:
			return l
		}
		return r
	case *Or:
		l, r := c.argSetOf(x.L, sig), c.argSetOf(x.R, sig)
		if l != nil && r != nil && l.Arg == r.Arg {
			return &ArgSet{Arg: l.Arg, Values: append(slices.Clone(l.Values), r.Values...)}
		}
	}
	return nil
}

// ArgValues returns the values of argument arg (an index in op's
// signature) of the events of class cl and op that some statement needs
// observed: a gate that sees only the events with those values keeps
// every such statement (the others reach only silent allows). bounded is
// false when a statement needs events of op whatever that argument is.
func (p *Policy) ArgValues(cl event.Class, op string, arg int) (vals []int64, bounded bool) {
	set := map[int64]bool{}
	for _, n := range p.needs {
		if n.Class != cl || n.Grant {
			continue
		}
		switch {
		case n.Default && p.blocks[blockKey{cl, op}] != nil:
			continue // the op's block default decides what its rules do not
		case n.Op == "", n.Prefix && strings.HasPrefix(op, n.Op):
			return nil, false
		case n.Op != op:
			continue
		case n.Args == nil || n.Args.Arg != arg:
			return nil, false
		}
		for _, v := range n.Args.Values {
			set[v] = true
		}
	}
	for v := range set {
		vals = append(vals, v)
	}
	slices.Sort(vals)
	return vals, true
}

// DenyErrnos returns every errno a deny or kill of an event of class cl
// and op can carry under the policy (a superset: rules of the class's
// block about other ops count too), for gates that can refuse an event
// only with one errno.
func (p *Policy) DenyErrnos(cl event.Class, op string) []int32 {
	set := map[int32]bool{}
	add := func(a *cact) {
		if a != nil && (a.verdict == VerdictDeny || a.verdict == VerdictKill) {
			set[a.errno] = true
		}
	}
	spec, cw := p.blocks[blockKey{cl, op}], p.classBlock[cl]
	haveDef := false
	for _, b := range []*cblock{spec, cw} {
		if b == nil {
			continue
		}
		for i := range b.rules {
			add(&b.rules[i].act)
		}
		if b.def != nil {
			add(b.def)
			haveDef = true
		}
	}
	if !haveDef {
		add(&p.def)
	}
	for k := range p.confined {
		if k[1] == int(cl) {
			set[eacces] = true
		}
	}
	if len(p.sens) > 0 && (cl == event.ClassFile || cl == event.ClassExec) || len(p.roles) > 0 && cl == event.ClassAPI {
		set[eacces] = true
	}
	if len(p.flows) > 0 && p.FlowRelevant(cl, op) {
		for i := range p.flows {
			for j := range p.flows[i].reqs {
				add(&p.flows[i].reqs[j].els)
			}
		}
	}
	var out []int32
	for e := range set {
		out = append(out, e)
	}
	slices.Sort(out)
	return out
}

// addOps adds n once per op cond restricts events to, or once for every op
// when it does not restrict them.
func addOps(add func(Need), n Need, cond Cond) {
	ops, ok := opsOf(cond)
	if !ok {
		add(n)
		return
	}
	for _, o := range ops {
		m := n
		m.Op, m.Prefix = o.name, o.prefix
		add(m)
	}
}

type opName struct {
	name   string
	prefix bool
}

// opsOf returns a superset of the ops cond can match, and whether it
// restricts the op at all: opEq and opPrefixEq restrict, `and` restricts
// when either side does, `or` when both do; `not` never does.
func opsOf(c Cond) ([]opName, bool) {
	switch c := c.(type) {
	case *Pred:
		if c.Braced || c.Name != "opEq" && c.Name != "opPrefixEq" {
			return nil, false
		}
		var out []opName
		for _, v := range c.Args {
			out = append(out, opName{v.S, c.Name == "opPrefixEq"})
		}
		return out, true
	case *And:
		l, lr := opsOf(c.L)
		r, rr := opsOf(c.R)
		switch {
		case lr && rr:
			if both := intersectOps(l, r); both != nil {
				return both, true
			}
			return l, true
		case lr:
			return l, true
		case rr:
			return r, true
		}
	case *Or:
		l, lr := opsOf(c.L)
		r, rr := opsOf(c.R)
		if lr && rr {
			return append(l, r...), true
		}
	case *Const:
		if !c.V {
			return []opName{}, true
		}
	}
	return nil, false
}

// intersectOps intersects two lists of exact ops; nil when either has a
// prefix (the caller then keeps one side, a superset).
func intersectOps(a, b []opName) []opName {
	out := []opName{}
	for _, x := range a {
		if x.prefix {
			return nil
		}
		for _, y := range b {
			if y.prefix {
				return nil
			}
			if x.name == y.name {
				out = append(out, x)
			}
		}
	}
	return out
}

// Observer is what one gate of a VM observes of a class of events.
type Observer struct {
	// Gate names the gate for messages ("the file gate").
	Gate string
	// All says the gate observes every event of the class.
	All bool
	// Ops are the ops the gate can observe, sorted; with All, they are
	// every op the class has. Without All, a policy must name the ops it
	// needs (the syscall gate traps only the calls a policy names).
	Ops []string
	// PartialWhy explains, without All, why not every op is observed.
	PartialWhy string
	// AnyOp says the ops are not known (no kernel to read them from):
	// any op a policy names is taken on trust.
	AnyOp bool
}

// Coverage is what the gates of one VM observe, per class. A class with no
// observer has a reason in Absent ("the network gate needs --net").
type Coverage struct {
	Observers map[event.Class]Observer
	Absent    map[event.Class]string
	// Findings are the IDS checks whose findings the VM's continuous
	// scan reports (responses answer them); nil: no continuous scan.
	Findings map[string]bool
	// FileGate says the VM serves files through the file gate (run
	// --files), which alone reads a subject's setuid creds.
	FileGate bool
	// ReadySnapshot says the VM takes snapshot "ready" at boot (run
	// --snapshot-ready): a response may roll back to it.
	ReadySnapshot bool
	// NoProcActions, when set, says why the VM cannot act on a guest
	// process from below (kill, stop, freeze): a response doing so is
	// refused.
	NoProcActions string
}

// Problem is a statement no gate of the VM enforces.
type Problem struct {
	Need Need
	// Why says what is missing and how to get it.
	Why string
	// Advisory says the policy marks the class advisory: a note, not an
	// error.
	Advisory bool
}

func (pr Problem) String() string {
	s := fmt.Sprintf("%s: %s is not enforced: %s", pr.Need.Pos, pr.Need.What, pr.Why)
	if pr.Advisory {
		s += " (advisory: accepted, not enforced)"
	}
	return s
}

// Error returns the problem as a positioned policy error.
func (pr Problem) Error() error {
	return errAt(ErrCoverage, pr.Need.Pos, pr.Need.What+" cannot be enforced: "+pr.Why, "",
		fmt.Sprintf("or mark the class advisory with `advisory %s;` to accept it unenforced", pr.Need.Class))
}

// Check returns every need of p that cov does not cover, in source order.
// A need of the global default on a class no gate observes is not a
// problem: no event of that class happens on the VM.
func (p *Policy) Check(cov Coverage) []Problem {
	var out []Problem
	for _, n := range p.needs {
		why := cov.uncovered(n)
		if why == "" {
			continue
		}
		out = append(out, Problem{Need: n, Why: why, Advisory: p.Advisory(n.Class)})
	}
	if p.fileGatePos.Line != 0 && !cov.FileGate {
		out = append(out, Problem{Need: Need{Class: event.ClassFile, Pos: p.fileGatePos, What: "setuidExec()"},
			Why: "only the file gate reads whether a process's creds changed by a setuid exec: serve files with run --files NAME=DIR", Advisory: p.Advisory(event.ClassFile)})
	}
	return out
}

func (cov Coverage) uncovered(n Need) string {
	o, ok := cov.Observers[n.Class]
	if !ok {
		if n.Default || n.Grant && n.Class != event.ClassAPI {
			return ""
		}
		why := cov.Absent[n.Class]
		if why == "" {
			why = "no gate of this VM observes " + n.Class.String() + " events"
		}
		return why
	}
	if n.Op == "" {
		if o.All || n.Grant {
			return ""
		}
		if n.Default {
			return fmt.Sprintf("it would decide every %s event, but %s (%s): add a `%s default: allow` block and rules for the ops to control",
				n.Class, o.Gate, o.PartialWhy, n.Class)
		}
		return fmt.Sprintf("it applies to every %s event, but %s (%s): restrict it with opEq(...)", n.Class, o.Gate, o.PartialWhy)
	}
	if o.AnyOp {
		return ""
	}
	if n.Prefix {
		for _, op := range o.Ops {
			if strings.HasPrefix(op, n.Op) {
				return ""
			}
		}
		return fmt.Sprintf("%s observes no %s op starting with %q (it observes: %s)", o.Gate, n.Class, n.Op, listOps(o.Ops))
	}
	if i := sort.SearchStrings(o.Ops, n.Op); i < len(o.Ops) && o.Ops[i] == n.Op {
		return ""
	}
	if n.Class == event.ClassSyscall {
		return fmt.Sprintf("%s finds no system call %q in this kernel", o.Gate, n.Op)
	}
	return fmt.Sprintf("%s observes no %s op %q (it observes: %s)", o.Gate, n.Class, n.Op, listOps(o.Ops))
}

func listOps(ops []string) string {
	if len(ops) > 24 {
		return strings.Join(ops[:24], ", ") + fmt.Sprintf(", ... (%d in all)", len(ops))
	}
	return strings.Join(ops, ", ")
}

// Ops returns the ops of class cl that the policy needs observed, resolved
// against the ops observer o has: all of them when a need covers every op.
// This is what a gate arms; it never looks at the policy's syntax.
// A need on every op of a class the gate observes only in part (an
// advisory one: Check refuses it otherwise) arms nothing.
func (p *Policy) Ops(cl event.Class, o Observer) (ops []string, all bool) {
	set := map[string]bool{}
	gateOps := o.Ops
	for _, n := range p.needs {
		if n.Class != cl || n.Grant {
			continue
		}
		switch {
		case n.Op == "" && !o.All:
			continue
		case n.Op == "":
			return slices.Clone(gateOps), true
		case n.Prefix:
			for _, op := range gateOps {
				if strings.HasPrefix(op, n.Op) {
					set[op] = true
				}
			}
		default:
			set[n.Op] = true
		}
	}
	for op := range set {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	return ops, false
}
