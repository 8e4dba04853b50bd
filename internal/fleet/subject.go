// Package fleet joins gatevisor monitors to a fleet on NATS: each monitor
// publishes its audit records, its event stream (IDS observations and
// findings, gate decisions as the event stream aggregates them, notices)
// and its state into JetStream streams, and answers policy pushes; the
// fleet commands list the fleet, follow its events and push policies.
//
// Subjects (one token per name; a '.' in a host or VM name, which VM
// names may contain, is written "%2E" and a '%' "%25"):
//
//	gatevisor.<host>.<vm>.audit             every audit record (stream GATEVISOR_EVENTS)
//	gatevisor.<host>.<vm>.<category>.<type> event-stream points: category ids, decision or notice
//	gatevisor.<host>.<vm>.state             the VM's status, every StateInterval (stream GATEVISOR_STATE, last per VM)
//	gatevisor-ctl.<host>.<vm>.policy        policy pushes (request/reply, never stored)
//
// Nothing is lost while a link is down: the monitor's own files are the
// buffer. The audit log (fsynced, hash-chained) and the event log are read
// back from disk from a cursor kept in the VM's state directory, and each
// message carries the SHA-256 of its line as its JetStream message id, so
// a record published twice (a replay after a crash between the ack and the
// cursor's write) is stored once. A monitor that was offline replays its
// backlog when it connects; a fleet outage never blocks or weakens a gate:
// the publisher only reads files the gates have already written.
//
// NATS itself is github.com/nats-io/nats-server/v2 (embedded by gatevisor
// serve, one host needs nothing else) or an existing cluster, reached with
// github.com/nats-io/nats.go and its jetstream package.
package fleet

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode"
)

// Stream names and subject roots.
const (
	EventsStream = "GATEVISOR_EVENTS"
	StateStream  = "GATEVISOR_STATE"
	Root         = "gatevisor"
	CtlRoot      = "gatevisor-ctl"
)

// Kinds of subjects (the token after the VM's).
const (
	KindAudit = "audit"
	KindState = "state"
)

// maxToken bounds an encoded host or VM token.
const maxToken = 192

// EncodeToken writes a host or VM name as one subject token: '%' becomes
// "%25", '.' "%2E", and any byte NATS does not allow in a token or that is
// not printable ASCII ('*', '>', whitespace, controls, non-ASCII) "%XX".
func EncodeToken(s string) (string, error) {
	if s == "" {
		return "", errors.New("fleet: empty name")
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' || c == '.' || c == '*' || c == '>' || c <= ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	if b.Len() > maxToken {
		return "", fmt.Errorf("fleet: name %.40q… is too long for a subject (over %d bytes encoded)", s, maxToken)
	}
	return b.String(), nil
}

// DecodeToken undoes EncodeToken.
func DecodeToken(t string) (string, error) {
	if t == "" || len(t) > maxToken {
		return "", fmt.Errorf("fleet: bad subject token %.40q", t)
	}
	var b strings.Builder
	for i := 0; i < len(t); i++ {
		c := t[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(t) {
			return "", fmt.Errorf("fleet: bad escape in subject token %.40q", t)
		}
		var v byte
		for _, h := range t[i+1 : i+3] {
			v <<= 4
			switch {
			case h >= '0' && h <= '9':
				v |= byte(h - '0')
			case h >= 'A' && h <= 'F':
				v |= byte(h-'A') + 10
			default:
				return "", fmt.Errorf("fleet: bad escape in subject token %.40q", t)
			}
		}
		b.WriteByte(v)
		i += 2
	}
	return b.String(), nil
}

// Subject returns gatevisor.<host>.<vm>.<kind...>.
func Subject(host, vm string, kind ...string) (string, error) {
	for _, k := range kind {
		if k == "" || strings.ContainsAny(k, ".*> \t\r\n") {
			return "", fmt.Errorf("fleet: bad subject kind %q", k)
		}
	}
	return join(Root, host, vm, kind...)
}

// CtlSubject returns gatevisor-ctl.<host>.<vm>.<verb>.
func CtlSubject(host, vm, verb string) (string, error) { return join(CtlRoot, host, vm, verb) }

// join writes root.<host>.<vm>.<rest...>, host and vm encoded.
func join(root, host, vm string, rest ...string) (string, error) {
	h, err := EncodeToken(host)
	if err != nil {
		return "", err
	}
	v, err := EncodeToken(vm)
	if err != nil {
		return "", err
	}
	return strings.Join(append([]string{root, h, v}, rest...), "."), nil
}

// Where is the host and VM a subject names, and the rest of it.
type Where struct {
	Host, VM string
	Kind     string // "audit", "state", "ids.finding", ...
}

// ParseSubject splits a gatevisor.<host>.<vm>.<kind> subject.
func ParseSubject(subj string) (Where, error) {
	parts := strings.SplitN(subj, ".", 4)
	if len(parts) != 4 || parts[0] != Root {
		return Where{}, fmt.Errorf("fleet: %.80q is not a gatevisor.<host>.<vm>.<kind> subject", subj)
	}
	h, err := DecodeToken(parts[1])
	if err != nil {
		return Where{}, err
	}
	v, err := DecodeToken(parts[2])
	if err != nil {
		return Where{}, err
	}
	return Where{Host: h, VM: v, Kind: parts[3]}, nil
}

// kindToken turns an event type into a subject token: letters, digits,
// '-' and '_' kept, anything else '_'.
func kindToken(s string) string {
	if s == "" {
		return "unknown"
	}
	b := []rune(s)
	if len(b) > 64 {
		b = b[:64]
	}
	for i, r := range b {
		if r > unicode.MaxASCII || !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// Hostname is this host's name in subjects: os.Hostname, or "localhost".
func Hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}
