package ids

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// CheckTaskFlags is the check of task_struct.flags bits the kernel never
// sets: a rootkit marks the tasks it hides with one (Diamorphine's
// PF_INVISIBLE), and its getdents filter hides what carries it, while the
// mark stays in memory for anyone outside to read, in a dump too.
const CheckTaskFlags = "task-flags"

// pfHoles are the task flag bits include/linux/sched.h leaves unused
// (PF__HOLE__*), by kernel version: the kernel never sets them. Later
// kernels fill holes (PF_USER_WORKER 0x4000 in 6.4, PF_BLOCK_TS
// 0x20000000 in 6.9), so a version outside the table is not judged.
var pfHoles = []struct {
	from, to [2]int // major.minor, inclusive
	holes    uint32
}{
	{[2]int{6, 0}, [2]int{6, 3}, 0x00004000 | 0x00010000 | 0x00800000 | 0x01000000 | 0x02000000 | 0x20000000 | 0x40000000},
}

// holesFor returns the unused flag bits of a kernel release ("6.1.0-57-amd64"),
// and false if the table does not cover it.
func holesFor(release string) (uint32, bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return 0, false
	}
	v := major*1000 + minor
	for _, h := range pfHoles {
		if v >= h.from[0]*1000+h.from[1] && v <= h.to[0]*1000+h.to[1] {
			return h.holes, true
		}
	}
	return 0, false
}

// checkTaskFlags reports threads whose flags carry a bit this kernel never
// sets. Every thread is read: a rootkit may mark one thread only.
func (i *Inspector) checkTaskFlags(views *linux.Views) ([]Finding, error) {
	holes, ok := holesFor(i.K.Profile.Release)
	if !ok {
		return nil, fmt.Errorf("%w: no table of unused task flags for kernel %s (known: 6.0 to 6.3)", ErrNotApplicable, i.K.Profile.Release)
	}
	off, err := i.K.Profile.FieldOffset("task_struct.flags")
	if err != nil {
		return nil, err
	}
	threads, err := views.Threads, views.ThreadsErr
	if err != nil && (!errors.Is(err, linux.ErrIncomplete) || linux.StoppedEarly(err)) {
		return nil, err
	}
	var out []Finding
	for _, t := range threads {
		flags, err := vmi.ReadU32(i.K.AS, t.Addr+off)
		if err != nil || flags&holes == 0 {
			continue
		}
		out = append(out, Finding{Check: CheckTaskFlags, Severity: SeverityCritical, PID: t.PID, Name: t.Comm, Addr: t.Addr,
			Summary: fmt.Sprintf("thread %d (%s) carries task flag %#x, which kernel %s never sets: the mark of a task a rootkit hides",
				t.PID, t.Comm, flags&holes, i.K.Profile.Release)})
	}
	return out, nil
}
