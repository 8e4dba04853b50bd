package eventbus

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
)

type nopCloser struct{ io.ReaderAt }

func (nopCloser) Close() error { return nil }

// FuzzReadBack: whatever bytes the log's files hold (they carry
// guest-chosen text, and anyone who could write them could write
// anything), reading them back sends on only whole JSON objects whose seq
// is in the asked range, at most the asked number, each within MaxLine.
func FuzzReadBack(f *testing.F) {
	line := func(seq string) string {
		return `{"time":"2026-12-06T05:00:00Z","vm":"cam","type":"net-deny","seq":` + seq + `,"net":{"remote":"10.0.2.3:80"}}` + "\n"
	}
	for _, s := range []string{
		line("1") + line("2") + line("3"),
		line("5") + `{"time":"2026-` + "\n" + line("7"),
		line("9") + line("3") + line("18446744073709551615"),
		`{"seq":1}{"seq":2}` + "\n" + `[{"seq":3}]` + "\n" + `{"seq":-1}` + "\n" + `{"seq":"4"}` + "\n",
		"\n\n\x00\xff" + line("1e3") + line("0") + `{"SEQ":8,"seq":9}` + "\n",
	} {
		f.Add([]byte(s), uint64(0), uint64(0), uint16(10))
		f.Add([]byte(s), uint64(3), uint64(7), uint16(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, after, before uint64, limit uint16) {
		files := []readFile{{name: "fuzz", f: nopCloser{bytes.NewReader(data)}, size: int64(len(data))}}
		lim := int(limit%100) + 1
		check := func(l []byte, min uint64) {
			t.Helper()
			if len(l) > MaxLine || len(l) == 0 || l[len(l)-1] != '\n' {
				t.Fatalf("line %q: not one newline-ended line within MaxLine", l)
			}
			var obj map[string]any
			if err := json.Unmarshal(l, &obj); err != nil {
				t.Fatalf("line %q is not a JSON object: %v", l, err)
			}
			seq, ok := parseSeq(l[:len(l)-1])
			if !ok || seq <= min || before > 0 && seq >= before {
				t.Fatalf("line %q: seq %d (ok %v) outside (%d, %d)", l, seq, ok, min, before)
			}
		}
		lines, err := backward(files, before, lim)
		if err != nil {
			t.Fatal(err)
		}
		if len(lines) > lim {
			t.Fatalf("%d lines, limit %d", len(lines), lim)
		}
		for _, l := range lines {
			check(l, 0)
		}
		var buf bytes.Buffer
		n, err := forward(&buf, files, after, before, lim)
		if err != nil {
			t.Fatal(err)
		}
		out := bytes.SplitAfter(buf.Bytes(), []byte("\n"))
		if len(out[len(out)-1]) == 0 {
			out = out[:len(out)-1]
		}
		if n != len(out) || n > lim {
			t.Fatalf("forward wrote %d lines, said %d, limit %d", len(out), n, lim)
		}
		for _, l := range out {
			check(l, after)
		}
	})
}
