package policy

import (
	"fmt"
	"strings"
)

// Parse parses one policy file. It does no I/O: include statements are
// recorded in Spec.Includes and followed only by Load. name is used in
// error positions.
func Parse(name string, src []byte) (spec *Spec, err error) {
	toks, err := lex(name, src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, spec: &Spec{}}
	defer func() {
		// The parser reports errors by panicking with *Error; anything else is
		// a bug, which is also turned into an error rather than a crash.
		if r := recover(); r != nil {
			if e, ok := r.(*Error); ok {
				spec, err = nil, e
				return
			}
			spec, err = nil, errAt(ErrSyntax, p.peek().pos, fmt.Sprintf("internal parser error: %v", r), "", "please report this policy")
		}
	}()
	for p.peek().kind != tEOF {
		p.statement()
	}
	return p.spec, nil
}

type parser struct {
	toks  []token
	i     int
	depth int
	count int // statements and rules, against MaxRules
	spec  *Spec
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) peekN(n int) token {
	if p.i+n < len(p.toks) {
		return p.toks[p.i+n]
	}
	return p.toks[len(p.toks)-1]
}

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) fail(expected, hint string) {
	t := p.peek()
	panic(errAt(ErrSyntax, t.pos, "unexpected "+t.describe(), expected, hint))
}

func (p *parser) isPunct(s string) bool {
	t := p.peek()
	return t.kind == tPunct && t.text == s
}

func (p *parser) isWord(s string) bool {
	t := p.peek()
	return t.kind == tIdent && t.text == s
}

func (p *parser) acceptPunct(s string) bool {
	if p.isPunct(s) {
		p.next()
		return true
	}
	return false
}

func (p *parser) acceptWord(s string) bool {
	if p.isWord(s) {
		p.next()
		return true
	}
	return false
}

func (p *parser) expectPunct(s, hint string) token {
	if !p.isPunct(s) {
		p.fail(fmt.Sprintf("%q", s), hint)
	}
	return p.next()
}

func (p *parser) expectWord(s, hint string) token {
	if !p.isWord(s) {
		p.fail(fmt.Sprintf("%q", s), hint)
	}
	return p.next()
}

func (p *parser) ident(what, hint string) Ident {
	t := p.peek()
	if t.kind != tIdent {
		p.fail(what, hint)
	}
	p.next()
	return Ident{Name: t.text, Pos: t.pos}
}

// qualName parses IDENT {"." IDENT}; with star, a final "*" part is allowed
// (vm.*), and a lone "*".
func (p *parser) qualName(what, hint string, star bool) QualName {
	t := p.peek()
	if star && p.acceptPunct("*") {
		return QualName{Name: "*", Pos: t.pos}
	}
	parts := []string{p.ident(what, hint).Name}
	for p.isPunct(".") {
		p.next()
		if star && p.acceptPunct("*") {
			parts = append(parts, "*")
			break
		}
		parts = append(parts, p.ident("a name after '.'", hint).Name)
	}
	name := strings.Join(parts, ".")
	if len(name) > MaxIdentLen {
		panic(errAt(ErrLimit, t.pos, "name too long", "", fmt.Sprintf("names are limited to %d bytes", MaxIdentLen)))
	}
	return QualName{Name: name, Pos: t.pos}
}

func (p *parser) identList(what, hint string) []Ident {
	ids := []Ident{p.ident(what, hint)}
	for p.acceptPunct(",") {
		ids = append(ids, p.ident(what, hint))
		p.bump(ids[len(ids)-1].Pos)
	}
	return ids
}

func (p *parser) semi(hint string) { p.expectPunct(";", hint) }

// bump counts one statement, rule or declaration against MaxRules.
func (p *parser) bump(pos Pos) {
	p.count++
	if p.count > MaxRules {
		panic(errAt(ErrLimit, pos, "too many rules and declarations", "", fmt.Sprintf("a policy may have at most %d", MaxRules)))
	}
}

var classWords = map[string]bool{"syscall": true, "exec": true, "file": true, "net": true, "module": true, "api": true, "call": true}

