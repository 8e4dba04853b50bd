package policy

import (
	"fmt"
	"path"

	"github.com/gatevisor/gatevisor/internal/event"
)

// Result is the outcome of evaluating one event.
type Result struct {
	Verdict Verdict
	Errno   int32  // for deny and kill: the errno the guest sees
	Rule    string // the deciding rule
	Reason  string
	Audit   bool // a rule asked for the decision to be recorded even if it allows
	// Next is the flow state vector after the event, if the event happens
	// (its verdict allows); nil when no flow changes state.
	Next []uint8
	// Votes lists every model's vote; only Explain fills it.
	Votes []Vote
}

// Vote is one model's opinion of an event, for explain output.
type Vote struct {
	Model   string // rule, default, te, mls, rbac, flow
	Verdict Verdict
	Rule    string
	Reason  string
}

type subjLabels struct {
	domain   int
	level    clevel
	hasLevel bool
	roles    uint64
}

type objLabels struct {
	typ      int
	level    clevel
	hasLevel bool
}

// evalCtx holds one evaluation's lazily computed labels.
type evalCtx struct {
	p        *Policy
	ev       *event.Event
	subj     subjLabels
	subjDone bool
	obj      objLabels
	objDone  bool
	exe      subjLabels
	exeDone  bool
}

func (x *evalCtx) subject() *subjLabels {
	if !x.subjDone {
		x.subjDone = true
		x.subj = x.p.labelSubject(x, x.ev)
	}
	return &x.subj
}

// execSubject labels the program an exec event starts: the same process,
// now running Path, whose parent-side view is the current subject.
func (x *evalCtx) execSubject() *subjLabels {
	if !x.exeDone {
		x.exeDone = true
		e := *x.ev
		e.Subject.Exe = x.ev.Path
		comm := path.Base(x.ev.Path)
		if len(comm) > 15 {
			comm = comm[:15]
		}
		e.Subject.Comm = comm
		e.Subject.ParentExe, e.Subject.ParentComm = x.ev.Subject.Exe, x.ev.Subject.Comm
		y := &evalCtx{p: x.p, ev: &e}
		x.exe = x.p.labelSubject(y, &e)
	}
	return &x.exe
}

func (x *evalCtx) object() *objLabels {
	if !x.objDone {
		x.objDone = true
		x.obj = objLabels{typ: 0} // unlabeled
		typed, leveled := false, false
		for i := range x.p.objects {
			o := &x.p.objects[i]
			if (typed || o.typ < 0) && (leveled || o.level == nil) {
				continue
			}
			if !o.cond(x) {
				continue
			}
			if !typed && o.typ >= 0 {
				x.obj.typ, typed = o.typ, true
			}
			if !leveled && o.level != nil {
				x.obj.level, x.obj.hasLevel, leveled = *o.level, true, true
			}
			if typed && leveled {
				break
			}
		}
	}
	return &x.obj
}

// labelSubject applies subject statements: the first matching statement
// that names a domain sets the domain, likewise for the level; roles add up.
// Without a domain statement, a label the gate attached that names a
// declared domain is the domain.
func (p *Policy) labelSubject(x *evalCtx, ev *event.Event) subjLabels {
	s := subjLabels{domain: -1}
	leveled := false
	for i := range p.subjects {
		st := &p.subjects[i]
		if st.roles == 0 && (s.domain >= 0 || st.domain < 0) && (leveled || st.level == nil) {
			continue
		}
		if !st.cond(x) {
			continue
		}
		if s.domain < 0 && st.domain >= 0 {
			s.domain = st.domain
		}
		if !leveled && st.level != nil {
			s.level, s.hasLevel, leveled = *st.level, true, true
		}
		s.roles |= st.roles
	}
	if s.domain < 0 {
		for _, l := range ev.Subject.Labels {
			for i, d := range p.domains {
				if d == l {
					s.domain = i
					break
				}
			}
			if s.domain >= 0 {
				break
			}
		}
	}
	return s
}

// first returns the index of the first rule of b that matches, or -1.
func (b *cblock) first(x *evalCtx) int32 {
	best := int32(-1)
	for f := field(0); f < nFields; f++ {
		if b.exact[f] == nil && b.prefix[f] == nil && b.guards[f] == nil {
			continue
		}
		v := getField(f, x.ev)
		for _, i := range b.guards[f][v] {
			if best >= 0 && i >= best {
				break
			}
			if b.rules[i].cond(x) {
				best = i
				break
			}
		}
		if i, ok := b.exact[f][v]; ok && (best < 0 || i < best) {
			best = i
		}
		for _, n := range b.prefixLens[f] {
			if n > len(v) {
				break
			}
			if i, ok := b.prefix[f][v[:n]]; ok && (best < 0 || i < best) {
				best = i
			}
		}
	}
	for _, i := range b.scan {
		if best >= 0 && i >= best {
			break
		}
		if b.rules[i].cond(x) {
			return i
		}
	}
	return best
}

