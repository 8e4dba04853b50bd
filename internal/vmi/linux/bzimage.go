package linux

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz/lzma"

	"github.com/gatevisor/gatevisor/internal/bzimage"
)

// Compression names the compression of a bzImage payload.
type Compression string

// Payload compressions the x86 boot protocol allows.
const (
	CompressionNone  Compression = "none" // the input was already a vmlinux ELF
	CompressionGzip  Compression = "gzip"
	CompressionBzip2 Compression = "bzip2"
	CompressionLZMA  Compression = "lzma"
	CompressionXZ    Compression = "xz"
	CompressionLZO   Compression = "lzo"
	CompressionLZ4   Compression = "lz4"
	CompressionZstd  Compression = "zstd"
)

var (
	// ErrNotKernel means the input is neither a bzImage nor a vmlinux ELF.
	ErrNotKernel = errors.New("linux: not a kernel image")
	// ErrUnsupportedCompression means the payload's compression is not supported (LZO).
	ErrUnsupportedCompression = errors.New("linux: unsupported kernel compression")
)

// MaxVmlinuxSize bounds the decompressed kernel (Debian's 6.1 is 66 MB).
const MaxVmlinuxSize = 256 << 20

// BzImageHeader is what ExtractVmlinux read from the boot protocol header.
type BzImageHeader struct {
	Protocol      uint16 // e.g. 0x20f
	SetupSects    int
	PayloadOffset int64 // from the start of the file
	PayloadLength int64
	Compression   Compression
}

// ParseBzImage reads the boot protocol header of a bzImage (with
// internal/bzimage, which needs protocol 2.08+ for the payload fields) and
// identifies its payload's compression by magic.
func ParseBzImage(img []byte) (BzImageHeader, error) {
	var h BzImageHeader
	bh, err := bzimage.Parse(img)
	if err != nil {
		return h, notKernel(err)
	}
	h.Protocol, h.SetupSects = bh.Protocol, bh.SetupSects
	if h.PayloadOffset, h.PayloadLength, err = bh.Payload(int64(len(img))); err != nil {
		return h, notKernel(err)
	}
	// The size trailer (4 bytes) and the shortest magic.
	if h.PayloadLength < 8 {
		return h, fmt.Errorf("%w: payload of %d bytes", ErrNotKernel, h.PayloadLength)
	}
	h.Compression = detectCompression(img[h.PayloadOffset : h.PayloadOffset+h.PayloadLength])
	if h.Compression == "" {
		return h, fmt.Errorf("%w: unknown payload magic % x", ErrUnsupportedCompression, img[h.PayloadOffset:h.PayloadOffset+6])
	}
	return h, nil
}

// notKernel makes bzimage's verdict on the header one of ErrNotKernel.
func notKernel(err error) error {
	if fe, ok := errors.AsType[*bzimage.FormatError](err); ok {
		return fmt.Errorf("%w: %s", ErrNotKernel, fe.Reason)
	}
	return err
}

func detectCompression(p []byte) Compression {
	switch {
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		return CompressionGzip
	case bytes.HasPrefix(p, []byte("BZh")):
		return CompressionBzip2
	case bytes.HasPrefix(p, []byte("\xfd7zXZ\x00")):
		return CompressionXZ
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return CompressionZstd
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		return CompressionLZ4
	case bytes.HasPrefix(p, []byte{0x89, 'L', 'Z', 'O'}):
		return CompressionLZO
	case bytes.HasPrefix(p, []byte{0x5d, 0x00, 0x00}):
		return CompressionLZMA
	case bytes.HasPrefix(p, []byte("\x7fELF")):
		return CompressionNone
	}
	return ""
}

