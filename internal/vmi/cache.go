package vmi

import (
	"encoding/binary"
	"sync"
	"time"
)

// TranslationCache caches virtual-to-physical translations for one or more
// AddressSpaces.
//
// Correctness on live memory. The running guest rewrites its page tables at
// any time, and nothing tells us when. A cached translation is therefore
// re-validated on every hit: the cache keeps the guest-physical address and
// value of the leaf entry (the PTE, or the PDE/PDPTE of a large page) and
// re-reads those 8 bytes; if they changed, the entry is dropped and the
// address walked again. That catches a page being unmapped or remapped, the
// common case. It does not see a change to an upper-level entry that leaves
// the old leaf table's bytes intact (a page table unlinked and not yet
// reused); for that, entries also expire after TTL, and the owner calls
// Invalidate when it knows the guest changed its mappings (after resuming a
// paused guest, or at the start of each scan).
//
// Cost: a validated hit is one 8-byte physical read plus a map lookup under a
// mutex, against 4 or 5 dependent reads for a walk; see the benchmarks in
// docs/benchmarks.md. Memory that never changes (dumps) can skip the
// re-validation with Static.
//
// Any introspection read of a running guest races with the guest anyway: the
// cache bounds how stale a translation can be to TTL at worst, and to the
// moment of the read for a changed leaf entry.
type TranslationCache struct {
	// TTL bounds the age of an entry; zero means DefaultCacheTTL.
	TTL time.Duration
	// MaxEntries bounds the cache's size; zero means DefaultCacheEntries. When
	// full, the cache is emptied.
	MaxEntries int
	// Static skips re-validation: set it only for memory that cannot change.
	Static bool

	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
	now     func() time.Time
}

// Cache defaults.
const (
	DefaultCacheTTL     = 100 * time.Millisecond
	DefaultCacheEntries = 1 << 16
)

type cacheKey struct {
	root uint64 // CR3 address bits plus the LA57 flag in bit 0
	page uint64 // va >> 12
}

type cacheEntry struct {
	base, size uint64
	leafAddr   uint64
	leaf       uint64
	filled     time.Time
}

// NewTranslationCache returns an empty cache with the default TTL and size.
func NewTranslationCache() *TranslationCache { return &TranslationCache{} }

func keyFor(as *AddressSpace, va uint64) cacheKey {
	root := as.CR3 & pteAddrMask
	if as.LA57 {
		root |= 1
	}
	return cacheKey{root: root, page: va >> 12}
}

func (c *TranslationCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

func (c *TranslationCache) lookup(as *AddressSpace, va uint64) (gpa, size uint64, ok bool) {
	k := keyFor(as, va)
	c.mu.Lock()
	e, ok := c.entries[k]
	c.mu.Unlock()
	if !ok {
		return 0, 0, false
	}
	if !c.Static {
		ttl := c.TTL
		if ttl == 0 {
			ttl = DefaultCacheTTL
		}
		if c.clock().Sub(e.filled) > ttl {
			c.drop(k)
			return 0, 0, false
		}
		var buf [8]byte
		if _, err := as.Mem.ReadAt(buf[:], int64(e.leafAddr)); err != nil || binary.LittleEndian.Uint64(buf[:]) != e.leaf {
			c.drop(k)
			return 0, 0, false
		}
	}
	return e.base | va&(e.size-1), e.size, true
}

func (c *TranslationCache) store(as *AddressSpace, va uint64, w walkResult) {
	e := cacheEntry{base: w.base, size: w.size, leafAddr: w.leafAddr, leaf: w.leaf}
	if !c.Static {
		e.filled = c.clock()
	}
	max := c.MaxEntries
	if max <= 0 {
		max = DefaultCacheEntries
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil || len(c.entries) >= max {
		c.entries = make(map[cacheKey]cacheEntry)
	}
	c.entries[keyFor(as, va)] = e
}

func (c *TranslationCache) drop(k cacheKey) {
	c.mu.Lock()
	delete(c.entries, k)
	c.mu.Unlock()
}

// Invalidate drops every cached translation.
func (c *TranslationCache) Invalidate() {
	c.mu.Lock()
	c.entries = nil
	c.mu.Unlock()
}

// InvalidateRoot drops the cached translations of the address space rooted at cr3.
func (c *TranslationCache) InvalidateRoot(cr3 uint64) {
	root := cr3 & pteAddrMask
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.entries {
		if k.root&^1 == root {
			delete(c.entries, k)
		}
	}
}

// Len returns the number of cached translations.
func (c *TranslationCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
