package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"
)

// Filter selects records; zero fields match everything. A chain record (an
// open, policy, pruned or close record) has no verdict, event or rule: it
// passes only a filter that asks for none of those.
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
	if r.Kind != KindDecision && (len(f.Verdicts) > 0 || f.Class != "" || f.HasPID || f.Rule != "") {
		return false
	}
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
	Records int // complete decision records passed to the callback
	Chain   int // the log's own chain records (open, policy, pruned, close): skipped
	Torn    int // a final line without newline: a record cut short by a crash
	Bad     int // complete lines that are not records (corruption), or longer than MaxRecord
}

// Read calls fn for each complete decision record in r, in order; the log's
// own chain records are counted and skipped, and the chain is not checked
// (Walk checks it). A final line without a newline is a torn record: it is
// skipped and counted, not an error. fn returning an error stops Read with
// that error.
func Read(r io.Reader, fn func(*Record) error) (ReadStats, error) {
	var st ReadStats
	lr := newLineReader(r)
	for {
		line, complete, long, err := lr.Next()
		switch {
		case err == io.EOF:
			return st, nil
		case err != nil:
			return st, fmt.Errorf("audit: read: %w", err)
		case long:
			st.Bad++
			continue
		case !complete:
			st.Torn++
			continue
		}
		var rec Record
		switch {
		case json.Unmarshal(line, &rec) != nil:
			st.Bad++
		case rec.Kind != KindDecision:
			st.Chain++
		default:
			st.Records++
			if err := fn(&rec); err != nil {
				return st, err
			}
		}
	}
}

// ReadFile reads the decision records of the log at path (see Read); with
// rotated, the rotated files (path.N ... path.1) first, oldest first. It
// refuses a file that is not a regular file.
func ReadFile(path string, rotated bool, fn func(*Record) error) (ReadStats, error) {
	var total ReadStats
	for _, name := range logFiles(path, rotated) {
		f, err := openRegular(name)
		if err != nil {
			return total, err
		}
		st, err := Read(f, fn)
		f.Close()
		total.Records += st.Records
		total.Chain += st.Chain
		total.Torn += st.Torn
		total.Bad += st.Bad
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
