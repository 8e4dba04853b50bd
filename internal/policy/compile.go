package policy

import (
	"fmt"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/gatevisor/gatevisor/internal/event"
)

// Verdict is the outcome of evaluating an event, ordered by strictness.
type Verdict uint8

const (
	VerdictAllow = Verdict(ActAllow)
	VerdictAlert = Verdict(ActAlert) // allowed, and recorded as an alert
	VerdictDeny  = Verdict(ActDeny)
	VerdictKill  = Verdict(ActKill) // denied, and the gate should kill the subject
)

func (v Verdict) String() string { return ActionKind(v).String() }

// Allows reports whether the event may proceed.
func (v Verdict) Allows() bool { return v == VerdictAllow || v == VerdictAlert }

// ParseVerdict returns the verdict named s.
func ParseVerdict(s string) (Verdict, bool) {
	for i := ActAllow; i <= ActKill; i++ {
		if actionNames[i] == s {
			return Verdict(i), true
		}
	}
	return 0, false
}

const eacces = 13

type condFn func(*evalCtx) bool

// cact is a compiled action with the rule that produced it.
type cact struct {
	verdict Verdict
	errno   int32
	audit   bool
	rule    string
	reason  string
}

type field uint8

const (
	fPath field = iota
	fExe
	fComm
	fModule
	nFields
)

type crule struct {
	name string
	cond condFn
	act  cact
	// Index: a rule whose condition is only fooEq/fooPrefixEq on one field
	// is found by map lookup instead of by scanning.
	idx    int8 // field, or -1
	prefix bool
	keys   []string
	// Guard: a rule that is not indexable but can only match when a field
	// has one of some values (exeEq("/x") and uidEq(0)) is tried only for
	// those values.
	guard     int8
	guardKeys []string
}

type blockKey struct {
	class event.Class
	op    string
}

type cblock struct {
	rules      []crule
	scan       []int32
	exact      [nFields]map[string]int32
	prefix     [nFields]map[string]int32
	prefixLens [nFields][]int
	guards     [nFields]map[string][]int32
	def        *cact
	defPos     Pos
}

type clevel struct {
	sens int
	cats uint64
}

type csubject struct {
	cond   condFn
	domain int // -1: none
	level  *clevel
	roles  uint64
}

type cobject struct {
	cond  condFn
	typ   int
	level *clevel
}

type crole struct {
	name     string
	all      bool
	exact    map[string]bool
	prefixes []string
}

func (r *crole) permits(op string) bool {
	if r.all || r.exact[op] {
		return true
	}
	for _, p := range r.prefixes {
		if strings.HasPrefix(op, p) {
			return true
		}
	}
	return false
}

type cmatch struct {
	class event.Class
	op    string // "" any
	cond  condFn // nil any
}

func (m *cmatch) matches(x *evalCtx) bool {
	return m.class == x.ev.Class && (m.op == "" || m.op == x.ev.Op) && (m.cond == nil || m.cond(x))
}

type ctrans struct {
	from, to uint8
	on       cmatch
}

type creq struct {
	mask uint64
	on   cmatch
	els  cact
	need string // state names, for reasons
}

type cflow struct {
	name    string
	states  []string
	initial uint8
	forCond condFn
	trans   []ctrans
	reqs    []creq
}

type teKey struct {
	domain, typ int
	class       event.Class
}

type param struct {
	name string
	str  bool
}

// Policy is a compiled policy, safe for concurrent use. It holds no
// per-process state: Flow states are passed in and returned by Evaluate.
type Policy struct {
	def        cact
	domains    []string
	types      []string
	sens       []string
	cats       []string
	roles      []crole
	subjects   []csubject
	objects    []cobject
	te         map[teKey]map[string]bool
	confined   map[[2]int]bool // {domain, class}
	blocks     map[blockKey]*cblock
	classBlock [event.NumClasses]*cblock
	flows      []cflow
	flowAny    [event.NumClasses]bool
	flowOps    map[blockKey]bool
	usesPID    bool
	// fileGatePos is where the policy first needs the file gate
	// (setuidExec()); zero when it does not.
	fileGatePos Pos
	nrules      int
	needs       []Need
	advisory    [event.NumClasses]bool
	responses   []Response
}

// Flows returns the names of the flows, in the order of the state vectors
// Evaluate takes and returns.
func (p *Policy) Flows() []string {
	out := make([]string, len(p.flows))
	for i := range p.flows {
		out[i] = p.flows[i].name
	}
	return out
}

// FlowState returns the name of state s of flow i.
func (p *Policy) FlowState(i int, s uint8) string {
	if i < 0 || i >= len(p.flows) || int(s) >= len(p.flows[i].states) {
		return "?"
	}
	return p.flows[i].states[s]
}

// FlowRelevant reports whether an event of this class and op can trigger or
// is constrained by a flow; such decisions depend on per-process state.
func (p *Policy) FlowRelevant(c event.Class, op string) bool {
	if int(c) < len(p.flowAny) && p.flowAny[c] {
		return true
	}
	return len(p.flowOps) > 0 && p.flowOps[blockKey{c, op}]
}

// UsesPID reports whether any condition looks at PIDs, so that decisions
// differ between processes with identical attributes.
func (p *Policy) UsesPID() bool { return p.usesPID }

// Rules returns the number of compiled rules.
func (p *Policy) Rules() int { return p.nrules }

type compiler struct {
	spec     *Spec
	p        *Policy
	domains  map[string]int
	types    map[string]int
	sens     map[string]int
	cats     map[string]int
	roles    map[string]int
	sigs     map[blockKey][]param
	uses     map[string]string // local policy name -> builtin
	userKeys map[blockKey]Pos
}

