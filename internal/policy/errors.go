package policy

import (
	"errors"
	"fmt"
)

// Sentinel errors; every *Error wraps one of them.
var (
	ErrSyntax   = errors.New("syntax error")
	ErrLimit    = errors.New("policy limit exceeded")
	ErrSemantic = errors.New("invalid policy")
	ErrInclude  = errors.New("include failed")
	// ErrCoverage: the policy states a rule that no gate of the VM can
	// enforce (see Policy.Check).
	ErrCoverage = errors.New("policy not enforceable here")
)

// Limits on policy input, which is untrusted.
const (
	MaxFileSize     = 1 << 20 // bytes per file
	MaxTotalSize    = 8 << 20 // bytes over a file and its includes
	MaxStringLen    = 4096
	MaxIdentLen     = 256
	MaxDepth        = 64 // nesting of conditions
	MaxIncludeDepth = 8
	MaxIncludes     = 64
	MaxRules        = 65536 // rules, statements and declarations together
	MaxStates       = 64    // per flow
	MaxFlows        = 64
	MaxValues       = 1024 // values in one {...} or (...) list
)

// Error is a policy error at a position: what went wrong, what was expected
// there, and a hint for fixing it.
type Error struct {
	Pos      Pos
	Kind     error // ErrSyntax, ErrLimit, ErrSemantic or ErrInclude
	Msg      string
	Expected string
	Hint     string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s", e.Pos, e.Msg)
	if e.Expected != "" {
		s += ", expected " + e.Expected
	}
	if e.Hint != "" {
		s += " (hint: " + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Kind }

func errAt(kind error, pos Pos, msg, expected, hint string) *Error {
	return &Error{Pos: pos, Kind: kind, Msg: msg, Expected: expected, Hint: hint}
}