// reserved words may not be used as bare syscall names in block heads.
var reserved = map[string]bool{
	"include": true, "default": true, "type": true, "domain": true, "sensitivity": true,
	"category": true, "role": true, "subject": true, "object": true, "allow": true,
	"deny": true, "alert": true, "kill": true, "flow": true, "interface": true,
	"use": true, "entity": true, "execute": true, "security": true, "not": true,
	"and": true, "or": true, "when": true, "require": true, "initial": true,
}

const stmtExpected = "a statement (include, default, advisory, type, domain, sensitivity, category, role, subject, object, allow, flow, response, interface, use, entity, execute, call, security, or a block such as `open default: allow`)"

func (p *parser) statement() {
	t := p.peek()
	if t.kind != tIdent {
		p.fail(stmtExpected, "")
	}
	p.bump(t.pos)
	switch t.text {
	case "include":
		p.next()
		s := p.peek()
		if s.kind != tString {
			p.fail("a quoted file name", `include "common.policy";`)
		}
		p.next()
		p.semi("end the include with ';'")
		p.spec.Includes = append(p.spec.Includes, Include{Path: s.text, Pos: t.pos})
	case "default":
		p.next()
		p.expectPunct(":", "write `default: deny;`")
		a := p.action()
		p.semi("end the default with ';'")
		if p.spec.Default != nil {
			panic(errAt(ErrSemantic, t.pos, "second global default", "", "a policy has one `default: ...;`"))
		}
		p.spec.Default = &a
	case "type":
		p.next()
		p.spec.Types = append(p.spec.Types, p.identList("a type name", "type etc_t, shadow_t;")...)
		p.semi("end the declaration with ';'")
	case "domain":
		p.next()
		p.spec.Domains = append(p.spec.Domains, p.identList("a domain name", "domain sshd_t, init_t;")...)
		p.semi("end the declaration with ';'")
	case "category":
		p.next()
		p.spec.Categories = append(p.spec.Categories, p.identList("a category name", "category c0, c1;")...)
		p.semi("end the declaration with ';'")
	case "sensitivity":
		p.next()
		ids := []Ident{p.ident("a sensitivity name", "sensitivity s0 < s1 < s2;")}
		for p.isPunct("<") || p.isPunct(",") {
			p.next()
			ids = append(ids, p.ident("a sensitivity name", "sensitivity s0 < s1 < s2;"))
			p.bump(t.pos)
		}
		p.semi("end the declaration with ';'")
		p.spec.Sensitivity = append(p.spec.Sensitivity, ids...)
	case "advisory":
		if n := p.peekN(1); n.kind != tIdent || n.text == "default" {
			p.block() // a syscall named advisory
			return
		}
		p.next()
		ids := p.identList("an event class", "advisory net, call;")
		p.semi("end the declaration with ';'")
		p.spec.Advisory = append(p.spec.Advisory, ids...)
	case "role":
		p.role()
	case "subject":
		p.subject()
	case "object":
		p.object()
	case "allow":
		p.teAllow()
	case "flow":
		p.flow()
	case "response":
		if n := p.peekN(1); n.kind != tIdent || n.text == "default" {
			p.block() // a syscall named response
			return
		}
		p.response()
	case "interface":
		p.iface()
	case "use":
		p.use()
	case "entity":
		p.entity()
	case "execute":
		p.next()
		if p.isWord("default") {
			p.fail("an interface name", "`execute default = ...;` belongs inside an entity { ... }")
		}
		q := p.qualName("an interface name", "execute EM.IExecute;", false)
		p.semi("end the declaration with ';'")
		p.spec.Executes = append(p.spec.Executes, q)
	case "security":
		p.spec.Calls = append(p.spec.Calls, p.callStmt())
	case "call":
		if n := p.peekN(1); n.kind == tIdent && (n.text == "in" || n.text == "out") {
			p.spec.Calls = append(p.spec.Calls, p.callStmt())
			return
		}
		p.block()
	default:
		if reserved[t.text] {
			p.fail(stmtExpected, fmt.Sprintf("%q is a keyword here", t.text))
		}
		p.block()
	}
}

