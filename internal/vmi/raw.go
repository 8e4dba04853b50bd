package vmi

import (
	"fmt"
	"io"
	"os"
)

// RawMemory is guest-physical memory stored as plain bytes: by default RAM
// laid out from guest-physical address 0, one byte of file per byte of RAM.
// With a layout, the file holds the layout's ranges one after another in the
// order given (for example RAM below 3 GiB, then RAM from 4 GiB).
type RawMemory struct {
	seg *segments
	f   *os.File
}

// NewRawMemory returns physical memory backed by r, which holds size bytes.
// A nil layout means one range [0, size).
func NewRawMemory(r io.ReaderAt, size int64, layout []Range) (*RawMemory, error) {
	if size < 0 {
		return nil, fmt.Errorf("%w: negative size", ErrFormat)
	}
	if layout == nil {
		layout = []Range{{0, uint64(size)}}
	}
	segs := make([]segment, 0, len(layout))
	var off int64
	for _, rg := range layout {
		if rg.End < rg.Start {
			return nil, fmt.Errorf("%w: range %v ends before it starts", ErrFormat, rg)
		}
		if rg.Len() > uint64(size-off) {
			return nil, fmt.Errorf("%w: layout range %v exceeds image size %#x", ErrFormat, rg, size)
		}
		segs = append(segs, segment{Range: rg, off: off})
		off += int64(rg.Len())
	}
	s, err := newSegments(r, size, segs)
	if err != nil {
		return nil, err
	}
	return &RawMemory{seg: s}, nil
}

// OpenRaw opens a raw memory image file; see NewRawMemory for layout.
func OpenRaw(path string, layout []Range) (*RawMemory, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vmi: open raw image: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vmi: open raw image: %w", err)
	}
	m, err := NewRawMemory(f, st.Size(), layout)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vmi: open raw image %s: %w", path, err)
	}
	m.f = f
	return m, nil
}

// ReadAt implements PhysicalMemory.
func (m *RawMemory) ReadAt(p []byte, gpa int64) (int, error) { return m.seg.readAt(p, gpa) }

// Ranges implements PhysicalMemory.
func (m *RawMemory) Ranges() []Range { return m.seg.ranges() }

// Close closes the file opened by OpenRaw; it does nothing for NewRawMemory.
func (m *RawMemory) Close() error {
	if m.f == nil {
		return nil
	}
	return m.f.Close()
}
