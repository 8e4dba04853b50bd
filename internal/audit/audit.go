package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/logfiles"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// MaxRecord is the largest record, newline included, that Append writes and
// readers accept.
const MaxRecord = 1 << 20

// MaxKeep is the largest Options.Keep.
const MaxKeep = 1000

// maxRotated bounds the rotated files a reader or Open looks for.
const maxRotated = MaxKeep + 24

// Genesis is the prev of the first record of a new log.
var Genesis = strings.Repeat("0", 64)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log closed")

// ErrInUse is wrapped by Open when another Log (in this process or
// another) has the file open: two writers would break the chain.
var ErrInUse = errors.New("audit: log in use by another writer")

// Kind tells the log's own chain records from decisions.
type Kind string

// Record kinds. Readers must accept kinds they do not know (a newer
// gatevisor may add some): they are chained like the others.
const (
	KindDecision Kind = ""       // a security-server decision (omitted in JSON)
	KindOpen     Kind = "open"   // Open: VM, policy snapshot, repairs
	KindPolicy   Kind = "policy" // AppendPolicy: a new policy snapshot took effect
	KindPruned   Kind = "pruned" // retention deleted rotated files
	KindClose    Kind = "close"  // Close: the chain's head is sealed
)

// Record is one line of the log: an audited decision, or a chain record of
// the log's own (Kind not empty). Fields that are not set for a kind stay
// zero. Logs written before the hash chain have no kind and no prev; they
// read as decision records.
type Record struct {
	N          uint64      `json:"n"` // sequence number, assigned by the log, contiguous across rotation
	Kind       Kind        `json:"kind,omitempty"`
	Prev       string      `json:"prev,omitempty"` // hex SHA-256 of the previous record's line; Genesis for a log's first
	Time       time.Time   `json:"time"`
	Verdict    string      `json:"verdict"`              // allow, alert, deny, kill: what the policy decided
	Permissive bool        `json:"permissive,omitempty"` // permissive mode let a deny through
	Errno      int32       `json:"errno,omitempty"`
	Rule       string      `json:"rule"`
	Reason     string      `json:"reason"`
	PolicySeq  uint64      `json:"policy_seq"` // decision, open and policy records
	Cached     bool        `json:"cached,omitempty"`
	Event      event.Event `json:"event,omitzero"`
	// Repeat, on a decision record, says that the record stands for
	// Repeat.Count decisions alike: the same subject, class, op, verdict
	// and rule, from Time (Event is the first) to Repeat.Until. The
	// security server writes one instead of a record each when a subject
	// repeats a decision faster than the log should take them (a flood).
	Repeat *Repeat `json:"repeat,omitempty"`

	// Chain records.
	VM       string `json:"vm,omitempty"`       // open: the VM's name
	Policy   string `json:"policy,omitempty"`   // open, policy: the policy snapshot's digest
	Repaired int64  `json:"repaired,omitempty"` // open: bytes of a torn record cut off
	Unclosed bool   `json:"unclosed,omitempty"` // open: the record before is not a close record
	Pruned   *Prune `json:"pruned,omitempty"`   // pruned: what was deleted
}

// Repeat is what an aggregated decision record adds: how many decisions
// it stands for, when the last was, and the last one's event (its address,
// port or path tell the range the first and last span).
type Repeat struct {
	Count uint64      `json:"count"`
	Until time.Time   `json:"until"`
	Last  event.Event `json:"last"`
}

// chainRecord is how chain records are written: only their own fields.
type chainRecord struct {
	N         uint64    `json:"n"`
	Kind      Kind      `json:"kind"`
	Prev      string    `json:"prev"`
	Time      time.Time `json:"time"`
	VM        string    `json:"vm,omitempty"`
	Policy    string    `json:"policy,omitempty"`
	PolicySeq uint64    `json:"policy_seq,omitempty"`
	Repaired  int64     `json:"repaired,omitempty"`
	Unclosed  bool      `json:"unclosed,omitempty"`
	Pruned    *Prune    `json:"pruned,omitempty"`
}

