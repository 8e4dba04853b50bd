package vhostuser

import (
	"fmt"
)

// memRegion is one region of guest RAM as the backend sees it: b is its
// bytes (a shared mapping of the front end's memory file, or a test's
// slice), gpa and uaddr its guest-physical and front-end addresses.
type memRegion struct {
	gpa, uaddr uint64
	b          []byte
	mapping    []byte // what to munmap (nil for a test's slice)
	// The mapped file and offset (zero for a test's slice): a table that
	// names the same ones again keeps the mapping.
	dev, ino, offset uint64
}

// Memory is the guest RAM table of one connection. Every access from a
// guest-supplied address goes through slice, which checks it lies inside
// one region.
type Memory struct {
	regions []memRegion
}

// NewTestMemory is a Memory over b at guest-physical gpa (and the same
// front-end address), for tests with a fake guest.
func NewTestMemory(gpa uint64, b []byte) *Memory {
	return &Memory{regions: []memRegion{{gpa: gpa, uaddr: gpa, b: b}}}
}

// slice returns the n bytes of guest RAM at gpa, which must lie in one
// region.
func (m *Memory) slice(gpa, n uint64) ([]byte, error) {
	for i := range m.regions {
		r := &m.regions[i]
		size := uint64(len(r.b))
		if gpa >= r.gpa && gpa-r.gpa < size {
			off := gpa - r.gpa
			if n > size-off {
				break
			}
			return r.b[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("vhost-user: guest address %#x+%#x is outside guest RAM", gpa, n)
}

// gpaOf translates a front-end virtual address (a vring's, from
// SET_VRING_ADDR) to guest-physical.
func (m *Memory) gpaOf(uaddr uint64) (uint64, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if uaddr >= r.uaddr && uaddr-r.uaddr < uint64(len(r.b)) {
			return r.gpa + (uaddr - r.uaddr), nil
		}
	}
	return 0, fmt.Errorf("vhost-user: front-end address %#x is in no memory region", uaddr)
}