type voter struct {
	best    cact
	have    bool
	audit   bool
	explain *[]Vote
}

func (v *voter) add(model string, a cact) {
	if v.explain != nil {
		*v.explain = append(*v.explain, Vote{Model: model, Verdict: a.verdict, Rule: a.rule, Reason: a.reason})
	}
	v.audit = v.audit || a.audit
	if !v.have || a.verdict > v.best.verdict {
		v.best, v.have = a, true
	}
}

// Evaluate decides ev. states is the subject's flow state vector (one entry
// per flow, see Flows); nil means every flow is in its initial state.
// Evaluate never panics on a valid event and denies an invalid one.
func (p *Policy) Evaluate(ev *event.Event, states []uint8) Result {
	return p.eval(ev, states, nil)
}

// Explain is Evaluate that also records every model's vote and, for
// blocks, every rule that matched (not just the first).
func (p *Policy) Explain(ev *event.Event, states []uint8) Result {
	var votes []Vote
	r := p.eval(ev, states, &votes)
	r.Votes = votes
	return r
}

func (p *Policy) eval(ev *event.Event, states []uint8, explain *[]Vote) Result {
	if err := ev.Validate(); err != nil {
		return Result{Verdict: VerdictDeny, Errno: eacces, Rule: "invalid-event", Reason: err.Error()}
	}
	x := &evalCtx{p: p, ev: ev}
	v := voter{explain: explain}
	p.ruleVote(x, &v)
	p.teVote(x, &v)
	p.mlsVote(x, &v)
	p.rbacVote(x, &v)
	next := p.flowVote(x, states, &v)
	if !v.have {
		v.add("default", p.def)
	}
	return Result{Verdict: v.best.verdict, Errno: v.best.errno, Rule: v.best.rule, Reason: v.best.reason, Audit: v.audit, Next: next}
}

// ruleVote: rules of the op's block, then of the class's block, first match
// wins; if none matches, the op block's default, then the class block's.
func (p *Policy) ruleVote(x *evalCtx, v *voter) {
	cls := x.ev.Class
	var spec *cblock
	if len(p.blocks) > 0 && x.ev.Op != "" {
		spec = p.blocks[blockKey{cls, x.ev.Op}]
	}
	cw := p.classBlock[cls]
	if v.explain != nil {
		for _, b := range []*cblock{spec, cw} {
			if b == nil {
				continue
			}
			for i := range b.rules {
				if b.rules[i].cond(x) {
					*v.explain = append(*v.explain, Vote{Model: "match", Verdict: b.rules[i].act.verdict, Rule: b.rules[i].name, Reason: "condition matched"})
				}
			}
		}
	}
	for _, b := range [2]*cblock{spec, cw} {
		if b == nil {
			continue
		}
		if i := b.first(x); i >= 0 {
			v.add("rule", b.rules[i].act)
			return
		}
	}
	for _, b := range [2]*cblock{spec, cw} {
		if b != nil && b.def != nil {
			v.add("rule", *b.def)
			return
		}
	}
}

func (p *Policy) teVote(x *evalCtx, v *voter) {
	if len(p.confined) == 0 {
		return
	}
	s := x.subject()
	cls := x.ev.Class
	if s.domain < 0 || !p.confined[[2]int{s.domain, int(cls)}] {
		return
	}
	t := x.object().typ
	ops := p.te[teKey{s.domain, t, cls}]
	d, ty := p.domains[s.domain], p.types[t]
	if ops != nil && (ops["*"] || ops[x.ev.Op]) {
		v.add("te", cact{verdict: VerdictAllow, rule: "te " + d + " " + ty, reason: fmt.Sprintf("type enforcement: allow %s %s : %s %s", d, ty, cls, x.ev.Op)})
		return
	}
	v.add("te", cact{verdict: VerdictDeny, errno: eacces, rule: "te " + d, reason: fmt.Sprintf("type enforcement: no `allow %s %s : %s %s`", d, ty, cls, x.ev.Op)})
}

func dominates(a, b clevel) bool { return a.sens >= b.sens && a.cats&b.cats == b.cats }

