package linux

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/crc64"

	"github.com/ulikunitz/xz/lzma"
)

// The kernel compresses with `xz --check=crc32 --x86 --lzma2`: a BCJ x86
// filter in front of LZMA2. github.com/ulikunitz/xz reads only single-filter
// (LZMA2) blocks, so this file parses the .xz container itself, decodes each
// block's LZMA2 data with ulikunitz/xz/lzma and undoes the BCJ x86 filter.

const (
	xzHeaderSize = 12
	xzFooterSize = 12
	xzFilterBCJ  = 0x04
	xzFilterARM  = 0x07 // BCJ ARM: 32-bit ARM kernels (scripts/xz_wrap.sh --arm)
	xzFilterLZMA = 0x21
	xzMaxBlocks  = 1 << 16
)

var errXZ = errors.New("malformed xz stream")

var crc64Table = crc64.MakeTable(crc64.ECMA)

func xzCheckSize(check byte) int {
	switch {
	case check == 0:
		return 0
	case check <= 3:
		return 4
	case check <= 6:
		return 8
	case check <= 9:
		return 16
	case check <= 12:
		return 32
	default:
		return 64
	}
}

// xzUvarint reads an xz multibyte integer (at most 9 bytes).
func xzUvarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 9; i++ {
		v |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i]&0x80 == 0 {
			if i > 0 && b[i] == 0 {
				return 0, 0, fmt.Errorf("%w: non-minimal integer", errXZ)
			}
			return v, i + 1, nil
		}
	}
	return 0, 0, fmt.Errorf("%w: truncated integer", errXZ)
}

type xzRecord struct{ unpadded, uncompressed uint64 }

// decompressXZ decompresses one .xz stream whose total output must be size bytes.
func decompressXZ(in []byte, size int64) ([]byte, error) {
	// Stream padding: zero bytes in multiples of four after the footer.
	for len(in) >= 4 && bytes.Equal(in[len(in)-4:], []byte{0, 0, 0, 0}) {
		in = in[:len(in)-4]
	}
	if len(in) < xzHeaderSize+xzFooterSize || !bytes.HasPrefix(in, []byte("\xfd7zXZ\x00")) {
		return nil, fmt.Errorf("%w: no stream header", errXZ)
	}
	le := binary.LittleEndian
	flags := in[6:8]
	if flags[0] != 0 || flags[1] > 0x0f || crc32.ChecksumIEEE(flags) != le.Uint32(in[8:]) {
		return nil, fmt.Errorf("%w: bad stream flags", errXZ)
	}
	check := flags[1]
	foot := in[len(in)-xzFooterSize:]
	if string(foot[10:]) != "YZ" || !bytes.Equal(foot[8:10], flags) || crc32.ChecksumIEEE(foot[4:10]) != le.Uint32(foot) {
		return nil, fmt.Errorf("%w: bad stream footer", errXZ)
	}
	indexSize := (uint64(le.Uint32(foot[4:])) + 1) * 4
	if indexSize > uint64(len(in)-xzHeaderSize-xzFooterSize) {
		return nil, fmt.Errorf("%w: index size %d", errXZ, indexSize)
	}
	indexStart := len(in) - xzFooterSize - int(indexSize)
	records, err := parseXZIndex(in[indexStart : len(in)-xzFooterSize])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, initialCap(size, len(in)))
	pos := xzHeaderSize
	checkSize := xzCheckSize(check)
	for _, rec := range records {
		if rec.uncompressed > uint64(size)-uint64(len(out)) {
			return nil, fmt.Errorf("%w: blocks hold more than %d bytes", errXZ, size)
		}
		padded := (rec.unpadded + 3) &^ 3
		if rec.unpadded > padded || padded > uint64(indexStart-pos) {
			return nil, fmt.Errorf("%w: block of %d bytes past the index", errXZ, rec.unpadded)
		}
		// Unpadded size counts header, data and check; the block padding
		// sits between the data and the check.
		if rec.unpadded < uint64(checkSize) {
			return nil, fmt.Errorf("%w: block of %d bytes", errXZ, rec.unpadded)
		}
		block := in[pos : pos+int(rec.unpadded)-checkSize]
		data, err := decodeXZBlock(block, rec.uncompressed)
		if err != nil {
			return nil, err
		}
		if err := verifyXZCheck(check, data, in[pos+int(padded)-checkSize:pos+int(padded)]); err != nil {
			return nil, err
		}
		out = append(out, data...)
		pos += int(padded)
	}
	if pos != indexStart {
		return nil, fmt.Errorf("%w: %d bytes between the last block and the index", errXZ, indexStart-pos)
	}
	return out, nil
}

