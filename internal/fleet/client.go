package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// maxFleet bounds the VMs List reads.
const maxFleet = 100000

// List returns the last state every VM of the fleet published, sorted by
// host and VM.
func List(ctx context.Context, js jetstream.JetStream) ([]State, error) {
	var st jetstream.Stream
	err := retry(ctx, func() (err error) { st, err = js.Stream(ctx, StateStream); return err })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	var info *jetstream.StreamInfo
	if err := retry(ctx, func() (err error) { info, err = st.Info(ctx); return err }); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	var cons jetstream.Consumer
	err = retry(ctx, func() (err error) {
		cons, err = st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	// The last state of each VM, by subject; states published while we
	// read replace older ones.
	last := map[string]State{}
	for len(last) < maxFleet {
		var batch jetstream.MessageBatch
		err := retry(ctx, func() (err error) { batch, err = cons.FetchNoWait(256); return err })
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		n, pending := 0, uint64(0)
		for m := range batch.Messages() {
			n++
			if md, err := m.Metadata(); err == nil {
				pending = md.NumPending
			}
			w, err := ParseSubject(m.Subject())
			if err != nil {
				continue
			}
			var s State
			if json.Unmarshal(m.Data(), &s) != nil {
				continue
			}
			s.Host, s.VM = w.Host, w.VM // the subject, not the payload, says who
			last[m.Subject()] = s
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		if n == 0 || pending == 0 {
			break
		}
	}
	out := make([]State, 0, len(last))
	for _, s := range last {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].VM < out[j].VM
	})
	return out, nil
}

// Selector picks VMs of the fleet: a glob (path.Match) on "HOST/VM", or on
// the VM's name alone when it has no '/'; "" and "*" pick every VM.
type Selector string

// Match says whether the VM vm on host is picked.
func (s Selector) Match(host, vm string) bool {
	p := string(s)
	if p == "" || p == "*" || p == "*/*" {
		return true
	}
	if strings.Contains(p, "/") {
		ok, _ := path.Match(p, host+"/"+vm)
		return ok
	}
	ok, _ := path.Match(p, vm)
	return ok
}

// Check refuses a malformed glob.
func (s Selector) Check() error {
	if _, err := path.Match(string(s), ""); err != nil {
		return fmt.Errorf("selector %q: %w (use a glob such as 'cam*' or 'host1/*')", string(s), err)
	}
	return nil
}

// Push sends req to every target at once and returns each one's reply, in
// the targets' order: a target that does not answer within timeout gets
// an error reply saying so.
func Push(ctx context.Context, nc *nats.Conn, targets []State, req PushRequest, timeout time.Duration) []PushReply {
	b, err := json.Marshal(req)
	out := make([]PushReply, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		out[i] = PushReply{Host: t.Host, VM: t.VM}
		if err != nil {
			out[i].Error = err.Error()
			continue
		}
		subj, serr := CtlSubject(t.Host, t.VM, "policy")
		if serr != nil {
			out[i].Error = serr.Error()
			continue
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			m, err := nc.RequestWithContext(rctx, subj, b)
			switch {
			case errors.Is(err, nats.ErrNoResponders):
				out[i].Error = "no monitor answers (the VM is stopped, or its monitor runs without --fleet)"
				return
			case err != nil:
				out[i].Error = fmt.Sprintf("no answer within %v: %v", timeout, err)
				return
			}
			var r PushReply
			if err := json.Unmarshal(m.Data, &r); err != nil {
				out[i].Error = fmt.Sprintf("a reply that is not JSON: %v", err)
				return
			}
			r.Host, r.VM = out[i].Host, out[i].VM
			out[i] = r
		}(i)
	}
	wg.Wait()
	return out
}

// EventsOptions choose the fleet events to read.
type EventsOptions struct {
	Select Selector
	Kinds  []string // subject kinds: audit, ids, decision, notice, or ids.finding, ...; none: all
	Follow bool     // wait for new events after the stored ones
	Last   int      // only the last Last stored events (0: all)
}

// Event is one message of the events stream.
type Event struct {
	Where
	Seq  uint64          // the stream's sequence number
	Data json.RawMessage // the audit record or event-stream point
}

// Events calls fn with the fleet's stored events in order, then, with
// Follow, with new ones until ctx ends.
func Events(ctx context.Context, js jetstream.JetStream, o EventsOptions, fn func(Event) error) error {
	if err := o.Select.Check(); err != nil {
		return err
	}
	var st jetstream.Stream
	err := retry(ctx, func() (err error) { st, err = js.Stream(ctx, EventsStream); return err })
	if err != nil {
		return fmt.Errorf("fleet: %w (has any monitor joined the fleet yet?)", err)
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	for _, k := range o.Kinds {
		if k == "" || strings.ContainsAny(k, " *>") {
			return fmt.Errorf("fleet: kind %q: use audit, ids, decision, notice or one of their types (ids.finding)", k)
		}
		if !strings.Contains(k, ".") && k != KindAudit {
			k += ".*"
		}
		cfg.FilterSubjects = append(cfg.FilterSubjects, Root+".*.*."+k)
	}
	var info *jetstream.StreamInfo
	if err := retry(ctx, func() (err error) { info, err = st.Info(ctx); return err }); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	if o.Last > 0 && info.State.LastSeq > uint64(o.Last) && len(cfg.FilterSubjects) == 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = info.State.LastSeq - uint64(o.Last) + 1
	}
	var cons jetstream.Consumer
	if err := retry(ctx, func() (err error) { cons, err = st.OrderedConsumer(ctx, cfg); return err }); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	// Without Follow, read up to the stream's last message as it was when
	// we started (an ordered consumer may hand out an empty batch while it
	// re-creates itself after a server loss; that is not the end).
	target, empty, filtered := info.State.LastSeq, 0, len(cfg.FilterSubjects) > 0
	var at uint64
	for {
		if !o.Follow && at >= target {
			return nil
		}
		var batch jetstream.MessageBatch
		err := retry(ctx, func() (err error) { batch, err = cons.Fetch(256, jetstream.FetchMaxWait(time.Second)); return err })
		if err != nil {
			return fmt.Errorf("fleet: %w", err)
		}
		n, pending := 0, uint64(0)
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			at, pending = md.Sequence.Stream, md.NumPending
			w, err := ParseSubject(m.Subject())
			if err != nil || !o.Select.Match(w.Host, w.VM) {
				continue
			}
			if !json.Valid(m.Data()) {
				continue
			}
			if err := fn(Event{Where: w, Seq: md.Sequence.Stream, Data: json.RawMessage(m.Data())}); err != nil {
				return err
			}
			if !o.Follow && at >= target {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !transient(ctx, err) {
			return fmt.Errorf("fleet: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		if n > 0 {
			empty = 0
			// A filtered consumer may never reach the target: its own
			// pending count says when it has nothing more.
			if !o.Follow && filtered && pending == 0 {
				return nil
			}
			continue
		}
		if empty++; !o.Follow && (empty >= 10 || filtered && empty >= 3) {
			return nil
		}
	}
}

// retry calls fn until it succeeds, fails otherwise than for want of a
// JetStream leader (a cluster that lost a server elects one in seconds),
// or 15 seconds have passed.
func retry(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := fn()
		if err == nil || !transient(ctx, err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// transient says whether err is a JetStream leader missing for a while.
func transient(ctx context.Context, err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil
}