// Compile binds a Spec: it resolves names, checks that every domain, type,
// level, role and argument is declared, and builds the indexes Evaluate uses.
func Compile(spec *Spec) (pol *Policy, err error) {
	c := &compiler{
		spec: spec,
		p: &Policy{
			te:       map[teKey]map[string]bool{},
			confined: map[[2]int]bool{},
			blocks:   map[blockKey]*cblock{},
			flowOps:  map[blockKey]bool{},
		},
		domains:  map[string]int{},
		types:    map[string]int{},
		sens:     map[string]int{},
		cats:     map[string]int{},
		roles:    map[string]int{},
		sigs:     map[blockKey][]param{},
		uses:     map[string]string{},
		userKeys: map[blockKey]Pos{},
	}
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(*Error); ok {
				pol, err = nil, e
				return
			}
			pol, err = nil, errAt(ErrSemantic, Pos{}, fmt.Sprintf("internal compiler error: %v", r), "", "please report this policy")
		}
	}()
	c.compile()
	return c.p, nil
}

func (c *compiler) fail(pos Pos, msg, hint string) {
	panic(errAt(ErrSemantic, pos, msg, "", hint))
}

func declare(m map[string]int, list *[]string, id Ident, what string, c *compiler) {
	if _, dup := m[id.Name]; dup {
		c.fail(id.Pos, fmt.Sprintf("%s %s declared twice", what, id.Name), "")
	}
	m[id.Name] = len(*list)
	*list = append(*list, id.Name)
}

func (c *compiler) compile() {
	s, p := c.spec, c.p
	p.def = cact{verdict: VerdictDeny, errno: eacces, rule: "default", reason: "no rule matched; the policy default is deny"}
	if s.Default != nil {
		p.def = c.action(*s.Default, "default")
		p.def.reason = "no rule matched; the policy default is " + p.def.verdict.String()
	}
	declare(c.types, &p.types, Ident{Name: "unlabeled"}, "type", c)
	for _, id := range s.Types {
		declare(c.types, &p.types, id, "type", c)
	}
	for _, id := range s.Domains {
		declare(c.domains, &p.domains, id, "domain", c)
	}
	for _, e := range s.Entities {
		if _, ok := c.domains[e.Name.Name]; !ok {
			declare(c.domains, &p.domains, e.Name, "domain", c)
		}
	}
	for _, id := range s.Sensitivity {
		declare(c.sens, &p.sens, id, "sensitivity", c)
	}
	for _, id := range s.Categories {
		declare(c.cats, &p.cats, id, "category", c)
	}
	if len(p.cats) > 64 {
		c.fail(s.Categories[64].Pos, "too many categories", "at most 64 categories")
	}
	c.compileRoles()
	c.compileSigs()
	for _, u := range s.Uses {
		c.uses[u.Name.Name] = c.builtinPolicy(u.Target)
	}
	for _, st := range s.Subjects {
		cs := csubject{domain: -1, cond: c.cond(st.When, condCtx{where: "subject"})}
		if st.Domain != nil {
			cs.domain = c.lookup(c.domains, *st.Domain, "domain", "declare it with `domain NAME;`")
		}
		if st.Level != nil {
			l := c.level(*st.Level)
			cs.level = &l
		}
		for _, r := range st.Roles {
			cs.roles |= 1 << c.lookup(c.roles, r, "role", "declare it with `role NAME: actions;`")
		}
		p.subjects = append(p.subjects, cs)
	}
	for _, st := range s.Objects {
		co := cobject{typ: -1, cond: c.cond(st.When, condCtx{where: "object"})}
		if st.Type != nil {
			co.typ = c.lookup(c.types, *st.Type, "type", "declare it with `type NAME;`")
		}
		if st.Level != nil {
			l := c.level(*st.Level)
			co.level = &l
		}
		p.objects = append(p.objects, co)
	}
	for _, te := range s.TE {
		d := c.lookup(c.domains, te.Domain, "domain", "declare it with `domain NAME;`")
		t := c.lookup(c.types, te.Type, "type", "declare it with `type NAME;`")
		cls := c.class(te.Class)
		k := teKey{d, t, cls}
		if p.te[k] == nil {
			p.te[k] = map[string]bool{}
		}
		for _, op := range te.Ops {
			p.te[k][op.Name] = true
		}
		p.confined[[2]int{d, int(cls)}] = true
		p.nrules++
	}
	for _, b := range s.Blocks {
		c.compileBlock(b)
	}
	for _, e := range s.Entities {
		for _, st := range e.Stmts {
			c.compileCallStmt(&e.Name, st)
		}
	}
	for _, st := range s.Calls {
		c.compileCallStmt(nil, st)
	}
	if len(s.Flows) > MaxFlows {
		c.fail(s.Flows[MaxFlows].Pos, "too many flows", fmt.Sprintf("at most %d flows", MaxFlows))
	}
	seen := map[string]bool{}
	for _, f := range s.Flows {
		if seen[f.Name.Name] {
			c.fail(f.Name.Pos, "flow "+f.Name.Name+" declared twice", "")
		}
		seen[f.Name.Name] = true
		c.compileFlow(f)
	}
	for _, b := range p.blocks {
		finishBlock(b)
	}
	c.compileResponses()
	c.computeNeeds()
}

func (c *compiler) lookup(m map[string]int, id Ident, what, hint string) int {
	i, ok := m[id.Name]
	if !ok {
		c.fail(id.Pos, fmt.Sprintf("unknown %s %q", what, id.Name), hint)
	}
	return i
}

func (c *compiler) class(id Ident) event.Class {
	cls, ok := event.ParseClass(id.Name)
	if !ok {
		c.fail(id.Pos, fmt.Sprintf("unknown event class %q", id.Name), "syscall, exec, file, net, module, api or call")
	}
	return cls
}

func (c *compiler) level(l Level) clevel {
	if len(c.p.sens) == 0 {
		c.fail(l.Sens.Pos, "level used but no sensitivity declared", "declare levels with `sensitivity s0 < s1;`")
	}
	cl := clevel{sens: c.lookup(c.sens, l.Sens, "sensitivity", "declare it in `sensitivity s0 < s1;`")}
	for _, cat := range l.Cats {
		cl.cats |= 1 << c.lookup(c.cats, cat, "category", "declare it with `category c0, c1;`")
	}
	return cl
}

