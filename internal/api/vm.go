package api

import (
	"context"
	"io"
)

// VM is what the API serves; the monitor implements it (and knows no
// HTTP: internal/api/apiserver serves it). Every method gets
// validated arguments.
type VM interface {
	Status(ctx context.Context) Status
	Stop(ctx context.Context, req StopRequest) error
	Exec(ctx context.Context, req ExecRequest) (ExecResult, error)
	Registers(ctx context.Context, vcpu int) (Registers, error)
	MemoryLayout() MemoryLayout
	ReadPhysical(ctx context.Context, addr uint64, p []byte) error
	// IDS runs one introspection query (see IDSQueries) from source "ram"
	// (default) or "gdbstub".
	IDS(ctx context.Context, query, source string) (IDSResult, error)
	// Dump writes an ELF dump of guest memory to path.
	Dump(ctx context.Context, path string) (DumpResult, error)
	// WritePhysical writes guest-physical memory (for tests and forensics).
	WritePhysical(ctx context.Context, addr uint64, p []byte) error
	// Events writes the events q selects as JSON lines (the recent ones,
	// or a page read back from the VM's event files), then new ones while
	// q.Follow, calling flush after each batch. An error returned before
	// anything was written (the files cannot be read) is the request's.
	Events(ctx context.Context, w io.Writer, q EventsQuery, flush func()) error
	// AttachConsole streams the console over conn until either side closes;
	// replay bytes of recent output are sent first.
	AttachConsole(ctx context.Context, conn io.ReadWriteCloser, replay int) error
	// LoadPolicy replaces the security policy and moves the syscall gate's
	// breakpoints; on error the policy in force stays.
	LoadPolicy(ctx context.Context, req PolicyRequest) (PolicyResult, error)
	// Proc does action (one of ProcActions) to a guest process from below,
	// and returns once guest memory shows it done.
	Proc(ctx context.Context, action string, req ProcRequest) (ProcResult, error)
	// NetIsolate cuts the VM's network (every flow denied) until
	// NetRestore.
	NetIsolate(ctx context.Context, reason string) (NetIsolation, error)
	NetRestore(ctx context.Context) (NetIsolation, error)
	// NetFlows returns the network gate's newest limit flows (1 to
	// MaxNetFlowsLimit), each with its process and decision; a VM without
	// a gated network answers CodeConflict.
	NetFlows(ctx context.Context, limit int) (NetFlows, error)
	// Upgrade replaces the monitor process under the running guest.
	Upgrade(ctx context.Context, req UpgradeRequest) (UpgradeResult, error)
	// Restart replaces QEMU under the running guest (RestartRequest).
	Restart(ctx context.Context, req RestartRequest) (RestartResult, error)
	// Snapshot saves the guest's RAM and device state under tag;
	// Snapshots lists them; Rollback puts the guest back to one (same
	// monitor, gates and audit log); RemoveSnapshot deletes one.
	Snapshot(ctx context.Context, tag string) (Snapshot, error)
	Snapshots(ctx context.Context) (Snapshots, error)
	Rollback(ctx context.Context, tag string) (RollbackResult, error)
	RemoveSnapshot(ctx context.Context, tag string) error
	// Metrics writes the VM's Prometheus metrics in the text exposition
	// format (MetricsContentType).
	Metrics(ctx context.Context, w io.Writer) error
}

// MetricsContentType is the content type of Metrics' answer: Prometheus'
// text exposition format.
const MetricsContentType = "text/plain; version=0.0.4; charset=utf-8"
