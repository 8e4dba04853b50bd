// Package monitoring defines the typed monitoring points of a VM's event
// stream: what the IDS saw change, what a gate decided that is worth
// telling (a deny, a kill, an alert, an allow the policy audits), and the
// monitor's own notices. Every producer (the kernel and network gates, the
// IDS's continuous scans, the monitor) publishes a Point; every consumer
// (events.jsonl, `gatevisor events`, later metrics and the fleet) reads
// Points. One type, named kinds, one typed payload per kind: no `any`.
//
// A Point is written as one JSON line whose field names are the stream's
// format: "type" is the Kind, "seq" the point's number in its VM's stream
// (given by the stream, increasing, kept across rotation and restarts); a
// kernel-gate decision's fields (pid, comm, syscall, path, verdict, rule,
// ...) sit at the top level, a network-gate decision is under "net", an IDS
// observation under "process", "module", "socket" or "finding". A point
// that stands for a flood of repeated decisions carries "repeat" (Repeat).
//
// Decisions repeat; observations and notices do not: RepeatKey says which
// decisions are the same for the stream's aggregation, and Category keeps
// IDS observations and notices apart from decisions so that a flood of
// decisions cannot push them out of a bounded history.
//
// It imports the types of the packages whose observations it carries.
package monitoring

import (
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Kind names a monitoring point.
type Kind string

// The IDS's continuous scans (ids.Diff).
const (
	ProcessStart Kind = ids.EventProcessStart
	ProcessExit  Kind = ids.EventProcessExit
	ModuleLoad   Kind = ids.EventModuleLoad
	ModuleGone   Kind = ids.EventModuleGone
	ListenOpen   Kind = ids.EventListenOpen
	ListenClose  Kind = ids.EventListenClose
	Finding      Kind = ids.EventFinding
	Cleared      Kind = ids.EventCleared
	ScanError    Kind = ids.EventError
)

// Kernel-gate decisions: the kind is the event's class.
const (
	SyscallDecision Kind = "syscall"
	FileDecision    Kind = "file"
	ExecDecision    Kind = "exec"
	ModuleDecision  Kind = "module"
)

// NetPrefix starts the kind of a network-gate decision: "net-" and the
// verdict (net-deny, net-kill, net-alert, net-allow for a permissive or
// revoked one).
const NetPrefix = "net-"

// Notices of the monitor.
const (
	// AuditNotice: the audit log is near its retention limit, or rotation
	// pruned evidence (the chain records it).
	AuditNotice Kind = "audit"
	// EventsNotice: the event log itself could not write or read its
	// files (the stream's own points stay in its history and reach
	// followers).
	EventsNotice Kind = "events"
	// ProcNotice: a process action from below (gatevisor proc), or a
	// frozen process resumed in the guest and stopped again.
	ProcNotice Kind = "proc"
	// LifecycleNotice: QEMU was restarted under the running guest, a
	// snapshot was taken, or the guest was rolled back to one.
	LifecycleNotice Kind = "lifecycle"
)

// Point is one monitoring point: when, in which VM, of what kind, and the
// payload of that kind (one of the typed fields below is set).
type Point struct {
	Time time.Time `json:"time"`
	VM   string    `json:"vm"`
	Kind Kind      `json:"type"`
	// Seq is the point's number in the VM's stream, set by the stream
	// when it writes the point (0 before).
	Seq uint64 `json:"seq,omitempty"`

	// An IDS observation.
	Process *linux.Task   `json:"process,omitempty"`
	Module  *linux.Module `json:"module,omitempty"`
	Socket  *linux.Socket `json:"socket,omitempty"`
	Finding *ids.Finding  `json:"finding,omitempty"`

	// A kernel-gate decision; its fields are written at the top level.
	*Decision

	// A network-gate decision.
	Net *gatenet.Record `json:"net,omitempty"`

	// A notice's text.
	Detail string `json:"detail,omitempty"`
	// What could not be done or read: a scan that failed, the part of a
	// gated event the gate could not read (the event was decided with what
	// could, failing closed).
	Error string `json:"error,omitempty"`

	// Repeat, on a decision, says the point stands for Repeat.Count
	// decisions with the same RepeatKey: the fields above are the first
	// one's (Time is Repeat.First).
	Repeat *Repeat `json:"repeat,omitempty"`
}

// Repeat is what an aggregate point adds: how many decisions it stands
// for, over which time, and what told the last one apart from the first.
type Repeat struct {
	Count uint64    `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// The last decision's distinguishing fields: a kernel-gate decision's
	// path, a network decision's local and remote addresses.
	LastPath   string `json:"last_path,omitempty"`
	LastLocal  string `json:"last_local,omitempty"`
	LastRemote string `json:"last_remote,omitempty"`
	// Merged says the decisions came from more than one subject (or op):
	// the stream had too many distinct keys in that second and merged
	// them by kind, verdict and rule. The subject above is the first's.
	Merged bool `json:"merged,omitempty"`
}

// Decision is a kernel-gate decision worth telling.
type Decision struct {
	Class   string  `json:"class"`
	PID     int32   `json:"pid"`
	Comm    string  `json:"comm"`
	Exe     string  `json:"exe"`
	UID     uint32  `json:"uid"`
	Start   uint64  `json:"start,omitempty"`   // the process's start time (tells a reused pid apart)
	Syscall string  `json:"syscall,omitempty"` // the op of a syscall-class event
	Op      string  `json:"op,omitempty"`
	Args    []int64 `json:"args,omitempty"`
	Path    string  `json:"path,omitempty"`
	Module  string  `json:"module_name,omitempty"` // "module" is the IDS observation's object
	Hash    string  `json:"hash,omitempty"`
	Verdict string  `json:"verdict"`
	Errno   int32   `json:"errno,omitempty"`
	Rule    string  `json:"rule"`
	Reason  string  `json:"reason,omitempty"`
}

// FromIDS is the point of an IDS observation.
func FromIDS(e ids.Event) Point {
	return Point{Time: e.Time, VM: e.VM, Kind: Kind(e.Type), Process: e.Process, Module: e.Module, Socket: e.Socket,
		Finding: e.Finding, Error: e.Error}
}

// FromDecision is the point of a kernel-gate decision of ev: its verdict,
// errno, rule and reason; readErr is what the gate could not read.
func FromDecision(vm string, ev *event.Event, verdict string, errno int32, rule, reason string, readErr error) Point {
	d := &Decision{Class: ev.Class.String(), PID: ev.Subject.PID, Comm: ev.Subject.Comm, Exe: ev.Subject.Exe,
		UID: ev.Subject.UID, Start: ev.Subject.Start, Op: ev.Op, Args: ev.Args, Path: ev.Path, Module: ev.Module, Hash: ev.Hash,
		Verdict: verdict, Errno: errno, Rule: rule, Reason: reason}
	if ev.Class == event.ClassSyscall {
		d.Syscall = ev.Op
	}
	p := Point{Time: ev.Time, VM: vm, Kind: Kind(ev.Class.String()), Decision: d}
	if readErr != nil {
		p.Error = readErr.Error()
	}
	return p
}

// FromNet is the point of a network-gate decision.
func FromNet(vm string, r gatenet.Record) Point {
	return Point{Time: r.Time, VM: vm, Kind: Kind(NetPrefix + r.Verdict), Net: &r}
}

// Notice is a monitor notice of kind k.
func Notice(vm string, k Kind, detail string) Point {
	return Point{Time: time.Now().UTC(), VM: vm, Kind: k, Detail: detail}
}
