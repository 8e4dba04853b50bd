package vmi

import (
	"encoding/binary"
	"fmt"
)

// testMem is a writable flat guest RAM from physical address 0.
type testMem struct {
	b    []byte
	next uint64 // next free page for allocation
}

func newTestMem(size int) *testMem { return &testMem{b: make([]byte, size), next: PageSize4K} }

func (m *testMem) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 || gpa > int64(len(m.b)) || int64(len(m.b))-gpa < int64(len(p)) {
		return 0, fmt.Errorf("%w: %#x", ErrNoMemory, gpa)
	}
	return copy(p, m.b[gpa:]), nil
}

func (m *testMem) Ranges() []Range { return []Range{{0, uint64(len(m.b))}} }

func (m *testMem) put64(gpa, v uint64) { binary.LittleEndian.PutUint64(m.b[gpa:], v) }

func (m *testMem) get64(gpa uint64) uint64 { return binary.LittleEndian.Uint64(m.b[gpa:]) }

// alloc returns a zeroed, page-aligned page.
func (m *testMem) alloc() uint64 {
	p := m.next
	m.next += PageSize4K
	if m.next > uint64(len(m.b)) {
		panic("testMem: out of pages")
	}
	return p
}

const (
	fP  = ptepresent
	fRW = 1 << 1
	fNX = 1 << 63
)

// pageTables builds x86-64 page tables in a testMem.
type pageTables struct {
	m      *testMem
	root   uint64
	levels int
}

func newPageTables(m *testMem, levels int) *pageTables {
	return &pageTables{m: m, root: m.alloc(), levels: levels}
}

// mapPage maps va to pa with a page of the given size, creating tables as needed.
func (pt *pageTables) mapPage(va, pa, size uint64, extra uint64) {
	leafLevel := map[uint64]int{PageSize4K: 1, PageSize2M: 2, PageSize1G: 3}[size]
	table := pt.root
	for level := pt.levels; level > leafLevel; level-- {
		idx := (va >> (12 + 9*uint(level-1))) & 0x1ff
		e := pt.m.get64(table + idx*8)
		if e&fP == 0 {
			e = pt.m.alloc() | fP | fRW
			pt.m.put64(table+idx*8, e)
		}
		table = e & pteAddrMask
	}
	idx := (va >> (12 + 9*uint(leafLevel-1))) & 0x1ff
	e := pa | fP | fRW | extra
	if leafLevel > 1 {
		e |= ptePS
	}
	pt.m.put64(table+idx*8, e)
}

// entryAddr returns the address of the entry for va at level, following present entries.
func (pt *pageTables) entryAddr(va uint64, level int) uint64 {
	table := pt.root
	for l := pt.levels; ; l-- {
		addr := table + ((va>>(12+9*uint(l-1)))&0x1ff)*8
		if l == level {
			return addr
		}
		table = pt.m.get64(addr) & pteAddrMask
	}
}
