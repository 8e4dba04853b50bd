package api

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ValidateExec checks an exec request against the API's limits.
func ValidateExec(req *ExecRequest) error {
	if len(req.Argv) == 0 {
		return errors.New("argv is empty: name the command to run")
	}
	if len(req.Argv) > MaxExecArgs {
		return fmt.Errorf("argv has %d words, the limit is %d", len(req.Argv), MaxExecArgs)
	}
	for i, a := range req.Argv {
		if len(a) > MaxExecArgLength {
			return fmt.Errorf("argv[%d] is %d bytes, the limit is %d", i, len(a), MaxExecArgLength)
		}
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > MaxExecTimeout {
		return fmt.Errorf("timeout_seconds %d: use 1 to %d", req.TimeoutSeconds, MaxExecTimeout)
	}
	if req.TimeoutSeconds == 0 {
		req.TimeoutSeconds = DefaultExecTimeout
	}
	return nil
}

// ValidateEventsQuery checks an events query and gives a page without a
// limit the default one.
func ValidateEventsQuery(q *EventsQuery) error {
	switch {
	case q.Limit < 0 || q.Limit > MaxEventsLimit:
		return fmt.Errorf("limit %d is out of range: ask for 1 to %d events", q.Limit, MaxEventsLimit)
	case q.Before > 0 && q.Follow:
		return errors.New("before pages back through past events and cannot follow: drop follow, or follow from the last seq you have with after")
	case q.HasAfter && q.Before > 0 && q.Before-1 <= q.After:
		return fmt.Errorf("after %d and before %d select no event: before must be at least after+2", q.After, q.Before)
	case q.HasAfter && q.Follow && q.Limit > 0:
		return errors.New("limit with after and follow would leave a gap before the new events: drop limit (a follower gets every event after the seq)")
	}
	if q.Limit == 0 && (q.Before > 0 || q.HasAfter && !q.Follow) {
		q.Limit = DefaultEventsLimit
	}
	return nil
}

// ParseAddress parses a decimal or 0x-prefixed hex address.
func ParseAddress(s string) (uint64, error) {
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		if len(h) == 0 || len(h) > 16 {
			return 0, fmt.Errorf("address %q: 1 to 16 hex digits after 0x", s)
		}
		return strconv.ParseUint(h, 16, 64)
	}
	return strconv.ParseUint(s, 10, 64)
}
