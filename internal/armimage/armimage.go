// Package armimage reads the arm64 Linux kernel image format
// (Documentation/arch/arm64/booting.rst): the 64-byte header of a flat
// Image, and the two wrappers a distribution may ship it in, gzip
// (Image.gz) and the EFI zboot image (an EFI application whose payload is
// the compressed Image, CONFIG_EFI_ZBOOT, "zimg" at offset 4). Images are
// input from files a user names: every size is checked before it is used,
// and decompression is bounded.
package armimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the size of the arm64 Image header.
const HeaderSize = 64

// Magic is "ARM\x64" at offset 56 of the header.
const Magic = 0x644d5241

// MaxImage bounds a decompressed Image (Debian's 6.1 is 32 MiB).
const MaxImage = 256 << 20

// ErrFormat is wrapped by every error about a file that is not an arm64
// kernel image.
var ErrFormat = errors.New("not an arm64 kernel Image")

// Header is the arm64 Image header.
type Header struct {
	TextOffset uint64 // image load offset from a 2 MiB aligned base (0 since 3.17 with RANDOMIZE_TEXT_OFFSET gone)
	ImageSize  uint64 // effective image size, BSS included
	Flags      uint64
}

// PageSize is the kernel's page size from the flags (bits 1-2): 4096,
// 16384 or 65536; 0 when unspecified.
func (h Header) PageSize() int {
	switch (h.Flags >> 1) & 3 {
	case 1:
		return 4 << 10
	case 2:
		return 16 << 10
	case 3:
		return 64 << 10
	}
	return 0
}

// BigEndian reports flag bit 0: the kernel is big-endian.
func (h Header) BigEndian() bool { return h.Flags&1 != 0 }

// Parse reads the header of a flat Image.
func Parse(img []byte) (Header, error) {
	if len(img) < HeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes, shorter than its header", ErrFormat, len(img))
	}
	le := binary.LittleEndian
	if le.Uint32(img[56:]) != Magic {
		return Header{}, fmt.Errorf("%w: no ARM\\x64 magic at offset 56", ErrFormat)
	}
	h := Header{TextOffset: le.Uint64(img[8:]), ImageSize: le.Uint64(img[16:]), Flags: le.Uint64(img[24:])}
	if h.ImageSize != 0 && (h.ImageSize < uint64(HeaderSize) || h.ImageSize > MaxImage) {
		return h, fmt.Errorf("%w: image size %#x out of range", ErrFormat, h.ImageSize)
	}
	return h, nil
}

// Is reports whether img starts like an arm64 kernel: a flat Image, a
// gzip stream or an EFI zboot image (judged by magic only).
func Is(img []byte) bool {
	return len(img) >= HeaderSize && binary.LittleEndian.Uint32(img[56:]) == Magic || isZboot(img) ||
		bytes.HasPrefix(img, []byte{0x1f, 0x8b})
}

func isZboot(img []byte) bool {
	return len(img) >= 64 && img[0] == 'M' && img[1] == 'Z' && string(img[4:8]) == "zimg"
}

// Compression names what Unwrap removed: "none", "gzip" or "zboot-gzip".
type Compression string

// Unwrap returns the flat Image of img: img itself when it is one, the
// decompressed stream of a gzip file, or the payload of an EFI zboot
// image (gzip only: Debian's choice; other zboot compressions are refused
// by name). The result's header is checked with Parse.
func Unwrap(img []byte) ([]byte, Compression, error) {
	if len(img) >= HeaderSize && binary.LittleEndian.Uint32(img[56:]) == Magic {
		_, err := Parse(img)
		return img, "none", err
	}
	var payload []byte
	comp := Compression("gzip")
	switch {
	case isZboot(img):
		// struct { "MZ", 2 pad, "zimg", u32 payload offset, u32 payload size,
		// 8 pad, char comp_type[32], ... } (drivers/firmware/efi/libstub/zboot-header.S)
		le := binary.LittleEndian
		off, size := uint64(le.Uint32(img[8:])), uint64(le.Uint32(img[12:]))
		typ := string(bytes.TrimRight(img[24:56], "\x00"))
		if off > uint64(len(img)) || size > uint64(len(img))-off {
			return nil, "", fmt.Errorf("%w: zboot payload %#x+%#x outside the %d-byte file", ErrFormat, off, size, len(img))
		}
		if typ != "gzip" {
			return nil, "", fmt.Errorf("%w: EFI zboot image compressed with %q: only gzip is supported", ErrFormat, typ)
		}
		payload, comp = img[off:off+size], "zboot-gzip"
	case bytes.HasPrefix(img, []byte{0x1f, 0x8b}):
		payload = img
	default:
		return nil, "", fmt.Errorf("%w: neither a flat Image (ARM\\x64 at 56), gzip nor EFI zboot", ErrFormat)
	}
	zr, err := gzip.NewReader(bytes.NewReader(payload))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: %v", ErrFormat, comp, err)
	}
	zr.Multistream(false)
	var out bytes.Buffer
	n, err := io.Copy(&out, io.LimitReader(zr, MaxImage+1))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: %v", ErrFormat, comp, err)
	}
	if n > MaxImage {
		return nil, "", fmt.Errorf("%w: decompresses to more than %d bytes", ErrFormat, MaxImage)
	}
	if _, err := Parse(out.Bytes()); err != nil {
		return nil, "", fmt.Errorf("%s payload: %w", comp, err)
	}
	return out.Bytes(), comp, nil
}
