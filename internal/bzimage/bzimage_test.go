package bzimage

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// image returns a minimal image of setupSects sectors of setup and payload
// bytes of protected-mode code, with a valid header of protocol 2.15 whose
// payload fields name the code after the setup.
func image(setupSects, payload int) []byte {
	le := binary.LittleEndian
	b := make([]byte, (setupSects+1)*512+payload)
	b[offSetupSects] = byte(setupSects)
	le.PutUint32(b[offSysSize:], uint32((payload+15)/16))
	le.PutUint16(b[offBootFlag:], BootFlag)
	copy(b[offMagic:], "HdrS")
	le.PutUint16(b[offVersion:], 0x020f)
	b[offLoadFlags] = LoadedHigh
	le.PutUint32(b[offPayloadOffset:], 0)
	le.PutUint32(b[offPayloadLength:], uint32(payload))
	return b
}

// checkErr reports err unless it is what want asks for: nil for "", else
// a FormatError (matching ErrNotBzImage) whose reason mentions want. It
// returns whether err is nil.
func checkErr(t *testing.T, call string, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Errorf("%s: %v", call, err)
		}
		return err == nil
	}
	var fe *FormatError
	if !errors.As(err, &fe) || !errors.Is(err, ErrNotBzImage) || !strings.Contains(fe.Reason, want) {
		t.Errorf("%s = %v, want a FormatError mentioning %q", call, err, want)
	}
	return false
}

func mutate(b []byte, f func(b []byte)) []byte {
	b = append([]byte(nil), b...)
	f(b)
	return b
}

func TestParse(t *testing.T) {
	good := image(4, 4096)
	tests := []struct {
		name string
		img  []byte
		want Header // when wantErr is ""
		// wantErr is a piece of the reason; "" for no error.
		wantErr string
	}{
		{"good", good, Header{BootFlag: BootFlag, Protocol: 0x020f, SetupSects: 4, SysSize: 4096, LoadFlags: LoadedHigh, PayloadOffset: 5 * 512, PayloadLength: 4096}, ""},
		{"zero setup_sects reads as 4", mutate(good, func(b []byte) { b[offSetupSects] = 0 }),
			Header{BootFlag: BootFlag, Protocol: 0x020f, SetupSects: 4, SysSize: 4096, LoadFlags: LoadedHigh, PayloadOffset: 5 * 512, PayloadLength: 4096}, ""},
		{"protocol 2.04 has no payload fields", mutate(good, func(b []byte) { binary.LittleEndian.PutUint16(b[offVersion:], 0x0204) }),
			Header{BootFlag: BootFlag, Protocol: 0x0204, SetupSects: 4, SysSize: 4096, LoadFlags: LoadedHigh}, ""},
		{"empty", nil, Header{}, "only 0 bytes"},
		{"short", good[:HeaderSize-1], Header{}, "only"},
		{"elf", mutate(good, func(b []byte) { copy(b, "\x7fELF"); copy(b[offMagic:], "xxxx") }), Header{}, "ELF"},
		{"no HdrS", mutate(good, func(b []byte) { copy(b[offMagic:], "Hdrs") }), Header{}, "HdrS"},
		{"old protocol", mutate(good, func(b []byte) { binary.LittleEndian.PutUint16(b[offVersion:], 0x0105) }), Header{}, "too old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.img)
			if checkErr(t, "Parse", err, tt.wantErr) && got != tt.want {
				t.Errorf("Parse (-want +got):\n-%+v\n+%+v", tt.want, got)
			}
		})
	}
}

func TestCheckBootable(t *testing.T) {
	good := image(4, 4096)
	tests := []struct {
		name    string
		img     []byte
		wantErr string // "" for bootable
	}{
		{"good", good, ""},
		{"last paragraph short", good[:len(good)-15], ""},
		{"no boot flag", mutate(good, func(b []byte) { b[offBootFlag] = 0 }), "0xAA55"},
		{"zImage", mutate(good, func(b []byte) { b[offLoadFlags] = 0 }), "zImage"},
		{"truncated payload", good[:len(good)-1024], "does not fit"},
		{"no payload", mutate(good, func(b []byte) { binary.LittleEndian.PutUint32(b[offSysSize:], 0) }), "does not fit"},
		{"setup too big", mutate(good, func(b []byte) { b[offSetupSects] = 200 }), "setup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Parse(tt.img)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkErr(t, "CheckBootable", h.CheckBootable(int64(len(tt.img))), tt.wantErr)
		})
	}
}

func TestPayload(t *testing.T) {
	good := image(1, 100)
	tests := []struct {
		name       string
		img        []byte
		wantOffset int64
		wantLength int64
		wantErr    string // "" for none
	}{
		{"good", good, 2 * 512, 100, ""},
		{"offset past setup", mutate(good, func(b []byte) {
			binary.LittleEndian.PutUint32(b[offPayloadOffset:], 40)
			binary.LittleEndian.PutUint32(b[offPayloadLength:], 60)
		}), 2*512 + 40, 60, ""},
		{"old protocol", mutate(good, func(b []byte) { binary.LittleEndian.PutUint16(b[offVersion:], 0x0207) }), 0, 0, "2.08"},
		{"length past the end", mutate(good, func(b []byte) { binary.LittleEndian.PutUint32(b[offPayloadLength:], 101) }), 0, 0, "outside"},
		{"huge length", mutate(good, func(b []byte) { binary.LittleEndian.PutUint32(b[offPayloadLength:], 1<<31) }), 0, 0, "outside"},
		{"offset past the end", mutate(good, func(b []byte) { binary.LittleEndian.PutUint32(b[offPayloadOffset:], 0xffffffff) }), 0, 0, "outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Parse(tt.img)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			off, n, err := h.Payload(int64(len(tt.img)))
			if checkErr(t, "Payload", err, tt.wantErr) && (off != tt.wantOffset || n != tt.wantLength) {
				t.Errorf("Payload = %#x, %#x; want %#x, %#x", off, n, tt.wantOffset, tt.wantLength)
			}
		})
	}
}

// FuzzParse reads fuzzed images: no panic, every error is a FormatError,
// and a payload Payload accepts lies inside the image, after the setup.
// Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add(image(4, 4096))
	f.Fuzz(func(t *testing.T, img []byte) {
		notBzImage := func(err error) bool {
			if err != nil && !errors.Is(err, ErrNotBzImage) {
				t.Fatalf("error %v is not ErrNotBzImage", err)
			}
			return err != nil
		}
		h, err := Parse(img)
		if notBzImage(err) {
			return
		}
		size := int64(len(img))
		if err := h.CheckBootable(size); !notBzImage(err) && h.SetupSize() >= size {
			t.Fatalf("bootable with a setup of %d bytes in %d", h.SetupSize(), size)
		}
		off, n, err := h.Payload(size)
		if notBzImage(err) {
			return
		}
		if off < h.SetupSize() || n < 0 || off+n > size {
			t.Fatalf("payload %#x+%#x of a %d-byte image with %d bytes of setup", off, n, size, h.SetupSize())
		}
		_ = img[off : off+n]
	})
}
