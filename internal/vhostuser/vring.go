package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Split virtqueue layout (virtio 1.x, 2.7).
const (
	descSize      = 16
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4
	// availFNoInterrupt: the driver asks for no interrupt (no event index).
	availFNoInterrupt = 1
	// usedFNoNotify: the device asks for no kicks while it works.
	usedFNoNotify = 1

	// MaxChainBytes bounds the bytes of one descriptor chain's buffers.
	MaxChainBytes = 16 << 20
)

// ErrRing means the guest's driver put something malformed in a ring:
// the queue stops.
var ErrRing = errors.New("vhost-user: malformed virtqueue")

// Chain is one request: the driver's readable buffers (In: what the
// guest sent) then its writable ones (Out: for the reply), each a slice
// of guest RAM, valid only during Handler.Handle.
type Chain struct {
	In, Out   [][]byte
	InLen     int
	OutLen    int
	head      uint16
	descCount int
}

// ring is one split virtqueue's guest side: the three parts as slices of
// guest RAM, and the device's position.
type ring struct {
	num              uint16
	desc, avail, use []byte
	lastAvail        uint16 // the next avail entry to take
	usedIdx          uint16
}

// setupRing resolves a ring's parts (guest-physical addresses) in mem.
func setupRing(mem *Memory, num uint32, desc, avail, used uint64) (*ring, error) {
	if num == 0 || num > MaxQueueSize || num&(num-1) != 0 {
		return nil, fmt.Errorf("%w: queue size %d", ErrRing, num)
	}
	// avail: 4-aligned (the spec asks 2; every driver aligns it to 16)
	// so that its index words are read within the ring.
	if desc%16 != 0 || avail%4 != 0 || used%4 != 0 {
		return nil, fmt.Errorf("%w: misaligned ring (desc %#x avail %#x used %#x)", ErrRing, desc, avail, used)
	}
	n := uint64(num)
	r := &ring{num: uint16(num)}
	if num == MaxQueueSize {
		r.num = 0 // 32768 does not fit: kept as 0 and read as 1<<15 by size()
	}
	var err error
	if r.desc, err = mem.slice(desc, descSize*n); err != nil {
		return nil, err
	}
	if r.avail, err = mem.slice(avail, 6+2*n); err != nil {
		return nil, err
	}
	if r.use, err = mem.slice(used, 6+8*n); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *ring) size() uint32 {
	if r.num == 0 {
		return MaxQueueSize
	}
	return uint32(r.num)
}

// availIdx is the driver's avail index (acquire).
func (r *ring) availIdx() uint16 { return load16(r.avail, 2) }

// pending is how many chains the driver has made available that the
// device has not taken; more than the ring holds is an error.
func (r *ring) pending() (uint16, error) {
	n := r.availIdx() - r.lastAvail
	if uint32(n) > r.size() {
		return 0, fmt.Errorf("%w: avail index %d is %d ahead of %d (ring of %d)", ErrRing, r.availIdx(), n, r.lastAvail, r.size())
	}
	return n, nil
}

// next takes the next available chain into c (reusing its slices).
func (r *ring) next(mem *Memory, c *Chain) error {
	size := r.size()
	slot := uint32(r.lastAvail) % size
	head := binary.LittleEndian.Uint16(r.avail[4+2*slot:])
	r.lastAvail++
	c.In, c.Out = c.In[:0], c.Out[:0]
	c.InLen, c.OutLen, c.head, c.descCount = 0, 0, head, 0
	idx := uint32(head)
	total := uint64(0)
	for {
		if idx >= size {
			return fmt.Errorf("%w: descriptor %d in a ring of %d", ErrRing, idx, size)
		}
		if c.descCount >= int(size) {
			return fmt.Errorf("%w: chain from %d longer than the ring (a loop)", ErrRing, head)
		}
		c.descCount++
		d := r.desc[descSize*idx:]
		addr := binary.LittleEndian.Uint64(d)
		ln := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descFIndirect != 0 {
			return fmt.Errorf("%w: indirect descriptor %d (not negotiated)", ErrRing, idx)
		}
		total += uint64(ln)
		if total > MaxChainBytes {
			return fmt.Errorf("%w: chain from %d holds more than %d bytes", ErrRing, head, MaxChainBytes)
		}
		if ln > 0 {
			b, err := mem.slice(addr, uint64(ln))
			if err != nil {
				return fmt.Errorf("%w: descriptor %d: %v", ErrRing, idx, err)
			}
			if flags&descFWrite != 0 {
				c.Out = append(c.Out, b)
				c.OutLen += len(b)
			} else {
				if len(c.Out) > 0 {
					return fmt.Errorf("%w: chain from %d has a readable buffer after a writable one", ErrRing, head)
				}
				c.In = append(c.In, b)
				c.InLen += len(b)
			}
		}
		if flags&descFNext == 0 {
			return nil
		}
		idx = uint32(next)
	}
}

// put returns chain head to the driver with written bytes (release).
func (r *ring) put(head uint16, written uint32) {
	slot := uint32(r.usedIdx) % r.size()
	e := r.use[4+8*slot:]
	binary.LittleEndian.PutUint32(e, uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	r.usedIdx++
	store16(r.use, 2, r.usedIdx)
}

// wantsInterrupt reports whether the driver wants an interrupt for used
// buffers (no event index: the avail ring's flag).
func (r *ring) wantsInterrupt() bool { return load16(r.avail, 0)&availFNoInterrupt == 0 }

// setNoNotify asks the driver not to kick (true) or to kick again.
func (r *ring) setNoNotify(on bool) {
	var f uint16
	if on {
		f = usedFNoNotify
	}
	store16(r.use, 0, f)
}
