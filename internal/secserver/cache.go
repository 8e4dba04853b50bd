package secserver

import (
	"math/bits"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
)

// cache is the decision cache (the FLASK access vector cache): a
// direct-mapped table of immutable entries read without locks. An entry is
// valid only for the policy sequence number it was computed under, so a
// reload invalidates everything at once. The key is every event attribute a
// policy can look at (everything but Time and Start; PIDs only when the
// policy uses them) plus, for Flow-relevant events, the subject's flow
// states. The key is hashed once per lookup; entries are compared by hash
// first and then in full, so a hash collision costs a miss, never a wrong
// verdict.
type cache struct {
	slots []atomic.Pointer[entry]
	mask  uint64
	// hashMask is ANDed into every hash: all ones, except in tests that set
	// it to 0 so that every key collides.
	hashMask uint64

	// fastHits counts the hits Decide answers without its guarded path;
	// hits counts the others.
	fastHits                stripedCounter
	hits, misses, evictions atomic.Uint64
}

// entry is one cached decision. It is immutable once stored.
type entry struct {
	hash   uint64
	seq    uint64
	quiet  bool // an allow that needs no audit record: Decide returns dec as is
	flow   bool // decided by decideFlow: the event is Flow-relevant under seq
	audit  bool // the deciding rule asked for an audit record
	states string
	dec    Decision // Cached and Seq set
	next   []uint8  // flow states after the event, if it happens
	ev     event.Event
}

func newCache(size int) *cache {
	if size < 0 {
		return &cache{}
	}
	if size == 0 {
		size = 16384
	}
	n := 1 << bits.Len(uint(size-1))
	return &cache{slots: make([]atomic.Pointer[entry], n), mask: uint64(n - 1), hashMask: ^uint64(0)}
}

func (c *cache) enabled() bool { return c.slots != nil }

// hash returns the cache hash of ev (with usePID and states as in lookup).
func (c *cache) hash(ev *event.Event, usePID bool, states string) uint64 {
	return hashEvent(ev, usePID, states) & c.hashMask
}

// lookup returns the entry for ev under policy seq, or nil. It counts
// nothing: the caller counts a hit or a miss.
func (c *cache) lookup(h uint64, ev *event.Event, seq uint64, usePID bool, states string) *entry {
	if c.slots == nil {
		return nil
	}
	e := c.slots[h&c.mask].Load()
	if e != nil && e.hash == h && e.seq == seq && len(e.states) == len(states) &&
		(states == "" || e.states == states) && sameKey(&e.ev, ev, usePID) {
		return e
	}
	return nil
}

// put stores e (hash, seq, states and the decision set) with a copy of
// ev's key. Replacing an entry of the same policy with another key counts
// as an eviction.
//
// Preconditions: c is enabled.
func (c *cache) put(e *entry, ev *event.Event, usePID bool) {
	e.ev = *ev
	e.ev.Time = time.Time{}
	e.ev.Args = slices.Clone(ev.Args)
	e.ev.Subject.Labels = slices.Clone(ev.Subject.Labels)
	e.ev.Labels = slices.Clone(ev.Labels)
	slot := &c.slots[e.hash&c.mask]
	if old := slot.Swap(e); old != nil && old.seq == e.seq &&
		(old.hash != e.hash || old.states != e.states || !sameKey(&old.ev, ev, usePID)) {
		c.evictions.Add(1)
	}
}