func (p *parser) role() {
	pos := p.next().pos
	r := Role{Name: p.ident("a role name", "role admin: vm.*;")}
	if p.acceptWord("inherits") {
		r.Inherits = p.identList("a role name", "role operator inherits viewer: vm.restart;")
	}
	if p.acceptPunct(":") {
		r.Perms = append(r.Perms, p.qualName("an API action pattern", "role admin: vm.*, policy.load;", true))
		for p.acceptPunct(",") {
			r.Perms = append(r.Perms, p.qualName("an API action pattern", "role admin: vm.*, policy.load;", true))
			p.bump(pos)
		}
	}
	p.semi("end the role with ';'")
	p.spec.Roles = append(p.spec.Roles, r)
}

func (p *parser) level() *Level {
	l := &Level{Sens: p.ident("a sensitivity", "level s1:c0,c1")}
	if p.acceptPunct(":") {
		l.Cats = p.identList("a category", "level s1:c0,c1")
	}
	return l
}

func (p *parser) subject() {
	pos := p.next().pos
	s := SubjectStmt{Pos: pos}
	for {
		switch {
		case p.acceptWord("domain"):
			d := p.ident("a domain name", "subject domain sshd_t when exeEq(\"/usr/sbin/dropbear\");")
			s.Domain = &d
			continue
		case p.acceptWord("level"):
			s.Level = p.level()
			continue
		case p.acceptWord("roles"):
			s.Roles = p.identList("a role name", "subject roles admin when uidEq(0);")
			continue
		}
		break
	}
	if s.Domain == nil && s.Level == nil && s.Roles == nil {
		p.fail("domain, level or roles", "subject domain sshd_t level s0 when exeEq(\"/usr/sbin/dropbear\");")
	}
	p.expectWord("when", "a subject statement ends with `when CONDITION;`")
	s.When = p.cond()
	p.semi("end the subject statement with ';'")
	p.spec.Subjects = append(p.spec.Subjects, s)
}

func (p *parser) object() {
	pos := p.next().pos
	o := ObjectStmt{Pos: pos}
	for {
		switch {
		case p.acceptWord("type"):
			t := p.ident("a type name", "object type shadow_t when fileEq(\"/etc/shadow\");")
			o.Type = &t
			continue
		case p.acceptWord("level"):
			o.Level = p.level()
			continue
		}
		break
	}
	if o.Type == nil && o.Level == nil {
		p.fail("type or level", "object type shadow_t level s1 when fileEq(\"/etc/shadow\");")
	}
	p.expectWord("when", "an object statement ends with `when CONDITION;`")
	o.When = p.cond()
	p.semi("end the object statement with ';'")
	p.spec.Objects = append(p.spec.Objects, o)
}

func (p *parser) className() Ident {
	c := p.ident("an event class (syscall, exec, file, net, module, api, call)", "")
	if !classWords[c.Name] {
		panic(errAt(ErrSyntax, c.Pos, fmt.Sprintf("unknown event class %q", c.Name), "syscall, exec, file, net, module, api or call", ""))
	}
	return c
}

func (p *parser) teAllow() {
	pos := p.next().pos
	hint := "allow sshd_t etc_t : file { read open };"
	te := TEAllow{Pos: pos}
	te.Domain = p.ident("a domain", hint)
	te.Type = p.ident("a type", hint)
	p.expectPunct(":", hint)
	te.Class = p.className()
	switch {
	case p.acceptPunct("{"):
		for !p.isPunct("}") {
			te.Ops = append(te.Ops, p.qualName("an operation", hint, true))
			p.bump(pos)
			p.acceptPunct(",")
		}
		p.next()
	default:
		te.Ops = append(te.Ops, p.qualName("an operation or { ops }", hint, true))
	}
	p.semi("end the allow rule with ';'")
	p.spec.TE = append(p.spec.TE, te)
}

// block parses `[CLASS] [OP] default: ACTION {rule}`.
func (p *parser) block() {
	first := p.peek()
	b := Block{Pos: first.pos}
	if classWords[first.text] {
		b.Class = p.next().toIdent()
		if !p.isWord("default") {
			op := p.qualName("an operation or `default`", "file write default: deny", false)
			b.Op = &op
		}
	} else {
		op := p.qualName("a syscall name", "", false)
		b.Class = Ident{Name: "syscall", Pos: first.pos}
		b.Op = &op
	}
	p.expectWord("default", "a block starts like `open default: allow` or `file default: deny`")
	p.expectPunct(":", "write `default: allow` or `default: deny`")
	b.Default = p.action()
	p.acceptPunct(";")
	for p.ruleStarts() {
		t := p.peek()
		p.bump(t.pos)
		r := Rule{Pos: t.pos}
		if p.peekN(1).kind == tPunct && p.peekN(1).text == ":" {
			r.Name = p.next().text
			p.next()
		}
		r.When = p.cond()
		if !p.actionStarts() {
			p.fail("an action (allow, alert, deny, deny(ERRNO), kill) or `or`/`and`", "every condition in a block ends with the action to take")
		}
		r.Action = p.action()
		p.acceptPunct(";")
		b.Rules = append(b.Rules, r)
	}
	p.spec.Blocks = append(p.spec.Blocks, b)
}

