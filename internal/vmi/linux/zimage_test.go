package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
)

// testdata/zimage-synthetic is a zImage header, the xz magic once in the
// loader's strings (as in Debian's), and an xz stream made with
// `xz --check=crc32 --arm --lzma2` (the kernel's own options for ARM) of
// testdata/zimage-synthetic.image (random words, 30% of them BL
// instructions the BCJ ARM filter rewrites), followed by its size.
func TestExtractZImage(t *testing.T) {
	img, err := os.ReadFile("testdata/zimage-synthetic")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/zimage-synthetic.image")
	if err != nil {
		t.Fatal(err)
	}
	got, comp, err := ExtractZImage(img)
	if err != nil || comp != CompressionXZ || !bytes.Equal(got, want) {
		t.Fatalf("ExtractZImage = %d bytes, %q, %v; want the %d-byte image", len(got), comp, err, len(want))
	}
	// A damaged size trailer, a damaged stream, a big-endian image.
	for name, mutate := range map[string]func(b []byte){
		"size":       func(b []byte) { binary.LittleEndian.PutUint32(b[len(b)-68:], uint32(len(want)+1)) },
		"stream":     func(b []byte) { b[0x200+100] ^= 0xff },
		"big-endian": func(b []byte) { binary.BigEndian.PutUint32(b[0x24:], 0x016F2818) },
	} {
		b := bytes.Clone(img)
		mutate(b)
		if out, _, err := ExtractZImage(b); err == nil {
			t.Errorf("%s: ExtractZImage = %d bytes, no error", name, len(out))
		}
	}
	if _, _, err := ExtractZImage([]byte("not a kernel")); !errors.Is(err, ErrNotKernel) {
		t.Errorf("ExtractZImage(junk) = %v, want ErrNotKernel", err)
	}
}

// TestBCJARM: the filter's decoding of one BL at a known position.
func TestBCJARM(t *testing.T) {
	// The encoder made target 0x1000 (words) of a BL at byte 8 absolute:
	// (0x1000<<2 + 8 + 8) >> 2 = 0x1004.
	b := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0x10, 0x00, 0xeb}
	bcjARMDecode(b, 0)
	if got := binary.LittleEndian.Uint32(b[8:]); got != 0xeb001000 {
		t.Errorf("decoded %#x, want 0xeb001000", got)
	}
}

func FuzzExtractZImage(f *testing.F) {
	if img, err := os.ReadFile("testdata/zimage-synthetic"); err == nil {
		f.Add(img)
		f.Add(img[:len(img)/2])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, img []byte) {
		out, _, err := ExtractZImage(img)
		if err == nil && len(out) > MaxVmlinuxSize {
			t.Fatalf("%d bytes out", len(out))
		}
	})
}
