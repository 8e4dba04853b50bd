package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"time"
)

// floodLogs is what a window's part of the event and audit logs says.
type floodLogs struct {
	// From the audit log: decisions by class (an aggregated record
	// counts what it stands for), and the network denies by a policy
	// rule and by any other (a gate's or the server's own).
	auditDecisions map[string]uint64
	netPolicyDenies,
	netOtherDenies uint64
	// From the event log: network denies by rule (an aggregated point
	// counts what it stands for), and the attribution of the policy's
	// network decisions (one per point).
	denyRules map[string]uint64
	attr      []attrSample
}

// maxLogRegion bounds how much of a log one window reads.
const maxLogRegion = 1 << 30

// readFloodLogs reads what the event and audit logs got from pre's sizes
// on, keeping what happened in the window from pre to end.
func readFloodLogs(eventsLog, auditLog string, pre, end floodSample) (floodLogs, error) {
	l := floodLogs{auditDecisions: map[string]uint64{}, denyRules: map[string]uint64{}}
	in := func(t time.Time) bool { return !t.Before(pre.at) && !t.After(end.at) }
	if err := scanSince(eventsLog, pre.eventsSize, func(line []byte) { l.addEvent(line, in) }); err != nil {
		return l, err
	}
	err := scanSince(auditLog, pre.auditSize, func(line []byte) { l.addAudit(line, in) })
	return l, err
}

// scanSince calls fn with each line log got since it was off bytes long.
// A log that is shorter now rotated (FILE became FILE.1): the rest of
// FILE.1 and all of FILE are read. A log that does not exist has no lines.
func scanSince(log string, off int64, fn func([]byte)) error {
	from := []struct {
		path string
		off  int64
	}{{log, off}}
	if fileSize(log) < off {
		from = []struct {
			path string
			off  int64
		}{{log + ".1", off}, {log, 0}}
	}
	for _, f := range from {
		if err := scanFrom(f.path, f.off, fn); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// addEvent counts one event-log line: a network deny, by rule, and the
// attribution time of the policy's network decisions.
func (l *floodLogs) addEvent(line []byte, in func(time.Time) bool) {
	var ev struct {
		Type   string  `json:"type"`
		Repeat *repeat `json:"repeat"`
		Net    *struct {
			Time            time.Time `json:"time"`
			Verdict         string    `json:"verdict"`
			Rule            string    `json:"rule"`
			AttributeMicros int64     `json:"attribute_us"`
			Attempts        int       `json:"attempts"`
		} `json:"net"`
	}
	if json.Unmarshal(line, &ev) != nil || ev.Net == nil || !in(ev.Net.Time) {
		return
	}
	if ev.Net.Verdict == "deny" {
		l.denyRules[ev.Net.Rule] += repeats(ev.Repeat)
	}
	if isPolicyRule(ev.Net.Rule) {
		l.attr = append(l.attr, attrSample{ev.Net.AttributeMicros, ev.Net.Attempts})
	}
}

// addAudit counts one audit-log line, a decision record.
func (l *floodLogs) addAudit(line []byte, in func(time.Time) bool) {
	var rec struct {
		Kind    string    `json:"kind"`
		Time    time.Time `json:"time"`
		Verdict string    `json:"verdict"`
		Rule    string    `json:"rule"`
		Event   struct {
			Class string `json:"class"`
		} `json:"event"`
		Repeat *repeat `json:"repeat"`
	}
	if json.Unmarshal(line, &rec) != nil || rec.Kind != "" || !in(rec.Time) {
		return
	}
	n := repeats(rec.Repeat)
	l.auditDecisions[rec.Event.Class] += n
	if rec.Event.Class != "net" || rec.Verdict != "deny" {
		return
	}
	if isPolicyRule(rec.Rule) {
		l.netPolicyDenies += n
	} else {
		l.netOtherDenies += n
	}
}

// repeat is what an aggregated line of either log adds (audit.Repeat,
// monitoring.Repeat): the decisions it stands for.
type repeat struct {
	Count uint64 `json:"count"`
}

// repeats is how many decisions a line stands for: 1, or its repeat's
// count (an aggregate of a flood).
func repeats(r *repeat) uint64 {
	if r == nil || r.Count == 0 {
		return 1
	}
	return r.Count
}

// scanFrom calls fn with each complete line of path from offset off on (at
// most maxLogRegion bytes); lines longer than 1 MiB are skipped.
func scanFrom(path string, off int64, fn func([]byte)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	return scanLines(io.LimitReader(f, maxLogRegion), fn)
}

// scanLines calls fn with each complete line of r, without its newline;
// lines longer than 1 MiB and a last line without a newline are skipped.
func scanLines(r io.Reader, fn func([]byte)) error {
	br := bufio.NewReaderSize(r, 1<<20)
	long := false
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			long = true
			continue
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return err
		}
		if !long {
			fn(bytes.TrimSuffix(line, []byte("\n")))
		}
		long = false
	}
}
