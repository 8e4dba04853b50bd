package vmi

import (
	"errors"
	"fmt"
	"io"
	"sort"
)

// Range is a half-open interval [Start, End) of guest-physical addresses.
type Range struct {
	Start, End uint64
}

// Len returns the number of bytes in r.
func (r Range) Len() uint64 {
	if r.End <= r.Start {
		return 0
	}
	return r.End - r.Start
}

// Contains reports whether gpa lies in r.
func (r Range) Contains(gpa uint64) bool { return gpa >= r.Start && gpa < r.End }

func (r Range) String() string { return fmt.Sprintf("[%#x-%#x)", r.Start, r.End) }

// PhysicalMemory is guest-physical memory.
//
// ReadAt follows io.ReaderAt: it returns len(p) bytes or an error. Reading
// bytes outside Ranges returns an error wrapping ErrNoMemory. Implementations
// must be safe for concurrent use.
type PhysicalMemory interface {
	ReadAt(p []byte, gpa int64) (int, error)
	// Ranges returns the guest-physical RAM ranges, sorted and not overlapping.
	Ranges() []Range
}

var (
	// ErrNoMemory means a physical address is not backed by guest RAM in the source.
	ErrNoMemory = errors.New("vmi: physical address not in guest memory")
	// ErrFormat means a memory source's headers are malformed.
	ErrFormat = errors.New("vmi: malformed memory source")
)

// maxPhysAddr bounds guest-physical addresses: x86-64 MAXPHYADDR is at most 52 bits.
const maxPhysAddr = uint64(1) << 52

// segment maps guest-physical [Start, End) to offset Off in a backing reader.
type segment struct {
	Range
	off int64
}

// segments is a sorted, non-overlapping mapping of physical ranges to a reader.
type segments struct {
	r    io.ReaderAt
	segs []segment
}

// newSegments sorts and validates segs against a backing store of size bytes.
func newSegments(r io.ReaderAt, size int64, segs []segment) (*segments, error) {
	out := make([]segment, 0, len(segs))
	for _, s := range segs {
		if s.Len() == 0 {
			continue
		}
		if s.End > maxPhysAddr || s.End < s.Start {
			return nil, fmt.Errorf("%w: range %v beyond 52-bit physical space", ErrFormat, s.Range)
		}
		if s.off < 0 || s.off > size || uint64(size-s.off) < s.Len() {
			return nil, fmt.Errorf("%w: range %v at offset %#x exceeds source size %#x", ErrFormat, s.Range, s.off, size)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	for i := 1; i < len(out); i++ {
		if out[i].Start < out[i-1].End {
			return nil, fmt.Errorf("%w: ranges %v and %v overlap", ErrFormat, out[i-1].Range, out[i].Range)
		}
	}
	return &segments{r: r, segs: out}, nil
}

func (s *segments) ranges() []Range {
	var rs []Range
	for _, seg := range s.segs {
		if n := len(rs); n > 0 && rs[n-1].End == seg.Start {
			rs[n-1].End = seg.End
			continue
		}
		rs = append(rs, seg.Range)
	}
	return rs
}

// find returns the index of the segment containing gpa, or -1.
func (s *segments) find(gpa uint64) int {
	i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].End > gpa })
	if i < len(s.segs) && s.segs[i].Contains(gpa) {
		return i
	}
	return -1
}

func (s *segments) readAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, fmt.Errorf("%w: negative address %d", ErrNoMemory, gpa)
	}
	addr := uint64(gpa)
	n := 0
	for n < len(p) {
		i := s.find(addr)
		if i < 0 {
			return n, fmt.Errorf("%w: %#x", ErrNoMemory, addr)
		}
		seg := s.segs[i]
		chunk := p[n:]
		if avail := seg.End - addr; uint64(len(chunk)) > avail {
			chunk = chunk[:avail]
		}
		m, err := s.r.ReadAt(chunk, seg.off+int64(addr-seg.Start))
		n += m
		if m < len(chunk) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, fmt.Errorf("vmi: read %#x: %w", addr, err)
		}
		addr += uint64(m)
	}
	return n, nil
}