// ExtractVmlinux returns the decompressed kernel (an ELF vmlinux on x86) of
// a bzImage. An input that already is an ELF file is returned as it is.
func ExtractVmlinux(img []byte) ([]byte, Compression, error) {
	if bytes.HasPrefix(img, []byte("\x7fELF")) {
		return img, CompressionNone, nil
	}
	h, err := ParseBzImage(img)
	if err != nil {
		return nil, "", err
	}
	p := img[h.PayloadOffset : h.PayloadOffset+h.PayloadLength]
	// Every compressor but gzip is followed by the decompressed size as a
	// 32-bit little-endian value (scripts/Makefile.lib size_append); gzip's own
	// trailer ends with the same value.
	size := int64(binary.LittleEndian.Uint32(p[len(p)-4:]))
	if size == 0 || size > MaxVmlinuxSize {
		return nil, "", fmt.Errorf("%w: decompressed size %d out of range", ErrNotKernel, size)
	}
	body := p
	if h.Compression != CompressionGzip {
		body = p[:len(p)-4]
	}
	var out []byte
	switch h.Compression {
	case CompressionNone:
		out = body
	case CompressionXZ:
		out, err = decompressXZ(body, size)
	case CompressionLZ4:
		out, err = decompressLZ4Legacy(body, size)
	case CompressionGzip:
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(body)); err == nil {
			zr.Multistream(false)
			out, err = readBounded(zr, size)
		}
	case CompressionBzip2:
		out, err = readBounded(bzip2.NewReader(bytes.NewReader(body)), size)
	case CompressionLZMA:
		var lr *lzma.Reader
		// The header's dictionary size is allocated up front: allow what a
		// kernel of this size needs (lzma -9 uses 64 MiB), no more.
		cfg := lzma.ReaderConfig{DictCap: int(min(max(pow2(size), 64<<20), MaxVmlinuxSize))}
		if lr, err = cfg.NewReader(bytes.NewReader(body)); err == nil {
			out, err = readBounded(lr, size)
		}
	case CompressionZstd:
		// The kernel's build pipes the image into zstd -22 --ultra: the frame
		// announces a 128 MiB window (more than the kernel) and no content
		// size (Debian's 6.12 and later). DecodeAll decodes into one buffer
		// of the size the trailer announces and uses it as the window, where
		// the streaming reader would allocate a window-sized ring besides;
		// the cap limits the output to that buffer.
		var zr *zstd.Decoder
		if zr, err = zstd.NewReader(nil, zstd.WithDecoderMaxMemory(zstd.MaxWindowSize), zstd.WithDecoderMaxWindow(zstd.MaxWindowSize),
			zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderConcurrency(1)); err == nil {
			out, err = zr.DecodeAll(body, make([]byte, 0, initialCap(size, len(body))))
			zr.Close()
		}
	default:
		return nil, h.Compression, fmt.Errorf("%w: %s", ErrUnsupportedCompression, h.Compression)
	}
	if err != nil {
		return nil, h.Compression, fmt.Errorf("linux: decompress %s payload: %w", h.Compression, err)
	}
	if int64(len(out)) != size {
		return nil, h.Compression, fmt.Errorf("linux: %s payload decompressed to %d bytes, header says %d", h.Compression, len(out), size)
	}
	return out, h.Compression, nil
}

// pow2 returns the smallest power of two at least n.
func pow2(n int64) int64 {
	p := int64(1)
	for p < n {
		p <<= 1
	}
	return p
}

// initialCap is the buffer to start decompressing into: the announced size,
// unless that is more than a plausible ratio to the input (a hostile header
// must not make us allocate a gigabyte up front; the buffer still grows).
func initialCap(size int64, inLen int) int64 {
	return min(size, 64*int64(inLen)+4096)
}

// readBounded reads r to its end, failing if it holds more than size bytes.
func readBounded(r io.Reader, size int64) ([]byte, error) {
	out := bytes.NewBuffer(make([]byte, 0, min(size, 4<<20)))
	n, err := io.Copy(out, io.LimitReader(r, size+1))
	if err != nil {
		return nil, err
	}
	if n > size {
		return nil, fmt.Errorf("more than the %d bytes the header announces", size)
	}
	return out.Bytes(), nil
}