func (c *compiler) action(a Action, rule string) cact {
	ca := cact{verdict: Verdict(a.Kind), audit: a.Audit, rule: rule}
	switch a.Kind {
	case ActDeny, ActKill:
		ca.errno = eacces
		if a.Kind == ActKill {
			ca.errno = 1
		}
		if a.Errno != "" {
			if n, ok := errnos[a.Errno]; ok {
				ca.errno = n
			} else if v, err := parseInt(a.Errno); err == nil && v > 0 && v < 4096 {
				ca.errno = int32(v)
			} else {
				c.fail(a.Pos, fmt.Sprintf("unknown errno %q", a.Errno), "use a name such as EPERM or EACCES, or a number from 1 to 4095")
			}
		}
	}
	verb := a.Kind.String()
	if a.Kind == ActDeny && a.Errno != "" {
		verb += "(" + a.Errno + ")"
	}
	ca.reason = fmt.Sprintf("%s: the condition of rule %s matched", verb, rule)
	if strings.HasSuffix(rule, " default") {
		ca.reason = fmt.Sprintf("%s: no rule matched, and %s is %s", verb, rule, a.Kind)
	}
	return ca
}

func parseInt(s string) (int64, error) {
	var v int64
	_, err := fmt.Sscan(s, &v)
	return v, err
}

func (c *compiler) compileRoles() {
	s, p := c.spec, c.p
	if len(s.Roles) > 64 {
		c.fail(s.Roles[64].Name.Pos, "too many roles", "at most 64 roles")
	}
	for _, r := range s.Roles {
		if _, dup := c.roles[r.Name.Name]; dup {
			c.fail(r.Name.Pos, "role "+r.Name.Name+" declared twice", "")
		}
		c.roles[r.Name.Name] = len(p.roles)
		p.roles = append(p.roles, crole{name: r.Name.Name, exact: map[string]bool{}})
	}
	// Flatten inheritance; a cycle is an error.
	var visit func(i int, stack []int)
	visit = func(i int, stack []int) {
		if slices.Contains(stack, i) {
			c.fail(s.Roles[i].Name.Pos, "role inheritance cycle through "+s.Roles[i].Name.Name, "")
		}
		stack = append(stack, i)
		for _, perm := range s.Roles[i].Perms {
			addPerm(&p.roles[stack[0]], perm.Name)
		}
		for _, in := range s.Roles[i].Inherits {
			visit(c.lookup(c.roles, in, "role", "declare it with `role NAME: actions;`"), stack)
		}
	}
	for i := range s.Roles {
		visit(i, nil)
		p.nrules++
	}
}

func addPerm(r *crole, perm string) {
	switch {
	case perm == "*":
		r.all = true
	case strings.HasSuffix(perm, ".*"):
		r.prefixes = append(r.prefixes, strings.TrimSuffix(perm, "*"))
	default:
		r.exact[perm] = true
	}
}

func isStrParam(name, typ string) bool {
	switch typ {
	case "Path", "String", "string":
		return true
	}
	return typ == "" && (name == "path" || name == "filename" || name == "pathname")
}

func (c *compiler) compileSigs() {
	for name, args := range builtinSigs {
		ps := make([]param, len(args))
		for i, a := range args {
			ps[i] = param{name: a, str: isStrParam(a, "")}
		}
		c.sigs[blockKey{event.ClassSyscall, name}] = ps
	}
	for _, in := range c.spec.Interfaces {
		cls, prefix := event.ClassCall, in.Name.Name+"."
		if in.Name.Name == "syscall" {
			cls, prefix = event.ClassSyscall, ""
		}
		for _, m := range in.Methods {
			var ps []param
			for _, prm := range m.Params {
				if prm.Out {
					continue
				}
				ps = append(ps, param{name: prm.Name.Name, str: isStrParam(prm.Name.Name, prm.Type)})
			}
			c.sigs[blockKey{cls, prefix + m.Name.Name}] = ps
		}
	}
}

// builtinPolicy maps a KasperskyOS security server policy to a builtin by
// the last component of its name.
func (c *compiler) builtinPolicy(q QualName) string {
	name := q.Name[strings.LastIndexByte(q.Name, '.')+1:]
	switch name {
	case "allow", "deny", "init":
		return name
	case "notEquals", "neq":
		return "neq"
	case "equals", "eq":
		return "eq"
	case "lessThan", "lt":
		return "lt"
	case "greaterThan", "gt":
		return "gt"
	case "inRange":
		return "inRange"
	}
	c.fail(q.Pos, fmt.Sprintf("unknown security server policy %q", q.Name), "known policies end in allow, deny, init, equals, notEquals, lessThan, greaterThan or inRange")
	return ""
}

func (c *compiler) newBlock(k blockKey) *cblock {
	b := c.p.blocks[k]
	if b == nil {
		b = &cblock{}
		c.p.blocks[k] = b
		if k.op == "" {
			c.p.classBlock[k.class] = b
		}
	}
	return b
}

func (c *compiler) compileBlock(b Block) {
	cls := c.class(b.Class)
	k := blockKey{class: cls}
	label := cls.String()
	if b.Op != nil {
		k.op = b.Op.Name
		label = k.op
		if cls != event.ClassSyscall {
			label = cls.String() + " " + k.op
		}
	}
	if prev, dup := c.userKeys[k]; dup {
		c.fail(b.Pos, fmt.Sprintf("second block for %s", label), fmt.Sprintf("the first is at %s; merge the rules into it", prev))
	}
	c.userKeys[k] = b.Pos
	blk := c.newBlock(k)
	d := c.action(b.Default, label+" default")
	blk.def, blk.defPos = &d, b.Pos
	cc := condCtx{class: cls, op: k.op, where: "rule"}
	for _, r := range b.Rules {
		name := r.Name
		if name == "" {
			name = fmt.Sprintf("%s:%d", path.Base(r.Pos.File), r.Pos.Line)
			if r.Pos.File == "" {
				name = fmt.Sprintf("line %d", r.Pos.Line)
			}
		}
		cr := crule{name: name, cond: c.cond(r.When, cc), act: c.action(r.Action, name), idx: -1}
		cr.idx, cr.prefix, cr.keys = indexable(r.When)
		cr.guard = -1
		if cr.idx < 0 {
			if f, keys, ok := guardOf(r.When); ok {
				cr.guard, cr.guardKeys = int8(f), keys
			}
		}
		blk.rules = append(blk.rules, cr)
		c.p.nrules++
	}
}

