package eventbus

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/monitoring"
)

// Limits and defaults of the stream and its file.
const (
	// DefaultMaxSize is the default size at which events.jsonl rotates.
	DefaultMaxSize = 16 << 20
	// MinMaxSize is the smallest MaxSize: a file must hold any line.
	MinMaxSize = MaxLine
	// DefaultKeep is the default number of rotated files kept.
	DefaultKeep = 4
	// MaxKeep is the largest Keep.
	MaxKeep = 100
	// MaxLine bounds one point's line, newline included, written or read
	// back. A point whose line would be longer is written without its
	// payload, saying so (Stats.Oversized).
	MaxLine = 64 << 10

	// DefaultPerKey is how many decisions of one key a second are written
	// one by one.
	DefaultPerKey = 10
	// DefaultBudget is how many decisions a second are written one by
	// one, all keys together.
	DefaultBudget = 200
	// DefaultMaxAggregates bounds the aggregates of distinct keys in a
	// second; past it decisions merge by kind, verdict and rule.
	DefaultMaxAggregates = 100
	// DefaultMaxTracked bounds the keys counted in a second; decisions of
	// further keys are merged at once.
	DefaultMaxTracked = 4096
	// maxMergedKeys bounds merged keys in a second (they come from the
	// policy; this is a backstop): past it, decisions merge by kind.
	maxMergedKeys = 1024

	// noticeEvery is how often at most a failing file is told as a notice.
	noticeEvery = time.Minute
	// retryEvery is how often at most a file that failed is reopened.
	retryEvery = time.Second
	// followBuffer is how many lines a follower may lag before it is dropped.
	followBuffer = 256
	// flushSlack is how long after the end of a second the timer flushes it.
	flushSlack = 5 * time.Millisecond
)

// Options configure a Bus. Zero values take the defaults above.
type Options struct {
	VM      string // the VM's name, for the bus's own notices
	Path    string // events.jsonl; "" keeps no file (history and followers only)
	MaxSize int64  // rotate before the file would exceed this; at least MinMaxSize
	Keep    int    // rotated files kept, 1 to MaxKeep

	PerKey, Budget, MaxAggregates, MaxTracked int

	// Logf, if set, gets the bus's notices for the monitor's log (called
	// without the bus's lock).
	Logf func(format string, a ...any)

	// Now is the bus's clock (tests); nil is time.Now.
	Now func() time.Time
	// manualFlush (tests) starts no timer: the test calls tick.
	manualFlush bool
}

// Stats are the bus's counters, for `gatevisor status`.
type Stats struct {
	Log     string
	MaxSize int64
	Keep    int
	// Seq is the last point's number.
	Seq uint64
	// Aggregated counts decisions folded into aggregates instead of being
	// written one by one; Aggregates the aggregate points written.
	Aggregated uint64
	Aggregates uint64
	// WriteErrors counts lines the file did not take; LastError is the last
	// reason. Those lines still reached the history and followers.
	WriteErrors uint64
	LastError   string
	// Oversized counts points written without their payload, too long
	// for a line.
	Oversized uint64
	// Rotations counts files rotated; DroppedFollowers followers dropped
	// for being too slow.
	Rotations        uint64
	DroppedFollowers uint64
}

// Bus is one VM's event stream. It is safe for concurrent use.
type Bus struct {
	opt Options

	mu         sync.Mutex // guards the fields below
	closed     bool
	seq        uint64
	log        *fileLog // nil without a file
	hist       [monitoring.NumCategories]ring
	subs       map[chan []byte]struct{}
	agg        aggregator
	timer      *time.Timer
	timerArmed bool
	stats      Stats
	lastNotice time.Time
	noticeDue  string   // a write failure to tell once the point being written is out
	inNotice   bool     // a notice of the bus's own is being written
	logs       []string // for Logf, once the lock is released
}

// Open starts a bus, opening (or creating) its file. An existing file is
// appended to and the sequence numbers go on from its last line.
func Open(opt Options) (*Bus, error) {
	if err := opt.fill(); err != nil {
		return nil, err
	}
	b := &Bus{opt: opt, subs: map[chan []byte]struct{}{}}
	b.agg.keys = map[monitoring.RepeatKey]*keyState{}
	b.hist = newHistory()
	b.stats.Log, b.stats.MaxSize, b.stats.Keep = opt.Path, opt.MaxSize, opt.Keep
	if opt.Path != "" {
		l, last, warn, err := openFileLog(opt.Path, opt.MaxSize, opt.Keep)
		if err != nil {
			return nil, fmt.Errorf("events log: %w", err)
		}
		b.log, b.seq = l, last
		if warn != "" {
			b.logs = append(b.logs, warn)
		}
	}
	b.stats.Seq = b.seq
	b.mu.Lock()
	b.unlock()
	return b, nil
}

