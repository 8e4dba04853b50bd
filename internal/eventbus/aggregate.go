package eventbus

import (
	"time"

	"github.com/gatevisor/gatevisor/internal/monitoring"
)

// aggregator is the state of the current second: what was written one by
// one and the aggregates pending.
type aggregator struct {
	window     time.Time // the second it counts: the bus's clock, truncated
	individual int       // decisions written one by one in it (Budget)
	fine       int       // aggregates of unmerged keys pending (MaxAggregates)
	tracked    int       // unmerged keys counted (MaxTracked)
	merged     int       // merged keys (maxMergedKeys)
	keys       map[monitoring.RepeatKey]*keyState
	pending    []*keyState // keys with an aggregate, in the order they got it
}

// keyState is one key's second: how many of its decisions were written one
// by one, and its aggregate, if it has one.
type keyState struct {
	n   int
	agg *monitoring.Point
}

// decisionLocked writes p at once if its key and the second's budget allow
// it, and otherwise folds it into its key's aggregate.
//
// Preconditions: b.mu is held.
func (b *Bus) decisionLocked(p monitoring.Point, k monitoring.RepeatKey, now time.Time) {
	b.rollLocked(now)
	a := &b.agg
	ks := a.keys[k]
	if ks == nil && a.tracked < b.opt.MaxTracked {
		ks = &keyState{}
		a.keys[k] = ks
		a.tracked++
	}
	if ks != nil && ks.n < b.opt.PerKey && a.individual < b.opt.Budget {
		ks.n++
		a.individual++
		e := p // only a point written escapes
		b.emitLocked(&e, now)
		return
	}
	b.stats.Aggregated++
	merged := ks == nil || ks.agg == nil && a.fine >= b.opt.MaxAggregates
	if merged {
		ks = b.mergedLocked(k)
	}
	if ks.agg != nil {
		ks.agg.Repeat.Add(&p)
		return
	}
	agg := monitoring.Aggregate(p, merged)
	ks.agg = &agg
	a.pending = append(a.pending, ks)
	if !merged {
		a.fine++
	}
	b.armLocked(now)
}

// mergedLocked returns the state of k's merged key, made if needed.
//
// Preconditions: b.mu is held.
func (b *Bus) mergedLocked(k monitoring.RepeatKey) *keyState {
	a := &b.agg
	mk := k.MergedKey()
	if ks := a.keys[mk]; ks != nil {
		return ks
	}
	if a.merged >= maxMergedKeys {
		mk = monitoring.RepeatKey{Kind: k.Kind, Merged: true}
		if ks := a.keys[mk]; ks != nil {
			return ks
		}
	}
	ks := &keyState{}
	a.keys[mk] = ks
	a.merged++
	return ks
}

// rollLocked starts the second now is in if the current one ended,
// writing the ended second's aggregates first.
//
// Preconditions: b.mu is held.
func (b *Bus) rollLocked(now time.Time) {
	sec := now.Truncate(time.Second)
	if sec.Equal(b.agg.window) {
		return
	}
	b.flushLocked(now)
	a := &b.agg
	a.window = sec
	a.individual, a.fine, a.tracked, a.merged = 0, 0, 0, 0
	clear(a.keys)
}

// flushLocked writes the pending aggregates, in the order they began.
//
// Preconditions: b.mu is held.
func (b *Bus) flushLocked(now time.Time) {
	a := &b.agg
	for i, ks := range a.pending {
		b.emitLocked(ks.agg, now)
		b.stats.Aggregates++
		ks.agg = nil
		a.pending[i] = nil
	}
	a.pending = a.pending[:0]
}

// armLocked makes sure the timer flushes the current second after it ends.
//
// Preconditions: b.mu is held.
func (b *Bus) armLocked(now time.Time) {
	if b.opt.manualFlush || b.timerArmed {
		return
	}
	d := b.agg.window.Add(time.Second).Sub(now) + flushSlack
	if b.timer == nil {
		b.timer = time.AfterFunc(d, b.tick)
	} else {
		b.timer.Reset(d)
	}
	b.timerArmed = true
}

// tick is the timer: it writes the aggregates of a second that ended.
func (b *Bus) tick() {
	b.mu.Lock()
	b.timerArmed = false
	if !b.closed {
		b.rollLocked(b.opt.Now())
		if len(b.agg.pending) > 0 {
			b.armLocked(b.opt.Now()) // the clock was early
		}
	}
	b.unlock()
}