// indexable reports whether cond is a disjunction of fooEq or of
// fooPrefixEq predicates on a single field, and its keys.
func indexable(cond Cond) (int8, bool, []string) {
	var keys []string
	fld, prefix := int8(-1), false
	var walk func(c Cond) bool
	walk = func(c Cond) bool {
		switch c := c.(type) {
		case *Or:
			return walk(c.L) && walk(c.R)
		case *Pred:
			f, pre, ok := indexPred(c.Name)
			if !ok || c.Braced || len(c.Args) == 0 {
				return false
			}
			if fld == -1 {
				fld, prefix = int8(f), pre
			} else if fld != int8(f) || prefix != pre {
				return false
			}
			for _, a := range c.Args {
				if a.Kind != ValString {
					return false
				}
				keys = append(keys, a.S)
			}
			return true
		}
		return false
	}
	if !walk(cond) {
		return -1, false, nil
	}
	return fld, prefix, keys
}

// guardOf returns a field and values of which one must hold for cond to be
// true: an exact predicate, either side of an and, or both sides of an or
// if they guard the same field.
func guardOf(cond Cond) (field, []string, bool) {
	switch c := cond.(type) {
	case *Pred:
		f, pre, ok := indexPred(c.Name)
		if !ok || pre || c.Braced || len(c.Args) == 0 {
			return 0, nil, false
		}
		keys := make([]string, 0, len(c.Args))
		for _, a := range c.Args {
			if a.Kind != ValString {
				return 0, nil, false
			}
			keys = append(keys, a.S)
		}
		return f, keys, true
	case *And:
		if f, k, ok := guardOf(c.L); ok {
			return f, k, true
		}
		return guardOf(c.R)
	case *Or:
		fl, kl, okl := guardOf(c.L)
		fr, kr, okr := guardOf(c.R)
		if okl && okr && fl == fr {
			return fl, append(kl, kr...), true
		}
	}
	return 0, nil, false
}

func indexPred(name string) (field, bool, bool) {
	switch name {
	case "fileEq", "pathEq":
		return fPath, false, true
	case "filePrefixEq", "pathPrefixEq":
		return fPath, true, true
	case "exeEq":
		return fExe, false, true
	case "exePrefixEq":
		return fExe, true, true
	case "commEq":
		return fComm, false, true
	case "commPrefixEq":
		return fComm, true, true
	case "moduleEq":
		return fModule, false, true
	}
	return 0, false, false
}

func finishBlock(b *cblock) {
	b.scan = b.scan[:0]
	for i := range b.rules {
		r := &b.rules[i]
		if r.idx < 0 && len(r.guardKeys) > 0 {
			if b.guards[r.guard] == nil {
				b.guards[r.guard] = map[string][]int32{}
			}
			for _, k := range r.guardKeys {
				l := b.guards[r.guard][k]
				if len(l) == 0 || l[len(l)-1] != int32(i) {
					b.guards[r.guard][k] = append(l, int32(i))
				}
			}
			continue
		}
		if r.idx < 0 {
			b.scan = append(b.scan, int32(i))
			continue
		}
		m := &b.exact[r.idx]
		if r.prefix {
			m = &b.prefix[r.idx]
		}
		if *m == nil {
			*m = map[string]int32{}
		}
		for _, k := range r.keys {
			if _, ok := (*m)[k]; !ok {
				(*m)[k] = int32(i)
			}
			if r.prefix && !slices.Contains(b.prefixLens[r.idx], len(k)) {
				b.prefixLens[r.idx] = append(b.prefixLens[r.idx], len(k))
			}
		}
	}
	for f := range b.prefixLens {
		sort.Ints(b.prefixLens[f])
	}
}

