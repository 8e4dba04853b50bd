// Package api is the contract of one VM's local API: the requests and
// answers (the types below), the errors and their codes, the endpoints and
// the action each is authorized as (Endpoints, Actions), and the VM
// interface the monitor implements. openapi.yaml (embedded as Spec)
// describes it; a test checks Endpoints against it.
//
// It knows no HTTP: internal/api/apiserver serves the VM interface over
// HTTP+JSON on a unix socket, internal/api/apiclient calls it. The monitor
// imports only this package, so the VMM knows nothing of HTTP.
package api

import (
	_ "embed"
	"errors"
	"time"
)

// Spec is the OpenAPI description of this API.
//
//go:embed openapi.yaml
var Spec []byte

// States of a VM as the monitor sees it.
const (
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
)

// Status is the VM's state and configuration.
type Status struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	QEMUStatus string `json:"qemu_status,omitempty"`
	GuestReady bool   `json:"guest_ready"`
	MonitorPID int    `json:"monitor_pid"`
	// MonitorUpgrades counts the times the monitor process was replaced
	// with the guest running (gatevisor upgrade).
	MonitorUpgrades int `json:"monitor_upgrades,omitempty"`
	// UpgradePauseMs is how long the guest was stopped by the last
	// upgrade: from the old monitor stopping it to the new one letting it
	// run.
	UpgradePauseMs float64    `json:"upgrade_pause_ms,omitempty"`
	QEMUPID        int        `json:"qemu_pid"`
	Accel          string     `json:"accel"`
	AccelReason    string     `json:"accel_reason"`
	Machine        string     `json:"machine"`
	MemMiB         int        `json:"mem_mib"`
	CPUs           int        `json:"cpus"`
	Kernel         string     `json:"kernel"`
	Initrd         string     `json:"initrd,omitempty"`
	Append         string     `json:"append,omitempty"`
	StartedAt      time.Time  `json:"started_at"`
	ReadyAt        *time.Time `json:"ready_at,omitempty"`
	BootSeconds    float64    `json:"boot_seconds,omitempty"`
	RuntimeDir     string     `json:"runtime_dir"`
	ConsoleLog     string     `json:"console_log,omitempty"`
	Net            *NetStatus `json:"net,omitempty"` // nil without a network
	// StoppedMicros is the time the VM has spent stopped (by a kernel-gate
	// stop, a request, a snapshot) since the monitor attached to this
	// QEMU, each stop from QEMU's STOP event to the RESUME after it by the
	// timestamps QEMU puts on them; StopIntervals counts those stops.
	// Under TCG the guest's own clocks stand still for that time.
	StoppedMicros uint64 `json:"stopped_us,omitempty"`
	StopIntervals uint64 `json:"stop_intervals,omitempty"`
	// SyscallGate is nil until a policy with kernel-gate rules was loaded.
	SyscallGate *SyscallGateStatus `json:"syscall_gate,omitempty"`
	// Policy is the policy snapshot in force (nil: none, every gated
	// event is denied and only the owner and root may call the API).
	Policy *PolicyStatus `json:"policy,omitempty"`
	// Gates says, per gate, whether it is armed and with what.
	Gates []GateStatus `json:"gates,omitempty"`
	// Audit is the audit log and its chain's head (nil without one).
	Audit *AuditStatus `json:"audit,omitempty"`
	// Events is the event stream: its file, retention and counters.
	Events *EventsStatus `json:"events,omitempty"`
	// IDS is the periodic scan's state.
	IDS *IDSStatus `json:"ids,omitempty"`
	// Responses are the policy's responses and what they did (nil when
	// the policy states none).
	Responses *ResponsesStatus `json:"responses,omitempty"`
	// Stop is how a requested stop went (nil until one is requested).
	Stop *StopStatus `json:"stop,omitempty"`
}

// EventsStatus is the VM's event stream (events.jsonl and `gatevisor
// events`): where it is kept, how much of it, and what floods and failing
// writes did to it.
type EventsStatus struct {
	Log     string `json:"log,omitempty"` // "" when no file is kept
	MaxSize int64  `json:"max_size"`      // the file rotates before it would exceed this
	Keep    int    `json:"keep"`          // rotated files kept
	Seq     uint64 `json:"seq"`           // the last event's number
	// Aggregated counts decisions folded into aggregate events (a flood);
	// Aggregates the aggregate events written.
	Aggregated uint64 `json:"aggregated"`
	Aggregates uint64 `json:"aggregates"`
	Rotations  uint64 `json:"rotations"`
	// WriteErrors counts events the file did not take (they still reached
	// followers and the history); LastError is the last reason.
	WriteErrors uint64 `json:"write_errors"`
	LastError   string `json:"last_error,omitempty"`
	// Oversized counts events written without their payload (too long).
	Oversized uint64 `json:"oversized"`
	// DroppedFollowers counts `events -f` streams ended for falling behind.
	DroppedFollowers uint64 `json:"dropped_followers"`
}

