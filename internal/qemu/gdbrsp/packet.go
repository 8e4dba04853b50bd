package gdbrsp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MaxPacketSize caps one packet received from the stub, before and after
// run-length expansion. QEMU's own limit is 4 KiB.
const MaxPacketSize = 64 << 10

// frameKind is the kind of one unit read from the stub.
type frameKind int

const (
	frameAck    frameKind = iota + 1 // '+'
	frameNack                        // '-'
	framePacket                      // "$payload#cs" with a good checksum
	frameBadSum                      // "$payload#cs" with a bad checksum
	frameNotify                      // "%payload#cs" (non-stop notification; unused by QEMU)
)

type frame struct {
	kind    frameKind
	payload []byte // run-length expanded; binary escapes are left for the caller
}

// frameReader splits the stub's byte stream into frames. Bytes outside
// packets other than '+' and '-' are skipped (the protocol allows noise there).
type frameReader struct {
	r   *bufio.Reader
	raw []byte // scratch for one packet's raw bytes
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 8<<10)}
}

// next returns the next frame. Errors other than io.EOF from the underlying
// reader wrap ErrProtocol when the bytes were not a valid packet; the stream
// cannot be resynchronised after an oversized packet.
func (fr *frameReader) next() (frame, error) {
	for {
		b, err := fr.r.ReadByte()
		if err != nil {
			return frame{}, err
		}
		switch b {
		case '+':
			return frame{kind: frameAck}, nil
		case '-':
			return frame{kind: frameNack}, nil
		case '$', '%':
			payload, ok, err := fr.readPacket()
			if err != nil {
				return frame{}, err
			}
			switch {
			case !ok:
				return frame{kind: frameBadSum}, nil
			case b == '%':
				return frame{kind: frameNotify, payload: payload}, nil
			default:
				return frame{kind: framePacket, payload: payload}, nil
			}
		}
	}
}

// readPacket reads up to and including the checksum after '$' or '%'.
// ok is false when the checksum does not match or the run-length encoding
// is invalid (both mean the packet was damaged in transit: NAK it).
func (fr *frameReader) readPacket() (payload []byte, ok bool, err error) {
	fr.raw = fr.raw[:0]
	for {
		b, err := fr.r.ReadByte()
		if err != nil {
			return nil, false, unexpectedEOF(err)
		}
		if b == '#' {
			break
		}
		if b == '$' {
			// A new packet started before this one ended: drop the partial one.
			fr.raw = fr.raw[:0]
			continue
		}
		if len(fr.raw) >= MaxPacketSize {
			return nil, false, fmt.Errorf("%w: packet longer than %d bytes", ErrProtocol, MaxPacketSize)
		}
		fr.raw = append(fr.raw, b)
	}
	var sum [2]byte
	for i := range sum {
		b, err := fr.r.ReadByte()
		if err != nil {
			return nil, false, unexpectedEOF(err)
		}
		sum[i] = b
	}
	want, err := strconv.ParseUint(string(sum[:]), 16, 8)
	if err != nil || uint8(want) != checksum(fr.raw) {
		return nil, false, nil
	}
	payload, err = expandRLE(fr.raw)
	if err != nil {
		return nil, false, nil
	}
	return payload, true, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func checksum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return s
}

// expandRLE undoes the protocol's run-length encoding: "X*n" stands for X
// repeated 1+(n-29) times. The result is capped at MaxPacketSize. The byte
// after a '}' escape is literal and never starts or counts a run.
func expandRLE(raw []byte) ([]byte, error) {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '}':
			if i+1 >= len(raw) {
				return nil, fmt.Errorf("%w: escape at end of packet", ErrProtocol)
			}
			out = append(out, c, raw[i+1])
			i++
		case c == '*':
			if len(out) == 0 || i+1 >= len(raw) {
				return nil, fmt.Errorf("%w: run-length marker without a byte to repeat or a count", ErrProtocol)
			}
			n := int(raw[i+1]) - 29
			if n < 3 || n > 97 {
				return nil, fmt.Errorf("%w: run-length count %d out of range", ErrProtocol, n)
			}
			if len(out)+n > MaxPacketSize {
				return nil, fmt.Errorf("%w: run-length expansion beyond %d bytes", ErrProtocol, MaxPacketSize)
			}
			prev := out[len(out)-1]
			for range n {
				out = append(out, prev)
			}
			i++
		default:
			if len(out) >= MaxPacketSize {
				return nil, fmt.Errorf("%w: packet longer than %d bytes", ErrProtocol, MaxPacketSize)
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// encodePacket frames payload as "$payload#cs". payload must already be
// escaped (see escapeBinary) if it holds binary data.
func encodePacket(payload []byte) []byte {
	out := make([]byte, 0, len(payload)+4)
	out = append(out, '$')
	out = append(out, payload...)
	return fmt.Appendf(out, "#%02x", checksum(payload))
}

// needsEscape reports whether b must be escaped in binary packet data.
func needsEscape(b byte) bool { return b == '#' || b == '$' || b == '}' || b == '*' }

// escapeBinary appends data to dst with '#', '$', '}' and '*' escaped as
// '}' followed by the byte XOR 0x20.
func escapeBinary(dst, data []byte) []byte {
	for _, b := range data {
		if needsEscape(b) {
			dst = append(dst, '}', b^0x20)
		} else {
			dst = append(dst, b)
		}
	}
	return dst
}

// unescapeBinary undoes escapeBinary.
func unescapeBinary(data []byte) ([]byte, error) {
	out := make([]byte, 0, len(data))
	for i := 0; i < len(data); i++ {
		if data[i] != '}' {
			out = append(out, data[i])
			continue
		}
		if i+1 >= len(data) {
			return nil, fmt.Errorf("%w: escape at end of binary data", ErrProtocol)
		}
		i++
		out = append(out, data[i]^0x20)
	}
	return out, nil
}

// decodeHex decodes an even-length hex string as sent by the stub.
func decodeHex(s []byte) ([]byte, error) {
	if len(s)%2 != 0 {
		return nil, fmt.Errorf("%w: odd-length hex %q", ErrProtocol, truncate(s))
	}
	out := make([]byte, len(s)/2)
	for i := range out {
		hi, ok1 := fromHex(s[2*i])
		lo, ok2 := fromHex(s[2*i+1])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: bad hex %q", ErrProtocol, truncate(s))
		}
		out[i] = hi<<4 | lo
	}
	return out, nil
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// truncate shortens b for error messages.
func truncate(b []byte) string {
	const n = 64
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
