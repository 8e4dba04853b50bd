package qmp

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDecodeMessage(t *testing.T) {
	tests := []struct {
		name string
		line string
		want message
	}{
		{
			name: "greeting",
			line: `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}`,
			want: message{kind: kindGreeting, version: Version{7, 2, 22, "Debian 1:7.2+dfsg-7"}, capabils: []string{"oob"}},
		},
		{
			name: "return",
			line: `{"return": {"status": "running", "running": true}, "id": "gv-3"}`,
			want: message{kind: kindReturn, id: "gv-3", ret: json.RawMessage(`{"status": "running", "running": true}`)},
		},
		{
			name: "return without id",
			line: `{"return": {}}`,
			want: message{kind: kindReturn, ret: json.RawMessage(`{}`)},
		},
		{
			name: "numeric id is ignored",
			line: `{"return": {}, "id": 7}`,
			want: message{kind: kindReturn, ret: json.RawMessage(`{}`)},
		},
		{
			name: "error",
			line: `{"id": "gv-1", "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}}`,
			want: message{kind: kindError, id: "gv-1", err: &Error{"CommandNotFound", "The command foo has not been found"}},
		},
		{
			name: "event",
			line: `{"timestamp": {"seconds": 1700000000, "microseconds": 250}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}` + "\r\n",
			want: message{kind: kindEvent, event: Event{
				Name:      "SHUTDOWN",
				Data:      json.RawMessage(`{"guest": true, "reason": "guest-shutdown"}`),
				Timestamp: time.Unix(1700000000, 250000).UTC(),
			}},
		},
		{
			name: "event without data",
			line: `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`,
			want: message{kind: kindEvent, event: Event{Name: "STOP", Timestamp: time.Unix(1, 2000).UTC()}},
		},
		{
			name: "event with bad timestamp keeps zero time",
			line: `{"timestamp": {"seconds": -1, "microseconds": 5000000}, "event": "RESUME"}`,
			want: message{kind: kindEvent, event: Event{Name: "RESUME"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeMessage([]byte(tt.line))
			if err != nil {
				t.Fatalf("decodeMessage: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(message{})); diff != "" {
				t.Errorf("decodeMessage (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeMessageMalformed(t *testing.T) {
	for _, line := range []string{
		``,
		`   `,
		`[]`,
		`null`,
		`{`,
		`{}`,
		`{"id": "x"}`,
		`{"return": {}, "error": {"class": "a", "desc": "b"}}`,
		`{"event": "STOP", "return": 1}`,
		`{"event": ""}`,
		`{"event": 3}`,
		`{"error": "string"}`,
		`{"QMP": 1}`,
		`{"return": {}} trailing`,
		"{\"return\": \"\xff\"}x",
	} {
		t.Run(line, func(t *testing.T) {
			_, err := decodeMessage([]byte(line))
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("decodeMessage(%q) = %v, want ErrMalformed", line, err)
			}
		})
	}
}

// FuzzDecodeMessage checks that no line from a hostile or broken QEMU makes
// the decoder panic, and that accepted messages are internally consistent.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`,
		`{"return": {}, "id": "gv-1"}`,
		`{"error": {"class": "GenericError", "desc": "x"}, "id": "gv-2"}`,
		`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`,
		`{"event": "X", "data": null}`,
		`{"return": [1,2,3], "id": 5}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := decodeMessage(line)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		switch m.kind {
		case kindGreeting:
		case kindReturn:
			if m.ret == nil {
				t.Fatal("return without value")
			}
		case kindError:
			if m.err == nil {
				t.Fatal("error without value")
			}
		case kindEvent:
			if m.event.Name == "" {
				t.Fatal("event without name")
			}
		default:
			t.Fatalf("unknown kind %d", m.kind)
		}
	})
}
