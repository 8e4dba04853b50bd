package vmi

import (
	"encoding/binary"
	"sync"
)

// TranslationCache caches virtual-to-physical translations for one or more
// AddressSpaces, like a small direct-mapped TLB.
//
// Correctness on live memory. The running guest rewrites its page tables at
// any time, and nothing tells us when. A cached translation is therefore
// re-validated on every hit: the cache keeps the guest-physical address and
// value of the leaf entry (the PTE, or the PDE/PDPTE of a large page) and
// re-reads those 8 bytes; if they changed, the entry is dropped and the
// address walked again. That catches a page being unmapped or remapped, the
// common case. It cannot see a change to an upper-level entry that leaves the
// old leaf table's bytes intact (a page table unlinked and not yet reused);
// for that, an entry is walked again after MaxHits hits, and the owner calls
// Invalidate when it knows the guest may have changed its mappings: at the
// start of every scan, and after resuming a paused guest. So a stale
// translation never outlives a scan.
//
// The bound is in uses rather than time because reading the clock costs
// more than a page walk on some hosts (about 300 ns for time.Now in this
// project's sandbox, against about 100 ns for a 4-level walk over mapped
// RAM).
//
// Cost: a validated hit is one 8-byte physical read plus a slot lookup under
// a mutex, against 4 or 5 dependent reads for a walk. Over mapped RAM that is
// no faster than walking (see docs/benchmarks.md); it pays off where a
// physical read is expensive: a dump file read with pread, or guest memory
// read through the gdbstub. Memory that cannot change (dumps) can skip the
// re-validation with Static.
type TranslationCache struct {
	// MaxHits bounds how often an entry is used before it is walked again;
	// zero means DefaultMaxHits.
	MaxHits int
	// Static skips re-validation: set it only for memory that cannot change.
	Static bool

	mu    sync.Mutex
	slots []cacheEntry // cacheSlots entries once used, indexed by slotOf
	gen   uint32       // entries of other generations are empty (Invalidate is O(1))
}

// Cache parameters.
const (
	DefaultMaxHits = 64
	cacheSlots     = 4096 // a power of two
)

type cacheEntry struct {
	root     uint64 // CR3 address bits plus the LA57 flag in bit 0; 0 = empty slot
	page     uint64 // va >> 12
	base     uint64
	size     uint64
	leafAddr uint64
	leaf     uint64
	hits     int
	gen      uint32
}

// NewTranslationCache returns an empty cache.
func NewTranslationCache() *TranslationCache { return &TranslationCache{} }

func rootOf(as *AddressSpace, va uint64) uint64 {
	if as.Paging == PagingARM64 {
		// The table va's walk starts from; bit 2 keeps it apart from an
		// x86 root at the same address.
		return as.rootARM64(va) | 2 | 4
	}
	root := as.CR3&pteAddrMask | 2 // bit 1 marks a used slot even for CR3 0
	if as.LA57 {
		root |= 1
	}
	return root
}

func slotOf(root, page uint64) uint64 {
	return (page ^ page>>12 ^ root>>12*0x9e37) & (cacheSlots - 1)
}

func (c *TranslationCache) lookup(as *AddressSpace, va uint64) (gpa, size uint64, ok bool) {
	root, page := rootOf(as, va), va>>12
	max := c.MaxHits
	if max <= 0 {
		max = DefaultMaxHits
	}
	c.mu.Lock()
	if c.slots == nil {
		c.mu.Unlock()
		return 0, 0, false
	}
	s := &c.slots[slotOf(root, page)]
	if s.root != root || s.page != page || s.gen != c.gen {
		c.mu.Unlock()
		return 0, 0, false
	}
	s.hits++
	if s.hits > max && !c.Static {
		s.root = 0
		c.mu.Unlock()
		return 0, 0, false
	}
	e := *s
	c.mu.Unlock()
	if !c.Static {
		var buf [8]byte
		if _, err := as.Mem.ReadAt(buf[:], int64(e.leafAddr)); err != nil || binary.LittleEndian.Uint64(buf[:]) != e.leaf {
			c.mu.Lock()
			if s.root == root && s.page == page {
				s.root = 0
			}
			c.mu.Unlock()
			return 0, 0, false
		}
	}
	return e.base | va&(e.size-1), e.size, true
}

func (c *TranslationCache) store(as *AddressSpace, va uint64, w walkResult) {
	root, page := rootOf(as, va), va>>12
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slots == nil {
		c.slots = make([]cacheEntry, cacheSlots)
	}
	c.slots[slotOf(root, page)] = cacheEntry{root: root, page: page, base: w.base, size: w.size, leafAddr: w.leafAddr, leaf: w.leaf, gen: c.gen}
}

// Invalidate drops every cached translation.
func (c *TranslationCache) Invalidate() {
	c.mu.Lock()
	// A new generation empties every slot without reallocating the table,
	// which a scan per query would otherwise pay for (192 KiB).
	c.gen++
	if c.gen == 0 {
		c.slots = nil
	}
	c.mu.Unlock()
}

// InvalidateRoot drops the cached translations of the address space rooted at cr3.
func (c *TranslationCache) InvalidateRoot(cr3 uint64) {
	root := cr3&pteAddrMask | 2
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.slots {
		if c.slots[i].root&^1 == root {
			c.slots[i].root = 0
		}
	}
}

// Len returns the number of cached translations.
func (c *TranslationCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i := range c.slots {
		if c.slots[i].root != 0 && c.slots[i].gen == c.gen {
			n++
		}
	}
	return n
}
