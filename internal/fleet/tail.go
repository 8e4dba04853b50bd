package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/gatevisor/gatevisor/internal/logfiles"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// maxRotatedFiles bounds the rotated files a tailer looks through.
const maxRotatedFiles = 1024

// readChunk is how much a tailer reads at a time.
const readChunk = 64 << 10

// line is one complete line of a log and its key (audit n, event seq).
type line struct {
	key  uint64
	text []byte // without the newline
}

// tailer reads a rotating JSON-lines log (package logfiles' layout) from
// the first line whose key is above after, and then follows it across
// rotations. Keys grow along the files; a line without a key, or longer
// than maxLine, is skipped and counted. Every file is opened through
// safefile (no symbolic links, only files of ours).
type tailer struct {
	path    string
	maxLine int
	keyOf   func([]byte) (uint64, bool)
	after   uint64 // the last key handed out

	f       *os.File // the file being followed; nil before the first read
	ino     uint64
	off     int64 // next byte to read in f
	pending []byte
	skip    bool // discarding the rest of an over-long line
	buf     []byte

	Skipped uint64 // lines without a key, or too long
}

func newTailer(path string, maxLine int, after uint64, keyOf func([]byte) (uint64, bool)) *tailer {
	return &tailer{path: path, maxLine: maxLine, after: after, keyOf: keyOf}
}

// rewind makes the next lines start after key again (a publish failed).
func (t *tailer) rewind(key uint64) {
	t.close()
	t.after = key
}

func (t *tailer) close() {
	if t.f != nil {
		t.f.Close()
	}
	t.f, t.off, t.pending, t.skip = nil, 0, nil, false
}

// next returns up to max lines after the last key handed out, or none if
// the log has nothing new yet.
func (t *tailer) next(max int) ([]line, error) {
	if t.f == nil {
		if err := t.start(); err != nil {
			return nil, err
		}
		if t.f == nil {
			return nil, nil // no log yet
		}
	}
	out, err := t.read(max)
	if err != nil || len(out) > 0 {
		return out, err
	}
	// At the end of the file: has the log rotated under us?
	fi, err := os.Lstat(t.path)
	if err != nil {
		return nil, nil // between the rename and the new file
	}
	if inode(fi) == t.ino {
		return nil, nil
	}
	// Read what was written to the old file before it was renamed.
	if out, err = t.read(max); err != nil || len(out) > 0 {
		return out, err
	}
	first := t.after
	t.close()
	if err := t.open(t.path); err != nil {
		return nil, err
	}
	if k, ok := t.firstKey(t.path); ok && k > first+1 {
		// More than one rotation since the last look: find the files between.
		t.close()
		if err := t.start(); err != nil {
			return nil, err
		}
	}
	return t.read(max)
}

// start opens the oldest file that can hold the line after t.after: the
// newest file whose first key is at most after+1 (or the oldest there is).
func (t *tailer) start() error {
	files := logfiles.List(t.path, maxRotatedFiles)
	from := 0
	for i := len(files) - 1; i >= 0; i-- {
		if k, ok := t.firstKey(files[i]); ok && k <= t.after+1 {
			from = i
			break
		}
	}
	for _, name := range files[from:] {
		err := t.open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		return err
	}
	return nil
}

// open starts reading name from its beginning.
func (t *tailer) open(name string) error {
	if err := safefile.CheckRegular(name); err != nil {
		return err
	}
	f, err := safefile.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	t.f, t.ino, t.off, t.pending, t.skip = f, inode(fi), 0, nil, false
	return nil
}

// read returns the complete lines after t.after from t.f's offset on,
// moving on to the next newer file at the end of a rotated one.
func (t *tailer) read(max int) ([]line, error) {
	var out []line
	if t.buf == nil {
		t.buf = make([]byte, readChunk)
	}
	buf := t.buf
	for len(out) < max {
		// Nothing new (the usual case): one fstat, no read.
		if fi, err := t.f.Stat(); err == nil && fi.Size() <= t.off {
			if len(out) > 0 || t.f.Name() == t.path {
				return out, nil
			}
		}
		n, err := t.f.ReadAt(buf, t.off)
		t.off += int64(n)
		out = t.split(buf[:n], out)
		if err == io.EOF || n == 0 {
			if len(out) == 0 && t.f.Name() != t.path {
				// A rotated file read to its end: go on with the next one.
				if err := t.advance(); err != nil {
					return nil, err
				}
				if t.f == nil {
					return nil, nil
				}
				continue
			}
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("fleet: read %s: %w", t.f.Name(), err)
		}
	}
	return out, nil
}

// advance opens the file to read after a rotated one: the oldest whose
// first key is above the last handed out (rotated files are chosen by
// key, not name: the log may rotate again while they are read), else the
// log's current file.
func (t *tailer) advance() error {
	t.close()
	files := logfiles.List(t.path, maxRotatedFiles)
	next := t.path
	for _, name := range files {
		if k, ok := t.firstKey(name); ok && k > t.after {
			next = name
			break
		}
	}
	err := t.open(next)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// split cuts b (following t.pending) into lines, appending those after
// t.after to out.
func (t *tailer) split(b []byte, out []line) []line {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if t.skip {
				return out
			}
			if len(t.pending)+len(b) > t.maxLine {
				t.pending, t.skip = nil, true
				t.Skipped++
				return out
			}
			t.pending = append(t.pending, b...)
			return out
		}
		text := b[:i]
		b = b[i+1:]
		if t.skip {
			t.skip = false
			continue
		}
		if len(t.pending) > 0 {
			text = append(t.pending, text...)
			t.pending = nil
		}
		if len(text)+1 > t.maxLine {
			t.Skipped++
			continue
		}
		k, ok := t.keyOf(text)
		if !ok {
			t.Skipped++
			continue
		}
		if k <= t.after {
			continue
		}
		t.after = k
		out = append(out, line{key: k, text: bytes.Clone(text)})
	}
	return out
}

// firstKey returns the key of name's first line.
func (t *tailer) firstKey(name string) (uint64, bool) {
	f, err := safefile.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	b, err := logfiles.Head(f, t.maxLine)
	if err != nil {
		return 0, false
	}
	return t.keyOf(bytes.TrimSuffix(b, []byte("\n")))
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// auditKey is an audit record's number ("n"). The log writes it first
// ({"n":123,...}), which is read without decoding the line; anything else
// is decoded.
func auditKey(b []byte) (uint64, bool) {
	if rest, ok := bytes.CutPrefix(b, []byte(`{"n":`)); ok && json.Valid(b) {
		var n uint64
		i := 0
		for ; i < len(rest) && i < 20 && rest[i] >= '0' && rest[i] <= '9'; i++ {
			n = n*10 + uint64(rest[i]-'0')
		}
		if i > 0 && i < 20 && i < len(rest) && (rest[i] == ',' || rest[i] == '}') && n > 0 {
			return n, true
		}
	}
	var r struct {
		N uint64 `json:"n"`
	}
	if json.Unmarshal(b, &r) != nil || r.N == 0 {
		return 0, false
	}
	return r.N, true
}

// eventKey is an event-stream point's number ("seq").
func eventKey(b []byte) (uint64, bool) {
	var r struct {
		Seq uint64 `json:"seq"`
	}
	if json.Unmarshal(b, &r) != nil || r.Seq == 0 {
		return 0, false
	}
	return r.Seq, true
}
