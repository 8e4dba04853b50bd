package gdbrsp

import (
	"bytes"
	"fmt"
	"strconv"
)

// maxStopPairs bounds the n:r pairs accepted in one T stop reply.
const maxStopPairs = 256

// StopReply is the stub's report that the target stopped ('T', 'S') or
// ended ('W' exited, 'X' terminated by a signal).
type StopReply struct {
	Kind   byte  // 'T', 'S', 'W' or 'X'
	Signal uint8 // GDB signal number for T, S and X (5 = SIGTRAP, 2 = SIGINT)
	Status uint8 // exit status for W
	// Thread is the stopped thread from "thread:", or 0 if none was sent.
	// In QEMU a thread is a vCPU: Thread = vCPU index + 1.
	Thread int
	// Reason is the stop reason key when the stub sent one: "watch",
	// "rwatch", "awatch", "swbreak", "hwbreak", "library", ...
	Reason string
	// Addr is the data address of a watch, rwatch or awatch stop.
	Addr uint64
	// Pairs holds every n:r pair of a T reply as sent, including register
	// values keyed by their hex register number. Nil for S, W and X.
	Pairs map[string]string
}

// Exited reports whether the reply says the target is gone (W or X).
func (s StopReply) Exited() bool { return s.Kind == 'W' || s.Kind == 'X' }

// isStopReply reports whether p has the shape of a stop reply. No reply to
// the other commands this package sends starts with T, S, W or X.
func isStopReply(p []byte) bool {
	if len(p) < 3 {
		return false
	}
	switch p[0] {
	case 'T', 'S', 'W', 'X':
	default:
		return false
	}
	_, ok1 := fromHex(p[1])
	_, ok2 := fromHex(p[2])
	return ok1 && ok2
}

// parseStopReply parses a T, S, W or X packet. It is pure and bounded by
// len(p) and maxStopPairs.
func parseStopReply(p []byte) (StopReply, error) {
	if !isStopReply(p) {
		return StopReply{}, fmt.Errorf("%w: not a stop reply: %q", ErrProtocol, truncate(p))
	}
	var s StopReply
	s.Kind = p[0]
	v, _ := strconv.ParseUint(string(p[1:3]), 16, 8)
	if s.Kind == 'W' {
		s.Status = uint8(v)
	} else {
		s.Signal = uint8(v)
	}
	rest := p[3:]
	switch s.Kind {
	case 'S':
		if len(rest) != 0 {
			return StopReply{}, fmt.Errorf("%w: trailing bytes in S reply: %q", ErrProtocol, truncate(p))
		}
		return s, nil
	case 'W', 'X':
		// Optional ";process:pid"; nothing we need.
		if len(rest) != 0 && rest[0] != ';' {
			return StopReply{}, fmt.Errorf("%w: trailing bytes in %c reply: %q", ErrProtocol, s.Kind, truncate(p))
		}
		return s, nil
	}
	s.Pairs = make(map[string]string)
	for n := 0; len(rest) > 0; n++ {
		if n >= maxStopPairs {
			return StopReply{}, fmt.Errorf("%w: more than %d pairs in stop reply", ErrProtocol, maxStopPairs)
		}
		var pair []byte
		pair, rest, _ = bytes.Cut(rest, []byte{';'})
		key, val, ok := bytes.Cut(pair, []byte{':'})
		if !ok || len(key) == 0 {
			return StopReply{}, fmt.Errorf("%w: bad pair %q in stop reply", ErrProtocol, truncate(pair))
		}
		k, v := string(key), string(val)
		s.Pairs[k] = v
		switch k {
		case "thread":
			tid, err := parseThreadID(val)
			if err != nil {
				return StopReply{}, err
			}
			s.Thread = tid
		case "watch", "rwatch", "awatch":
			s.Reason = k
			addr, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				return StopReply{}, fmt.Errorf("%w: bad %s address %q", ErrProtocol, k, truncate(val))
			}
			s.Addr = addr
		case "swbreak", "hwbreak", "library", "replaylog", "exec", "fork", "vfork", "vforkdone", "create", "core":
			if k != "core" {
				s.Reason = k
			}
		}
	}
	return s, nil
}

// parseThreadID parses "tid", "pPID.TID", "-1" (all) or "0" (any) and
// returns the thread part.
func parseThreadID(b []byte) (int, error) {
	s := string(b)
	if len(s) > 0 && s[0] == 'p' {
		_, tid, ok := bytes.Cut(b[1:], []byte{'.'})
		if !ok {
			// "pPID" alone means all threads of the process.
			return -1, nil
		}
		s = string(tid)
	}
	if s == "-1" {
		return -1, nil
	}
	v, err := strconv.ParseUint(s, 16, 31)
	if err != nil {
		return 0, fmt.Errorf("%w: bad thread id %q", ErrProtocol, truncate(b))
	}
	return int(v), nil
}