// AuditStatus is the VM's audit log and the head of its hash chain, "N:HASH":
// the last record's number and the SHA-256 of its line. A copy of the log
// that verifies up to this head has lost or changed nothing before it.
type AuditStatus struct {
	Log  string `json:"log"`
	Head string `json:"head"` // N:HASH, the chain's last record
	// Records is the chain's length (every session's, rotated files
	// included); LastRecordAt when this monitor last wrote one.
	Records      uint64     `json:"records"`
	LastRecordAt *time.Time `json:"last_record_at,omitempty"`
	// Bytes and Files are what the log and its rotated files hold.
	Bytes int64 `json:"bytes"`
	Files int   `json:"files"`
}

// ResponsesStatus is what the policy's responses did since the VM started.
type ResponsesStatus struct {
	// Dropped counts triggers the full response queue refused.
	Dropped   uint64           `json:"dropped"`
	Responses []ResponseStatus `json:"responses"`
}

// ResponseStatus is one response statement's counts.
type ResponseStatus struct {
	Name   string `json:"name"`
	Action string `json:"action"`
	// Taken counts actions carried out, Failed those that could not be,
	// Limited the triggers over the response's limit a minute.
	Taken   uint64 `json:"taken"`
	Failed  uint64 `json:"failed"`
	Limited uint64 `json:"limited"`
}

