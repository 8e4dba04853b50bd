package qmp

import (
	"testing"
	"time"
)

// TestStoppedTime checks the sum of STOP-to-RESUME intervals by QEMU's
// timestamps, in the exact form the reader skips and in forms it decodes,
// ignored or not, and that a RESUME before its STOP, a RESUME without a
// timestamp, a repeated STOP and a RESUME without a STOP add no time.
func TestStoppedTime(t *testing.T) {
	for _, ignore := range []bool{true, false} {
		c, f := newTestClient(t)
		if ignore {
			c.IgnoreEvents("STOP", "RESUME")
		}
		f.send(`{"timestamp": {"seconds": 10, "microseconds": 100}, "event": "STOP"}`)
		f.send(`{"timestamp": {"seconds": 10, "microseconds": 250}, "event": "RESUME"}`) // 150 µs
		f.send(`{"timestamp": {"seconds": 11, "microseconds": 0}, "event": "STOP"}`)
		f.send(`{"timestamp": {"seconds": 11, "microseconds": 500}, "event": "STOP"}`)      // keeps 11.000000
		f.send(`{"event": "RESUME", "timestamp": {"seconds": 11, "microseconds": 900000}}`) // 900 ms, decoded
		f.send(`{"timestamp": {"seconds": 12, "microseconds": 0}, "event": "RESUME"}`)      // no STOP before
		f.send(`{"timestamp": {"seconds": 13, "microseconds": 0}, "event": "STOP"}`)
		f.send(`{"timestamp": {"seconds": 12, "microseconds": 0}, "event": "RESUME"}`) // before its STOP
		f.send(`{"timestamp": {"seconds": 14, "microseconds": 0}, "event": "STOP"}`)
		f.send(`{"event": "RESUME"}`)                                                // no timestamp
		f.send(`{"timestamp": {"seconds": 15, "microseconds": 0}, "event": "STOP"}`) // still open
		f.send(`{"timestamp": {"seconds": 16, "microseconds": 0}, "event": "SHUTDOWN"}`)
		for {
			select {
			case ev := <-c.Events():
				if ev.Name != "SHUTDOWN" {
					continue
				}
			case <-time.After(5 * time.Second):
				t.Fatal("timeout waiting for SHUTDOWN")
			}
			break
		}
		total, n := c.StoppedTime()
		if want := 150*time.Microsecond + 900*time.Millisecond; total != want || n != 4 {
			t.Errorf("ignore %v: StoppedTime() = %v, %d intervals; want %v, 4", ignore, total, n, want)
		}
	}
}