func (p *Policy) levelName(l clevel) string {
	s := p.sens[l.sens]
	sep := ":"
	for i, c := range p.cats {
		if l.cats&(1<<i) != 0 {
			s += sep + c
			sep = ","
		}
	}
	return s
}

func (p *Policy) mlsVote(x *evalCtx, v *voter) {
	if len(p.sens) == 0 {
		return
	}
	cls := x.ev.Class
	if cls != event.ClassFile && cls != event.ClassExec {
		return
	}
	o := x.object()
	if !o.hasLevel {
		return
	}
	s := x.subject()
	sl := s.level // zero value: the lowest sensitivity, no categories
	op := x.ev.Op
	read, write := mlsRead[op], mlsWrite[op]
	if cls == event.ClassExec {
		read, write = true, false
	} else if op == "open" {
		if fl, ok := x.ev.Arg(0); ok && fl&constants["O_ACCMODE"] != 0 {
			write = true
		}
	} else if !read && !write {
		return // not an op MLS checks (getattr, mmap)
	}
	if read && !dominates(sl, o.level) {
		v.add("mls", cact{verdict: VerdictDeny, errno: eacces, rule: "mls read",
			reason: fmt.Sprintf("MLS: no read up: subject level %s does not dominate object level %s", p.levelName(sl), p.levelName(o.level))})
		return
	}
	if write && !dominates(o.level, sl) {
		v.add("mls", cact{verdict: VerdictDeny, errno: eacces, rule: "mls write",
			reason: fmt.Sprintf("MLS: no write down: object level %s does not dominate subject level %s", p.levelName(o.level), p.levelName(sl))})
		return
	}
}

func (p *Policy) rbacVote(x *evalCtx, v *voter) {
	if len(p.roles) == 0 || x.ev.Class != event.ClassAPI {
		return
	}
	s := x.subject()
	var names []string
	for i := range p.roles {
		if s.roles&(1<<i) == 0 {
			continue
		}
		if p.roles[i].permits(x.ev.Op) {
			v.add("rbac", cact{verdict: VerdictAllow, rule: "role " + p.roles[i].name, reason: fmt.Sprintf("RBAC: role %s permits %s", p.roles[i].name, x.ev.Op)})
			return
		}
		names = append(names, p.roles[i].name)
	}
	v.add("rbac", cact{verdict: VerdictDeny, errno: eacces, rule: "rbac",
		reason: fmt.Sprintf("RBAC: no role of uid %d permits %s (roles: %v)", x.ev.Subject.UID, x.ev.Op, names)})
}

func (p *Policy) flowVote(x *evalCtx, states []uint8, v *voter) []uint8 {
	if len(p.flows) == 0 || !p.FlowRelevant(x.ev.Class, x.ev.Op) {
		return nil
	}
	var next []uint8
	for fi := range p.flows {
		f := &p.flows[fi]
		cur := f.initial
		if len(states) == len(p.flows) && int(states[fi]) < len(f.states) {
			cur = states[fi]
		}
		touched := false
		for i := range f.reqs {
			if f.reqs[i].on.class == x.ev.Class {
				touched = true
			}
		}
		for i := range f.trans {
			if f.trans[i].on.class == x.ev.Class {
				touched = true
			}
		}
		if !touched || (f.forCond != nil && !f.forCond(x)) {
			continue
		}
		for i := range f.reqs {
			r := &f.reqs[i]
			if !r.on.matches(x) {
				continue
			}
			if r.mask&(1<<cur) != 0 {
				v.add("flow", cact{verdict: VerdictAllow, rule: "flow " + f.name,
					reason: fmt.Sprintf("flow %s: in state %s", f.name, f.states[cur])})
				continue
			}
			a := r.els
			a.reason = fmt.Sprintf("flow %s: %s %s needs state %s; the process is in %s", f.name, x.ev.Class, x.ev.Op, r.need, f.states[cur])
			v.add("flow", a)
		}
		for i := range f.trans {
			t := &f.trans[i]
			if t.from != cur || !t.on.matches(x) {
				continue
			}
			if next == nil {
				next = make([]uint8, len(p.flows))
				for j := range p.flows {
					next[j] = p.flows[j].initial
					if len(states) == len(p.flows) {
						next[j] = states[j]
					}
				}
			}
			next[fi] = t.to
			if v.explain != nil {
				*v.explain = append(*v.explain, Vote{Model: "transition", Verdict: VerdictAllow, Rule: "flow " + f.name,
					Reason: fmt.Sprintf("flow %s: %s -> %s if the event happens", f.name, f.states[t.from], f.states[t.to])})
			}
			break
		}
	}
	return next
}
