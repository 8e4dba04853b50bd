// Package event defines the events that gates, the introspection IDS, the
// security server and the audit log exchange: a syscall, an exec, a network
// flow, a file access, a kernel module load or an API action, each with the
// subject (guest process or API caller) that caused it.
//
// Events are built from guest introspection, so every field is hostile until
// Validate has accepted it: lengths are capped and the class must be known.
// The package is a leaf: it imports nothing from gatevisor, so that any
// package may use it.
package event

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Limits on guest-derived fields. An event beyond them is rejected by
// Validate, and the security server denies it (fail closed).
const (
	MaxPath   = 4096 // PATH_MAX
	MaxName   = 256  // comm, op, proto, module and label names
	MaxArgs   = 8    // syscall arguments (Linux passes at most 6)
	MaxLabels = 16
)

// ErrInvalid is wrapped by every Validate error.
var ErrInvalid = errors.New("invalid event")

// Class is the kind of event. Each class has its own defaults in a policy.
type Class uint8

const (
	ClassInvalid Class = iota
	ClassSyscall       // a guest system call; Op is its name ("open")
	ClassExec          // a guest process executes Path
	ClassFile          // a file access; Op is read, write, open, create, unlink, ...
	ClassNet           // a network flow; Op is connect, accept, send, recv, bind
	ClassModule        // a kernel module operation; Op is load or unload
	ClassAPI           // a call on gatevisor's own API; Op is the action ("vm.stop")
	ClassCall          // an IPC method call (KasperskyOS "call in/out"); Op is "iface.method"
	numClasses
)

// NumClasses is the number of valid classes plus one (ClassInvalid).
const NumClasses = int(numClasses)

var classNames = [numClasses]string{"invalid", "syscall", "exec", "file", "net", "module", "api", "call"}

func (c Class) String() string {
	if c >= numClasses {
		return fmt.Sprintf("class(%d)", uint8(c))
	}
	return classNames[c]
}

// ParseClass returns the class named s.
func ParseClass(s string) (Class, bool) {
	for i := Class(1); i < numClasses; i++ {
		if classNames[i] == s {
			return i, true
		}
	}
	return ClassInvalid, false
}

// MarshalText implements encoding.TextMarshaler.
func (c Class) MarshalText() ([]byte, error) {
	if c == ClassInvalid || c >= numClasses {
		return nil, fmt.Errorf("%w: class %d", ErrInvalid, uint8(c))
	}
	return []byte(classNames[c]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *Class) UnmarshalText(b []byte) error {
	v, ok := ParseClass(string(b))
	if !ok {
		return fmt.Errorf("%w: unknown class %.64q", ErrInvalid, b)
	}
	*c = v
	return nil
}

// Dir is the direction of a network flow or an IPC call, seen from the subject.
type Dir uint8

const (
	DirNone Dir = iota
	DirIn       // the subject receives (accept, recv, call in)
	DirOut      // the subject initiates (connect, send, call out)
)

func (d Dir) String() string {
	switch d {
	case DirIn:
		return "in"
	case DirOut:
		return "out"
	}
	return ""
}

// MarshalText implements encoding.TextMarshaler.
func (d Dir) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Dir) UnmarshalText(b []byte) error {
	switch string(b) {
	case "":
		*d = DirNone
	case "in":
		*d = DirIn
	case "out":
		*d = DirOut
	default:
		return fmt.Errorf("%w: unknown direction %.64q", ErrInvalid, b)
	}
	return nil
}

// Subject is who caused the event: a guest process, or for ClassAPI the
// caller of the API (UID and GID from the socket's peer credentials).
type Subject struct {
	PID  int32 `json:"pid"`
	PPID int32 `json:"ppid,omitempty"`
	// Start is the process start time (task_struct start_time, ns since
	// guest boot); it tells a reused PID apart. 0 when unknown.
	Start      uint64   `json:"start,omitempty"`
	Comm       string   `json:"comm,omitempty"`
	Exe        string   `json:"exe,omitempty"`
	UID        uint32   `json:"uid"`
	GID        uint32   `json:"gid"`
	ParentComm string   `json:"parent_comm,omitempty"`
	ParentExe  string   `json:"parent_exe,omitempty"`
	Labels     []string `json:"labels,omitempty"` // labels the gate already knows, e.g. an IPC entity name
	// Authenticated are the users the monitor itself authenticated
	// (gatevisor auth) whose grant covers this subject now (at most
	// MaxLabels): the policy's authenticated("alice").
	Authenticated []string `json:"authenticated,omitempty"`
	// SetUID says the process's credentials changed by a setuid exec
	// (euid differs from uid, read from its creds): setuidExec().
	SetUID bool `json:"setuid,omitempty"`
}