// Prune describes rotated files that retention deleted, or will delete next.
type Prune struct {
	Files    int    `json:"files"`
	FirstN   uint64 `json:"first_n"`   // first record in them; 0 if unreadable
	LastN    uint64 `json:"last_n"`    // last record in them; 0 if unreadable
	LastHash string `json:"last_hash"` // hash of the last record's line: the oldest kept record's prev
	Bytes    int64  `json:"bytes"`
}

// NearLimit tells the owner of a Log that retention is about to delete
// evidence, or has just done so.
type NearLimit struct {
	Path     string
	Retained int64  // bytes in the log's files now
	Capacity int64  // MaxSize × (Keep+1): the most retention keeps
	Pruned   *Prune // not nil: rotation has just deleted these (a pruned record says so in the chain)
	Next     *Prune // the oldest file kept: what the next prune deletes; nil if none
	Err      error  // not nil: pruning failed; the files stay and pruning is retried on the next record
}

// SyncPolicy says when Append fsyncs.
type SyncPolicy uint8

const (
	// SyncEvery fsyncs every record before Append returns (the default).
	SyncEvery SyncPolicy = iota
	// SyncNone leaves flushing to the kernel; for tests and benchmarks only,
	// since an acknowledged record may be lost on a host crash.
	SyncNone
)

// Options configure a Log.
type Options struct {
	MaxSize int64 // rotate before the file would exceed this many bytes; 0 means 64 MiB, <0 never (nothing is ever deleted)
	Keep    int   // rotated files kept, 1 to MaxKeep; 0 means 5
	Sync    SyncPolicy

	// The open record anchors the chain to these.
	VM        string // the VM's name
	Policy    string // digest of the policy snapshot in force ("" if none)
	PolicySeq uint64 // its sequence number

	// OnNearLimit, if not nil, is called once when the retained bytes reach
	// 80% of the capacity (again after they fell below), and after every
	// prune. It is called from the goroutine that wrote the record (Append,
	// AppendPolicy, Open or Close) after the log's lock is released, so it
	// delays only that caller: it must return quickly (hand the event to a
	// channel). Calls may overlap when several goroutines append.
	OnNearLimit func(NearLimit)
}

// Log is an open audit log. It is safe for concurrent use.
type Log struct {
	path string
	opt  Options

	mu        sync.Mutex
	f         *os.File // nil after Close or a failed rotation
	err       error    // why f is nil after a failed rotation
	size      int64    // bytes in the current file
	retained  int64    // bytes in the current file and the rotated ones
	rotated   int      // rotated files: path.1 ... path.rotated
	n         uint64   // last record's number
	head      string   // hash of the last record's line; "" before the first
	repaired  int64
	nearArmed bool      // OnNearLimit fires when retained reaches 80%
	lastWrite time.Time // when this process last wrote a record

	// While AppendBatch writes, batch is set: decision records are not
	// fsynced one by one, and durable is the state after the last record
	// that was (what a failed batch rolls back to).
	batch   bool
	durable logState
}

// logState is what a batch rolls back: the position and head of the chain.
type logState struct {
	size, retained int64
	n              uint64
	head           string
}

// Open opens or creates the log at path and writes an open record. If the
// file ends in a torn record it is truncated to the last complete line;
// Repaired says how many bytes were removed.
func Open(path string, opt Options) (*Log, error) {
	if opt.MaxSize == 0 {
		opt.MaxSize = 64 << 20
	}
	switch {
	case opt.Keep == 0:
		opt.Keep = 5
	case opt.Keep < 0 || opt.Keep > MaxKeep:
		return nil, fmt.Errorf("audit: keep %d rotated files: want 1 to %d", opt.Keep, MaxKeep)
	}
	l := &Log{path: path, opt: opt, nearArmed: true}
	var ev []NearLimit
	if err := l.open(&ev); err != nil {
		return nil, err
	}
	l.notify(ev)
	return l, nil
}

