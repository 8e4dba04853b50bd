package armimage

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The 32-bit ARM zImage (arch/arm/boot/compressed/head.S): a
// self-decompressing loader whose header, at offset 0x24, is the magic
// 0x016F2818, the image's start and end addresses (end-start is its size)
// and, since 3.17, the endianness word 0x04030201 (little-endian). The
// compressed kernel (piggy) lies inside the loader; ZPayload finds it.
const (
	ZImageMagic     = 0x016F2818
	zImageMagicOff  = 0x24
	zImageEndianLE  = 0x04030201
	zImageHeaderEnd = 0x34
)

// ErrZImage is wrapped by every error about a file that is not a
// little-endian ARM zImage.
var ErrZImage = errors.New("not a 32-bit ARM zImage")

// ZImageHeader is what the zImage header says.
type ZImageHeader struct {
	Start, End uint32 // link addresses of the image (0 when position independent)
}

// Size is the image size the header states.
func (h ZImageHeader) Size() uint32 { return h.End - h.Start }

// IsZImage reports whether img starts with a zImage header (magic only).
func IsZImage(img []byte) bool {
	return len(img) >= zImageHeaderEnd && binary.LittleEndian.Uint32(img[zImageMagicOff:]) == ZImageMagic
}

// ParseZImage checks the zImage header of img: the magic, a little-endian
// kernel, and a size that fits the file.
func ParseZImage(img []byte) (ZImageHeader, error) {
	if len(img) < zImageHeaderEnd {
		return ZImageHeader{}, fmt.Errorf("%w: %d bytes, shorter than its header", ErrZImage, len(img))
	}
	le := binary.LittleEndian
	if le.Uint32(img[zImageMagicOff:]) != ZImageMagic {
		if binary.BigEndian.Uint32(img[zImageMagicOff:]) == ZImageMagic {
			return ZImageHeader{}, fmt.Errorf("%w: a big-endian zImage: gatevisor reads little-endian kernels", ErrZImage)
		}
		return ZImageHeader{}, fmt.Errorf("%w: no magic %#x at offset %#x", ErrZImage, ZImageMagic, zImageMagicOff)
	}
	h := ZImageHeader{Start: le.Uint32(img[0x28:]), End: le.Uint32(img[0x2c:])}
	if e := le.Uint32(img[0x30:]); e != zImageEndianLE {
		return h, fmt.Errorf("%w: endianness word %#x, want %#x (little-endian)", ErrZImage, e, zImageEndianLE)
	}
	if h.End < h.Start || uint64(h.Size()) > uint64(len(img)) || h.Size() < zImageHeaderEnd {
		return h, fmt.Errorf("%w: image %#x-%#x does not fit the %d-byte file", ErrZImage, h.Start, h.End, len(img))
	}
	return h, nil
}
