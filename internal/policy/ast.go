package policy

import "fmt"

// Pos is a position in a policy file; Line and Col count from 1.
type Pos struct {
	File string
	Line int
	Col  int
}

func (p Pos) String() string {
	f := p.File
	if f == "" {
		f = "<input>"
	}
	return fmt.Sprintf("%s:%d:%d", f, p.Line, p.Col)
}

// Spec is a parsed policy: the statements of one file, or of a file and its
// includes once Load has merged them. It is plain data and binds nothing.
type Spec struct {
	// Root is the name of the root file (Load sets it).
	Root        string
	Includes    []Include
	Default     *Action // global default; nil means deny
	Types       []Ident
	Domains     []Ident
	Sensitivity []Ident // lowest first
	Categories  []Ident
	Roles       []Role
	Subjects    []SubjectStmt
	Objects     []ObjectStmt
	TE          []TEAllow
	Blocks      []Block
	Flows       []Flow
	Responses   []ResponseStmt
	Interfaces  []Interface
	Uses        []Use
	Executes    []QualName // KasperskyOS "execute EM.IExecute;" declarations
	Entities    []Entity
	Calls       []CallStmt // top-level call/security statements (no entity)
	// Advisory lists the event classes whose statements may go unenforced
	// on a VM where no gate observes them (`advisory net, call;`): the
	// statements are kept (policy test, explain) and reported as not
	// enforced, instead of making the policy an error there.
	Advisory []Ident
}

// Ident is a name with its position.
type Ident struct {
	Name string
	Pos  Pos
}

// QualName is a dotted name such as ext.ext2.open or vm.*.
type QualName = Ident

// Include is `include "file";`.
type Include struct {
	Path string
	Pos  Pos
}

// ActionKind is what a rule does when it matches.
type ActionKind uint8

const (
	ActAllow ActionKind = iota + 1
	ActAlert            // allow, and record an alert
	ActDeny
	ActKill // deny, and ask the gate to kill the subject
)

var actionNames = [...]string{"", "allow", "alert", "deny", "kill"}

func (a ActionKind) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Action is allow, alert, deny(ERRNO) or kill, optionally with `audit`.
type Action struct {
	Kind  ActionKind
	Errno string // name or number as written; "" means EACCES for deny
	Audit bool   // record the decision even when it allows
	Pos   Pos
}

// Role is `role NAME [inherits A, B] [: perm, ...];`.
type Role struct {
	Name     Ident
	Inherits []Ident
	Perms    []Ident // API action patterns: vm.stop, vm.*, *
}

// Level is an MLS level: a sensitivity and a set of categories.
type Level struct {
	Sens Ident
	Cats []Ident
}

// SubjectStmt is `subject [domain D] [level L] [roles R, ...] when COND;`.
type SubjectStmt struct {
	Domain *Ident
	Level  *Level
	Roles  []Ident
	When   Cond
	Pos    Pos
}

// ObjectStmt is `object [type T] [level L] when COND;`.
type ObjectStmt struct {
	Type  *Ident
	Level *Level
	When  Cond
	Pos   Pos
}

// TEAllow is `allow DOMAIN TYPE : CLASS { op, ... };`.
type TEAllow struct {
	Domain Ident
	Type   Ident
	Class  Ident
	Ops    []Ident // "*" allows every op
	Pos    Pos
}

// Block is `[CLASS] [OP] default: ACTION {[NAME:] COND ACTION}`: the form of
// the source documents (`open default: allow fileEq("/etc/passwd") deny(EPERM)`).
type Block struct {
	Class   Ident // "syscall" when the head is a bare op
	Op      *QualName
	Default Action
	Rules   []Rule
	Pos     Pos
}

// Rule is one condition and action inside a block.
type Rule struct {
	Name   string // "" when unnamed
	When   Cond
	Action Action
	Pos    Pos
}

// Flow is a finite-state machine per process.
type Flow struct {
	Name        Ident
	For         Cond // nil: every subject
	Initial     Ident
	Transitions []Transition
	Requires    []Require
	Pos         Pos
}

// EventMatch selects events by class, op and condition.
type EventMatch struct {
	Class Ident
	Op    *QualName
	When  Cond // nil: any
}

// Transition is `FROM -> TO on CLASS [OP] [when COND];`.
type Transition struct {
	From, To Ident
	On       EventMatch
	Pos      Pos
}

// Require is `require S, ... for CLASS [OP] [when COND] [else ACTION];`.
type Require struct {
	States []Ident
	For    EventMatch
	Else   *Action
	Pos    Pos
}

// Interface is `interface NAME { method(in Type arg, ...); ... }`: typed
// signatures that give arguments their names.
type Interface struct {
	Name    QualName
	Methods []Method
}

// Method is one signature of an interface.
type Method struct {
	Name   Ident
	Params []Param
}

// Param is `[in|out] [Type] name`.
type Param struct {
	Out  bool
	Type string
	Name Ident
}

// Use is KasperskyOS's `use call policy neq = SecurityServer.generic.call.notEquals;`.
type Use struct {
	Class  Ident // execute, call, security
	Name   Ident
	Target QualName
}

// Entity is `entity NAME { ... }`: statements that apply to subjects in domain NAME.
type Entity struct {
	Name  Ident
	Stmts []CallStmt
}

// CallStmt is one KasperskyOS configuration statement:
//
//	execute default = init;
//	call in = allow;
//	call in ext.ext2.open(mode) = neq {0} (mode), neq {-1} (mode);
//	security read = allow;
type CallStmt struct {
	Kind     string    // "execute", "call" or "security"
	Dir      string    // "in" or "out" for call
	Method   *QualName // nil: every method
	Params   []Ident   // argument names in the head
	Policies []PolicyApp
	Pos      Pos
}

// PolicyApp applies a named policy, optionally with constraint values and
// arguments: `allow`, `neq {0} (mode)`.
type PolicyApp struct {
	Name   Ident
	Values []Value
	Args   []Ident
}

// Cond is a boolean condition: *And, *Or, *Not, *Pred or *Const.
type Cond interface{ condPos() Pos }

// And is L and R.
type And struct{ L, R Cond }

// Or is L or R.
type Or struct{ L, R Cond }

// Not is not X.
type Not struct {
	X   Cond
	Pos Pos
}

// Const is true or false.
type Const struct {
	V   bool
	Pos Pos
}

// Pred is a predicate, in either of two forms:
//
//	fileEq("/etc/passwd")      Name(Args...)
//	neq {0, -1} (mode)         Name {Params...} (Args...)
type Pred struct {
	Name   string
	Params []Value // nil in the first form
	Args   []Value
	Braced bool // second form
	Pos    Pos
}

func (c *And) condPos() Pos   { return c.L.condPos() }
func (c *Or) condPos() Pos    { return c.L.condPos() }
func (c *Not) condPos() Pos   { return c.Pos }
func (c *Const) condPos() Pos { return c.Pos }
func (c *Pred) condPos() Pos  { return c.Pos }

// ValueKind is the kind of a literal.
type ValueKind uint8

const (
	ValString ValueKind = iota + 1
	ValInt
	ValIdent
)

// Value is a string, integer or identifier literal.
type Value struct {
	Kind ValueKind
	S    string // string or identifier
	I    int64
	Pos  Pos
}

func (v Value) String() string {
	switch v.Kind {
	case ValString:
		return fmt.Sprintf("%q", v.S)
	case ValInt:
		return fmt.Sprint(v.I)
	}
	return v.S
}
