package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/eventbus"
	"github.com/gatevisor/gatevisor/internal/logfiles"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// Member is what the fleet needs of a monitor (api.VM has it).
type Member interface {
	Status(ctx context.Context) api.Status
	LoadPolicy(ctx context.Context, req api.PolicyRequest) (api.PolicyResult, error)
}

// Agent is a monitor's member of the fleet: it publishes the VM's audit
// log and event log from their files, its state every StateInterval, and
// answers policy pushes.
type Agent struct {
	Host, VM  string
	AuditLog  string // the VM's audit log (package audit)
	EventsLog string // the VM's event log (package eventbus); "" publishes none
	Cursor    string // file keeping what the fleet has acknowledged
	Member    Member
	// AcceptPolicy lets the fleet push policies to this VM; each push is
	// then decided by Authorize as action "policy.load" of the monitor's
	// own uid and gid (whoever holds the fleet's credentials acts as the
	// monitor's owner), and applied like `gatevisor policy load`.
	AcceptPolicy bool
	Authorize    func(ctx context.Context, c api.Caller, action string) error
	// StateInterval is how often the state is published (0: 5s).
	StateInterval time.Duration
	// Poll is how often the logs are looked at for new lines (0: 200ms).
	Poll time.Duration
	// Batch bounds the messages in flight before their acks are awaited
	// (0: 256).
	Batch   int
	Streams StreamOptions
	Logf    func(format string, args ...any)

	mu    sync.Mutex
	stats Stats
	saved cursor // what the cursor file holds
}

// Stats count what an agent did.
type Stats struct {
	Published uint64 // messages the fleet acknowledged
	Failures  uint64 // batches that failed and were retried
	Skipped   uint64 // log lines without a key or too long
	Pushes    uint64 // policy pushes answered
	AuditN    uint64 // last audit record acknowledged
	EventSeq  uint64 // last event acknowledged
}

// Stats returns the agent's counts.
func (a *Agent) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

// cursor is the publisher's position, kept across restarts.
type cursor struct {
	AuditN   uint64 `json:"audit_n"`
	EventSeq uint64 `json:"event_seq"`
}

// source is one log the agent publishes.
type source struct {
	idPrefix string // the VM's part of each message id
	t        *tailer
	subject  func(line) (string, error)
	acked    *uint64
}

func (a *Agent) logf(format string, args ...any) {
	if a.Logf != nil {
		a.Logf(format, args...)
	}
}

// Run publishes until ctx ends. It returns only then, or for a
// configuration error (a name that makes no subject, an unreadable
// cursor); a fleet that cannot be reached is waited for.
func (a *Agent) Run(ctx context.Context, nc *nats.Conn) error {
	if a.Poll <= 0 {
		a.Poll = 200 * time.Millisecond
	}
	if a.StateInterval <= 0 {
		a.StateInterval = 5 * time.Second
	}
	if a.Batch <= 0 {
		a.Batch = 256
	}
	auditSubj, err := Subject(a.Host, a.VM, KindAudit)
	if err != nil {
		return err
	}
	stateSubj, err := Subject(a.Host, a.VM, KindState)
	if err != nil {
		return err
	}
	cur, err := a.loadCursor()
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.stats.AuditN, a.stats.EventSeq = cur.AuditN, cur.EventSeq
	a.mu.Unlock()
	a.saved = cur
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(a.Batch), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	// Pushes are answered even when refused, so the pusher learns why.
	ctl, err := CtlSubject(a.Host, a.VM, "policy")
	if err != nil {
		return err
	}
	sub, err := nc.Subscribe(ctl, a.onPush)
	if err != nil {
		return fmt.Errorf("fleet: subscribe %s: %w", ctl, err)
	}
	defer sub.Unsubscribe()
	idPrefix := strings.TrimPrefix(auditSubj, Root+".")
	idPrefix = strings.TrimSuffix(idPrefix, KindAudit) // "<host>.<vm>."
	sources := []*source{{
		idPrefix: idPrefix,
		t:        newTailer(a.AuditLog, audit.MaxRecord, cur.AuditN, auditKey),
		subject:  func(line) (string, error) { return auditSubj, nil },
		acked:    &a.stats.AuditN,
	}}
	if a.EventsLog != "" {
		sources = append(sources, &source{
			idPrefix: idPrefix,
			t:        newTailer(a.EventsLog, eventbus.MaxLine, cur.EventSeq, eventKey),
			subject:  a.eventSubject,
			acked:    &a.stats.EventSeq,
		})
	}
	defer func() {
		for _, s := range sources {
			s.t.close()
		}
	}()
	var lastState time.Time
	var lastErr string
	tick := time.NewTicker(a.Poll)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	srcCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	started := false
	for {
		if !started && nc.IsConnected() {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := EnsureStreams(sctx, js, a.Streams); err == nil {
				started = true
				for _, s := range sources {
					wg.Add(1)
					go func(s *source) { defer wg.Done(); a.publishLoop(srcCtx, js, s) }(s)
				}
			} else if err.Error() != lastErr {
				lastErr = err.Error()
				a.logf("fleet: %v (retrying)", err)
			}
			cancel()
		}
		if started {
			if time.Since(lastState) >= a.StateInterval {
				if a.publishState(ctx, js, stateSubj) == nil {
					lastState = time.Now()
				}
			}
			if err := a.saveCursor(); err != nil {
				a.logf("fleet: %v", err)
			}
		}
		select {
		case <-ctx.Done():
			stopSources()
			wg.Wait()
			if started {
				a.publishState(context.Background(), js, stateSubj)
			}
			_ = a.saveCursor()
			return nil
		case <-tick.C:
		}
	}
}

