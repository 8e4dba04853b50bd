package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// lineReader reads a log's lines, each at most MaxRecord bytes with its
// newline: the log is untrusted input, so a longer line is dropped (and
// reported), never held in memory.
type lineReader struct {
	br   *bufio.Reader
	buf  []byte
	line int // number of the line last returned, from 1
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line without its newline; the bytes are valid until
// the next call. complete is false for a final line without a newline (a
// record torn by a crash mid-write). long is true when the line is longer
// than MaxRecord: its bytes are dropped and line is nil. At the end next
// returns io.EOF.
func (lr *lineReader) next() (line []byte, complete, long bool, err error) {
	lr.buf = lr.buf[:0]
	for {
		chunk, err := lr.br.ReadSlice('\n')
		if !long {
			if len(lr.buf)+len(chunk) > MaxRecord {
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

// tail returns the length of f up to and including its last newline, and
// its last complete line without the newline (nil if it has none). The part
// after the last newline (a torn record) and the last line must each fit in
// MaxRecord.
func tail(f io.ReaderAt, size int64) (good int64, last []byte, err error) {
	for _, window := range [...]int64{64 << 10, 2*MaxRecord + 1} {
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
		if size-good > MaxRecord {
			return 0, nil, fmt.Errorf("it ends with %d bytes without a newline, more than a record (%d)", size-good, MaxRecord)
		}
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 && off > 0 {
			continue // need more to see the whole last line
		}
		if i-j > MaxRecord {
			break
		}
		return good, b[j+1 : i], nil
	}
	return 0, nil, fmt.Errorf("its last line is longer than a record (%d bytes)", MaxRecord)
}

// tailFile is tail of a file the log owns (opened through safefile).
func tailFile(name string) (good int64, last []byte, err error) {
	f, err := safefile.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	good, last, err = tail(f, st.Size())
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", name, err)
	}
	return good, last, nil
}

// headFile returns the first complete line of a file the log owns, or nil.
func headFile(name string) ([]byte, error) {
	f, err := safefile.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	line, complete, _, err := newLineReader(f).next()
	if err != nil || !complete {
		return nil, nil
	}
	return line, nil
}

// openRegular opens a file a user named for reading: it refuses a FIFO or a
// device at once (opening one may block, reading one may never end), even
// one raced in after the check.
func openRegular(name string) (*os.File, error) {
	if err := safefile.CheckRegular(name); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	f, err := os.OpenFile(name, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file: give a file", name)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: %w", err)
	}
	return f, nil
}

// logFiles lists the files of the log at path, oldest first: with rotated,
// path.N ... path.1 (as long as they follow each other), then path.
func logFiles(path string, rotated bool) []string {
	files := []string{path}
	if rotated {
		for k := 1; k <= maxRotated; k++ {
			name := rotatedName(path, k)
			if _, err := os.Lstat(name); err != nil {
				break
			}
			files = append(files, name)
		}
		for i, j := 0, len(files)-1; i < j; i, j = i+1, j-1 {
			files[i], files[j] = files[j], files[i]
		}
	}
	return files
}