func parseXZIndex(b []byte) ([]xzRecord, error) {
	le := binary.LittleEndian
	if len(b) < 8 || b[0] != 0 || crc32.ChecksumIEEE(b[:len(b)-4]) != le.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("%w: bad index", errXZ)
	}
	p := b[1 : len(b)-4]
	n, k, err := xzUvarint(p)
	if err != nil {
		return nil, err
	}
	p = p[k:]
	if n > xzMaxBlocks || n > uint64(len(p))/2 {
		return nil, fmt.Errorf("%w: %d index records", errXZ, n)
	}
	recs := make([]xzRecord, n)
	for i := range recs {
		for _, f := range []*uint64{&recs[i].unpadded, &recs[i].uncompressed} {
			v, k, err := xzUvarint(p)
			if err != nil {
				return nil, err
			}
			*f, p = v, p[k:]
		}
	}
	for _, c := range p {
		if c != 0 {
			return nil, fmt.Errorf("%w: index padding", errXZ)
		}
	}
	return recs, nil
}

// decodeXZBlock decodes one block (header and compressed data) into want bytes.
func decodeXZBlock(block []byte, want uint64) ([]byte, error) {
	le := binary.LittleEndian
	if len(block) < 1 || block[0] == 0 {
		return nil, fmt.Errorf("%w: missing block header", errXZ)
	}
	hsize := (int(block[0]) + 1) * 4
	if hsize > len(block) {
		return nil, fmt.Errorf("%w: block header of %d bytes", errXZ, hsize)
	}
	h := block[:hsize]
	if crc32.ChecksumIEEE(h[:hsize-4]) != le.Uint32(h[hsize-4:]) {
		return nil, fmt.Errorf("%w: block header CRC", errXZ)
	}
	bflags := h[1]
	if bflags&0x3c != 0 {
		return nil, fmt.Errorf("%w: reserved block flags", errXZ)
	}
	p := h[2 : hsize-4]
	for _, present := range []bool{bflags&0x40 != 0, bflags&0x80 != 0} {
		if present { // compressed / uncompressed size: the index has them too
			_, k, err := xzUvarint(p)
			if err != nil {
				return nil, err
			}
			p = p[k:]
		}
	}
	var bcj, haveBCJ, bcjARM bool
	var bcjStart uint32
	var dictCap int
	nfilters := int(bflags&3) + 1
	for i := 0; i < nfilters; i++ {
		id, k, err := xzUvarint(p)
		if err != nil {
			return nil, err
		}
		p = p[k:]
		psize, k, err := xzUvarint(p)
		if err != nil {
			return nil, err
		}
		p = p[k:]
		if psize > uint64(len(p)) {
			return nil, fmt.Errorf("%w: filter properties", errXZ)
		}
		props := p[:psize]
		p = p[psize:]
		last := i == nfilters-1
		switch {
		case (id == xzFilterBCJ || id == xzFilterARM) && !last && !haveBCJ:
			bcj, haveBCJ = true, true
			bcjARM = id == xzFilterARM
			switch len(props) {
			case 0:
			case 4:
				bcjStart = le.Uint32(props)
			default:
				return nil, fmt.Errorf("%w: BCJ properties", errXZ)
			}
		case id == xzFilterLZMA && last:
			if len(props) != 1 || props[0] > 40 {
				return nil, fmt.Errorf("%w: LZMA2 properties", errXZ)
			}
			d := props[0]
			if d == 40 {
				dictCap = 1<<32 - 1
			} else {
				dictCap = (2 | int(d&1)) << (d/2 + 11)
			}
		default:
			return nil, fmt.Errorf("%w: xz filter %#x in position %d", ErrUnsupportedCompression, id, i)
		}
	}
	for _, c := range p {
		if c != 0 {
			return nil, fmt.Errorf("%w: block header padding", errXZ)
		}
	}
	if dictCap < lzma.MinDictCap {
		dictCap = lzma.MinDictCap
	}
	if dictCap > MaxVmlinuxSize {
		dictCap = MaxVmlinuxSize // the dictionary never needs to exceed the output
	}
	if want < uint64(dictCap) {
		dictCap = max(int(want), lzma.MinDictCap)
	}
	data := block[hsize:]
	r, err := lzma.Reader2Config{DictCap: dictCap}.NewReader2(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errXZ, err)
	}
	out, err := readBounded(r, int64(want))
	if err != nil {
		return nil, fmt.Errorf("%w: LZMA2 data: %v", errXZ, err)
	}
	if uint64(len(out)) != want {
		return nil, fmt.Errorf("%w: block decoded to %d bytes, index says %d", errXZ, len(out), want)
	}
	switch {
	case bcj && bcjARM:
		bcjARMDecode(out, bcjStart)
	case bcj:
		bcjX86Decode(out, bcjStart)
	}
	return out, nil
}