func (t token) toIdent() Ident { return Ident{Name: t.text, Pos: t.pos} }

// ruleStarts reports whether the next tokens begin a rule inside a block
// rather than a new statement: a predicate call, not, (, !, true/false, or a
// rule name followed by ':'.
func (p *parser) ruleStarts() bool {
	t, n := p.peek(), p.peekN(1)
	switch t.kind {
	case tPunct:
		return t.text == "(" || t.text == "!"
	case tIdent:
		switch t.text {
		case "not", "true", "false":
			return true
		case "default":
			return false
		}
		return n.kind == tPunct && (n.text == "(" || n.text == "{" || n.text == ":")
	}
	return false
}

func (p *parser) actionStarts() bool {
	t := p.peek()
	return t.kind == tIdent && (t.text == "allow" || t.text == "deny" || t.text == "alert" || t.text == "kill")
}

func (p *parser) action() Action {
	t := p.peek()
	if !p.actionStarts() {
		p.fail("an action (allow, alert, deny, deny(ERRNO), kill)", "")
	}
	p.next()
	a := Action{Pos: t.pos}
	switch t.text {
	case "allow":
		a.Kind = ActAllow
	case "alert":
		a.Kind = ActAlert
	case "kill":
		a.Kind = ActKill
	case "deny":
		a.Kind = ActDeny
		if p.acceptPunct("(") {
			e := p.peek()
			switch e.kind {
			case tIdent, tInt:
				a.Errno = e.text
				p.next()
			default:
				p.fail("an errno name or number", "deny(EPERM)")
			}
			p.expectPunct(")", "deny(EPERM)")
		}
	}
	if p.acceptWord("audit") {
		a.Audit = true
	}
	return a
}

func (p *parser) enter(pos Pos) {
	p.depth++
	if p.depth > MaxDepth {
		panic(errAt(ErrLimit, pos, "conditions nested too deeply", "", fmt.Sprintf("nesting is limited to %d levels", MaxDepth)))
	}
}

func (p *parser) cond() Cond {
	p.enter(p.peek().pos)
	defer func() { p.depth-- }()
	c := p.and()
	for p.isWord("or") || p.isPunct("||") {
		p.next()
		c = &Or{L: c, R: p.and()}
	}
	return c
}

func (p *parser) and() Cond {
	c := p.unary()
	for p.isWord("and") || p.isPunct("&&") {
		p.next()
		c = &And{L: c, R: p.unary()}
	}
	return c
}

func (p *parser) unary() Cond {
	t := p.peek()
	p.enter(t.pos)
	defer func() { p.depth-- }()
	switch {
	case p.acceptWord("not") || p.acceptPunct("!"):
		return &Not{X: p.unary(), Pos: t.pos}
	case p.acceptPunct("("):
		c := p.cond()
		p.expectPunct(")", "close the parenthesis")
		return c
	case p.acceptWord("true"):
		return &Const{V: true, Pos: t.pos}
	case p.acceptWord("false"):
		return &Const{V: false, Pos: t.pos}
	}
	return p.pred()
}

const predHint = `predicates look like fileEq("/etc/passwd") or neq {0} (mode)`

func (p *parser) pred() *Pred {
	t := p.peek()
	if t.kind != tIdent || reserved[t.text] {
		p.fail("a condition (a predicate such as fileEq(\"/etc/passwd\"), not, or parentheses)", predHint)
	}
	p.next()
	pr := &Pred{Name: t.text, Pos: t.pos}
	if p.acceptPunct("{") {
		pr.Braced = true
		pr.Params = p.values("}")
		p.expectPunct("(", "neq {0} (mode): the argument names follow in parentheses")
		pr.Args = p.values(")")
		return pr
	}
	if !p.acceptPunct("(") {
		p.fail("'(' or '{' after the predicate name", predHint)
	}
	pr.Args = p.values(")")
	return pr
}

