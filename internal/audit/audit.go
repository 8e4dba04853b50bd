// Package audit is gatevisor's append-only audit log: one JSON object per
// line, written durably before the security server's verdict reaches a gate.
//
// Durability: with SyncEvery (the default) Append writes the whole record
// with one write(2) on an O_APPEND file and then fsync(2)s it before it
// returns, so an acknowledged record survives a crash of gatevisor or of the
// host. A record cut short by a crash mid-write is a final line without a
// newline: Read skips it and reports it as torn, and Open truncates it away
// so that the next record starts on a clean line. Rotation by size renames
// the file to FILE.1 (FILE.1 to FILE.2, ...) after an fsync, and fsyncs the
// directory.
//
// Imported by secserver (which writes) and by the CLI (which reads). Gates
// never write to it directly.
package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// MaxRecord is the largest record Append writes and Read accepts.
const MaxRecord = 1 << 20

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log closed")

// Record is one audited decision.
type Record struct {
	N          uint64      `json:"n"` // sequence number, assigned by Append, increasing across rotation
	Time       time.Time   `json:"time"`
	Verdict    string      `json:"verdict"`              // allow, alert, deny, kill: what the policy decided
	Permissive bool        `json:"permissive,omitempty"` // permissive mode let a deny through
	Errno      int32       `json:"errno,omitempty"`
	Rule       string      `json:"rule"`
	Reason     string      `json:"reason"`
	PolicySeq  uint64      `json:"policy_seq"`
	Cached     bool        `json:"cached,omitempty"`
	Event      event.Event `json:"event"`
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
	MaxSize int64 // rotate before the file would exceed this many bytes; 0 means 64 MiB, <0 never
	Keep    int   // rotated files to keep; 0 means 5
	Sync    SyncPolicy
}

// Log is an open audit log. It is safe for concurrent use.
type Log struct {
	path string
	opt  Options

	mu       sync.Mutex
	f        *os.File // nil after Close
	size     int64
	n        uint64
	repaired int64
}

// Open opens or creates the log at path. If the file ends in a torn record
// it is truncated to the last complete line; Repaired says how many bytes
// were removed.
func Open(path string, opt Options) (*Log, error) {
	if opt.MaxSize == 0 {
		opt.MaxSize = 64 << 20
	}
	if opt.Keep <= 0 {
		opt.Keep = 5
	}
	l := &Log{path: path, opt: opt}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: open: %w", err)
	}
	size, last, err := tail(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: open %s: %w", l.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: open: %w", err)
	}
	if st.Size() != size {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return fmt.Errorf("audit: repair torn record: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("audit: repair torn record: %w", err)
		}
		l.repaired += st.Size() - size
	}
	if last == 0 && size == 0 {
		// A fresh file after rotation continues the numbering of FILE.1.
		if g, err := os.Open(l.path + ".1"); err == nil {
			_, last, _ = tail(g)
			g.Close()
		}
	}
	l.f, l.size, l.n = f, size, last
	return nil
}

// tail returns the length of f up to and including its last newline and
// the number of the last complete record.
func tail(f *os.File) (int64, uint64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	end := st.Size()
	const chunk = 64 << 10
	var buf []byte
	for off := end; off > 0 && int64(len(buf)) <= MaxRecord+chunk; {
		n := int64(chunk)
		if off < n {
			n = off
		}
		off -= n
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
			return 0, 0, err
		}
		buf = append(b, buf...)
		i := bytes.LastIndexByte(buf, '\n')
		if i < 0 {
			continue
		}
		good := off + int64(i) + 1
		// Find the last line before that newline.
		j := bytes.LastIndexByte(buf[:i], '\n')
		if j < 0 && off > 0 {
			continue // need more to see the whole last line
		}
		var r struct {
			N uint64 `json:"n"`
		}
		_ = json.Unmarshal(buf[j+1:i], &r)
		return good, r.N, nil
	}
	if len(buf) == 0 {
		return 0, 0, nil
	}
	if bytes.IndexByte(buf, '\n') < 0 && int64(len(buf)) == end {
		return 0, 0, nil // one torn line and nothing else
	}
	return 0, 0, fmt.Errorf("last record longer than %d bytes", MaxRecord)
}

// Repaired returns how many bytes of a torn final record Open removed.
func (l *Log) Repaired() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.repaired
}

// Path returns the log's file name.
func (l *Log) Path() string { return l.path }

// Append assigns r.N, writes r as one line and, with SyncEvery, fsyncs it.
// When Append returns nil the record is durable; when it returns an error
// the caller must treat the audited action as failed (the security server
// denies).
func (l *Log) Append(r *Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return ErrClosed
	}
	r.N = l.n + 1
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("audit: encode: %w", err)
	}
	line = append(line, '\n')
	if len(line) > MaxRecord {
		return fmt.Errorf("audit: record of %d bytes exceeds %d", len(line), MaxRecord)
	}
	if l.opt.MaxSize > 0 && l.size > 0 && l.size+int64(len(line)) > l.opt.MaxSize {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(line)
	if err != nil || n != len(line) {
		// Cut a partial record off so the next one starts on a clean line.
		_ = l.f.Truncate(l.size)
		if err == nil {
			err = io.ErrShortWrite
		}
		return fmt.Errorf("audit: write: %w", err)
	}
	if l.opt.Sync == SyncEvery {
		if err := l.f.Sync(); err != nil {
			// The record may or may not be on disk; it is not acknowledged.
			return fmt.Errorf("audit: fsync: %w", err)
		}
	}
	l.size += int64(n)
	l.n = r.N
	return nil
}

// Preconditions: l.mu is held.
func (l *Log) rotate() error {
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	l.f = nil
	for k := l.opt.Keep - 1; k >= 1; k-- {
		from := fmt.Sprintf("%s.%d", l.path, k)
		if _, err := os.Stat(from); err == nil {
			if err := os.Rename(from, fmt.Sprintf("%s.%d", l.path, k+1)); err != nil {
				return fmt.Errorf("audit: rotate: %w", err)
			}
		}
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	n := l.n
	if err := l.open(); err != nil {
		return err
	}
	l.n = n
	return syncDir(filepath.Dir(l.path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: sync dir: %w", err)
	}
	return nil
}

// Close syncs and closes the log.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}