// inflight is a published line whose ack is awaited.
type inflight struct {
	key uint64
	f   jetstream.PubAckFuture // nil: a line skipped, acknowledged as it is
}

// publishLoop publishes s's lines as they come, Batch in flight, and moves
// s's acked key along the acks in order. On a failure s is rewound to the
// last ack in order: what follows is published again and JetStream drops
// the copies it already has (same message id).
func (a *Agent) publishLoop(ctx context.Context, js jetstream.JetStream, s *source) {
	var q []inflight
	a.mu.Lock()
	acked := *s.acked
	a.mu.Unlock()
	lastErr := ""
	fail := func(err error) {
		s.t.rewind(acked)
		q = nil
		a.mu.Lock()
		a.stats.Failures++
		a.mu.Unlock()
		if err.Error() != lastErr {
			lastErr = err.Error()
			a.logf("fleet: publish %s: %v (the log is kept; retrying)", s.t.path, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	ack := func(key uint64, published bool) {
		acked = key
		a.mu.Lock()
		*s.acked = key
		if published {
			a.stats.Published++
		}
		a.mu.Unlock()
	}
	for ctx.Err() == nil {
		fresh := 0
		if len(q) < a.Batch {
			skipped := s.t.Skipped
			lines, err := s.t.next(a.Batch - len(q))
			if d := s.t.Skipped - skipped; d > 0 {
				a.mu.Lock()
				a.stats.Skipped += d
				a.mu.Unlock()
			}
			if err != nil {
				fail(err)
				continue
			}
			fresh = len(lines)
			for _, l := range lines {
				subj, err := s.subject(l)
				if err != nil {
					// A line the stream cannot name is skipped, not retried for ever.
					a.logf("fleet: line %d of %s: %v (skipped)", l.key, s.t.path, err)
					q = append(q, inflight{key: l.key})
					continue
				}
				msg := nats.NewMsg(subj)
				msg.Data = l.text
				msg.Header.Set("Gatevisor-Key", strconv.FormatUint(l.key, 10))
				f, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(s.idPrefix+LineID(l.text)))
				if err != nil {
					fail(err)
					break
				}
				q = append(q, inflight{key: l.key, f: f})
			}
		}
		if len(q) == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(a.Poll):
			}
			continue
		}
		// Take the acks that are in; wait for the oldest when the window is
		// full or the log has nothing new.
		block := len(q) >= a.Batch || fresh == 0
		for len(q) > 0 {
			h := q[0]
			if h.f == nil {
				ack(h.key, false)
				q = q[1:]
				continue
			}
			if block {
				select {
				case <-h.f.Ok():
					ack(h.key, true)
					q = q[1:]
					lastErr = ""
				case err := <-h.f.Err():
					fail(err)
				case <-ctx.Done():
					return
				}
				block = false
				continue
			}
			select {
			case <-h.f.Ok():
				ack(h.key, true)
				q = q[1:]
				lastErr = ""
				continue
			case err := <-h.f.Err():
				fail(err)
			default:
			}
			break
		}
	}
}

// LineID is a log line's hex SHA-256, which for an audit record is the
// chain's own id of it (the next record's prev). A message's id is
// "<host>.<vm>." and its line's LineID: the same line of two VMs is two
// messages.
func LineID(text []byte) string {
	h := sha256.Sum256(append(text, '\n'))
	return hex.EncodeToString(h[:])
}

// eventSubject names an event-stream line's subject by its category and
// type: gatevisor.<host>.<vm>.<category>.<type>.
func (a *Agent) eventSubject(l line) (string, error) {
	var p monitoring.Point
	if err := json.Unmarshal(l.text, &p); err != nil {
		return "", fmt.Errorf("not an event: %w", err)
	}
	return Subject(a.Host, a.VM, p.Category().String(), kindToken(string(p.Kind)))
}

// State is what a monitor publishes about its VM.
type State struct {
	Host   string     `json:"host"`
	VM     string     `json:"vm"`
	Time   time.Time  `json:"time"`
	Fleet  Stats      `json:"fleet"`
	Status api.Status `json:"status"`
}