// values parses a comma-separated list up to and including the closing punct.
func (p *parser) values(closing string) []Value {
	var vs []Value
	for !p.acceptPunct(closing) {
		if len(vs) > 0 {
			if !p.acceptPunct(",") {
				p.fail(fmt.Sprintf("',' or %q", closing), "")
			}
		}
		vs = append(vs, p.value())
		if len(vs) > MaxValues {
			panic(errAt(ErrLimit, vs[0].Pos, "too many values in a list", "", fmt.Sprintf("lists are limited to %d values", MaxValues)))
		}
	}
	return vs
}

func (p *parser) value() Value {
	t := p.peek()
	switch t.kind {
	case tString:
		p.next()
		return Value{Kind: ValString, S: t.text, Pos: t.pos}
	case tInt:
		p.next()
		return Value{Kind: ValInt, I: t.val, Pos: t.pos}
	case tIdent:
		p.next()
		return Value{Kind: ValIdent, S: t.text, Pos: t.pos}
	case tPunct:
		if t.text == "-" && p.peekN(1).kind == tInt {
			p.next()
			n := p.next()
			return Value{Kind: ValInt, I: -n.val, Pos: t.pos}
		}
	}
	p.fail("a value (\"string\", number or name)", "")
	return Value{}
}

func (p *parser) eventMatch(hint string) EventMatch {
	m := EventMatch{Class: p.className()}
	if p.peek().kind == tIdent && !p.isWord("when") && !p.isWord("else") {
		op := p.qualName("an operation", hint, false)
		m.Op = &op
	}
	if p.acceptWord("when") {
		m.When = p.cond()
	}
	return m
}

func (p *parser) flow() {
	pos := p.next().pos
	hint := "flow creds for exeEq(\"/usr/bin/agent\") { initial locked; locked -> open on file open when fileEq(\"/etc/agent/key\"); require open for net connect; }"
	f := Flow{Pos: pos, Name: p.ident("a flow name", hint)}
	if p.acceptWord("for") {
		f.For = p.cond()
	}
	p.expectPunct("{", hint)
	for !p.acceptPunct("}") {
		t := p.peek()
		p.bump(t.pos)
		switch {
		case p.acceptWord("initial"):
			if f.Initial.Name != "" {
				panic(errAt(ErrSemantic, t.pos, "second initial state", "", "a flow has one initial state"))
			}
			f.Initial = p.ident("a state name", hint)
		case p.acceptWord("require"):
			r := Require{Pos: t.pos, States: p.identList("a state name", hint)}
			p.expectWord("for", "require STATE for CLASS [OP] [when COND];")
			r.For = p.eventMatch(hint)
			if p.acceptWord("else") {
				a := p.action()
				r.Else = &a
			}
			f.Requires = append(f.Requires, r)
		case t.kind == tIdent:
			tr := Transition{Pos: t.pos, From: p.ident("a state", hint)}
			p.expectPunct("->", "a transition is FROM -> TO on CLASS [OP] [when COND];")
			tr.To = p.ident("a state", hint)
			p.expectWord("on", "a transition is FROM -> TO on CLASS [OP] [when COND];")
			tr.On = p.eventMatch(hint)
			f.Transitions = append(f.Transitions, tr)
		default:
			p.fail("initial, require, a transition or '}'", hint)
		}
		p.semi("end each flow statement with ';'")
	}
	if f.Initial.Name == "" {
		panic(errAt(ErrSemantic, pos, fmt.Sprintf("flow %s has no initial state", f.Name.Name), "", "add `initial STATE;`"))
	}
	p.spec.Flows = append(p.spec.Flows, f)
}

