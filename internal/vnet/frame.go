package vnet

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// MaxFrame is the largest frame the codec accepts. QEMU's stream netdev
// carries no virtio-net header, so the guest cannot use segmentation
// offloads and frames stay within the MTU; 64 KiB leaves room for jumbo
// frames and nothing a guest sends can make the reader allocate more.
const MaxFrame = 65535

// MinFrame is the smallest frame worth switching: an Ethernet header.
const MinFrame = 14

// maxSkip is the longest frame the reader skips instead of failing. A guest
// can make its driver send frames longer than MaxFrame (virtio-net accepts
// an MTU of 65535, hence 65549-byte frames) and QEMU passes them on with a
// correct length prefix, so the stream is still in step: such a frame is
// counted and skipped, and the guest's link stays up. A length beyond
// maxSkip cannot come from a driver and means the stream is out of step.
const maxSkip = 1 << 20

// ErrFrameLength means a length prefix was out of range; the stream cannot
// be resynchronized and must be closed.
var ErrFrameLength = errors.New("vnet: frame length out of range")

// FrameReader reads QEMU stream-netdev frames: a 4-byte big-endian length,
// then that many bytes.
type FrameReader struct {
	r *bufio.Reader

	// Oversized counts frames longer than MaxFrame that were skipped.
	Oversized atomic.Uint64
}

// NewFrameReader returns a reader over r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 256<<10)}
}

// ReadFrame reads one frame into a new slice, skipping frames longer than
// MaxFrame (see maxSkip). A frame is consumed only once it is whole in
// the buffer: a read that fails (a deadline) leaves the bytes of a partial
// frame buffered, for Unread.
func (f *FrameReader) ReadFrame() ([]byte, error) {
	var n uint32
	for {
		hdr, err := f.r.Peek(4)
		if err != nil {
			if err == io.EOF && len(hdr) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		n = binary.BigEndian.Uint32(hdr)
		if n <= MaxFrame {
			break
		}
		if n > maxSkip {
			return nil, fmt.Errorf("%w: %d bytes", ErrFrameLength, n)
		}
		_, _ = f.r.Discard(4)
		if _, err := f.r.Discard(int(n)); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		f.Oversized.Add(1)
	}
	p, err := f.r.Peek(4 + int(n))
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	b := make([]byte, n)
	copy(b, p[4:])
	_, _ = f.r.Discard(4 + int(n))
	return b, nil
}

// Unread returns a copy of the bytes read from the stream and not yet
// consumed as frames (a partial frame after a failed read).
func (f *FrameReader) Unread() []byte {
	p, _ := f.r.Peek(f.r.Buffered())
	return append([]byte(nil), p...)
}

// ReadBatch blocks for one frame, then adds the frames already buffered, up
// to max: the gate inspects what arrived together in one pass.
func (f *FrameReader) ReadBatch(batch [][]byte, max int) ([][]byte, error) {
	b, err := f.ReadFrame()
	if err != nil {
		return batch, err
	}
	batch = append(batch, b)
	for len(batch) < max && f.r.Buffered() >= 4 {
		hdr, _ := f.r.Peek(4)
		n := binary.BigEndian.Uint32(hdr)
		if n > MaxFrame || f.r.Buffered() < 4+int(n) {
			break
		}
		if b, err = f.ReadFrame(); err != nil {
			return batch, err
		}
		batch = append(batch, b)
	}
	return batch, nil
}

// FrameWriter writes length-prefixed frames; safe for concurrent use.
type FrameWriter struct {
	mu  sync.Mutex // guards w and buf
	w   io.Writer
	buf []byte
}

// NewFrameWriter returns a writer to w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// WriteFrames writes frames with one write call. Frames longer than
// MaxFrame are skipped.
func (f *FrameWriter) WriteFrames(frames [][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	buf := f.buf[:0]
	for _, b := range frames {
		if len(b) > MaxFrame {
			continue
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(b)))
		buf = append(buf, b...)
	}
	if cap(buf) <= 1<<20 {
		f.buf = buf
	}
	if len(buf) == 0 {
		return nil
	}
	_, err := f.w.Write(buf)
	return err
}
