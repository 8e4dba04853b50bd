package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// Filter selects records; zero fields match everything.
type Filter struct {
	Verdicts []string // allow, alert, deny, kill
	Class    string
	PID      int32
	HasPID   bool
	Rule     string
	Since    time.Time
}

// Match reports whether r passes f.
func (f *Filter) Match(r *Record) bool {
	if len(f.Verdicts) > 0 && !slices.Contains(f.Verdicts, r.Verdict) {
		return false
	}
	if f.Class != "" && r.Event.Class.String() != f.Class {
		return false
	}
	if f.HasPID && r.Event.Subject.PID != f.PID {
		return false
	}
	if f.Rule != "" && r.Rule != f.Rule {
		return false
	}
	if !f.Since.IsZero() && r.Time.Before(f.Since) {
		return false
	}
	return true
}

// ReadStats counts what Read saw.
type ReadStats struct {
	Records int // complete records passed to the callback or filtered out
	Torn    int // a final line without newline: a record cut short by a crash
	Bad     int // complete lines that are not records (corruption)
}

// Read calls fn for each complete record in r, in order. A final line
// without a newline is a torn record: it is skipped and counted, not an
// error. fn returning an error stops Read with that error.
func Read(r io.Reader, fn func(*Record) error) (ReadStats, error) {
	var st ReadStats
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	skipping := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !skipping {
			line = append(line, chunk...)
			if len(line) > MaxRecord {
				skipping, line = true, line[:0]
				st.Bad++
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			if len(line) > 0 {
				st.Torn++
			}
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("audit: read: %w", err)
		}
		if skipping {
			skipping = false
			line = line[:0]
			continue
		}
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil {
			st.Bad++
		} else {
			st.Records++
			if err := fn(&rec); err != nil {
				return st, err
			}
		}
		line = line[:0]
	}
}

// ReadFile reads the log at path; with rotated, the rotated files
// (path.N ... path.1) first, oldest first.
func ReadFile(path string, rotated bool, fn func(*Record) error) (ReadStats, error) {
	var total ReadStats
	files := []string{path}
	if rotated {
		for k := 1; k <= 1000; k++ {
			name := fmt.Sprintf("%s.%d", path, k)
			if _, err := os.Stat(name); err != nil {
				break
			}
			files = append([]string{name}, files...)
		}
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return total, fmt.Errorf("audit: %w", err)
		}
		st, err := Read(f, fn)
		f.Close()
		total.Records += st.Records
		total.Torn += st.Torn
		total.Bad += st.Bad
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