func (p *parser) iface() {
	pos := p.next().pos
	hint := "interface ext.ext2 { open(in Path path, in Mode mode, out Handle h); }"
	in := Interface{Name: p.qualName("an interface name", hint, false)}
	p.expectPunct("{", hint)
	for !p.acceptPunct("}") {
		p.bump(pos)
		m := Method{Name: p.ident("a method name", hint)}
		p.expectPunct("(", hint)
		for !p.acceptPunct(")") {
			if len(m.Params) > 0 {
				p.expectPunct(",", hint)
			}
			var prm Param
			if p.acceptWord("out") {
				prm.Out = true
			} else {
				p.acceptWord("in")
			}
			id := p.ident("a parameter", hint)
			if p.peek().kind == tIdent {
				prm.Type = id.Name
				id = p.ident("a parameter name", hint)
			}
			prm.Name = id
			m.Params = append(m.Params, prm)
			if len(m.Params) > MaxValues {
				panic(errAt(ErrLimit, id.Pos, "too many parameters", "", ""))
			}
		}
		p.semi("end each method with ';'")
		in.Methods = append(in.Methods, m)
	}
	p.spec.Interfaces = append(p.spec.Interfaces, in)
}

func (p *parser) use() {
	p.next()
	hint := "use call policy neq = SecurityServer.generic.call.notEquals;"
	u := Use{Class: p.ident("execute, call or security", hint)}
	switch u.Class.Name {
	case "execute", "call", "security":
	default:
		panic(errAt(ErrSyntax, u.Class.Pos, fmt.Sprintf("unexpected %q", u.Class.Name), "execute, call or security", hint))
	}
	p.expectWord("policy", hint)
	u.Name = p.ident("a policy name", hint)
	p.expectPunct("=", hint)
	u.Target = p.qualName("a security server policy", hint, false)
	p.semi("end the use declaration with ';'")
	p.spec.Uses = append(p.spec.Uses, u)
}

func (p *parser) entity() {
	p.next()
	e := Entity{Name: p.ident("an entity name", "entity FS { call in = allow; }")}
	p.expectPunct("{", "entity FS { ... }")
	for !p.acceptPunct("}") {
		p.bump(p.peek().pos)
		if !p.isWord("execute") && !p.isWord("call") && !p.isWord("security") {
			p.fail("execute, call, security or '}'", "entity statements look like `call in = allow;`")
		}
		e.Stmts = append(e.Stmts, p.callStmt())
	}
	p.spec.Entities = append(p.spec.Entities, e)
}

// callStmt parses a KasperskyOS configuration statement (see CallStmt).
func (p *parser) callStmt() CallStmt {
	t := p.next()
	s := CallStmt{Kind: t.text, Pos: t.pos}
	hint := "call in ext.ext2.open(mode) = neq {0} (mode);"
	switch t.text {
	case "execute":
		p.expectWord("default", "execute default = init;")
	case "call":
		d := p.ident("in or out", hint)
		if d.Name != "in" && d.Name != "out" {
			panic(errAt(ErrSyntax, d.Pos, fmt.Sprintf("unexpected %q", d.Name), "in or out", hint))
		}
		s.Dir = d.Name
		if !p.isPunct("=") {
			m := p.qualName("a method name or '='", hint, false)
			s.Method = &m
			if p.acceptPunct("(") {
				for !p.acceptPunct(")") {
					if len(s.Params) > 0 {
						p.expectPunct(",", hint)
					}
					s.Params = append(s.Params, p.ident("an argument name", hint))
					if len(s.Params) > MaxValues {
						panic(errAt(ErrLimit, t.pos, "too many arguments", "", ""))
					}
				}
			}
		}
	case "security":
		m := p.qualName("a security method", "security read = allow;", false)
		s.Method = &m
	}
	p.expectPunct("=", "a configuration statement binds a policy: `... = allow;`")
	for {
		app := PolicyApp{Name: p.ident("a policy name", hint)}
		if p.acceptPunct("{") {
			app.Values = p.values("}")
			p.expectPunct("(", "neq {0} (mode)")
			for !p.acceptPunct(")") {
				if len(app.Args) > 0 {
					p.expectPunct(",", hint)
				}
				app.Args = append(app.Args, p.ident("an argument name", hint))
				if len(app.Args) > MaxValues {
					panic(errAt(ErrLimit, t.pos, "too many arguments", "", ""))
				}
			}
		}
		s.Policies = append(s.Policies, app)
		if !p.acceptPunct(",") {
			break
		}
	}
	p.semi("end the statement with ';'")
	return s
}