// compileCallStmt turns a KasperskyOS configuration statement into block
// rules: for `call in M(a) = p1, p2;` in entity E, a rule that allows when E
// receives M and every constraint holds, followed by one that denies.
func (c *compiler) compileCallStmt(entity *Ident, st CallStmt) {
	var scope condFn
	label := ""
	if entity != nil {
		label = "entity " + entity.Name + ": "
	}
	var k blockKey
	switch st.Kind {
	case "execute":
		k = blockKey{class: event.ClassExec}
		label += "execute default"
		if entity != nil {
			d := c.domains[entity.Name]
			scope = func(x *evalCtx) bool { return x.execSubject().domain == d }
		}
	case "call":
		k = blockKey{class: event.ClassCall}
		label += "call " + st.Dir
		dir := event.DirIn
		if st.Dir == "out" {
			dir = event.DirOut
		}
		scope = func(x *evalCtx) bool { return x.ev.Dir == dir }
		if entity != nil {
			d := c.domains[entity.Name]
			scope = func(x *evalCtx) bool { return x.ev.Dir == dir && x.subject().domain == d }
		}
	case "security":
		k = blockKey{class: event.ClassAPI}
		label += "security"
		if entity != nil {
			d := c.domains[entity.Name]
			scope = func(x *evalCtx) bool { return x.subject().domain == d }
		}
	}
	if st.Method != nil {
		k.op = st.Method.Name
		label += " " + k.op
	}
	if scope == nil {
		scope = func(*evalCtx) bool { return true }
	}
	// Argument names: the interface signature if declared, else the head's
	// parameters by position.
	cc := condCtx{class: k.class, op: k.op, where: "rule"}
	if _, ok := c.sigs[k]; !ok && len(st.Params) > 0 {
		ps := make([]param, len(st.Params))
		for i, prm := range st.Params {
			ps[i] = param{name: prm.Name, str: isStrParam(prm.Name, "")}
		}
		cc.sig = ps
	}
	var conds []condFn
	verdict := ActAllow
	for _, app := range st.Policies {
		kind, ok := c.uses[app.Name.Name]
		if !ok {
			kind = app.Name.Name
		}
		switch kind {
		case "allow", "init":
			if len(app.Values) > 0 {
				c.fail(app.Name.Pos, kind+" takes no constraint", "")
			}
		case "deny":
			verdict = ActDeny
		case "neq", "eq", "lt", "gt", "le", "ge", "inRange", "flagsSet", "flagsAny", "flagsClear":
			if st.Kind == "execute" {
				c.fail(app.Name.Pos, "argument constraints apply to calls", "")
			}
			args := make([]Value, len(app.Args))
			for i, a := range app.Args {
				args[i] = Value{Kind: ValIdent, S: a.Name, Pos: a.Pos}
			}
			conds = append(conds, c.pred(&Pred{Name: kind, Params: app.Values, Args: args, Braced: true, Pos: app.Name.Pos}, cc))
		default:
			c.fail(app.Name.Pos, fmt.Sprintf("unknown policy %q", app.Name.Name), "declare it with `use call policy NAME = SecurityServer.generic.call.notEquals;` or use allow, deny, eq, neq")
		}
	}
	blk := c.newBlock(k)
	name := fmt.Sprintf("%s (%s:%d)", label, path.Base(st.Pos.File), st.Pos.Line)
	if verdict == ActDeny {
		blk.rules = append(blk.rules, crule{name: name, idx: -1, cond: scope, act: c.action(Action{Kind: ActDeny}, name)})
		c.p.nrules++
		return
	}
	all := scope
	if len(conds) > 0 {
		all = func(x *evalCtx) bool {
			if !scope(x) {
				return false
			}
			for _, f := range conds {
				if !f(x) {
					return false
				}
			}
			return true
		}
	}
	blk.rules = append(blk.rules, crule{name: name, idx: -1, cond: all, act: c.action(Action{Kind: ActAllow}, name)})
	if len(conds) > 0 {
		d := c.action(Action{Kind: ActDeny}, name)
		d.reason = fmt.Sprintf("rule %s: a constraint failed", name)
		blk.rules = append(blk.rules, crule{name: name, idx: -1, cond: scope, act: d})
	}
	c.p.nrules++
}

func (c *compiler) compileFlow(f Flow) {
	cf := cflow{name: f.Name.Name}
	states := map[string]uint8{}
	state := func(id Ident) uint8 {
		if s, ok := states[id.Name]; ok {
			return s
		}
		if len(cf.states) >= MaxStates {
			c.fail(id.Pos, "too many states in flow "+f.Name.Name, fmt.Sprintf("at most %d", MaxStates))
		}
		states[id.Name] = uint8(len(cf.states))
		cf.states = append(cf.states, id.Name)
		return states[id.Name]
	}
	cf.initial = state(f.Initial)
	for _, t := range f.Transitions {
		state(t.From)
		state(t.To)
	}
	if f.For != nil {
		cf.forCond = c.cond(f.For, condCtx{where: "flow"})
	}
	match := func(m EventMatch) cmatch {
		cm := cmatch{class: c.class(m.Class)}
		cc := condCtx{class: cm.class, where: "rule"}
		if m.Op != nil {
			cm.op, cc.op = m.Op.Name, m.Op.Name
			c.p.flowOps[blockKey{cm.class, cm.op}] = true
		} else {
			c.p.flowAny[cm.class] = true
		}
		if m.When != nil {
			cm.cond = c.cond(m.When, cc)
		}
		return cm
	}
	for _, t := range f.Transitions {
		cf.trans = append(cf.trans, ctrans{from: states[t.From.Name], to: states[t.To.Name], on: match(t.On)})
		c.p.nrules++
	}
	for _, r := range f.Requires {
		cr := creq{on: match(r.For)}
		var names []string
		for _, s := range r.States {
			si, ok := states[s.Name]
			if !ok {
				c.fail(s.Pos, fmt.Sprintf("flow %s has no state %q", f.Name.Name, s.Name), "states are named by `initial` and by transitions")
			}
			cr.mask |= 1 << si
			names = append(names, s.Name)
		}
		cr.need = strings.Join(names, " or ")
		name := "flow " + f.Name.Name
		cr.els = cact{verdict: VerdictDeny, errno: eacces, rule: name}
		if r.Else != nil {
			cr.els = c.action(*r.Else, name)
		}
		cf.reqs = append(cf.reqs, cr)
		c.p.nrules++
	}
	c.p.flows = append(c.p.flows, cf)
}

// condCtx is where a condition appears: it decides which argument names
// resolve and which predicates are allowed.
type condCtx struct {
	class event.Class
	op    string
	sig   []param // overrides the signature of op
	where string  // subject, object, flow, rule
}

func (c *compiler) cond(cond Cond, cc condCtx) condFn {
	switch n := cond.(type) {
	case *And:
		l, r := c.cond(n.L, cc), c.cond(n.R, cc)
		return func(x *evalCtx) bool { return l(x) && r(x) }
	case *Or:
		l, r := c.cond(n.L, cc), c.cond(n.R, cc)
		return func(x *evalCtx) bool { return l(x) || r(x) }
	case *Not:
		f := c.cond(n.X, cc)
		return func(x *evalCtx) bool { return !f(x) }
	case *Const:
		v := n.V
		return func(*evalCtx) bool { return v }
	case *Pred:
		return c.pred(n, cc)
	}
	c.fail(cond.condPos(), "bad condition", "")
	return nil
}

