package qmp

import (
	"bytes"
	"sync/atomic"
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

// skipLine reports whether line is an event IgnoreEvents named, in QEMU's
// exact form without data (see there).
func (c *Client) skipLine(line []byte) bool {
	set := c.ignored.Load()
	if set == nil {
		return false
	}
	rest, ok := bytes.CutPrefix(line, evPrefix)
	if !ok {
		return false
	}
	if rest, ok = cutDigits(rest); !ok {
		return false
	}
	if rest, ok = bytes.CutPrefix(rest, evMicros); !ok {
		return false
	}
	if rest, ok = cutDigits(rest); !ok {
		return false
	}
	if rest, ok = bytes.CutPrefix(rest, evName); !ok {
		return false
	}
	name, ok := bytes.CutSuffix(rest, evEnd)
	if !ok || len(name) == 0 || len(name) > 64 {
		return false
	}
	for _, b := range name {
		if (b < 'A' || b > 'Z') && (b < '0' || b > '9') && b != '_' {
			return false
		}
	}
	return (*set)[string(name)]
}

// cutDigits removes a JSON natural number of 1 to 18 digits from the front
// of b: one that fits the int64 decodeMessage reads it into (FuzzSkipLine).
func cutDigits(b []byte) ([]byte, bool) {
	n := 0
	for n < len(b) && n <= 18 && b[n] >= '0' && b[n] <= '9' {
		n++
	}
	if n == 0 || n > 18 || (n > 1 && b[0] == '0') { // JSON: no leading zero
		return b, false
	}
	return b[n:], true
}