// IDSStatus is the periodic IDS scan (run --ids-interval).
type IDSStatus struct {
	// IntervalSeconds is the time between scans; 0: no periodic scan.
	IntervalSeconds float64 `json:"interval_seconds"`
	Scans           uint64  `json:"scans"`       // scans completed
	ScanErrors      uint64  `json:"scan_errors"` // scans that could not run
	// LastScanAt, LastScanMillis: when the last scan ended, and its time.
	LastScanAt     *time.Time `json:"last_scan_at,omitempty"`
	LastScanMillis float64    `json:"last_scan_ms,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	// Findings of the last scan's integrity checks, by severity.
	Findings map[string]int `json:"findings,omitempty"`
	// NotChecked are the last scan's checks that could not look (and why):
	// a clean scan with a check here is not a clean guest.
	NotChecked []string `json:"not_checked,omitempty"`
	// Unread are the views (processes, modules, sockets) the last scan
	// could not read in full, with why.
	Unread map[string]string `json:"unread,omitempty"`
}

// PolicyStatus is the policy snapshot in force: what every gate enforces.
type PolicyStatus struct {
	Digest string   `json:"digest"` // sha256 over every file read
	Seq    uint64   `json:"seq"`    // the security server's sequence number
	Path   string   `json:"path,omitempty"`
	Files  []string `json:"files"` // the root and its includes
	// NotEnforced lists statements of advisory classes that no gate of this
	// VM enforces (accepted because the policy marks them advisory).
	NotEnforced []string `json:"not_enforced,omitempty"`
	// Reloads and FailedReloads count policy loads since the VM started:
	// taken, and refused (the policy in force stayed).
	Reloads       uint64 `json:"reloads"`
	FailedReloads uint64 `json:"failed_reloads"`
}

// GateStatus is one gate of the VM.
type GateStatus struct {
	Name  string `json:"name"` // kernel, net, api
	Armed bool   `json:"armed"`
	// Traps and Watchpoints count the kernel gate's traps in place.
	Traps       int `json:"traps,omitempty"`
	Watchpoints int `json:"watchpoints,omitempty"`
	// Breakpoints are the kernel gate's execution breakpoints, each with
	// the rules that need it and its cost (what is not a watchpoint).
	Breakpoints []Breakpoint `json:"breakpoints,omitempty"`
	Classes     []string     `json:"classes,omitempty"` // event classes it decides
	Note        string       `json:"note,omitempty"`    // why it is not armed, when it is not
	// Decisions counts the gate's decisions by verdict (allow, alert,
	// deny, kill) since the VM started.
	Decisions map[string]uint64 `json:"decisions,omitempty"`
}

// SyscallGateStatus is the syscall gate's breakpoints and counters. Every
// stop pauses the whole VM: Stops over time is what the gate costs.
type SyscallGateStatus struct {
	Breakpoints int `json:"breakpoints"`
	// Stops counts breakpoint stops handled; Decided those that asked the
	// security server, Skipped those at a hook that were not the policy's
	// to decide (an exec's own opens, kernel threads), FaultIns those sent
	// through the kernel to fault in a path first.
	Stops    uint64 `json:"stops"`
	Decided  uint64 `json:"decided"`
	Skipped  uint64 `json:"skipped"`
	FaultIns uint64 `json:"fault_ins"`
	// SiblingStops counts calls handled on a vCPU found at a trap while
	// QEMU reported another (several vCPUs): each is a stop saved.
	SiblingStops uint64 `json:"sibling_stops"`
	// Emulated counts instructions the gate performed for a vCPU to move
	// it past a watched load it was allowed at (several vCPUs only).
	Emulated uint64 `json:"emulated,omitempty"`
	// HandleMicros is the monitor's time with the VM stopped at a
	// breakpoint (reading the event, deciding, enforcing), in total.
	HandleMicros uint64 `json:"handle_us"`
	// GatePage is the kernel gate's own guest page (its LSM entries:
	// the own-entry model under TCG), "" when there is none;
	// GatePageError why its allocation failed (the hooks stay on the
	// list-head model).
	GatePage      string `json:"gate_page,omitempty"`
	GatePageError string `json:"gate_page_error,omitempty"`
}

// NetStatus is the guest network and its gate's counters.
type NetStatus struct {
	Mode    string `json:"mode"`              // isolated, user or tap
	Network string `json:"network,omitempty"` // isolated: the network's name
	Tap     string `json:"tap,omitempty"`     // tap: the interface
	// OversizedFrames counts frames from the guest too long for the frame
	// codec; they are skipped before the gate.
	OversizedFrames uint64        `json:"oversized_frames"`
	Gate            *NetGateStats `json:"gate,omitempty"` // nil without the gate (benchmarks only)
	// NAT holds the user-mode network's counters.
	NAT map[string]uint64 `json:"nat,omitempty"`
	// Isolated says why the network is cut off (gatevisor net isolate, a
	// policy response); "" when it is not.
	Isolated string `json:"isolated,omitempty"`
}

// NetIsolation is the answer of net isolate and net restore.
type NetIsolation struct {
	Isolated bool   `json:"isolated"`
	Reason   string `json:"reason,omitempty"`
}

// NetIsolateRequest says why the network is cut off.
type NetIsolateRequest struct {
	Reason string `json:"reason,omitempty"`
}

// NetGateStats are the network gate's counters.
type NetGateStats struct {
	Frames       uint64 `json:"frames"`
	Forwarded    uint64 `json:"forwarded"`
	Dropped      uint64 `json:"dropped"`
	Refused      uint64 `json:"refused"` // malformed: a subset of dropped
	Resets       uint64 `json:"resets"`
	NewFlows     uint64 `json:"new_flows"`
	Allowed      uint64 `json:"allowed"`
	Denied       uint64 `json:"denied"`
	Unattributed uint64 `json:"unattributed"`
	// The gate's own refusals: flow starts dropped undecided for want of
	// room (decision queue, flow table), and flows refused because their
	// process was over its rate or its share of the table.
	Overload    uint64 `json:"overload"`
	TableFull   uint64 `json:"table_full"`
	RateLimited uint64 `json:"rate_limited"`
	FlowLimited uint64 `json:"flow_limited"`
	Evicted     uint64 `json:"evicted"` // flows given up to make room for new ones
	Passes      uint64 `json:"passes"`  // batches of flows attributed
	// Walks counts the walks of the guest's sockets and tasks that
	// attribution made, WalkMicros their time in all.
	Walks      uint64 `json:"walks"`
	WalkMicros uint64 `json:"walk_us"`
	Flows      int    `json:"flows"`
	Pending    int    `json:"pending"`  // flows waiting for a decision now
	Subjects   int    `json:"subjects"` // processes (and peers) with a budget now
	// DropReasons counts dropped frames by reason, ResetReasons the
	// resets the gate sent.
	DropReasons  map[string]uint64 `json:"drop_reasons"`
	ResetReasons map[string]uint64 `json:"reset_reasons"`
}

// StopRequest asks the VM to shut down.
type StopRequest struct {
	Force          bool `json:"force,omitempty"`
	TimeoutSeconds int  `json:"timeout_seconds,omitempty"`
	// Wait answers once QEMU has exited, with Status.Stop final.
	Wait bool `json:"wait,omitempty"`
}

// StopStatus is how a stop went: in progress, or how the VM ended.
type StopStatus struct {
	// Forced is set once QEMU was told to quit (or killed) rather than the
	// guest powering off on its own after the ACPI power button.
	Forced bool `json:"forced"`
	// Outcome says what happened and why, in a sentence.
	Outcome string `json:"outcome"`
	// Done is set once QEMU has exited.
	Done bool `json:"done"`
}

// ExecRequest runs argv in the guest.
type ExecRequest struct {
	Argv           []string `json:"argv"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty"`
}

