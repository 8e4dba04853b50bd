package secserver

import (
	"hash/maphash"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
)

// cache is the decision cache (the FLASK access vector cache): a
// direct-mapped table of immutable entries read without locks. An entry is
// valid only for the policy sequence number it was computed under, so a
// reload invalidates everything at once. The key is every event attribute a
// policy can look at (everything but Time; PIDs only when the policy uses
// them) plus, for Flow-relevant events, the subject's flow states; entries
// are compared in full, so a hash collision costs a miss, never a wrong
// verdict.
type cache struct {
	slots []atomic.Pointer[entry]
	mask  uint64

	hits, misses, evictions atomic.Uint64
}

type entry struct {
	hash   uint64
	seq    uint64
	ev     event.Event // copy; Time zeroed
	states string
	res    policy.Result
}

var seed = maphash.MakeSeed()

func newCache(size int) *cache {
	if size < 0 {
		return &cache{}
	}
	if size == 0 {
		size = 16384
	}
	n := 1 << bits.Len(uint(size-1))
	return &cache{slots: make([]atomic.Pointer[entry], n), mask: uint64(n - 1)}
}

func mix(h, v uint64) uint64 {
	h ^= v
	h *= 0x9E3779B97F4A7C15
	return h ^ h>>29
}

// hashEvent hashes the fields that most often tell events apart; the rest
// are compared on lookup.
func hashEvent(ev *event.Event, usePID bool, states string) uint64 {
	h := uint64(ev.Class)<<56 | uint64(ev.Dir)<<48 | uint64(ev.Port)<<16 | uint64(ev.LocalPort)
	h = mix(h, uint64(ev.Subject.UID)<<32|uint64(ev.Subject.GID))
	h = mix(h, maphash.String(seed, ev.Op))
	h = mix(h, maphash.String(seed, ev.Path))
	h = mix(h, maphash.String(seed, ev.Subject.Exe))
	for _, a := range ev.Args {
		h = mix(h, uint64(a))
	}
	if usePID {
		h = mix(h, uint64(uint32(ev.Subject.PID))<<32|uint64(uint32(ev.Subject.PPID)))
	}
	if states != "" {
		h = mix(h, maphash.String(seed, states))
	}
	return h
}

func sameEvent(a, b *event.Event, usePID bool) bool {
	if a.Class != b.Class || a.Op != b.Op || a.Path != b.Path || a.Dir != b.Dir ||
		a.Port != b.Port || a.LocalPort != b.LocalPort || a.Proto != b.Proto ||
		a.Module != b.Module || a.Addr != b.Addr || !slices.Equal(a.Args, b.Args) {
		return false
	}
	s, t := &a.Subject, &b.Subject
	if s.UID != t.UID || s.GID != t.GID || s.Exe != t.Exe || s.Comm != t.Comm ||
		s.ParentExe != t.ParentExe || s.ParentComm != t.ParentComm || !slices.Equal(s.Labels, t.Labels) {
		return false
	}
	return !usePID || (s.PID == t.PID && s.PPID == t.PPID)
}

func (c *cache) get(h uint64, ev *event.Event, seq uint64, usePID bool, states string) *entry {
	if c.slots == nil {
		c.misses.Add(1)
		return nil
	}
	e := c.slots[h&c.mask].Load()
	if e != nil && e.hash == h && e.seq == seq && e.states == states && sameEvent(&e.ev, ev, usePID) {
		c.hits.Add(1)
		return e
	}
	c.misses.Add(1)
	return nil
}

func (c *cache) put(h uint64, ev *event.Event, seq uint64, states string, res *policy.Result) {
	if c.slots == nil {
		return
	}
	e := &entry{hash: h, seq: seq, ev: *ev, states: states, res: *res}
	e.ev.Time = time.Time{}
	e.ev.Args = slices.Clone(ev.Args)
	e.ev.Subject.Labels = slices.Clone(ev.Subject.Labels)
	if res.Next != nil {
		e.res.Next = slices.Clone(res.Next)
	}
	slot := &c.slots[h&c.mask]
	if old := slot.Swap(e); old != nil && old.seq == seq && old.hash != h {
		c.evictions.Add(1)
	}
}

// flowTable holds the Flow state vector of each process, sharded by PID.
type flowTable struct {
	shards   [16]flowShard
	perShard int
}

type procKey struct {
	pid   int32
	start uint64
}

type procState struct {
	seq    uint64
	states []uint8
}

type flowShard struct {
	mu    sync.Mutex
	procs map[procKey]procState
}

func newFlowTable(max int) *flowTable {
	if max <= 0 {
		max = 65536
	}
	t := &flowTable{perShard: (max + 15) / 16}
	for i := range t.shards {
		t.shards[i].procs = map[procKey]procState{}
	}
	return t
}

func (t *flowTable) shard(k procKey) *flowShard { return &t.shards[uint32(k.pid)%16] }

// get returns the states of k under policy seq, nil meaning initial.
//
// Preconditions: sh.mu is held.
func (sh *flowShard) get(k procKey, seq uint64) []uint8 {
	ps, ok := sh.procs[k]
	if !ok || ps.seq != seq {
		return nil
	}
	return ps.states
}

// set records new states. A full shard drops an arbitrary process, whose
// flows restart from their initial states.
//
// Preconditions: sh.mu is held.
func (t *flowTable) set(sh *flowShard, k procKey, seq uint64, states []uint8) {
	if _, ok := sh.procs[k]; !ok && len(sh.procs) >= t.perShard {
		for victim := range sh.procs {
			delete(sh.procs, victim)
			break
		}
	}
	sh.procs[k] = procState{seq: seq, states: slices.Clone(states)}
}

func (t *flowTable) forget(k procKey) {
	sh := t.shard(k)
	sh.mu.Lock()
	delete(sh.procs, k)
	sh.mu.Unlock()
}

func (t *flowTable) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += len(sh.procs)
		sh.mu.Unlock()
	}
	return n
}
