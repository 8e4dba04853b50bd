// Package logfiles is the file set of a log that rotates by size: FILE,
// the one being written, then FILE.1 (the newest rotated) ... FILE.N (the
// oldest). It names, counts, lists and shifts those files, deletes the
// ones beyond what retention keeps, and reads lines back with a length
// cap: the files hold text a guest chose, so a reader never holds more
// than one capped line, and a line longer than the cap is skipped, not
// buffered.
//
// It decides nothing about what a line is, when to rotate or whether to
// fsync: the audit log (a hash chain, fsynced, that records what it
// prunes) and the event log (best effort, bounded) each build their own
// rules on these mechanics. Names are renamed and removed without
// following a symbolic link; the one file it opens itself (TailFile) it
// opens through safefile, like the callers open theirs.
package logfiles

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// Rotated returns the name of the log's k-th rotated file (k ≥ 1; 1 is
// the newest).
func Rotated(path string, k int) string { return fmt.Sprintf("%s.%d", path, k) }

// Count returns how many rotated files there are, path.1, path.2, ... as
// long as they follow each other (at most max), and their bytes.
func Count(path string, max int) (n int, bytes int64) {
	for k := 1; k <= max; k++ {
		fi, err := os.Lstat(Rotated(path, k))
		if err != nil {
			break
		}
		n, bytes = k, bytes+fi.Size()
	}
	return n, bytes
}

// List returns the log's files oldest first: path.N ... path.1 (as Count
// finds them, at most max), then path (listed even if it does not exist).
func List(path string, max int) []string {
	n, _ := Count(path, max)
	files := make([]string, 0, n+1)
	for k := n; k >= 1; k-- {
		files = append(files, Rotated(path, k))
	}
	return append(files, path)
}

// Shift rotates the log's names: path.k becomes path.k+1 for k = rotated
// down to 1, then path becomes path.1. The caller has closed path and
// creates the new one; on an error the names are as far as it got.
func Shift(path string, rotated int) error {
	for k := rotated; k >= 1; k-- {
		if err := os.Rename(Rotated(path, k), Rotated(path, k+1)); err != nil {
			return err
		}
	}
	return os.Rename(path, Rotated(path, 1))
}

// Remove deletes the rotated files path.to down to path.from, oldest
// first, and returns how many rotated files are left (from-1 when every
// one went) and the bytes it deleted. On an error it stops: the files not
// yet deleted stay, and left counts them.
func Remove(path string, from, to int) (left int, freed int64, err error) {
	left = to
	for k := to; k >= from; k-- {
		name := Rotated(path, k)
		fi, err := os.Lstat(name)
		if err == nil {
			err = os.Remove(name)
		}
		if err != nil {
			return left, freed, err
		}
		left, freed = k-1, freed+fi.Size()
	}
	return left, freed, nil
}

// SyncDir fsyncs a directory, so that renames and removals in it survive
// a crash of the host.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	return nil
}

// LineReader reads a log's lines, each at most max bytes with its newline:
// a longer line is dropped (and reported), never held in memory.
type LineReader struct {
	br   *bufio.Reader
	buf  []byte
	max  int
	line int // number of the line last returned, from 1
}

// NewLineReader reads lines of at most max bytes (newline included) from r.
func NewLineReader(r io.Reader, max int) *LineReader {
	return &LineReader{br: bufio.NewReaderSize(r, min(64<<10, max+1)), max: max}
}

// Line is the number of the line Next returned last, from 1.
func (lr *LineReader) Line() int { return lr.line }

// Next returns the next line without its newline; the bytes are valid
// until the next call. complete is false for a final line without a
// newline (a line torn by a crash mid-write). long is true when the line
// is longer than the cap: its bytes are dropped and line is nil. At the
// end Next returns io.EOF.
func (lr *LineReader) Next() (line []byte, complete, long bool, err error) {
	lr.buf = lr.buf[:0]
	for {
		chunk, err := lr.br.ReadSlice('\n')
		if !long {
			if len(lr.buf)+len(chunk) > lr.max {
				long, lr.buf = true, lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, chunk...)
			}
		}
		switch {
		case err == nil:
			lr.line++
			if long {
				return nil, true, true, nil
			}
			return lr.buf[:len(lr.buf)-1], true, false, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF:
			if !long && len(lr.buf) == 0 {
				return nil, false, false, io.EOF
			}
			lr.line++
			if long {
				return nil, false, true, nil
			}
			return lr.buf, false, false, nil
		default:
			return nil, false, false, err
		}
	}
}

// Tail returns the length of f (size bytes) up to and including its last
// newline, and its last complete line without the newline (nil if it has
// none). The part after the last newline (a torn line) and the last line
// must each fit in max bytes; it reads at most 2×max+1 bytes.
func Tail(f io.ReaderAt, size int64, max int) (good int64, last []byte, err error) {
	limit := int64(max)
	for _, window := range [...]int64{min(64<<10, 2*limit+1), 2*limit + 1} {
		w := min(window, size)
		off := size - w
		b := make([]byte, w)
		if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
			return 0, nil, err
		}
		i := bytes.LastIndexByte(b, '\n')
		if i < 0 {
			if off == 0 {
				return 0, nil, nil // nothing but a torn line, or nothing
			}
			continue
		}
		good = off + int64(i) + 1
		if size-good > limit {
			return 0, nil, fmt.Errorf("it ends with %d bytes without a newline, more than a line may hold (%d)", size-good, max)
		}
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 && off > 0 {
			continue // need more to see the whole last line
		}
		if int64(i-j) > limit {
			break
		}
		return good, b[j+1 : i], nil
	}
	return 0, nil, fmt.Errorf("its last line is longer than a line may be (%d bytes)", max)
}

// TailFile is Tail of the file name, opened through safefile (no symbolic
// link, nothing another user owns or may write); errors name the file.
func TailFile(name string, max int) (good int64, last []byte, err error) {
	f, err := safefile.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	good, last, err = Tail(f, st.Size(), max)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", name, err)
	}
	return good, last, nil
}

// Head returns the first complete line of r (at most max bytes), or nil
// if it has none.
func Head(r io.Reader, max int) ([]byte, error) {
	line, complete, _, err := NewLineReader(r, max).Next()
	if err == io.EOF || !complete {
		return nil, nil
	}
	return line, err
}
