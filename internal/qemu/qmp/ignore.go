package qmp

import (
	"bytes"
	"sync/atomic"
	"time"
)

// IgnoreEvents makes the reader drop the events named, unread, when they come
// in the exact form QEMU writes them: `{"timestamp": {"seconds": N,
// "microseconds": N}, "event": "NAME"}` with no data. The monitor has no use
// for STOP and RESUME, which QEMU sends at every stop of the kernel gate (two
// JSON decodings and a wake-up of the events' consumer per trapped call). Any
// other line, and an ignored event in any other form (with data, reordered,
// spaced otherwise), is decoded and checked as before. Safe to call at any
// time; the last call's names hold.
func (c *Client) IgnoreEvents(names ...string) {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	c.ignored.Store(&set)
}

// ignoredSet is the set IgnoreEvents stored (nil: none).
type ignoredSet = atomic.Pointer[map[string]bool]

var (
	evPrefix = []byte(`{"timestamp": {"seconds": `)
	evMicros = []byte(`, "microseconds": `)
	evName   = []byte(`}, "event": "`)
	evEnd    = []byte(`"}`)
)

// skipLine parses line as an event in QEMU's exact form without data (see
// IgnoreEvents) and returns its name and timestamp (zero when out of
// range), and whether IgnoreEvents named it: the reader then drops it
// unread. name is nil for any other line.
func (c *Client) skipLine(line []byte) (name []byte, ts time.Time, skip bool) {
	rest, ok := bytes.CutPrefix(line, evPrefix)
	if !ok {
		return nil, time.Time{}, false
	}
	var sec, usec int64
	if rest, sec, ok = cutDigits(rest); !ok {
		return nil, time.Time{}, false
	}
	if rest, ok = bytes.CutPrefix(rest, evMicros); !ok {
		return nil, time.Time{}, false
	}
	if rest, usec, ok = cutDigits(rest); !ok {
		return nil, time.Time{}, false
	}
	if rest, ok = bytes.CutPrefix(rest, evName); !ok {
		return nil, time.Time{}, false
	}
	name, ok = bytes.CutSuffix(rest, evEnd)
	if !ok || len(name) == 0 || len(name) > 64 {
		return nil, time.Time{}, false
	}
	for _, b := range name {
		if (b < 'A' || b > 'Z') && (b < '0' || b > '9') && b != '_' {
			return nil, time.Time{}, false
		}
	}
	if usec < 1e6 { // as decodeMessage: out of range is no timestamp
		ts = time.Unix(sec, usec*1000).UTC()
	}
	set := c.ignored.Load()
	return name, ts, set != nil && (*set)[string(name)]
}

// cutDigits removes a JSON natural number of 1 to 18 digits from the front
// of b and returns it: one that fits the int64 decodeMessage reads it into
// (FuzzSkipLine).
func cutDigits(b []byte) ([]byte, int64, bool) {
	n := 0
	var v int64
	for n < len(b) && n <= 18 && b[n] >= '0' && b[n] <= '9' {
		v = v*10 + int64(b[n]-'0')
		n++
	}
	if n == 0 || n > 18 || (n > 1 && b[0] == '0') { // JSON: no leading zero
		return b, 0, false
	}
	return b[n:], v, true
}
