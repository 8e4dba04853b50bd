package linux

import "testing"

func TestDecodeIDT(t *testing.T) {
	b := make([]byte, 16*3)
	// Vector 0: present, handler 0xffffffff81a00c10.
	h := uint64(0xffffffff81a00c10)
	le.PutUint16(b[0:], uint16(h))
	le.PutUint16(b[2:], 0x10)
	le.PutUint16(b[4:], 0x8e00)
	le.PutUint16(b[6:], uint16(h>>16))
	le.PutUint32(b[8:], uint32(h>>32))
	// Vector 1 not present; vector 2 present with handler 0.
	le.PutUint16(b[32+4:], 0x8e00)
	gates := decodeIDT(b, nil)
	if len(gates) != 2 || gates[0].Vector != 0 || gates[0].Handler != h || gates[1].Vector != 2 || gates[1].Handler != 0 {
		t.Fatalf("decodeIDT = %+v", gates)
	}
}

func FuzzDecodeIDT(f *testing.F) {
	gate := make([]byte, 32)
	le.PutUint16(gate[4:], 0x8e00)
	f.Add(gate)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		gates := decodeIDT(b, nil)
		if len(gates) > len(b)/16 || len(gates) > idtEntries {
			t.Fatalf("%d gates from %d bytes", len(gates), len(b))
		}
	})
}