// open opens the current file, repairs a torn tail, finds the chain's head
// and writes the open record.
func (l *Log) open(ev *[]NearLimit) error {
	f, err := safefile.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: open: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		return fmt.Errorf("audit: open %s: %w", l.path, err)
	}
	if err := lock(f); err != nil {
		return fail(err)
	}
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	good, last, err := tail(f, st.Size())
	if err != nil {
		return fail(err)
	}
	rotated, bytes := logfiles.Count(l.path, maxRotated)
	l.rotated, l.retained = rotated, good+bytes
	from := l.path
	if last == nil && l.rotated > 0 {
		// A fresh file after rotation continues the chain of FILE.1.
		from = rotatedName(l.path, 1)
		if _, last, err = tailFile(from); err != nil {
			return fail(err)
		}
	}
	closed := false
	if last != nil {
		var r Record
		if err := json.Unmarshal(last, &r); err != nil || r.N == 0 {
			return fail(fmt.Errorf("the last line of %s is not an audit record (is it an audit log? move it away)", from))
		}
		l.n, l.head, closed = r.N, hashLine(last), r.Kind == KindClose
	}
	if torn := st.Size() - good; torn > 0 {
		b := make([]byte, min(torn, 8))
		if _, err := f.ReadAt(b, good); err != nil && err != io.EOF {
			return fail(err)
		}
		if !tornRecord(b) {
			return fail(fmt.Errorf("it ends with %d bytes that are not an audit record: not truncating them (is it an audit log? move it away)", torn))
		}
		if err := f.Truncate(good); err != nil {
			return fail(fmt.Errorf("repair torn record: %w", err))
		}
		if err := f.Sync(); err != nil {
			return fail(fmt.Errorf("repair torn record: %w", err))
		}
		l.repaired += torn
	}
	l.f, l.size = f, good
	err = l.writeChain(&chainRecord{Kind: KindOpen, VM: l.opt.VM, Policy: l.opt.Policy, PolicySeq: l.opt.PolicySeq,
		Repaired: l.repaired, Unclosed: l.n > 0 && !closed}, ev)
	if err != nil {
		if l.f != nil {
			l.f.Close()
			l.f = nil
		}
		return err
	}
	return nil
}

// lock takes an exclusive flock(2) on f for as long as it is open, so that
// a second writer fails instead of interleaving its own chain.
func lock(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		lerr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB)
	}); err != nil {
		return err
	}
	if errors.Is(lerr, unix.EWOULDBLOCK) {
		return ErrInUse
	}
	return lerr
}

// tornRecord reports whether b, the start of a final line without a newline,
// is what a crash leaves: the start of a record, or zeros.
func tornRecord(b []byte) bool {
	const start = `{"n":`
	if strings.HasPrefix(start, string(b)) || strings.HasPrefix(string(b), start) {
		return true
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func rotatedName(path string, k int) string { return logfiles.Rotated(path, k) }

// hashLine returns the hex SHA-256 of a record's line (without newline).
func hashLine(line []byte) string {
	h := sha256.Sum256(line)
	return hex.EncodeToString(h[:])
}

// Repaired returns how many bytes of a torn final record Open removed.
func (l *Log) Repaired() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.repaired
}

// Path returns the log's file name.
func (l *Log) Path() string { return l.path }

// Head returns the number and line hash of the last record written: the
// chain's head. A checker that compares it with the file (Walk with
// WalkOptions.Expect) detects an edit or removal of the last records, which
// the file alone cannot show.
func (l *Log) Head() (n uint64, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, l.head
}

// Stats is what an operator asks of an open log.
type Stats struct {
	Records   uint64    // the chain's length: the last record's number
	Head      string    // the last record's line hash
	LastWrite time.Time // when this process last wrote a record (zero before)
	Bytes     int64     // in the current and the rotated files
	Files     int       // the current file and the rotated ones
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Records: l.n, Head: l.head, LastWrite: l.lastWrite, Bytes: l.retained, Files: l.rotated + 1}
}

