package linux

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// testdata/payload.* hold one 49156-byte x86-like payload (calls and jumps
// with small rel32 targets, to exercise the BCJ filter), made with
//
//	xz --check=crc32 --x86 --lzma2=,dict=1MiB; gzip -n -9; zstd -19;
//	lz4 -l -9; lzma -9; bzip2 -9
//
// as the kernel's build does, and payload.ultra.zst with zstd -22 --ultra
// from a pipe, as the kernel's build does since 5.x (Makefile.lib
// cmd_zstd22): a 128 MiB window and no content size in the frame, as in
// Debian's 6.12 bzImage.
const (
	payloadSize   = 49156
	payloadSHA256 = "284918c114fd9f10766470505f2bcb710f9704cafbbdd827db300d5d3ec58051"
)

// x86 boot protocol header fields (Documentation/arch/x86/boot.rst) that
// makeBzImage fills in.
const (
	hdrSetupSects    = 0x1f1
	hdrMagic         = 0x202 // "HdrS"
	hdrVersion       = 0x206
	hdrPayloadOffset = 0x248 // protocol 2.08+
	hdrPayloadLength = 0x24c
)

// makeBzImage wraps a compressed payload in a minimal x86 boot header, with
// the decompressed size appended as the kernel's size_append does.
func makeBzImage(payload []byte, appendSize bool) []byte {
	const setupSects = 1
	img := make([]byte, (setupSects+1)*512)
	le := binary.LittleEndian
	img[hdrSetupSects] = setupSects
	copy(img[hdrMagic:], "HdrS")
	le.PutUint16(img[hdrVersion:], 0x20f)
	le.PutUint32(img[hdrPayloadOffset:], 0x40)
	img = append(img, make([]byte, 0x40)...)
	if appendSize {
		payload = binary.LittleEndian.AppendUint32(append([]byte(nil), payload...), payloadSize)
	}
	le.PutUint32(img[hdrPayloadLength:], uint32(len(payload)))
	return append(append(img, payload...), "trailing"...)
}

func TestExtractVmlinux(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Compression
	}{
		{"payload.xz", CompressionXZ},
		{"payload.gz", CompressionGzip},
		{"payload.zst", CompressionZstd},
		{"payload.ultra.zst", CompressionZstd},
		{"payload.lz4", CompressionLZ4},
		{"payload.lzma", CompressionLZMA},
		{"payload.bz2", CompressionBzip2},
	} {
		t.Run(tc.file, func(t *testing.T) {
			p, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			out, comp, err := ExtractVmlinux(makeBzImage(p, tc.want != CompressionGzip))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(out)
			if comp != tc.want || len(out) != payloadSize || hex.EncodeToString(sum[:]) != payloadSHA256 {
				t.Errorf("got %s, %d bytes, sha256 %x", comp, len(out), sum)
			}
		})
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	xzp, err := os.ReadFile("testdata/payload.xz")
	if err != nil {
		t.Fatal(err)
	}
	corrupt := append([]byte(nil), xzp...)
	corrupt[len(corrupt)/2] ^= 0x55
	tests := map[string]struct {
		img  []byte
		want error
	}{
		"empty":      {nil, ErrNotKernel},
		"no header":  {make([]byte, 4096), ErrNotKernel},
		"lzo":        {makeBzImage([]byte("\x89LZO\x00\r\n\x1a\nxxxxxxxx"), true), ErrUnsupportedCompression},
		"unknown":    {makeBzImage([]byte("what is this payload"), true), ErrUnsupportedCompression},
		"corrupt xz": {makeBzImage(corrupt, true), errXZ},
		"short xz":   {makeBzImage(xzp[:len(xzp)/2], true), errXZ},
		"huge length": {func() []byte {
			b := makeBzImage(xzp, true)
			binary.LittleEndian.PutUint32(b[hdrPayloadLength:], 1<<30)
			return b
		}(), ErrNotKernel},
		"old protocol": {func() []byte {
			b := makeBzImage(xzp, true)
			binary.LittleEndian.PutUint16(b[hdrVersion:], 0x206)
			return b
		}(), ErrNotKernel},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if _, _, err := ExtractVmlinux(tt.img); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	// A zstd payload that decodes to more than the trailer announces fails
	// within the buffer of the announced size.
	zp, err := os.ReadFile("testdata/payload.ultra.zst")
	if err != nil {
		t.Fatal(err)
	}
	short := makeBzImage(zp, true)
	binary.LittleEndian.PutUint32(short[len(short)-len("trailing")-4:], payloadSize/2)
	if out, _, err := ExtractVmlinux(short); err == nil {
		t.Errorf("zstd payload longer than announced: got %d bytes, no error", len(out))
	}
	// A vmlinux ELF passes through.
	elfImg := []byte("\x7fELF rest")
	if out, comp, err := ExtractVmlinux(elfImg); err != nil || comp != CompressionNone || !bytes.Equal(out, elfImg) {
		t.Errorf("ELF input: %v %v", comp, err)
	}
}

func TestBCJX86RoundTrip(t *testing.T) {
	// Encoding is the same walk with the sign of the conversion flipped; here
	// a single call whose absolute target decodes back to a relative one.
	buf := []byte{0x90, 0xe8, 0x05, 0x01, 0x00, 0x00, 0x90, 0x90, 0x90, 0x90}
	bcjX86Decode(buf, 0)
	// Absolute 0x105 at instruction start 1 (next 6) -> relative 0x105-6 = 0xff.
	if got := binary.LittleEndian.Uint32(buf[2:]); got != 0xff {
		t.Errorf("decoded rel32 = %#x, want 0xff", got)
	}
}

func TestLZ4Block(t *testing.T) {
	for name, src := range map[string][]byte{
		"zero offset":  {0x14, 'a', 0, 0},
		"far offset":   {0x14, 'a', 9, 0},
		"no offset":    {0x14, 'a', 1},
		"long literal": {0xf0, 255, 255},
		"overrun":      {0x50, 'a'},
	} {
		if _, err := lz4Block(nil, src, 1<<20); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// "a" then a 5-byte overlapping match: "aaaaaa".
	out, err := lz4Block(nil, []byte{0x11, 'a', 1, 0, 0x00}, 100)
	if err != nil || string(out) != "aaaaaa" {
		t.Errorf("overlap = %q, %v", out, err)
	}
	if _, err := lz4Block(nil, []byte{0x1f, 'a', 1, 0, 200}, 100); err == nil {
		t.Error("limit not enforced")
	}
}

// FuzzExtractVmlinux runs the bzImage parser and decompressors on fuzzed
// images: no panic, and no output beyond the header's size.
func FuzzExtractVmlinux(f *testing.F) {
	for _, name := range []string{"payload.xz", "payload.lz4", "payload.zst"} {
		p, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(makeBzImage(p[:min(len(p), 2048)], true))
	}
	f.Add(makeBzImage([]byte("\x02\x21\x4c\x18\x05\x00\x00\x00\x11a\x01\x00\x00"), true))
	f.Fuzz(func(t *testing.T, img []byte) {
		out, _, err := ExtractVmlinux(img)
		if err == nil && len(out) > MaxVmlinuxSize {
			t.Fatal("oversized output")
		}
	})
}
