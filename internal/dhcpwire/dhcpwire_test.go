package dhcpwire

import (
	"encoding/binary"
	"testing"
)

func message(op byte, opts ...byte) []byte {
	b := make([]byte, FixedLen)
	b[0], b[1], b[2] = op, 1, 6
	copy(b[28:], []byte{2, 0, 0, 0, 0, 1})
	b = binary.BigEndian.AppendUint32(b, Magic)
	return append(b, opts...)
}

func TestOptionsAndWalk(t *testing.T) {
	b := message(OpReply, 0, 53, 1, 5, 54, 4, 10, 0, 2, 2, 255, 99)
	opts, ok := Options(b, OpReply)
	if !ok {
		t.Fatal("a reply refused")
	}
	if _, ok := Options(b, OpRequest); ok {
		t.Error("a reply accepted as a request")
	}
	if mac := ClientMAC(b); mac != [6]byte{2, 0, 0, 0, 0, 1} {
		t.Errorf("ClientMAC = %x", mac)
	}
	var codes []byte
	if !Walk(opts, func(code byte, val []byte) { codes = append(codes, code) }) || string(codes) != string([]byte{53, 54}) {
		t.Errorf("Walk: codes %v", codes)
	}
	for _, bad := range [][]byte{{53}, {53, 4, 1}, {54, 200, 1, 2}} {
		if Walk(bad, func(byte, []byte) {}) {
			t.Errorf("Walk(% x): an option past the end accepted", bad)
		}
	}
	bad := message(OpReply)
	binary.BigEndian.PutUint32(bad[FixedLen:], 1)
	for _, b := range [][]byte{bad, message(OpReply)[:FixedLen+3], append([]byte{OpReply, 6, 6}, message(OpReply)[3:]...)} {
		if _, ok := Options(b, OpReply); ok {
			t.Errorf("Options accepted a bad message of %d bytes", len(b))
		}
	}
}

func FuzzWalk(f *testing.F) {
	f.Add([]byte{0, 53, 1, 5, 255})
	f.Add([]byte{53, 200})
	f.Fuzz(func(t *testing.T, opts []byte) {
		n := 0
		Walk(opts, func(code byte, val []byte) {
			n += 2 + len(val)
			if code == 0 || code == 255 || n > len(opts) {
				t.Fatalf("option %d of %d bytes past %d", code, len(val), len(opts))
			}
		})
	})
}