func (a *Agent) publishState(ctx context.Context, js jetstream.JetStream, subj string) error {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st := State{Host: a.Host, VM: a.VM, Time: time.Now().UTC(), Fleet: a.Stats(), Status: a.Member.Status(sctx)}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = js.Publish(sctx, subj, b)
	return err
}

// PushRequest is a policy pushed to a VM.
type PushRequest struct {
	Policy api.PolicyRequest `json:"policy"`
	By     string            `json:"by"` // who pushed it (user@host), for the monitor's log
}

// PushReply is a VM's answer to a push.
type PushReply struct {
	Host   string `json:"host"`
	VM     string `json:"vm"`
	OK     bool   `json:"ok"`
	Seq    uint64 `json:"seq,omitempty"`
	Digest string `json:"digest,omitempty"`
	Error  string `json:"error,omitempty"`
}

// onPush answers a policy push.
func (a *Agent) onPush(m *nats.Msg) {
	reply := PushReply{Host: a.Host, VM: a.VM}
	defer func() {
		a.mu.Lock()
		a.stats.Pushes++
		a.mu.Unlock()
		b, _ := json.Marshal(reply)
		_ = m.Respond(b)
	}()
	if !a.AcceptPolicy {
		reply.Error = "this monitor takes no policies from the fleet: start it with run --fleet-policy"
		return
	}
	var req PushRequest
	if len(m.Data) > 2*api.MaxPolicySource {
		reply.Error = "push too large"
		return
	}
	if err := json.Unmarshal(m.Data, &req); err != nil {
		reply.Error = fmt.Sprintf("not a policy push: %v", err)
		return
	}
	if !filepath.IsAbs(req.Policy.Path) || len(req.Policy.Path) > 4096 || len(req.Policy.Source) > api.MaxPolicySource {
		reply.Error = "the push names no absolute policy path or its source is too large"
		return
	}
	if req.Policy.Files == nil {
		req.Policy.Files = map[string]string{} // never read includes from this host's disk
	}
	if err := req.Policy.CheckFiles(); err != nil {
		reply.Error = err.Error()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	caller := api.Caller{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid())}
	if a.Authorize != nil {
		if err := a.Authorize(api.WithCaller(ctx, caller), caller, "policy.load"); err != nil {
			reply.Error = fmt.Sprintf("policy.load refused for the fleet (acting as uid %d): %v", caller.UID, err)
			return
		}
	}
	a.logf("fleet: policy %s pushed by %.100q", req.Policy.Path, req.By)
	res, err := a.Member.LoadPolicy(api.WithCaller(ctx, caller), req.Policy)
	if err != nil {
		reply.Error = err.Error()
		return
	}
	reply.OK, reply.Seq, reply.Digest = true, res.Seq, res.Digest
}

func (a *Agent) loadCursor() (cursor, error) {
	var c cursor
	if a.Cursor == "" {
		return c, nil
	}
	f, err := safefile.OpenFile(a.Cursor, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("fleet: cursor: %w", err)
	}
	defer f.Close()
	b := make([]byte, 4096)
	n, _ := f.Read(b)
	if err := json.Unmarshal(b[:n], &c); err != nil {
		a.logf("fleet: cursor %s unreadable (%v): publishing the logs from their start; the fleet drops copies it has seen within the hour", a.Cursor, err)
		return cursor{}, nil
	}
	// A log that starts again below the cursor (its files were removed)
	// is published from its start.
	if k, ok := lastKey(a.AuditLog, audit.MaxRecord, auditKey); ok && k < c.AuditN {
		c.AuditN = 0
	}
	if k, ok := lastKey(a.EventsLog, eventbus.MaxLine, eventKey); ok && k < c.EventSeq {
		c.EventSeq = 0
	}
	return c, nil
}

// saveCursor writes the position atomically (a new file renamed over).
func (a *Agent) saveCursor() error {
	if a.Cursor == "" {
		return nil
	}
	a.mu.Lock()
	c := cursor{AuditN: a.stats.AuditN, EventSeq: a.stats.EventSeq}
	a.mu.Unlock()
	if c == a.saved {
		return nil
	}
	b, _ := json.Marshal(c)
	tmp := a.Cursor + ".new"
	if err := safefile.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("fleet: cursor: %w", err)
	}
	if err := os.Rename(tmp, a.Cursor); err != nil {
		return fmt.Errorf("fleet: cursor: %w", err)
	}
	a.saved = c
	return nil
}

// lastKey returns the key of the last complete line of a log's current
// file.
func lastKey(path string, max int, keyOf func([]byte) (uint64, bool)) (uint64, bool) {
	if path == "" {
		return 0, false
	}
	if err := safefile.CheckRegular(path); err != nil {
		return 0, false
	}
	_, last, err := logfiles.TailFile(path, max)
	if err != nil || last == nil {
		return 0, false
	}
	return keyOf(bytes.TrimSuffix(last, []byte("\n")))
}
