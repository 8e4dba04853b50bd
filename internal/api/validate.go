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
