package audit

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/logfiles"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// newLineReader reads a log's lines, each at most MaxRecord bytes with its
// newline: the log is untrusted input, so a longer line is dropped (and
// reported), never held in memory.
func newLineReader(r io.Reader) *logfiles.LineReader { return logfiles.NewLineReader(r, MaxRecord) }

// tail returns the length of f up to and including its last newline, and
// its last complete line without the newline (nil if it has none). The part
// after the last newline (a torn record) and the last line must each fit in
// MaxRecord.
func tail(f io.ReaderAt, size int64) (good int64, last []byte, err error) {
	return logfiles.Tail(f, size, MaxRecord)
}

// tailFile is tail of a file the log owns (opened through safefile).
func tailFile(name string) (good int64, last []byte, err error) {
	return logfiles.TailFile(name, MaxRecord)
}

// headFile returns the first complete line of a file the log owns, or nil.
func headFile(name string) ([]byte, error) {
	f, err := safefile.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	line, err := logfiles.Head(f, MaxRecord)
	if err != nil {
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
	if !rotated {
		return []string{path}
	}
	return logfiles.List(path, maxRotated)
}
