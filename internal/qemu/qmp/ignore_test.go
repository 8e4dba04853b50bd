package qmp

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestIgnoreEvents checks that ignored events in QEMU's exact form are
// dropped, and that the same names in any other form, and other events,
// are still decoded and delivered in order.
func TestIgnoreEvents(t *testing.T) {
	c, f := newTestClient(t)
	c.IgnoreEvents("STOP", "RESUME")
	f.send(`{"timestamp": {"seconds": 10, "microseconds": 5}, "event": "STOP"}`)
	f.send(`{"timestamp": {"seconds": 10, "microseconds": 6}, "event": "RESUME"}`)
	f.send(`{"timestamp": {"seconds": 12, "microseconds": 1}, "event": "STOP", "data": {"x": 1}}`)
	f.send(`{"event": "RESUME", "timestamp": {"seconds": 13, "microseconds": 0}}`)
	f.send(`{"timestamp": {"seconds": 11, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`)
	want := []Event{
		{Name: "STOP", Data: json.RawMessage(`{"x": 1}`), Timestamp: time.Unix(12, 1000).UTC()},
		{Name: "RESUME", Timestamp: time.Unix(13, 0).UTC()},
		{Name: "SHUTDOWN", Data: json.RawMessage(`{"guest": false, "reason": "host-qmp-quit"}`), Timestamp: time.Unix(11, 0).UTC()},
	}
	var got []Event
	for range want {
		select {
		case ev := <-c.Events():
			got = append(got, ev)
		case <-time.After(5 * time.Second):
			t.Fatal("timeout waiting for events")
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestSkipLine(t *testing.T) {
	c := &Client{}
	line := `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`
	if name, ts, skip := c.skipLine([]byte(line)); skip || string(name) != "STOP" || !ts.Equal(time.Unix(1, 2000)) {
		t.Errorf("skipLine with no names ignored = %q, %v, %v; want STOP, 1.000002 s, not skipped", name, ts, skip)
	}
	c.IgnoreEvents("STOP")
	for _, tc := range []struct {
		line string
		want bool
	}{
		{line, true},
		{`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}`, false},
		{`{"timestamp": {"seconds": -1, "microseconds": 2}, "event": "STOP"}`, false},
		{`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"} `, false},
		{`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {}}`, false},
		{`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "ST\"OP"}`, false},
		{`{"timestamp": {"seconds": 123456789012345678901, "microseconds": 2}, "event": "STOP"}`, false},
		{`{"timestamp": {"seconds": , "microseconds": 2}, "event": "STOP"}`, false},
		{`{"timestamp": {"seconds": 01, "microseconds": 2}, "event": "STOP"}`, false},
		{`{"timestamp": {"seconds": 0, "microseconds": 0}, "event": "STOP"}`, true},
		{`{"return": {}}`, false},
	} {
		if _, _, got := c.skipLine([]byte(tc.line)); got != tc.want {
			t.Errorf("skipLine(%s) = %v, want %v", tc.line, got, tc.want)
		}
	}
}

// FuzzSkipLine checks that a line skipLine drops is one decodeMessage reads
// as the ignored event, with no data: skipping never hides a reply, an
// error, another event or a malformed line.
func FuzzSkipLine(f *testing.F) {
	f.Add(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`)
	f.Add(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}`)
	f.Add(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {}}`)
	f.Add(`{"return": {}, "id": "1"}`)
	c := &Client{}
	c.IgnoreEvents("STOP", "RESUME")
	f.Fuzz(func(t *testing.T, line string) {
		name, ts, skip := c.skipLine([]byte(line))
		if name == nil {
			if skip || !ts.IsZero() {
				t.Fatalf("skip %v, timestamp %v for a line with no event name", skip, ts)
			}
			return
		}
		m, err := decodeMessage([]byte(line))
		if err != nil {
			t.Fatalf("parsed as an event a line decodeMessage rejects: %v", err)
		}
		if m.event.Name != string(name) || !m.event.Timestamp.Equal(ts) {
			t.Fatalf("parsed %q at %v, decodeMessage %q at %v", name, ts, m.event.Name, m.event.Timestamp)
		}
		if !skip {
			return
		}
		if m.kind != kindEvent || (m.event.Name != "STOP" && m.event.Name != "RESUME") || m.event.Data != nil {
			t.Fatalf("skipped %+v", m)
		}
	})
}
