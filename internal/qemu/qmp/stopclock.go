package qmp

import (
	"sync"
	"time"
)

// stopClock sums the time the VM spent stopped, by the timestamps QEMU puts
// on its STOP and RESUME events: QEMU takes them where it freezes the
// guest's clocks (do_vm_stop, after cpu_disable_ticks) and thaws them
// (vm_prepare_start, after cpu_enable_ticks), so the sum is the time the
// guest's own clock did not see. An interval whose RESUME carries no
// timestamp, or one before its STOP's, is counted as a stop but adds no
// time; a second STOP keeps the first's time.
type stopClock struct {
	mu        sync.Mutex
	stoppedAt time.Time // zero: running, or its STOP had no timestamp
	stopped   bool
	total     time.Duration
	intervals uint64
}

// note records event name at ts.
func (s *stopClock) note(name string, ts time.Time) {
	if name != "STOP" && name != "RESUME" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case name == "STOP" && !s.stopped:
		s.stopped, s.stoppedAt = true, ts
	case name == "RESUME" && s.stopped:
		if !s.stoppedAt.IsZero() && !ts.IsZero() && ts.After(s.stoppedAt) {
			s.total += ts.Sub(s.stoppedAt)
		}
		s.stopped, s.stoppedAt = false, time.Time{}
		s.intervals++
	}
}

// StoppedTime returns the time the VM spent stopped since the connection
// was made, summed over each STOP to the RESUME that followed it by QEMU's
// timestamps on the two events (an interval still open is not counted),
// and the number of those intervals. Under TCG the guest's clocks stand
// still for that time: a loop timed by the guest's clock is this much
// shorter than it took.
func (c *Client) StoppedTime() (time.Duration, uint64) {
	c.stopped.mu.Lock()
	defer c.stopped.mu.Unlock()
	return c.stopped.total, c.stopped.intervals
}