// Event is one thing a subject tried to do. Only the fields that make sense
// for the class are set; the rest stay zero.
type Event struct {
	Class   Class   `json:"class"`
	Op      string  `json:"op,omitempty"`
	Subject Subject `json:"subject"`
	// Path is the file (ClassFile), the program (ClassExec), the decoded
	// path argument of a syscall, or the string argument of a call.
	Path string `json:"path,omitempty"`
	// Args are the raw arguments of a syscall or call, by position.
	Args      []int64    `json:"args,omitempty"`
	Dir       Dir        `json:"dir,omitzero"`
	Proto     string     `json:"proto,omitempty"` // tcp, udp, icmp
	Addr      netip.Addr `json:"addr,omitzero"`   // remote address
	Port      uint16     `json:"port,omitempty"`  // remote port
	LocalPort uint16     `json:"local_port,omitempty"`
	Module    string     `json:"module,omitempty"` // kernel module name
	// Hash is the SHA-256 (hex) of the object's content where the gate read
	// it: a kernel module's image as the kernel loaded it.
	Hash string `json:"hash,omitempty"`
	// Labels are names the gate attached to the object (at most MaxLabels),
	// for example "kit" for a module whose content is one of the guest kit's.
	Labels []string  `json:"labels,omitempty"`
	Time   time.Time `json:"time,omitzero"`
}

// Validate reports whether e is within the limits above. A gate must not act
// on an event that fails it other than by denying.
func (e *Event) Validate() error {
	if e.Class == ClassInvalid || e.Class >= numClasses {
		return fmt.Errorf("%w: class %d", ErrInvalid, uint8(e.Class))
	}
	if e.Dir > DirOut {
		return fmt.Errorf("%w: direction %d", ErrInvalid, uint8(e.Dir))
	}
	s := &e.Subject
	if len(e.Op) > MaxName || len(e.Path) > MaxPath || len(e.Proto) > MaxName || len(e.Module) > MaxName ||
		len(s.Comm) > MaxName || len(s.Exe) > MaxPath || len(s.ParentComm) > MaxName || len(s.ParentExe) > MaxPath {
		return e.lengthError()
	}
	if len(e.Args) > MaxArgs {
		return fmt.Errorf("%w: %d args, limit %d", ErrInvalid, len(e.Args), MaxArgs)
	}
	if len(s.Authenticated) > MaxLabels {
		return fmt.Errorf("%w: %d authenticated users, limit %d", ErrInvalid, len(s.Authenticated), MaxLabels)
	}
	if len(s.Labels) > MaxLabels || len(e.Labels) > MaxLabels {
		return fmt.Errorf("%w: %d subject and %d object labels, limit %d each", ErrInvalid, len(s.Labels), len(e.Labels), MaxLabels)
	}
	if len(e.Hash) > MaxName {
		return fmt.Errorf("%w: hash is %d bytes, limit %d", ErrInvalid, len(e.Hash), MaxName)
	}
	for _, l := range append(append(s.Labels[:len(s.Labels):len(s.Labels)], e.Labels...), s.Authenticated...) {
		if len(l) > MaxName {
			return fmt.Errorf("%w: label is %d bytes, limit %d", ErrInvalid, len(l), MaxName)
		}
	}
	return nil
}

func (e *Event) lengthError() error {
	s := &e.Subject
	for _, f := range [...]struct {
		name string
		v    string
		max  int
	}{
		{"op", e.Op, MaxName},
		{"path", e.Path, MaxPath},
		{"proto", e.Proto, MaxName},
		{"module", e.Module, MaxName},
		{"comm", s.Comm, MaxName},
		{"exe", s.Exe, MaxPath},
		{"parent_comm", s.ParentComm, MaxName},
		{"parent_exe", s.ParentExe, MaxPath},
	} {
		if len(f.v) > f.max {
			return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrInvalid, f.name, len(f.v), f.max)
		}
	}
	return ErrInvalid
}

// Arg returns argument i, or 0 and false when the event has fewer arguments.
func (e *Event) Arg(i int) (int64, bool) {
	if i < 0 || i >= len(e.Args) {
		return 0, false
	}
	return e.Args[i], true
}

// String is a short human-readable form for logs and explain output.
func (e *Event) String() string {
	s := e.Class.String()
	if e.Op != "" {
		s += fmt.Sprintf(" %q", e.Op)
	}
	if e.Path != "" {
		s += fmt.Sprintf(" %q", e.Path)
	}
	if e.Module != "" {
		s += fmt.Sprintf(" module=%q", e.Module)
	}
	if e.Hash != "" {
		s += fmt.Sprintf(" sha256=%q", e.Hash)
	}
	if len(e.Labels) > 0 {
		s += fmt.Sprintf(" labels=%q", e.Labels)
	}
	if e.Addr.IsValid() || e.Port != 0 {
		s += fmt.Sprintf(" %s %q %s", e.Dir, e.Proto, netip.AddrPortFrom(e.Addr, e.Port))
	}
	if len(e.Args) > 0 {
		s += fmt.Sprintf(" args=%v", e.Args)
	}
	s += fmt.Sprintf(" by pid=%d comm=%q exe=%q uid=%d", e.Subject.PID, e.Subject.Comm, e.Subject.Exe, e.Subject.UID)
	if e.Subject.SetUID {
		s += " setuid"
	}
	if len(e.Subject.Authenticated) > 0 {
		s += fmt.Sprintf(" authenticated=%q", e.Subject.Authenticated)
	}
	return s
}
