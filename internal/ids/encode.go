package ids

import (
	"encoding/json"
	"runtime"
	"strconv"
	"unicode/utf8"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// EncodeResult encodes a Query result as JSON. A process list, the
// largest and most frequent result, is written by a typed encoder: for
// 1,000 processes encoding/json's reflection takes 0.7-1.6 ms on the CI
// host, as long as reading the processes from guest memory, and the typed
// encoder a tenth of that. Its output decodes to exactly what
// encoding/json's does (fuzzed against it in encode_test.go); everything
// else goes through encoding/json.
func EncodeResult(v any) ([]byte, error) {
	if ts, ok := v.([]linux.Task); ok {
		return encodeTasks(ts), nil
	}
	return json.Marshal(v)
}

// taskJSONSize is a generous estimate of one encoded task.
const taskJSONSize = 384

// encodeTasks is AppendTasksJSON on two goroutines for long lists: the
// encoding is CPU-bound, and the listing has just used both cores for its
// reads, so the second half is written while the first is.
func encodeTasks(ts []linux.Task) []byte {
	const parallelFrom = 512
	if len(ts) < parallelFrom || runtime.GOMAXPROCS(0) < 2 {
		return AppendTasksJSON(make([]byte, 0, taskJSONSize*len(ts)+2), ts)
	}
	half := len(ts) / 2
	var second []byte
	done := make(chan struct{})
	go func() {
		second = appendTaskObjects(make([]byte, 0, taskJSONSize*(len(ts)-half)), ts[half:])
		close(done)
	}()
	b := make([]byte, 0, taskJSONSize*len(ts)+2)
	b = append(b, '[')
	b = appendTaskObjects(b, ts[:half])
	<-done
	b = append(b, ',')
	b = append(b, second...)
	return append(b, ']')
}

// AppendTasksJSON appends ts as a JSON array of objects with linux.Task's
// JSON field names. A nil slice is null, like encoding/json.
func AppendTasksJSON(b []byte, ts []linux.Task) []byte {
	if ts == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	b = appendTaskObjects(b, ts)
	return append(b, ']')
}

// appendTaskObjects appends ts's objects separated by commas, no brackets.
func appendTaskObjects(b []byte, ts []linux.Task) []byte {
	for i := range ts {
		if i > 0 {
			b = append(b, ',')
		}
		t := &ts[i]
		b = append(b, `{"addr":`...)
		b = strconv.AppendUint(b, t.Addr, 10)
		b = append(b, `,"pid":`...)
		b = strconv.AppendInt(b, int64(t.PID), 10)
		b = append(b, `,"tgid":`...)
		b = strconv.AppendInt(b, int64(t.TGID), 10)
		b = append(b, `,"ppid":`...)
		b = strconv.AppendInt(b, int64(t.PPID), 10)
		b = append(b, `,"uid":`...)
		b = strconv.AppendUint(b, uint64(t.UID), 10)
		b = append(b, `,"gid":`...)
		b = strconv.AppendUint(b, uint64(t.GID), 10)
		b = append(b, `,"euid":`...)
		b = strconv.AppendUint(b, uint64(t.EUID), 10)
		b = append(b, `,"state":`...)
		b = appendJSONString(b, t.State)
		b = append(b, `,"comm":`...)
		b = appendJSONString(b, t.Comm)
		b = append(b, `,"exe":`...)
		b = appendJSONString(b, t.Exe)
		b = append(b, `,"start_ns":`...)
		b = strconv.AppendUint(b, t.StartTime, 10)
		b = append(b, `,"threads":`...)
		b = strconv.AppendInt(b, int64(t.Threads), 10)
		b = append(b, `,"kernel_thread":`...)
		b = strconv.AppendBool(b, t.KernelThread)
		b = append(b, `,"pgd":`...)
		b = strconv.AppendUint(b, t.PGD, 10)
		b = append(b, `,"cpu":`...)
		b = strconv.AppendInt(b, int64(t.CPU), 10)
		b = append(b, `,"utime_ns":`...)
		b = strconv.AppendUint(b, t.UTime, 10)
		b = append(b, `,"stime_ns":`...)
		b = strconv.AppendUint(b, t.STime, 10)
		b = append(b, `,"runtime_ns":`...)
		b = strconv.AppendUint(b, t.Runtime, 10)
		b = append(b, `,"group_utime_ns":`...)
		b = strconv.AppendUint(b, t.GroupUTime, 10)
		b = append(b, `,"group_stime_ns":`...)
		b = strconv.AppendUint(b, t.GroupSTime, 10)
		b = append(b, `,"group_runtime_ns":`...)
		b = strconv.AppendUint(b, t.GroupRuntime, 10)
		b = append(b, `,"vsz_bytes":`...)
		b = strconv.AppendUint(b, t.VSZ, 10)
		b = append(b, `,"rss_bytes":`...)
		b = strconv.AppendUint(b, t.RSS, 10)
		b = append(b, '}')
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json reads
// it back: quotes, backslashes and control characters escaped, invalid
// UTF-8 replaced by U+FFFD. Guest strings (comm, paths) may hold any byte.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