// ProcRequest names the guest process a proc action acts on.
type ProcRequest struct {
	PID int `json:"pid"`
	// Start, when set, is the process's start time (start_ns in ids ps):
	// the action is refused if the pid is now another process's.
	Start uint64 `json:"start_ns,omitempty"`
}

// ProcResult is what a proc action did, confirmed in guest memory.
type ProcResult struct {
	Action string `json:"action"`
	PID    int    `json:"pid"`
	Start  uint64 `json:"start_ns"`
	Comm   string `json:"comm"`
	Exe    string `json:"exe,omitempty"`
	// Signal is the signal the kernel was made to send ("" for thaw of a
	// process gatevisor had not stopped).
	Signal string `json:"signal,omitempty"`
	// StateBefore and StateAfter are ps's state letters (StateAfter
	// "gone" once the process is reaped).
	StateBefore string `json:"state_before"`
	StateAfter  string `json:"state_after"`
	// Frozen says gatevisor now keeps the process stopped (freeze) until
	// a thaw.
	Frozen bool `json:"frozen"`
	// Outcome says what happened, in a sentence.
	Outcome string `json:"outcome"`
	// SafePointMillis is the wait for a vCPU at a safe point, CallMicros
	// the kernel call, TookMillis the whole action up to the state seen.
	SafePointMillis float64 `json:"safe_point_ms"`
	CallMicros      float64 `json:"call_us"`
	TookMillis      float64 `json:"took_ms"`
}

// ExecResult is a finished guest command.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   []byte `json:"stdout"`
	Stderr   []byte `json:"stderr"`
}

// Registers holds one vCPU's registers by their gdb names.
type Registers struct {
	VCPU      int               `json:"vcpu"`
	Registers map[string]string `json:"registers"`
}

// Region places a slice of guest RAM in the guest-physical address space.
type Region struct {
	GPA    uint64 `json:"gpa"`
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
}

// MemoryLayout is guest RAM's size and layout.
type MemoryLayout struct {
	Size    uint64   `json:"size"`
	Regions []Region `json:"regions"`
}

// EventsQuery selects what GET /v1/events returns (its query
// parameters). The zero query is the recent history; Before, After or
// Limit make it a page read back from the VM's event files, oldest first.
type EventsQuery struct {
	// Follow keeps the stream open for new events after the backlog.
	Follow bool
	// Before, when not 0, pages back: the newest Limit events whose seq is
	// below it. It cannot follow.
	Before uint64
	// After, when HasAfter, reads forward: the oldest Limit events whose
	// seq is above it; following, every event after it still kept (no
	// Limit), then new ones.
	After    uint64
	HasAfter bool
	// Limit bounds a page (1 to MaxEventsLimit; ValidateEventsQuery puts
	// DefaultEventsLimit for a page that gives none). Alone, it asks for
	// the last Limit events.
	Limit int
}

// Limits on requests, mirrored in openapi.yaml.
const (
	DefaultEventsLimit = 100
	MaxEventsLimit     = 10000
	MaxReadLength      = 1 << 20
	// MaxExecOutput is the most stdout (and, separately, stderr) an exec
	// returns: the guest agent's cap (guestexec.MaxOutput).
	MaxExecOutput      = 1 << 20
	MaxExecArgs        = 1024
	MaxExecArgLength   = 32 << 10
	MaxExecTimeout     = 3600
	MaxStopTimeout     = 600
	MaxConsoleReplay   = 64 << 10
	MaxVCPU            = 63
	MaxPID             = 4194304 // PID_MAX_LIMIT on 64-bit Linux
	ConsoleUpgrade     = "gatevisor-console"
	DefaultExecTimeout = 30
)

// Error codes of the API's error responses.
const (
	CodeBadRequest  = "bad_request"
	CodeForbidden   = "forbidden"
	CodeNotFound    = "not_found"
	CodeNotReady    = "not_ready"
	CodeConflict    = "conflict"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
)

// Error is an API error response; VM implementations return it to choose
// the code, and the client returns it for non-2xx answers.
type Error struct {
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *Error) Error() string { return e.Message }

// Errorf-style constructors for VM implementations.
var (
	ErrNotReady    = &Error{Code: CodeNotReady, Message: "the guest is not ready yet: wait for 'gatevisor status' to show guest_ready"}
	ErrUnavailable = &Error{Code: CodeUnavailable, Message: "the VM is shutting down"}
)

// IsCode reports whether err is an API error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
