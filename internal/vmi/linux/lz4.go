package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The kernel's lz4 payload is the LZ4 "legacy" frame (lz4 -l): a magic
// number, then blocks of at most 8 MiB output, each a 32-bit compressed size
// and an independent LZ4 block. A small decoder here avoids a dependency.

const (
	lz4LegacyMagic    = 0x184c2102
	lz4LegacyBlockMax = 8 << 20
)

var errLZ4 = errors.New("malformed lz4 data")

func decompressLZ4Legacy(in []byte, size int64) ([]byte, error) {
	le := binary.LittleEndian
	if len(in) < 4 || le.Uint32(in) != lz4LegacyMagic {
		return nil, fmt.Errorf("%w: no legacy magic", errLZ4)
	}
	in = in[4:]
	out := make([]byte, 0, initialCap(size, len(in)))
	for len(in) >= 4 {
		n := le.Uint32(in)
		in = in[4:]
		if n == lz4LegacyMagic {
			continue // concatenated stream
		}
		if uint64(n) > uint64(len(in)) {
			return nil, fmt.Errorf("%w: block of %d bytes, %d left", errLZ4, n, len(in))
		}
		var err error
		limit := min(int64(lz4LegacyBlockMax), size-int64(len(out)))
		if out, err = lz4Block(out, in[:n], int(limit)); err != nil {
			return nil, err
		}
		in = in[n:]
	}
	return out, nil
}

// lz4Block appends the decoding of one LZ4 block to dst, producing at most
// limit bytes.
func lz4Block(dst, src []byte, limit int) ([]byte, error) {
	start := len(dst)
	length := func(n int) (int, error) {
		if n != 15 {
			return n, nil
		}
		for {
			if len(src) == 0 {
				return 0, fmt.Errorf("%w: truncated length", errLZ4)
			}
			b := src[0]
			src = src[1:]
			n += int(b)
			if n > limit {
				return 0, fmt.Errorf("%w: length beyond block limit", errLZ4)
			}
			if b != 255 {
				return n, nil
			}
		}
	}
	for {
		if len(src) == 0 {
			return nil, fmt.Errorf("%w: truncated sequence", errLZ4)
		}
		token := src[0]
		src = src[1:]
		lit, err := length(int(token >> 4))
		if err != nil {
			return nil, err
		}
		if lit > len(src) || len(dst)-start+lit > limit {
			return nil, fmt.Errorf("%w: literals overrun", errLZ4)
		}
		dst = append(dst, src[:lit]...)
		src = src[lit:]
		if len(src) == 0 {
			return dst, nil // the last sequence has no match
		}
		if len(src) < 2 {
			return nil, fmt.Errorf("%w: truncated offset", errLZ4)
		}
		off := int(binary.LittleEndian.Uint16(src))
		src = src[2:]
		if off == 0 || off > len(dst)-start {
			return nil, fmt.Errorf("%w: match offset %d", errLZ4, off)
		}
		ml, err := length(int(token & 15))
		if err != nil {
			return nil, err
		}
		ml += 4
		if len(dst)-start+ml > limit {
			return nil, fmt.Errorf("%w: match overrun", errLZ4)
		}
		for i := 0; i < ml; i++ { // byte by byte: matches may overlap their output
			dst = append(dst, dst[len(dst)-off])
		}
	}
}