// Append assigns r.N and r.Prev, writes r as one line and, with SyncEvery,
// fsyncs it. When Append returns nil the record is durable; when it returns
// an error the caller must treat the audited action as failed (the security
// server denies). r must be a decision record (Kind "").
func (l *Log) Append(r *Record) error {
	if r.Kind != KindDecision {
		return fmt.Errorf("audit: append: a %q record is the log's own", r.Kind)
	}
	var ev []NearLimit
	l.mu.Lock()
	err := l.write(recordEncoder(r), &ev)
	l.mu.Unlock()
	l.notify(ev)
	return err
}

// AppendBatch appends records like Append, with one fsync for all of them:
// when it returns nil every record is durable; when it returns an error
// none is acknowledged (the caller treats every audited action as failed)
// and the records not yet durable are cut off again, so that the chain
// ends with the last durable record. Records are written in order.
func (l *Log) AppendBatch(rs []*Record) error {
	for _, r := range rs {
		if r.Kind != KindDecision {
			return fmt.Errorf("audit: append: a %q record is the log's own", r.Kind)
		}
	}
	if len(rs) == 0 {
		return nil
	}
	var ev []NearLimit
	l.mu.Lock()
	err := l.appendBatch(rs, &ev)
	l.mu.Unlock()
	l.notify(ev)
	return err
}

// Preconditions: l.mu is held.
func (l *Log) appendBatch(rs []*Record, ev *[]NearLimit) error {
	if l.opt.Sync != SyncEvery || len(rs) == 1 || l.f == nil {
		for _, r := range rs {
			if err := l.write(recordEncoder(r), ev); err != nil {
				return err
			}
		}
		return nil
	}
	l.batch, l.durable = true, l.state()
	defer func() { l.batch = false }()
	for _, r := range rs {
		if err := l.write(recordEncoder(r), ev); err != nil {
			return l.rollback(err)
		}
	}
	if err := l.f.Sync(); err != nil {
		return l.rollback(fmt.Errorf("audit: fsync: %w", err))
	}
	return nil
}

func recordEncoder(r *Record) func(n uint64, prev string) ([]byte, error) {
	return func(n uint64, prev string) ([]byte, error) {
		r.N, r.Prev = n, prev
		return json.Marshal(r)
	}
}

// Preconditions: l.mu is held.
func (l *Log) state() logState {
	return logState{size: l.size, retained: l.retained, n: l.n, head: l.head}
}

// rollback cuts off the records of a batch written since its last durable
// record, after err; if that fails the log becomes unusable.
//
// Preconditions: l.mu is held; l.batch is set.
func (l *Log) rollback(err error) error {
	if l.f == nil {
		return err
	}
	d := l.durable
	if terr := l.f.Truncate(d.size); terr != nil {
		l.f.Close()
		l.f, l.err = nil, fmt.Errorf("%w; cutting the batch off: %v", err, terr)
		return err
	}
	l.size, l.retained, l.n, l.head = d.size, d.retained, d.n, d.head
	return err
}

// AppendPolicy records that the policy snapshot with this digest and
// sequence number took effect.
func (l *Log) AppendPolicy(digest string, seq uint64) error {
	var ev []NearLimit
	l.mu.Lock()
	err := l.writeChain(&chainRecord{Kind: KindPolicy, Policy: digest, PolicySeq: seq}, &ev)
	l.mu.Unlock()
	l.notify(ev)
	return err
}

// Close writes a close record, syncs and closes the log.
func (l *Log) Close() error {
	var ev []NearLimit
	l.mu.Lock()
	if l.f == nil {
		l.err = nil // Append now says ErrClosed
		l.mu.Unlock()
		return nil
	}
	err := l.writeChain(&chainRecord{Kind: KindClose}, &ev)
	if l.f != nil {
		if serr := l.f.Sync(); err == nil {
			err = serr
		}
		if cerr := l.f.Close(); err == nil {
			err = cerr
		}
		l.f = nil
	}
	l.err = nil
	l.mu.Unlock()
	l.notify(ev)
	return err
}

func (l *Log) notify(ev []NearLimit) {
	if l.opt.OnNearLimit == nil {
		return
	}
	for _, e := range ev {
		l.opt.OnNearLimit(e)
	}
}