func getField(f field, ev *event.Event) string {
	switch f {
	case fPath:
		return ev.Path
	case fExe:
		return ev.Subject.Exe
	case fComm:
		return ev.Subject.Comm
	}
	return ev.Module
}

func (c *compiler) strs(p *Pred, min, max int) []string {
	if len(p.Args) < min || (max > 0 && len(p.Args) > max) {
		c.fail(p.Pos, fmt.Sprintf("%s takes %s", p.Name, argCount(min, max, "string")), fmt.Sprintf(`%s("...")`, p.Name))
	}
	out := make([]string, len(p.Args))
	for i, a := range p.Args {
		if a.Kind != ValString {
			c.fail(a.Pos, fmt.Sprintf("%s wants a quoted string, not %s", p.Name, a), fmt.Sprintf(`%s("...")`, p.Name))
		}
		out[i] = a.S
	}
	return out
}

func argCount(min, max int, what string) string {
	switch {
	case min == max:
		return fmt.Sprintf("%d %s argument(s)", min, what)
	case max <= 0:
		return fmt.Sprintf("at least %d %s argument(s)", min, what)
	}
	return fmt.Sprintf("%d to %d %s arguments", min, max, what)
}

func (c *compiler) intVal(v Value) int64 {
	switch v.Kind {
	case ValInt:
		return v.I
	case ValIdent:
		if n, ok := constants[v.S]; ok {
			return n
		}
		if n, ok := errnos[v.S]; ok {
			return int64(n)
		}
	}
	c.fail(v.Pos, fmt.Sprintf("%s is not a number or a known constant", v), "use a number or a constant such as O_WRONLY, AF_INET, PTRACE_ATTACH, SIGKILL")
	return 0
}

func (c *compiler) ints(p *Pred, vals []Value, min, max int) []int64 {
	if len(vals) < min || (max > 0 && len(vals) > max) {
		c.fail(p.Pos, fmt.Sprintf("%s takes %s", p.Name, argCount(min, max, "number")), "")
	}
	out := make([]int64, len(vals))
	for i, v := range vals {
		out[i] = c.intVal(v)
	}
	return out
}

func (c *compiler) name(p *Pred) Ident {
	if len(p.Args) != 1 || (p.Args[0].Kind != ValIdent && p.Args[0].Kind != ValString) {
		c.fail(p.Pos, p.Name+" takes one name", p.Name+"(NAME)")
	}
	return Ident{Name: p.Args[0].S, Pos: p.Args[0].Pos}
}

func eqFn(f field, ss []string) condFn {
	if len(ss) == 1 {
		s := ss[0]
		return func(x *evalCtx) bool { return getField(f, x.ev) == s }
	}
	return func(x *evalCtx) bool { return slices.Contains(ss, getField(f, x.ev)) }
}

func prefixFn(f field, ss []string) condFn {
	return func(x *evalCtx) bool {
		v := getField(f, x.ev)
		for _, s := range ss {
			if strings.HasPrefix(v, s) {
				return true
			}
		}
		return false
	}
}

func (c *compiler) globFn(p *Pred, get func(*event.Event) string) condFn {
	pats := c.strs(p, 1, 0)
	for i, pat := range pats {
		if _, err := path.Match(pat, ""); err != nil {
			c.fail(p.Args[i].Pos, fmt.Sprintf("bad glob %q", pat), "globs use * ? and [a-z]; * does not cross '/'")
		}
	}
	return func(x *evalCtx) bool {
		v := get(x.ev)
		for _, pat := range pats {
			if ok, _ := path.Match(pat, v); ok {
				return true
			}
		}
		return false
	}
}

func strFn(ss []string, get func(*event.Event) string) condFn {
	return func(x *evalCtx) bool { return slices.Contains(ss, get(x.ev)) }
}

func intFn(vs []int64, get func(*event.Event) int64) condFn {
	return func(x *evalCtx) bool { return slices.Contains(vs, get(x.ev)) }
}

func rangeFn(vs []int64, get func(*event.Event) int64) condFn {
	lo, hi := vs[0], vs[1]
	return func(x *evalCtx) bool { v := get(x.ev); return v >= lo && v <= hi }
}

// fileOnly refuses a predicate about the file gate's subjects outside a
// rule or default of the file class: no other gate knows who the monitor
// authenticated or a setuid exec's creds.
func (c *compiler) fileOnly(p *Pred, cc condCtx) {
	if cc.class != event.ClassFile || cc.where != "rule" {
		c.fail(p.Pos, p.Name+"() is known only for file events", "use it in a rule of a `file` block: file default: deny  r: "+p.Name+"(...) allow")
	}
}

func (c *compiler) noLabels(p *Pred, cc condCtx, forbidden string) {
	if strings.Contains(forbidden, cc.where) {
		c.fail(p.Pos, fmt.Sprintf("%s cannot be used in a %s statement", p.Name, cc.where), "labels are assigned by subject and object statements, so their conditions can only look at event attributes")
	}
}

