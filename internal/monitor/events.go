package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// eventHistory is how many recent events are kept for `gatevisor events`.
const eventHistory = 1000

// eventBus fans IDS events out to the events log and API followers.
type eventBus struct {
	mu      sync.Mutex // guards the fields below
	log     *os.File
	history [][]byte
	subs    map[chan []byte]bool
	closed  bool
}

func newEventBus(logPath string) (*eventBus, error) {
	b := &eventBus{subs: map[chan []byte]bool{}}
	if logPath != "" {
		f, err := safefile.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("events log: %w", err)
		}
		b.log = f
	}
	return b, nil
}

// publish records ev: first in the log, then for followers. A follower too
// slow to keep up loses events rather than stalling monitoring; it is told.
func (b *eventBus) publish(ev ids.Event) {
	line, err := json.Marshal(ev)
	if err != nil {
		return
	}
	b.publishLine(append(line, '\n'))
}

// publishLine records one JSON line (ending in a newline).
func (b *eventBus) publishLine(line []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.log != nil {
		_, _ = b.log.Write(line)
	}
	b.history = append(b.history, line)
	if len(b.history) > eventHistory {
		b.history = b.history[len(b.history)-eventHistory:]
	}
	for ch := range b.subs {
		select {
		case ch <- line:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}

// stream writes the history and, if follow, new events to w until ctx ends,
// the bus closes or a write fails.
func (b *eventBus) stream(ctx context.Context, w io.Writer, follow bool, flush func()) error {
	b.mu.Lock()
	past := append([][]byte(nil), b.history...)
	var ch chan []byte
	if follow && !b.closed {
		ch = make(chan []byte, 256)
		b.subs[ch] = true
	}
	b.mu.Unlock()
	defer func() {
		if ch != nil {
			b.mu.Lock()
			if b.subs[ch] {
				delete(b.subs, ch)
				close(ch)
			}
			b.mu.Unlock()
		}
	}()
	for _, l := range past {
		if _, err := w.Write(l); err != nil {
			return err
		}
	}
	flush()
	if ch == nil {
		return nil
	}
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				return nil
			}
			if _, err := w.Write(l); err != nil {
				return err
			}
			flush()
		case <-ctx.Done():
			return nil
		}
	}
}

func (b *eventBus) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for ch := range b.subs {
		close(ch)
	}
	b.subs = map[chan []byte]bool{}
	if b.log != nil {
		b.log.Close()
	}
}

// watch scans the guest every interval once it is ready, and publishes
// what changed, until the VM ends.
func (m *Monitor) watch(interval time.Duration) {
	if err := m.WaitReady(context.Background()); err != nil {
		return
	}
	var prev *ids.Snapshot
	for {
		cur, err := m.snapshot()
		now := time.Now().UTC()
		if err != nil {
			m.events.publish(ids.Event{Time: now, VM: m.cfg.Name, Type: ids.EventError, Error: err.Error()})
		} else {
			for _, ev := range ids.Diff(m.cfg.Name, prev, cur, now) {
				m.events.publish(ev)
			}
			prev = cur
		}
		// The interval runs from the end of a scan, so a slow scan (the
		// first one profiles the kernel) is not followed by a burst.
		select {
		case <-m.done:
			return
		case <-m.stopping():
			return
		case <-time.After(interval):
		}
	}
}

func (m *Monitor) snapshot() (*ids.Snapshot, error) {
	m.intro.mu.Lock()
	defer m.intro.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	insp, err := m.inspector(ctx)
	if err != nil {
		return nil, err
	}
	insp.K.AS.Cache.Invalidate()
	return insp.Snapshot()
}

// Events implements api.VM.
func (m *Monitor) Events(ctx context.Context, w io.Writer, follow bool, flush func()) error {
	return m.events.stream(ctx, w, follow, flush)
}

// Event types of the monitor's own events on the stream (the IDS's are in
// package ids, the network gate's are "net-<verdict>").
const (
	// EventSyscall is a kernel-gate decision of the syscall class; the
	// other classes the kernel gate decides are "file", "exec" and
	// "module".
	EventSyscall = "syscall"
	// EventAudit says the audit log is near its retention limit, or
	// rotation pruned evidence.
	EventAudit = "audit"
)

// DecisionEvent is one kernel-gate decision worth telling (a deny, a kill,
// an alert, or an allow the policy marks audit) on the event stream.
type DecisionEvent struct {
	Time    time.Time `json:"time"`
	VM      string    `json:"vm"`
	Type    string    `json:"type"`
	Class   string    `json:"class"`
	PID     int32     `json:"pid"`
	Comm    string    `json:"comm"`
	Exe     string    `json:"exe"`
	UID     uint32    `json:"uid"`
	Syscall string    `json:"syscall,omitempty"` // the op: a syscall, a file op, load or unload
	Op      string    `json:"op,omitempty"`
	Args    []int64   `json:"args,omitempty"`
	Path    string    `json:"path,omitempty"`
	Module  string    `json:"module,omitempty"`
	Hash    string    `json:"hash,omitempty"`
	Verdict string    `json:"verdict"`
	Errno   int32     `json:"errno,omitempty"`
	Rule    string    `json:"rule"`
	Reason  string    `json:"reason,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// NoticeEvent is a monitor notice on the event stream (the audit log near
// its limit, a gate that failed closed).
type NoticeEvent struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	Type   string    `json:"type"`
	Detail string    `json:"detail"`
}

// publishNotice records a notice of type typ.
func (m *Monitor) publishNotice(typ, detail string) {
	if m.events == nil {
		return
	}
	m.events.publishAny(NoticeEvent{Time: time.Now().UTC(), VM: m.cfg.Name, Type: typ, Detail: detail})
}

// publishDecision records a kernel-gate decision on the event stream.
func (m *Monitor) publishDecision(d gate.Decided) {
	ev := d.Event
	typ := ev.Class.String()
	e := DecisionEvent{Time: ev.Time, VM: m.cfg.Name, Type: typ, Class: typ, PID: ev.Subject.PID, Comm: ev.Subject.Comm,
		Exe: ev.Subject.Exe, UID: ev.Subject.UID, Op: ev.Op, Args: ev.Args, Path: ev.Path, Module: ev.Module, Hash: ev.Hash,
		Verdict: d.Decision.Verdict.String(), Errno: d.Decision.Errno, Rule: d.Decision.Rule, Reason: d.Decision.Reason}
	if ev.Class == event.ClassSyscall {
		e.Syscall = ev.Op
	}
	if d.ReadErr != nil {
		e.Error = d.ReadErr.Error()
	}
	m.events.publishAny(e)
}

// publishAny records any JSON-encodable event on the bus.
func (b *eventBus) publishAny(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		return
	}
	b.publishLine(append(line, '\n'))
}