func verifyXZCheck(check byte, data, sum []byte) error {
	le := binary.LittleEndian
	ok := true
	switch check {
	case 0:
	case 1:
		ok = crc32.ChecksumIEEE(data) == le.Uint32(sum)
	case 4:
		ok = crc64.Checksum(data, crc64Table) == le.Uint64(sum)
	case 10:
		h := sha256.Sum256(data)
		ok = bytes.Equal(h[:], sum)
	default:
		return fmt.Errorf("%w: xz check type %d", ErrUnsupportedCompression, check)
	}
	if !ok {
		return fmt.Errorf("%w: check (type %d) mismatch", errXZ, check)
	}
	return nil
}

// bcjX86Decode undoes the xz BCJ x86 filter in place over a whole block:
// it turns the absolute targets of E8/E9 (call/jmp rel32) back into
// relative ones. Written from the .xz file format's description of the
// filter (as implemented by xz-embedded).
func bcjX86Decode(buf []byte, startPos uint32) {
	allowed := [8]bool{true, true, true, false, true, false, false, false}
	bitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	msb := func(b byte) bool { return b == 0x00 || b == 0xff }
	if len(buf) <= 4 {
		return
	}
	end := len(buf) - 4
	prevPos := -1
	prevMask := uint32(0)
	for i := 0; i < end; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		if d := i - prevPos; d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << uint(d-1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(bitNum[prevMask])]
				if !allowed[prevMask] || msb(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if !msb(buf[i+4]) {
			prevMask = prevMask<<1 | 1
			continue
		}
		src := binary.LittleEndian.Uint32(buf[i+1:])
		var dest uint32
		for {
			dest = src - (startPos + uint32(i) + 5)
			if prevMask == 0 {
				break
			}
			j := bitNum[prevMask] * 8
			if !msb(byte(dest >> (24 - j))) {
				break
			}
			src = dest ^ (1<<(32-j) - 1)
		}
		dest &= 0x01ffffff
		dest |= 0 - (dest & 0x01000000)
		binary.LittleEndian.PutUint32(buf[i+1:], dest)
		i += 4
	}
}

// bcjARMDecode undoes the xz BCJ ARM filter in place over a whole block:
// the filter made the 24-bit word offsets of BL instructions (condition
// "always": top byte 0xEB) absolute; decoding makes them relative to
// the instruction again (pc+8). Written from the .xz format's description
// of the filter (as implemented by xz-embedded's bcj_arm).
func bcjARMDecode(buf []byte, startPos uint32) {
	for i := 0; i+4 <= len(buf); i += 4 {
		if buf[i+3] != 0xeb {
			continue
		}
		addr := uint32(buf[i]) | uint32(buf[i+1])<<8 | uint32(buf[i+2])<<16
		addr = (addr<<2 - (startPos + uint32(i) + 8)) >> 2
		buf[i], buf[i+1], buf[i+2] = byte(addr), byte(addr>>8), byte(addr>>16)
	}
}