func (c *compiler) pred(p *Pred, cc condCtx) condFn {
	if p.Braced {
		return c.constraint(p, cc)
	}
	switch p.Name {
	case "fileEq", "pathEq":
		return eqFn(fPath, c.strs(p, 1, 0))
	case "filePrefixEq", "pathPrefixEq":
		return prefixFn(fPath, c.strs(p, 1, 0))
	case "fileGlob", "pathGlob":
		return c.globFn(p, func(e *event.Event) string { return e.Path })
	case "exeEq":
		return eqFn(fExe, c.strs(p, 1, 0))
	case "exePrefixEq":
		return prefixFn(fExe, c.strs(p, 1, 0))
	case "exeGlob":
		return c.globFn(p, func(e *event.Event) string { return e.Subject.Exe })
	case "commEq":
		return eqFn(fComm, c.strs(p, 1, 0))
	case "commPrefixEq":
		return prefixFn(fComm, c.strs(p, 1, 0))
	case "moduleEq":
		return eqFn(fModule, c.strs(p, 1, 0))
	case "moduleGlob":
		return c.globFn(p, func(e *event.Event) string { return e.Module })
	case "parentExeEq":
		return strFn(c.strs(p, 1, 0), func(e *event.Event) string { return e.Subject.ParentExe })
	case "parentCommEq":
		return strFn(c.strs(p, 1, 0), func(e *event.Event) string { return e.Subject.ParentComm })
	case "opPrefixEq":
		ps := c.strs(p, 1, 0)
		return func(x *evalCtx) bool { return hasAnyPrefix(x.ev.Op, ps) }
	case "opEq":
		return strFn(c.strs(p, 1, 0), func(e *event.Event) string { return e.Op })
	case "protoEq":
		return strFn(c.strs(p, 1, 0), func(e *event.Event) string { return e.Proto })
	case "addrIn", "addrEq":
		var pfx []netip.Prefix
		for i, s := range c.strs(p, 1, 0) {
			if a, err := netip.ParseAddr(s); err == nil {
				pfx = append(pfx, netip.PrefixFrom(a, a.BitLen()))
				continue
			}
			pr, err := netip.ParsePrefix(s)
			if err != nil {
				c.fail(p.Args[i].Pos, fmt.Sprintf("bad address %q", s), `addrIn("10.0.0.0/8", "192.168.1.1")`)
			}
			pfx = append(pfx, pr.Masked())
		}
		return func(x *evalCtx) bool {
			a := x.ev.Addr.Unmap()
			for _, pr := range pfx {
				if pr.Contains(a) {
					return true
				}
			}
			return false
		}
	case "portEq":
		return intFn(c.ints(p, p.Args, 1, 0), func(e *event.Event) int64 { return int64(e.Port) })
	case "portIn":
		return rangeFn(c.ints(p, p.Args, 2, 2), func(e *event.Event) int64 { return int64(e.Port) })
	case "localPortEq":
		return intFn(c.ints(p, p.Args, 1, 0), func(e *event.Event) int64 { return int64(e.LocalPort) })
	case "localPortIn":
		return rangeFn(c.ints(p, p.Args, 2, 2), func(e *event.Event) int64 { return int64(e.LocalPort) })
	case "uidEq":
		return intFn(c.ints(p, p.Args, 1, 0), func(e *event.Event) int64 { return int64(e.Subject.UID) })
	case "uidIn":
		return rangeFn(c.ints(p, p.Args, 2, 2), func(e *event.Event) int64 { return int64(e.Subject.UID) })
	case "gidEq":
		return intFn(c.ints(p, p.Args, 1, 0), func(e *event.Event) int64 { return int64(e.Subject.GID) })
	case "pidEq":
		c.p.usesPID = true
		return intFn(c.ints(p, p.Args, 1, 0), func(e *event.Event) int64 { return int64(e.Subject.PID) })
	case "ppidEq":
		c.p.usesPID = true
		return intFn(c.ints(p, p.Args, 1, 0), func(e *event.Event) int64 { return int64(e.Subject.PPID) })
	case "dirIs":
		n := c.name(p)
		var d event.Dir
		if d.UnmarshalText([]byte(n.Name)) != nil || d == event.DirNone {
			c.fail(n.Pos, fmt.Sprintf("bad direction %q", n.Name), "dirIs(in) or dirIs(out)")
		}
		return func(x *evalCtx) bool { return x.ev.Dir == d }
	case "authenticated":
		c.fileOnly(p, cc)
		users := c.strs(p, 1, 0)
		return func(x *evalCtx) bool {
			for _, u := range users {
				if slices.Contains(x.ev.Subject.Authenticated, u) {
					return true
				}
			}
			return false
		}
	case "setuidExec":
		c.fileOnly(p, cc)
		if len(p.Args) != 0 {
			c.fail(p.Pos, "setuidExec takes no arguments", "setuidExec(): the process's euid differs from its uid (a setuid exec)")
		}
		if c.p.fileGatePos.Line == 0 {
			c.p.fileGatePos = p.Pos
		}
		return func(x *evalCtx) bool { return x.ev.Subject.SetUID }
	case "labelIs":
		n := c.name(p).Name
		return func(x *evalCtx) bool {
			return slices.Contains(x.ev.Subject.Labels, n) || slices.Contains(x.ev.Labels, n)
		}
	case "hashEq":
		hs := c.strs(p, 1, 0)
		for i, h := range hs {
			if !isSHA256(h) {
				c.fail(p.Args[i].Pos, fmt.Sprintf("bad SHA-256 %q", h), `64 lower-case hex digits, as sha256sum prints them: hashEq("3d3f...")`)
			}
		}
		return strFn(hs, func(e *event.Event) string { return e.Hash })
	case "domainIs":
		c.noLabels(p, cc, "subject")
		d := c.lookup(c.domains, c.name(p), "domain", "declare it with `domain NAME;`")
		return func(x *evalCtx) bool { return x.subject().domain == d }
	case "execDomainIs":
		c.noLabels(p, cc, "subject")
		d := c.lookup(c.domains, c.name(p), "domain", "declare it with `domain NAME;`")
		return func(x *evalCtx) bool { return x.execSubject().domain == d }
	case "roleIs":
		c.noLabels(p, cc, "subject")
		r := c.lookup(c.roles, c.name(p), "role", "declare it with `role NAME: actions;`")
		return func(x *evalCtx) bool { return x.subject().roles&(1<<r) != 0 }
	case "typeIs":
		c.noLabels(p, cc, "subject object")
		t := c.lookup(c.types, c.name(p), "type", "declare it with `type NAME;`")
		return func(x *evalCtx) bool { return x.object().typ == t }
	}
	c.fail(p.Pos, fmt.Sprintf("unknown predicate %q", p.Name), suggest(p.Name))
	return nil
}

