package linux

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/gatevisor/gatevisor/internal/armimage"
)

// 32-bit ARM kernels ship as a zImage (armimage.ParseZImage): a
// self-decompressing loader that carries the kernel Image compressed
// (piggy_data: the compressed stream followed by the decompressed size,
// 32-bit little-endian, as scripts/Makefile.lib's size_append writes it).
// Debian's armmp kernels use xz with the BCJ ARM filter. The Image is the
// kernel as it lies in memory from _text on, like arm64's, but linked at a
// fixed address (no relocations, no KASLR on 32-bit ARM).

// ExtractZImage returns the decompressed kernel Image of a zImage and how
// it was compressed. The payload is found by its magic: the first xz
// stream whose header checks out, or the first gzip member.
func ExtractZImage(img []byte) ([]byte, Compression, error) {
	if _, err := armimage.ParseZImage(img); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrNotKernel, err)
	}
	le := binary.LittleEndian
	xzMagic := []byte("\xfd7zXZ\x00")
	for from := 0; from < len(img); {
		i := bytes.Index(img[from:], xzMagic)
		if i < 0 {
			break
		}
		start := from + i
		from = start + 1
		h := img[start:]
		if len(h) < xzHeaderSize || h[6] != 0 || h[7] > 0x0f || crc32.ChecksumIEEE(h[6:8]) != le.Uint32(h[8:]) {
			continue // the magic in the loader's own strings
		}
		// The stream ends at a footer ("YZ" after the backward size and
		// the flags, CRC-checked) on a 4-byte boundary of the stream; the
		// size follows it.
		for p := start + xzHeaderSize; p+xzFooterSize+4 <= len(img); p += 4 {
			f := img[p : p+xzFooterSize]
			if string(f[10:]) != "YZ" || !bytes.Equal(f[8:10], h[6:8]) || crc32.ChecksumIEEE(f[4:10]) != le.Uint32(f) {
				continue
			}
			size := int64(le.Uint32(img[p+xzFooterSize:]))
			if size == 0 || size > MaxVmlinuxSize {
				return nil, CompressionXZ, fmt.Errorf("%w: zImage payload: decompressed size %d out of range", ErrNotKernel, size)
			}
			out, err := decompressXZ(img[start:p+xzFooterSize], size)
			if err != nil {
				return nil, CompressionXZ, fmt.Errorf("linux: decompress the zImage's xz payload: %w", err)
			}
			if int64(len(out)) != size {
				return nil, CompressionXZ, fmt.Errorf("linux: zImage payload decompressed to %d bytes, its trailer says %d", len(out), size)
			}
			return out, CompressionXZ, nil
		}
		return nil, CompressionXZ, fmt.Errorf("%w: zImage: the xz payload at %#x has no footer", ErrNotKernel, start)
	}
	if i := bytes.Index(img, []byte{0x1f, 0x8b, 0x08}); i >= 0 {
		zr, err := gzip.NewReader(bytes.NewReader(img[i:]))
		if err != nil {
			return nil, CompressionGzip, fmt.Errorf("linux: zImage gzip payload: %w", err)
		}
		zr.Multistream(false)
		out, err := readBounded(zr, MaxVmlinuxSize)
		if err != nil {
			return nil, CompressionGzip, fmt.Errorf("linux: decompress the zImage's gzip payload: %w", err)
		}
		return out, CompressionGzip, nil
	}
	return nil, "", fmt.Errorf("%w: zImage: no xz or gzip payload (lzo, lz4 and lzma zImages are not read)", ErrUnsupportedCompression)
}
