package eventbus

import (
	"slices"

	"github.com/gatevisor/gatevisor/internal/monitoring"
)

// entry is one point's line and number.
type entry struct {
	seq  uint64
	line []byte // newline included
}

// ring keeps the last lines of one category, at most max of them and
// maxBytes of their bytes: a circular buffer of max entries.
type ring struct {
	max, maxBytes int
	items         []entry // len max (made at the first push); the oldest at start
	start, n      int
	bytes         int
}

// History bounds per category: decisions may flood, so they cannot push
// out IDS observations or notices.
var historyBounds = [monitoring.NumCategories]struct{ lines, bytes int }{
	monitoring.CategoryDecision: {1000, 4 << 20},
	monitoring.CategoryIDS:      {1000, 4 << 20},
	monitoring.CategoryNotice:   {200, 1 << 20},
}

func newHistory() [monitoring.NumCategories]ring {
	var h [monitoring.NumCategories]ring
	for c := range h {
		h[c] = ring{max: historyBounds[c].lines, maxBytes: historyBounds[c].bytes}
	}
	return h
}

func (r *ring) push(e entry) {
	for r.n > 0 && (r.n == r.max || r.bytes+len(e.line) > r.maxBytes) {
		r.bytes -= len(r.items[r.start].line)
		r.items[r.start] = entry{}
		r.start = (r.start + 1) % r.max
		r.n--
	}
	if r.items == nil {
		r.items = make([]entry, r.max)
	}
	r.items[(r.start+r.n)%r.max] = e
	r.n++
	r.bytes += len(e.line)
}

// appendTo appends the ring's entries, oldest first, to out.
func (r *ring) appendTo(out []entry) []entry {
	for i := range r.n {
		out = append(out, r.items[(r.start+i)%r.max])
	}
	return out
}

// historyLocked returns the history, every category merged by seq.
//
// Preconditions: b.mu is held.
func (b *Bus) historyLocked() []entry {
	n := 0
	for c := range b.hist {
		n += b.hist[c].n
	}
	out := make([]entry, 0, n)
	for c := range b.hist {
		out = b.hist[c].appendTo(out)
	}
	slices.SortFunc(out, func(x, y entry) int {
		switch {
		case x.seq < y.seq:
			return -1
		case x.seq > y.seq:
			return 1
		}
		return 0
	})
	return out
}