func (o *Options) fill() error {
	switch {
	case o.MaxSize == 0:
		o.MaxSize = DefaultMaxSize
	case o.MaxSize < MinMaxSize:
		return fmt.Errorf("events log: max size %d: at least %d bytes", o.MaxSize, MinMaxSize)
	}
	switch {
	case o.Keep == 0:
		o.Keep = DefaultKeep
	case o.Keep < 1 || o.Keep > MaxKeep:
		return fmt.Errorf("events log: keep %d rotated files: want 1 to %d", o.Keep, MaxKeep)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.PerKey, DefaultPerKey)
	def(&o.Budget, DefaultBudget)
	def(&o.MaxAggregates, DefaultMaxAggregates)
	def(&o.MaxTracked, DefaultMaxTracked)
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// Publish records p. A decision may be folded into its second's aggregate
// (see the package comment); everything else is written at once. It never
// blocks on followers or fails: what cannot be written is counted.
func (b *Bus) Publish(p monitoring.Point) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	now := b.opt.Now()
	if k, ok := p.RepeatKey(); ok {
		b.decisionLocked(p, k, now)
	} else {
		e := p
		b.emitLocked(&e, now)
	}
	b.unlock()
}

// emitLocked gives p the next sequence number and writes its line to the
// file, the history and the followers.
//
// Preconditions: b.mu is held.
func (b *Bus) emitLocked(p *monitoring.Point, now time.Time) {
	b.seq++
	b.stats.Seq = b.seq
	p.Seq = b.seq
	line := b.encode(p)
	if b.log != nil {
		rotated, err := b.log.write(line, now)
		if rotated {
			b.stats.Rotations++
		}
		if err != nil {
			b.writeFailedLocked(err, now)
		}
	}
	b.hist[p.Category()].push(entry{seq: p.Seq, line: line})
	for ch := range b.subs {
		select {
		case ch <- line:
		default:
			delete(b.subs, ch)
			close(ch)
			b.stats.DroppedFollowers++
		}
	}
	if b.noticeDue != "" && !b.inNotice {
		detail := b.noticeDue
		b.noticeDue, b.inNotice = "", true
		n := monitoring.Notice(b.opt.VM, monitoring.EventsNotice, detail)
		n.Time = now.UTC()
		b.emitLocked(&n, now)
		b.inNotice = false
	}
}

// encode is p's line, newline included, at most MaxLine bytes.
//
// Preconditions: b.mu is held.
func (b *Bus) encode(p *monitoring.Point) []byte {
	line, err := json.Marshal(p)
	if err != nil || len(line)+1 > MaxLine {
		b.stats.Oversized++
		why := fmt.Sprintf("this %s point's line would be %d bytes, over the event log's limit of %d: written without its payload (the audit log has the decision)", p.Kind, len(line)+1, MaxLine)
		if err != nil {
			why = "this point could not be encoded: " + err.Error()
		}
		line, _ = json.Marshal(monitoring.Point{Time: p.Time, VM: p.VM, Kind: p.Kind, Seq: p.Seq, Error: why})
	}
	return append(line, '\n')
}

// writeFailedLocked counts a line the file did not take and, at most once
// a minute, tells it.
//
// Preconditions: b.mu is held.
func (b *Bus) writeFailedLocked(err error, now time.Time) {
	b.stats.WriteErrors++
	b.stats.LastError = err.Error()
	if !b.lastNotice.IsZero() && now.Sub(b.lastNotice) < noticeEvery {
		return
	}
	b.lastNotice = now
	msg := fmt.Sprintf("events log %s: %v; %d events not written to it so far (they still reach 'gatevisor events' and its followers; 'gatevisor status' counts them)",
		b.opt.Path, err, b.stats.WriteErrors)
	b.logs = append(b.logs, msg)
	if !b.inNotice {
		b.noticeDue = msg
	}
}

// unlock releases b.mu, then hands what the bus has to tell to Logf.
//
// Preconditions: b.mu is held.
func (b *Bus) unlock() {
	logs := b.logs
	b.logs = nil
	b.mu.Unlock()
	if b.opt.Logf == nil {
		return
	}
	for _, l := range logs {
		b.opt.Logf("%s", l)
	}
}

// Stats returns the bus's counters.
func (b *Bus) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stats
}

// Close writes the aggregates still pending, ends every follower's stream
// and closes the file. Later points are ignored.
func (b *Bus) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.flushLocked(b.opt.Now())
	b.closed = true
	if b.timer != nil {
		b.timer.Stop()
	}
	for ch := range b.subs {
		close(ch)
	}
	b.subs = map[chan []byte]struct{}{}
	if b.log != nil {
		b.log.close()
	}
	b.unlock()
}
