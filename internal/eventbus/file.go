package eventbus

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/gatevisor/gatevisor/internal/logfiles"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// maxRotated bounds the rotated files the bus counts or reads: Keep, and
// some left by a run with a larger Keep (deleted at open).
const maxRotated = MaxKeep + 24

// errRetryLater is a write while a file that failed waits to be reopened.
var errRetryLater = errors.New("waiting to reopen the file (at most once a second) after")

// fileLog is events.jsonl and its rotated files: the writing side.
type fileLog struct {
	path    string
	maxSize int64
	keep    int

	f       *os.File  // nil after a failure: reopened at a later write
	retry   time.Time // not before then
	cause   error     // why f is nil
	size    int64     // bytes in path
	rotated int       // path.1 ... path.rotated exist
	torn    bool      // path does not end in a newline: the next line starts with one
	written int64     // bytes written since open (benchmarks)
}

// openFileLog opens (or creates) the log at path and returns the last
// sequence number in its files (0 if none can be read), and a warning for
// the monitor's log when the files were not as this bus leaves them.
func openFileLog(path string, maxSize int64, keep int) (l *fileLog, last uint64, warn string, err error) {
	l = &fileLog{path: path, maxSize: maxSize, keep: keep}
	if err := l.reopen(); err != nil {
		return nil, 0, "", err
	}
	last, err = l.lastSeq()
	if err != nil {
		warn = fmt.Sprintf("events log %s: the last event's seq cannot be read (%v): numbering starts again from 1", path, err)
	}
	if l.rotated > keep {
		// A run with a larger --events-keep left more.
		left, _, err := logfiles.Remove(path, keep+1, l.rotated)
		l.rotated = left
		if err != nil {
			warn = fmt.Sprintf("events log %s: deleting rotated files beyond %d: %v", path, keep, err)
		}
	}
	return l, last, warn, nil
}

// reopen opens path for appending, creating it, and learns its size, its
// rotated files and whether it ends in a torn line.
func (l *fileLog) reopen() error {
	f, err := safefile.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.size, l.torn = st.Size(), false
	if l.size > 0 {
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, l.size-1); err != nil {
			f.Close()
			return err
		}
		l.torn = b[0] != '\n'
	}
	l.f = f
	l.rotated, _ = logfiles.Count(l.path, maxRotated)
	return nil
}

// lastSeq is the seq of the last complete line of path, or of path.1 when
// path has none.
func (l *fileLog) lastSeq() (uint64, error) {
	_, last, err := logfiles.Tail(l.f, l.size, MaxLine)
	if err == nil && last == nil && l.rotated > 0 {
		_, last, err = logfiles.TailFile(logfiles.Rotated(l.path, 1), MaxLine)
	}
	if err != nil || last == nil {
		return 0, err
	}
	seq, ok := parseSeq(last)
	if !ok {
		return 0, errors.New("the last line is not an event with a seq")
	}
	return seq, nil
}

// write appends one line (newline included, at most MaxLine bytes),
// rotating first if it would take the file past maxSize. It never lets a
// file grow past maxSize: a line that cannot go where it should is not
// written (the error says why). rotated says a rotation happened.
func (l *fileLog) write(line []byte, now time.Time) (rotated bool, err error) {
	if l.f == nil {
		if now.Before(l.retry) {
			return false, fmt.Errorf("%w: %w", errRetryLater, l.cause)
		}
		if err := l.reopen(); err != nil {
			l.retry, l.cause = now.Add(retryEvery), err
			return false, err
		}
	}
	if l.torn {
		line = append([]byte{'\n'}, line...)
	}
	if l.size > 0 && l.size+int64(len(line)) > l.maxSize {
		if err := l.rotate(); err != nil {
			err = fmt.Errorf("rotate: %w", err)
			l.fail(now, err)
			return false, err
		}
		rotated = true
		if l.torn {
			line, l.torn = line[1:], false
		}
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	l.written += int64(n)
	if err != nil {
		if n > 0 {
			l.torn = true // the part written ends without its newline
		}
		return rotated, err
	}
	l.torn = false
	return rotated, nil
}

// rotate deletes the rotated files that the shift would take beyond keep,
// then shifts path to path.1 and creates a new path. Deleting first keeps
// the files within maxSize × (keep+1) even if the shift fails.
func (l *fileLog) rotate() error {
	if l.rotated >= l.keep {
		left, _, err := logfiles.Remove(l.path, l.keep, l.rotated)
		l.rotated = left
		if err != nil {
			return err
		}
	}
	if err := l.f.Close(); err != nil {
		return err
	}
	l.f = nil
	if err := logfiles.Shift(l.path, l.rotated); err != nil {
		return err
	}
	l.rotated++
	f, err := safefile.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	l.f, l.size, l.torn = f, 0, false
	return nil
}

// fail closes the file after a failed rotation; it is reopened (its state
// learnt again) at the first write after a second.
func (l *fileLog) fail(now time.Time, err error) {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	l.retry, l.cause = now.Add(retryEvery), err
}

func (l *fileLog) close() {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// readFile is one of the log's files opened for reading: size is how much
// of it the reader reads (the file was that long when it was opened).
type readFile struct {
	name string
	f    interface {
		io.ReaderAt
		io.Closer
	}
	size int64
}

func (rf readFile) reader() io.Reader { return io.NewSectionReader(rf.f, 0, rf.size) }

// openForRead opens the log's files for reading, newest first, through
// safefile. The caller closes them. Opened under the bus's lock, they stay
// the same files whatever rotation does while they are read.
func (l *fileLog) openForRead() ([]readFile, error) {
	n := l.rotated
	if l.f == nil {
		n, _ = logfiles.Count(l.path, maxRotated)
	}
	n = min(n, l.keep)
	var out []readFile
	for k := 0; k <= n; k++ {
		name := l.path
		if k > 0 {
			name = logfiles.Rotated(l.path, k)
		}
		f, err := safefile.OpenFile(name, os.O_RDONLY, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		var st fs.FileInfo
		if err == nil {
			if st, err = f.Stat(); err != nil {
				f.Close()
			}
		}
		if err != nil {
			closeAll(out)
			return nil, err
		}
		out = append(out, readFile{name: name, f: f, size: st.Size()})
	}
	return out, nil
}

func closeAll(files []readFile) {
	for _, rf := range files {
		rf.f.Close()
	}
}