// Preconditions: l.mu is held.
func (l *Log) writeChain(c *chainRecord, ev *[]NearLimit) error {
	return l.writeRecord(func(n uint64, prev string) ([]byte, error) {
		c.N, c.Prev, c.Time = n, prev, time.Now().UTC()
		return json.Marshal(c)
	}, c.Kind == KindClose, true, ev)
}

// write encodes the next record with encode, rotating first if needed,
// writes it, and then prunes if rotation (or a lower Keep) left too many
// rotated files.
//
// Preconditions: l.mu is held.
func (l *Log) write(encode func(n uint64, prev string) ([]byte, error), ev *[]NearLimit) error {
	return l.writeRecord(encode, false, false, ev)
}

// writeRecord is write; last says the record ends the session (close):
// any pruning its rotation needs is recorded before it, so that the log
// still ends with it; chain says it is one of the log's own records.
//
// Preconditions: l.mu is held.
func (l *Log) writeRecord(encode func(n uint64, prev string) ([]byte, error), last, chain bool, ev *[]NearLimit) error {
	if l.f == nil {
		if l.err != nil {
			return fmt.Errorf("audit: log unusable: %w", l.err)
		}
		return ErrClosed
	}
	line, err := l.encode(encode)
	if err != nil {
		return err
	}
	if l.opt.MaxSize > 0 && l.size > 0 && l.size+int64(len(line)) > l.opt.MaxSize {
		if err := l.rotate(); err != nil {
			if l.f == nil {
				l.err = err
			}
			return err
		}
	}
	if last && l.opt.MaxSize > 0 && l.rotated > l.opt.Keep {
		l.prune(ev)
		// The pruned record took this record's place in the chain.
		if line, err = l.encode(encode); err != nil {
			return err
		}
	}
	if err := l.writeLine(line, chain, ev); err != nil {
		return err
	}
	if !last && l.opt.MaxSize > 0 && l.rotated > l.opt.Keep {
		// After the record, so that an open record follows the close
		// record of the session before. A failure does not undo the
		// record, which is durable: it is reported and retried.
		l.prune(ev)
	}
	return nil
}

// Preconditions: l.mu is held.
func (l *Log) encode(encode func(n uint64, prev string) ([]byte, error)) ([]byte, error) {
	prev := l.head
	if prev == "" {
		prev = Genesis
	}
	line, err := encode(l.n+1, prev)
	if err != nil {
		return nil, fmt.Errorf("audit: encode: %w", err)
	}
	line = append(line, '\n')
	if len(line) > MaxRecord {
		return nil, fmt.Errorf("audit: record of %d bytes exceeds %d", len(line), MaxRecord)
	}
	return line, nil
}

// writeLine writes one encoded record (newline included) with one write(2)
// and, with SyncEvery, fsyncs it.
//
// Preconditions: l.mu is held; l.f is not nil.
func (l *Log) writeLine(line []byte, chain bool, ev *[]NearLimit) error {
	n, err := l.f.Write(line)
	if err != nil || n != len(line) {
		if err == nil {
			err = io.ErrShortWrite
		}
		return l.unwrite(fmt.Errorf("audit: write: %w", err))
	}
	if l.opt.Sync == SyncEvery && (!l.batch || chain) {
		// In a batch a chain record (pruned) is synced at once, and makes
		// the batch's records before it durable too.
		if err := l.f.Sync(); err != nil {
			// The record may or may not be on disk; it is not acknowledged.
			return l.unwrite(fmt.Errorf("audit: fsync: %w", err))
		}
	}
	l.size += int64(n)
	l.retained += int64(n)
	l.n++
	l.head = hashLine(line[:len(line)-1])
	l.lastWrite = time.Now()
	if l.batch && chain {
		l.durable = l.state()
	}
	if c := l.capacity(); c > 0 {
		switch near := l.retained*5 >= c*4; {
		case near && l.nearArmed:
			l.nearArmed = false
			*ev = append(*ev, NearLimit{Path: l.path, Retained: l.retained, Capacity: c, Next: l.oldest()})
		case !near:
			l.nearArmed = true
		}
	}
	return nil
}

