package armimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"testing"
)

// flatImage returns a minimal flat arm64 Image of n bytes (4K pages,
// little-endian, image size isize).
func flatImage(n int, isize uint64) []byte {
	b := make([]byte, n)
	le := binary.LittleEndian
	le.PutUint64(b[16:], isize)
	le.PutUint64(b[24:], 1<<1|1<<3) // 4K pages, anywhere in RAM
	le.PutUint32(b[56:], Magic)
	copy(b[64:], "kernel text")
	return b
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// zboot wraps payload as an EFI zboot image compressed with comp.
func zboot(payload []byte, comp string) []byte {
	hdr := make([]byte, 128)
	copy(hdr, "MZ")
	copy(hdr[4:], "zimg")
	binary.LittleEndian.PutUint32(hdr[8:], uint32(len(hdr)))
	binary.LittleEndian.PutUint32(hdr[12:], uint32(len(payload)))
	copy(hdr[24:], comp)
	return append(hdr, payload...)
}

func TestParse(t *testing.T) {
	h, err := Parse(flatImage(4096, 1<<20))
	if err != nil || h.PageSize() != 4096 || h.BigEndian() || h.ImageSize != 1<<20 {
		t.Fatalf("Parse = %+v, %v", h, err)
	}
	for name, b := range map[string][]byte{
		"short":     make([]byte, 10),
		"no magic":  make([]byte, 4096),
		"huge size": flatImage(4096, MaxImage+1),
	} {
		if _, err := Parse(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: Parse = %v, want ErrFormat", name, err)
		}
	}
	b := flatImage(4096, 0)
	binary.LittleEndian.PutUint64(b[24:], 3<<1|1)
	if h, err := Parse(b); err != nil || h.PageSize() != 64<<10 || !h.BigEndian() {
		t.Errorf("64K big-endian: %+v %v", h, err)
	}
}

func TestUnwrap(t *testing.T) {
	flat := flatImage(8192, 1<<20)
	for _, tt := range []struct {
		name string
		in   []byte
		comp Compression
		err  bool
	}{
		{"flat", flat, "none", false},
		{"gzip", gz(flat), "gzip", false},
		{"zboot gzip", zboot(gz(flat), "gzip"), "zboot-gzip", false},
		{"zboot zstd", zboot(gz(flat), "zstd22"), "", true},
		{"zboot payload past the end", zboot(gz(flat), "gzip")[:200], "", true},
		{"gzip of garbage", gz([]byte("not an image at all, far too short")), "", true},
		{"garbage", []byte("MZ\x00\x00nope"), "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, comp, err := Unwrap(tt.in)
			if tt.err {
				if !errors.Is(err, ErrFormat) {
					t.Fatalf("Unwrap = %v, want ErrFormat", err)
				}
				return
			}
			if err != nil || comp != tt.comp || !bytes.Equal(got, flat) {
				t.Fatalf("Unwrap = %d bytes, %q, %v; want the flat image, %q", len(got), comp, err, tt.comp)
			}
			if !Is(tt.in) {
				t.Errorf("Is = false")
			}
		})
	}
}

func FuzzUnwrap(f *testing.F) {
	flat := flatImage(512, 1<<16)
	f.Add(flat)
	f.Add(gz(flat))
	f.Add(zboot(gz(flat), "gzip"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		img, _, err := Unwrap(b)
		if err == nil {
			if _, err := Parse(img); err != nil {
				t.Fatalf("Unwrap returned an image Parse refuses: %v", err)
			}
		}
		Is(b)
	})
}
