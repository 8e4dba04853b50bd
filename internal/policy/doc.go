// Package policy is gatevisor's policy language: Parse turns policy text into
// a Spec without any I/O, Load follows includes through a resolver the caller
// passes in, and Compile binds a Spec into a Policy that evaluates events.
//
// A policy combines several models, each voting on an event:
//
//	event ──► subject labeling (domain, level, roles)   ─┐
//	      ──► object labeling  (type, level)             │
//	                                                     ▼
//	      rules (per class/op blocks, first match) ─► vote ┐
//	      type enforcement (allow D T : class)    ─► vote  │  strictest vote wins:
//	      MLS (no read up, no write down)         ─► vote  ├─ kill > deny > alert > allow;
//	      RBAC (API actions by role)              ─► vote  │  no vote at all: the global
//	      Flow (per-process state machines)       ─► vote ┘  default (deny unless set)
//
// The language and its grammar are documented in docs/policy.md.
//
// Policy text is untrusted: file size, nesting depth, include depth, rule
// counts and string lengths are capped, and errors name file:line:col, what
// was expected and a hint. Parsing never panics (it is fuzzed).
package policy