// sameKey reports whether a and b agree in every attribute that is part of
// the cache key. Validate checks nothing that is not compared here, so an
// event equal to a cached (valid) one is valid (TestCacheKey).
func sameKey(a, b *event.Event, usePID bool) bool {
	s, t := &a.Subject, &b.Subject
	if a.Class != b.Class || a.Dir != b.Dir || a.Port != b.Port || a.LocalPort != b.LocalPort ||
		s.UID != t.UID || s.GID != t.GID || usePID && (s.PID != t.PID || s.PPID != t.PPID) ||
		len(a.Args) != len(b.Args) || len(s.Labels) != len(t.Labels) || len(a.Labels) != len(b.Labels) || a.Addr != b.Addr ||
		s.SetUID != t.SetUID || len(s.Authenticated) != len(t.Authenticated) {
		return false
	}
	// One statement per string: the compiler branches on each comparison
	// instead of materializing a chain of &&.
	if a.Path != b.Path {
		return false
	}
	if s.Exe != t.Exe {
		return false
	}
	if a.Op != b.Op {
		return false
	}
	if s.Comm != t.Comm {
		return false
	}
	if s.ParentExe != t.ParentExe {
		return false
	}
	if s.ParentComm != t.ParentComm {
		return false
	}
	if a.Proto != b.Proto {
		return false
	}
	if a.Module != b.Module {
		return false
	}
	if a.Hash != b.Hash {
		return false
	}
	return slices.Equal(a.Args, b.Args) && slices.Equal(s.Labels, t.Labels) && slices.Equal(a.Labels, b.Labels) &&
		slices.Equal(s.Authenticated, t.Authenticated)
}

// The key hash is wyhash's folding (64x64->128-bit multiply, high xor low)
// over the strings, 16 bytes a step, with a per-process random seed. The
// strings are hashed independently so that the CPU overlaps the chains.
const (
	k0 = 0xa0761d6478bd642f
	k1 = 0xe7037ed1a0b428db
	k2 = 0x8ebc6af09c88c6e3
	k3 = 0x589965cc75374cc3
)

var hashSeed = rand.Uint64()

func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// The compiler turns these into single little-endian loads.
func r8(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

func r4(s string) uint64 {
	_ = s[3]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24
}

// hashString folds s into h. Short strings are read as (overlapping)
// words from both ends, longer ones 16 bytes a step.
func hashString(h uint64, s string) uint64 {
	n := len(s)
	var a, b uint64
	switch {
	case n > 16:
		for t := s; len(t) > 16; t = t[16:] {
			h = mum(r8(t)^k1, r8(t[8:])^h)
		}
		a, b = r8(s[n-16:]), r8(s[n-8:])
	case n >= 8:
		a, b = r8(s), r8(s[n-8:])
	case n >= 4:
		a, b = r4(s), r4(s[n-4:])
	case n > 0:
		a = uint64(s[0])<<16 | uint64(s[n>>1])<<8 | uint64(s[n-1])
	}
	return mum(a^k1^uint64(n), b^h)
}

// hashEvent hashes the attributes that most often tell events apart: class,
// direction, ports, ids, op, path, exe, args, PIDs if the policy uses them,
// and flow states. The rest are compared on lookup.
func hashEvent(ev *event.Event, usePID bool, states string) uint64 {
	s := &ev.Subject
	p := hashString(hashSeed, ev.Path)
	e := hashString(hashSeed^k2, s.Exe)
	o := hashString(hashSeed^k3, ev.Op)
	a := uint64(ev.Class)<<56 | uint64(ev.Dir)<<48 | uint64(ev.Port)<<16 | uint64(ev.LocalPort)
	b := uint64(s.UID)<<32 | uint64(s.GID)
	var c uint64
	if usePID {
		c = uint64(uint32(s.PID))<<32 | uint64(uint32(s.PPID))
	}
	h := mum(p^a^k0, e^b^k1)
	h = mum(h^o^c, k2)
	for _, v := range ev.Args {
		h = mum(h^uint64(v), k3)
	}
	if states != "" {
		h = hashString(h, states)
	}
	return h
}

// stripedCounter is a counter spread over cache lines by key hash, so
// that vCPUs hitting different entries do not contend for one line.
type stripedCounter struct {
	stripes [16]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

func (c *stripedCounter) add(h uint64) { c.stripes[h>>60].n.Add(1) }

func (c *stripedCounter) load() uint64 {
	var n uint64
	for i := range c.stripes {
		n += c.stripes[i].n.Load()
	}
	return n
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
