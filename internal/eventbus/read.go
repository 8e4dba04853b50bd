package eventbus

import (
	"encoding/json"
	"io"

	"github.com/gatevisor/gatevisor/internal/logfiles"
)

// MaxPageBytes bounds the lines a backward page holds in memory: a page
// of long lines has fewer than its limit, and the next page goes on from
// its first seq.
const MaxPageBytes = 8 << 20

// parseSeq returns the seq of an event line read back from a file: it
// must be one JSON object with a positive "seq". The files hold
// guest-chosen text, and a reader must send only JSON objects on.
func parseSeq(line []byte) (uint64, bool) {
	if len(line) < 2 || line[0] != '{' {
		return 0, false
	}
	var v struct {
		Seq uint64 `json:"seq"`
	}
	if json.Unmarshal(line, &v) != nil || v.Seq == 0 {
		return 0, false
	}
	return v.Seq, true
}

// scan calls fn with each complete event line of rf (newline excluded;
// the bytes valid during the call) and its seq, in file order, until fn
// returns false. Torn, overlong and unparseable lines are skipped.
func scan(rf readFile, fn func(line []byte, seq uint64) bool) error {
	lr := logfiles.NewLineReader(rf.reader(), MaxLine)
	for {
		line, complete, long, err := lr.Next()
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		case long || !complete:
			continue
		}
		if seq, ok := parseSeq(line); ok && !fn(line, seq) {
			return nil
		}
	}
}

// headSeq is the seq of the first event line of rf (false if none).
func headSeq(rf readFile) (seq uint64, ok bool) {
	_ = scan(rf, func(_ []byte, s uint64) bool {
		seq, ok = s, true
		return false
	})
	return seq, ok
}

// page is a bounded tail of lines: at most max lines and maxBytes bytes,
// the oldest dropped first.
type page struct {
	max, maxBytes int
	lines         [][]byte
	start         int // lines[start:] are kept
	bytes         int
}

func (p *page) add(line []byte) {
	p.lines = append(p.lines, line)
	p.bytes += len(line)
	for len(p.lines)-p.start > p.max || p.bytes > p.maxBytes {
		p.bytes -= len(p.lines[p.start])
		p.lines[p.start] = nil
		p.start++
	}
	if p.start > p.max && p.start > len(p.lines)/2 {
		p.lines = append(p.lines[:0], p.lines[p.start:]...)
		p.start = 0
	}
}

// backward returns the last limit event lines (newline included) with seq
// below before (0: no bound), oldest first, reading files newest first and
// skipping a file whose first seq is not below before. It holds at most
// limit lines and MaxPageBytes.
func backward(files []readFile, before uint64, limit int) ([][]byte, error) {
	var chunks [][][]byte // one per file, newest file first
	total, bytes := 0, 0
	for _, rf := range files {
		if total >= limit || bytes >= MaxPageBytes {
			break
		}
		if first, ok := headSeq(rf); !ok || before > 0 && first >= before {
			continue
		}
		p := page{max: limit - total, maxBytes: MaxPageBytes - bytes}
		err := scan(rf, func(line []byte, seq uint64) bool {
			if before == 0 || seq < before {
				p.add(append(append(make([]byte, 0, len(line)+1), line...), '\n'))
			}
			return true
		})
		if err != nil {
			return nil, err
		}
		kept := p.lines[p.start:]
		chunks = append(chunks, kept)
		total += len(kept)
		bytes += p.bytes
	}
	out := make([][]byte, 0, total)
	for i := len(chunks) - 1; i >= 0; i-- {
		out = append(out, chunks[i]...)
	}
	return out, nil
}

// forward writes to w the event lines with after < seq < before (before 0:
// no bound), oldest first, at most limit of them (0: all), starting in the
// newest file whose first seq is at most after+1. It holds one line at a
// time and returns how many it wrote.
func forward(w io.Writer, files []readFile, after, before uint64, limit int) (int, error) {
	start := len(files) - 1
	for i, rf := range files {
		if first, ok := headSeq(rf); ok && first-1 <= after {
			start = i
			break
		}
	}
	n, done := 0, false
	var werr error
	for i := start; i >= 0 && !done; i-- {
		err := scan(files[i], func(line []byte, seq uint64) bool {
			switch {
			case seq <= after:
				return true
			case before > 0 && seq >= before:
				done = true // the files' numbers only grow
				return false
			}
			if _, werr = w.Write(line); werr == nil {
				_, werr = w.Write(newline)
			}
			n++
			done = werr != nil || limit > 0 && n >= limit
			return !done
		})
		if err != nil {
			return n, err
		}
	}
	return n, werr
}

var newline = []byte{'\n'}
