package gate

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// moduleELF builds a minimal ELF64 relocatable object with a .modinfo
// section holding modinfo, as modpost writes one.
func moduleELF(modinfo string) []byte {
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	info := []byte(modinfo)
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(info))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	le := binary.LittleEndian
	hdr := make([]byte, ehsize)
	copy(hdr, "\x7fELF")
	hdr[4], hdr[5], hdr[6] = 2, 1, 1 // 64-bit, little-endian, version 1
	le.PutUint16(hdr[16:], 1)        // ET_REL
	le.PutUint16(hdr[18:], 62)       // EM_X86_64
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[40:], shOff)
	le.PutUint16(hdr[52:], ehsize)
	le.PutUint16(hdr[58:], shentsize)
	le.PutUint16(hdr[60:], 3) // sections: null, .modinfo, .shstrtab
	le.PutUint16(hdr[62:], 2) // .shstrtab's index
	b.Write(hdr)
	b.Write(info)
	b.Write(shstr)
	for uint64(b.Len()) < shOff {
		b.WriteByte(0)
	}
	section := func(name, typ uint32, off, size uint64) {
		s := make([]byte, shentsize)
		le.PutUint32(s[0:], name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[24:], off)
		le.PutUint64(s[32:], size)
		le.PutUint64(s[48:], 1)
		b.Write(s)
	}
	section(0, 0, 0, 0)
	section(1, 1, infoOff, uint64(len(info)))  // .modinfo, SHT_PROGBITS
	section(10, 3, strOff, uint64(len(shstr))) // .shstrtab, SHT_STRTAB
	return b.Bytes()
}

func TestModuleName(t *testing.T) {
	for _, tc := range []struct {
		name string
		img  []byte
		want string // "" means an error
	}{
		{"modpost's modinfo", moduleELF("license=GPL\x00depends=virtio_ring\x00name=virtio_net\x00vermagic=6.1.0\x00"), "virtio_net"},
		{"name first", moduleELF("name=evil\x00"), "evil"},
		{"no name", moduleELF("license=GPL\x00"), ""},
		{"empty name", moduleELF("name=\x00"), ""},
		{"name too long", moduleELF("name=" + strings.Repeat("x", moduleNameLen+1) + "\x00"), ""},
		{"not ELF", []byte("this is not a module"), ""},
		{"empty", nil, ""},
		{"truncated", moduleELF("name=virtio_net\x00")[:80], ""},
		{"xz-compressed", []byte("\xfd7zXZ\x00\x00\x01"), ""},
		{"zstd-compressed", []byte("\x28\xb5\x2f\xfd\x04\x00"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ModuleName(tc.img)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("ModuleName = %q, want an error", got)
				}
				if strings.HasSuffix(tc.name, "-compressed") && !strings.Contains(err.Error(), "compressed (a finit_module") {
					t.Fatalf("ModuleName error %q does not say the image is compressed", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ModuleName = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// FuzzModuleName: a module image in guest memory is untrusted; reading
// its name must not panic, and a name it returns fits a module name.
func FuzzModuleName(f *testing.F) {
	f.Add(moduleELF("license=GPL\x00name=virtio_net\x00"))
	f.Add(moduleELF("name=x\x00"))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, img []byte) {
		name, err := ModuleName(img)
		if err == nil && (name == "" || len(name) > moduleNameLen || strings.ContainsRune(name, 0)) {
			t.Fatalf("ModuleName returned %q", name)
		}
	})
}

func TestReadUserString(t *testing.T) {
	const base = 0x7ffd0000
	mem := fakeMem{base: base, b: make([]byte, 2*pageSize)}
	copy(mem.b[pageSize-3:], "virtio_net\x00")
	if s, err := readUserString(mem, base+pageSize-3, moduleNameLen); err != nil || s != "virtio_net" {
		t.Fatalf("across a page: %q, %v", s, err)
	}
	copy(mem.b, strings.Repeat("x", 100))
	if _, err := readUserString(mem, base, moduleNameLen); err == nil {
		t.Fatal("a string longer than the limit was read")
	}
	if _, err := readUserString(mem, 0xffff888000000000, moduleNameLen); err == nil {
		t.Fatal("a kernel pointer was read as a user string")
	}
}
