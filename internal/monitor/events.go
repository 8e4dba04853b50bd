package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
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

// publish records p: first in the log, then for followers. A follower too
// slow to keep up loses events rather than stalling monitoring; it is told.
func (b *eventBus) publish(p monitoring.Point) {
	line, err := json.Marshal(p)
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
			m.events.publish(monitoring.Point{Time: now, VM: m.cfg.Name, Kind: monitoring.ScanError, Error: err.Error()})
		} else {
			for _, ev := range ids.Diff(m.cfg.Name, prev, cur, now) {
				m.events.publish(monitoring.FromIDS(ev))
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

// publishNotice records a monitor notice of kind k.
func (m *Monitor) publishNotice(k monitoring.Kind, detail string) {
	if m.events != nil {
		m.events.publish(monitoring.Notice(m.cfg.Name, k, detail))
	}
}

// publishDecision records a kernel-gate decision on the event stream.
func (m *Monitor) publishDecision(d gate.Decided) {
	m.events.publish(monitoring.FromDecision(m.cfg.Name, &d.Event, d.Decision.Verdict.String(), d.Decision.Errno, d.Decision.Rule, d.Decision.Reason, d.ReadErr))
}