// unwrite cuts off a record that was not acknowledged, so that the next
// record starts on a clean line and the chain does not depend on it; if
// that fails too, the log becomes unusable (every later record fails).
//
// Preconditions: l.mu is held; l.f is not nil.
func (l *Log) unwrite(err error) error {
	if terr := l.f.Truncate(l.size); terr != nil {
		l.f.Close()
		l.f, l.err = nil, fmt.Errorf("%w; cutting the record off: %v", err, terr)
	}
	return err
}

// capacity is the most bytes retention keeps; 0 if it never deletes.
func (l *Log) capacity() int64 {
	if l.opt.MaxSize <= 0 {
		return 0
	}
	return l.opt.MaxSize * int64(l.opt.Keep+1)
}

// oldest describes the oldest rotated file, the next one a prune deletes.
//
// Preconditions: l.mu is held.
func (l *Log) oldest() *Prune {
	if l.rotated == 0 {
		return nil
	}
	p, _ := describe(l.path, l.rotated, l.rotated)
	return p
}

// rotate renames the current file to FILE.1 (and FILE.k to FILE.k+1) and
// opens a new one. The caller prunes.
//
// Preconditions: l.mu is held; l.f is not nil.
func (l *Log) rotate() error {
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	l.f = nil
	if err := logfiles.Shift(l.path, l.rotated); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	l.rotated++
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		return err
	}
	f, err := safefile.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	if err := lock(f); err != nil {
		f.Close()
		return fmt.Errorf("audit: rotate: %w", err)
	}
	l.f, l.size = f, 0
	if l.batch {
		l.durable = l.state() // rotation synced the file before
	}
	return nil
}

// prune deletes the rotated files beyond Keep, oldest first, after writing a
// pruned record that says what goes. A failure leaves the files (and is
// retried on the next record) and is reported through OnNearLimit.
//
// Preconditions: l.mu is held; l.f is not nil.
func (l *Log) prune(ev *[]NearLimit) {
	from, to := l.opt.Keep+1, l.rotated
	fail := func(err error) {
		*ev = append(*ev, NearLimit{Path: l.path, Retained: l.retained, Capacity: l.capacity(), Next: l.oldest(),
			Err: fmt.Errorf("audit: prune %s.%d..%d: %w", l.path, from, to, err)})
	}
	p, err := describe(l.path, from, to)
	if err != nil {
		fail(err)
		return
	}
	line, err := l.encode(func(n uint64, prev string) ([]byte, error) {
		return json.Marshal(&chainRecord{N: n, Kind: KindPruned, Prev: prev, Time: time.Now().UTC(), Pruned: p})
	})
	if err == nil {
		err = l.writeLine(line, true, ev)
	}
	if err != nil {
		fail(err)
		return
	}
	left, freed, err := logfiles.Remove(l.path, from, to)
	l.rotated, l.retained = left, l.retained-freed
	if err != nil {
		fail(err)
		return
	}
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		fail(err)
		return
	}
	*ev = append(*ev, NearLimit{Path: l.path, Retained: l.retained, Capacity: l.capacity(), Pruned: p, Next: l.oldest()})
}

// describe reads the rotated files FILE.from ... FILE.to (to is the oldest):
// the n range, the hash of the last record and the bytes.
func describe(path string, from, to int) (*Prune, error) {
	p := &Prune{Files: to - from + 1}
	for k := from; k <= to; k++ {
		fi, err := os.Lstat(rotatedName(path, k))
		if err != nil {
			return nil, err
		}
		p.Bytes += fi.Size()
	}
	_, last, err := tailFile(rotatedName(path, from))
	if err != nil {
		return nil, err
	}
	if last != nil {
		p.LastHash = hashLine(last)
		var r Record
		if json.Unmarshal(last, &r) == nil {
			p.LastN = r.N
		}
	}
	if first, err := headFile(rotatedName(path, to)); err == nil && first != nil {
		var r Record
		if json.Unmarshal(first, &r) == nil {
			p.FirstN = r.N
		}
	}
	return p, nil
}

func syncDir(dir string) error {
	if err := logfiles.SyncDir(dir); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}