var predNames = []string{"fileEq", "filePrefixEq", "fileGlob", "pathEq", "pathPrefixEq", "pathGlob", "exeEq", "exePrefixEq", "exeGlob",
	"commEq", "commPrefixEq", "moduleEq", "moduleGlob", "parentExeEq", "parentCommEq", "opEq", "opPrefixEq", "protoEq", "addrIn", "addrEq",
	"portEq", "portIn", "localPortEq", "localPortIn", "uidEq", "uidIn", "gidEq", "pidEq", "ppidEq", "dirIs", "labelIs", "hashEq",
	"domainIs", "execDomainIs", "roleIs", "typeIs", "authenticated", "setuidExec", "eq", "neq", "lt", "le", "gt", "ge", "inRange", "flagsSet", "flagsAny", "flagsClear"}

func suggest(name string) string {
	low := strings.ToLower(name)
	for _, n := range predNames {
		if strings.ToLower(n) == low || (len(low) > 3 && strings.HasPrefix(strings.ToLower(n), low[:4])) {
			return "did you mean " + n + "? (see docs/policy.md for the predicates)"
		}
	}
	return "see docs/policy.md for the predicates"
}

// argRef resolves an argument name to a getter of its integer value, or for
// a string parameter to a getter of the event's Path.
func (c *compiler) argRef(v Value, cc condCtx) (func(*event.Event) (int64, bool), bool) {
	if v.Kind != ValIdent {
		c.fail(v.Pos, fmt.Sprintf("argument %s must be a name", v), "neq {0} (mode)")
	}
	sig := cc.sig
	if sig == nil {
		sig = c.sigs[blockKey{cc.class, cc.op}]
	}
	for i, prm := range sig {
		if prm.name == v.S {
			if prm.str {
				return nil, true
			}
			return func(e *event.Event) (int64, bool) { return e.Arg(i) }, false
		}
	}
	switch v.S {
	case "uid":
		return func(e *event.Event) (int64, bool) { return int64(e.Subject.UID), true }, false
	case "gid":
		return func(e *event.Event) (int64, bool) { return int64(e.Subject.GID), true }, false
	case "pid":
		c.p.usesPID = true
		return func(e *event.Event) (int64, bool) { return int64(e.Subject.PID), true }, false
	case "ppid":
		c.p.usesPID = true
		return func(e *event.Event) (int64, bool) { return int64(e.Subject.PPID), true }, false
	case "port":
		return func(e *event.Event) (int64, bool) { return int64(e.Port), true }, false
	case "local_port":
		return func(e *event.Event) (int64, bool) { return int64(e.LocalPort), true }, false
	case "path":
		return nil, true
	}
	where := "this block"
	if cc.op != "" {
		where = cc.class.String() + " " + cc.op
	}
	c.fail(v.Pos, fmt.Sprintf("unknown argument %q for %s", v.S, where), "declare the signature with `interface syscall { NAME(in Type arg, ...); }` (or `interface IFACE { ... }` for calls), or use uid, gid, pid, ppid, port, local_port, path")
	return nil, false
}

// constraint compiles the braced form `neq {0, -1} (mode)`. Every argument
// must satisfy it; a missing argument makes it false.
func (c *compiler) constraint(p *Pred, cc condCtx) condFn {
	if len(p.Args) == 0 {
		c.fail(p.Pos, p.Name+" needs an argument name", p.Name+" {0} (mode)")
	}
	var fns []condFn
	for _, a := range p.Args {
		get, isStr := c.argRef(a, cc)
		if isStr {
			if p.Name != "eq" && p.Name != "neq" {
				c.fail(a.Pos, fmt.Sprintf("%s compares numbers; %s is a string", p.Name, a.S), "use eq or neq with strings")
			}
			ss := make([]string, len(p.Params))
			for i, v := range p.Params {
				if v.Kind != ValString {
					c.fail(v.Pos, fmt.Sprintf("%s is a string argument; %s is not a string", a.S, v), "")
				}
				ss[i] = v.S
			}
			neg := p.Name == "neq"
			fns = append(fns, func(x *evalCtx) bool { return slices.Contains(ss, x.ev.Path) != neg })
			continue
		}
		var f func(int64) bool
		switch p.Name {
		case "eq":
			vs := c.ints(p, p.Params, 1, 0)
			f = func(v int64) bool { return slices.Contains(vs, v) }
		case "neq":
			vs := c.ints(p, p.Params, 1, 0)
			f = func(v int64) bool { return !slices.Contains(vs, v) }
		case "lt", "le", "gt", "ge":
			b := c.ints(p, p.Params, 1, 1)[0]
			switch p.Name {
			case "lt":
				f = func(v int64) bool { return v < b }
			case "le":
				f = func(v int64) bool { return v <= b }
			case "gt":
				f = func(v int64) bool { return v > b }
			default:
				f = func(v int64) bool { return v >= b }
			}
		case "inRange":
			vs := c.ints(p, p.Params, 2, 2)
			f = func(v int64) bool { return v >= vs[0] && v <= vs[1] }
		case "flagsSet":
			m := c.ints(p, p.Params, 1, 1)[0]
			f = func(v int64) bool { return v&m == m }
		case "flagsAny":
			m := c.ints(p, p.Params, 1, 1)[0]
			f = func(v int64) bool { return v&m != 0 }
		case "flagsClear":
			m := c.ints(p, p.Params, 1, 1)[0]
			f = func(v int64) bool { return v&m == 0 }
		default:
			c.fail(p.Pos, fmt.Sprintf("unknown constraint %q", p.Name), "constraints are eq, neq, lt, le, gt, ge, inRange, flagsSet, flagsAny, flagsClear")
		}
		fns = append(fns, func(x *evalCtx) bool {
			v, ok := get(x.ev)
			return ok && f(v)
		})
	}
	if len(fns) == 1 {
		return fns[0]
	}
	return func(x *evalCtx) bool {
		for _, f := range fns {
			if !f(x) {
				return false
			}
		}
		return true
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// isSHA256 reports whether s is a SHA-256 digest in lower-case hex.
func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
