// Package bzimage reads the header of an x86 Linux kernel image, a bzImage,
// as the boot protocol defines it (Documentation/arch/x86/boot.rst): where
// the real-mode setup ends, how big the protected-mode kernel is, and where
// the compressed kernel (the payload) lies. It is the one parser of that
// header: kit uses it to check that a file QEMU will boot with -kernel is a
// bzImage, vmi/linux to find the compressed kernel it decompresses.
//
// Parsing is pure: it takes bytes, does no I/O, and treats them as
// untrusted (every offset is checked against the bytes or the size it is
// given before anyone slices with it; nothing is allocated from a field).
// Errors about the bytes are *FormatError, which matches ErrNotBzImage.
package bzimage

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Offsets of the header fields the package reads.
const (
	offSetupSects    = 0x1f1 // setup_sects
	offSysSize       = 0x1f4 // syssize, in 16-byte paragraphs
	offBootFlag      = 0x1fe // boot_flag, 0xAA55
	offMagic         = 0x202 // header, "HdrS"
	offVersion       = 0x206 // version
	offLoadFlags     = 0x211 // loadflags
	offPayloadOffset = 0x248 // payload_offset, protocol 2.08+
	offPayloadLength = 0x24c // payload_length, protocol 2.08+
)

// HeaderSize is how many bytes from the start of an image [Parse] needs:
// the header up to and including payload_length.
const HeaderSize = offPayloadLength + 4

// Header values the protocol defines.
const (
	BootFlag      = 0xAA55 // boot_flag of every bootable image
	LoadedHigh    = 0x01   // loadflags bit: the kernel loads at 1 MiB (a bzImage, not a zImage)
	MinProtocol   = 0x0200 // the first version with a "HdrS" header
	PayloadFields = 0x0208 // the first version with payload_offset and payload_length
)

// ErrNotBzImage is matched by every *FormatError.
var ErrNotBzImage = errors.New("not an x86 bzImage kernel")

// A FormatError says why bytes are not (or not the needed kind of) a
// bzImage. Callers that have their own sentinel wrap Reason in it.
type FormatError struct {
	Reason string
}

func (e *FormatError) Error() string { return ErrNotBzImage.Error() + ": " + e.Reason }

// Is makes a FormatError match ErrNotBzImage.
func (e *FormatError) Is(target error) bool { return target == ErrNotBzImage }

func bad(format string, args ...any) error {
	return &FormatError{Reason: fmt.Sprintf(format, args...)}
}

// Header is the boot protocol header of a bzImage, as read: only Parse's
// checks hold for it; [Header.CheckBootable] and [Header.Payload] check
// the rest against the image's size.
type Header struct {
	BootFlag   uint16 // 0xAA55 in a bootable image
	Protocol   uint16 // boot protocol version, e.g. 0x020f for 2.15
	SetupSects int    // sectors of real-mode setup after the boot sector; the 0 of old images reads as 4
	SysSize    int64  // bytes of protected-mode code (syssize × 16)
	LoadFlags  uint8
	// Protocol 2.08 and later: where the compressed kernel lies. The
	// offset counts from the start of the image (the header's own field
	// counts from the end of the setup).
	PayloadOffset int64
	PayloadLength int64
}

// SetupSize is the size of the boot sector and the real-mode setup: where
// the protected-mode kernel starts.
func (h Header) SetupSize() int64 { return int64(h.SetupSects+1) * 512 }

// Parse reads the header from hdr, the first bytes of an image (at least
// HeaderSize of them; more are ignored). It checks that the header is
// there ("HdrS", protocol 2.00 or later) and no more.
func Parse(hdr []byte) (Header, error) {
	var h Header
	if len(hdr) < HeaderSize {
		return h, bad("only %d bytes", len(hdr))
	}
	if string(hdr[offMagic:offMagic+4]) != "HdrS" {
		if string(hdr[0:4]) == "\x7fELF" {
			return h, bad("it is an ELF file (vmlinux?), not the compressed bzImage (vmlinuz)")
		}
		return h, bad("no \"HdrS\" boot protocol header at %#x", offMagic)
	}
	le := binary.LittleEndian
	h.Protocol = le.Uint16(hdr[offVersion:])
	if h.Protocol < MinProtocol {
		return h, bad("boot protocol %d.%02d is too old", h.Protocol>>8, h.Protocol&0xff)
	}
	h.BootFlag = le.Uint16(hdr[offBootFlag:])
	h.SetupSects = int(hdr[offSetupSects])
	if h.SetupSects == 0 {
		h.SetupSects = 4
	}
	h.SysSize = int64(le.Uint32(hdr[offSysSize:])) * 16
	h.LoadFlags = hdr[offLoadFlags]
	if h.Protocol >= PayloadFields {
		h.PayloadOffset = h.SetupSize() + int64(le.Uint32(hdr[offPayloadOffset:]))
		h.PayloadLength = int64(le.Uint32(hdr[offPayloadLength:]))
	}
	return h, nil
}

// CheckBootable checks what a boot loader (QEMU's -kernel) needs of a
// bzImage of size bytes: the boot flag, a kernel loaded high (a bzImage,
// not a zImage), and setup and protected-mode code that fit the file.
func (h Header) CheckBootable(size int64) error {
	if h.BootFlag != BootFlag {
		return bad("no boot signature 0xAA55 at 0x1FE")
	}
	if h.LoadFlags&LoadedHigh == 0 {
		return bad("a zImage, not a bzImage (loadflags LOADED_HIGH clear)")
	}
	setup := h.SetupSize()
	if setup >= size {
		return bad("setup of %d bytes does not fit a %d-byte file", setup, size)
	}
	// syssize is rounded up to a paragraph: allow the last one to be short.
	if h.SysSize == 0 || setup+h.SysSize > size+16 {
		return bad("payload of %d bytes after %d bytes of setup does not fit a %d-byte file", h.SysSize, setup, size)
	}
	return nil
}

// Payload returns where the compressed kernel lies in an image of size
// bytes, after checking that the protocol has the fields (2.08 or later)
// and that the payload lies inside the image.
func (h Header) Payload(size int64) (offset, length int64, err error) {
	if h.Protocol < PayloadFields {
		return 0, 0, bad("boot protocol %#x has no payload fields (need 2.08+)", h.Protocol)
	}
	if h.PayloadOffset > size || size-h.PayloadOffset < h.PayloadLength {
		return 0, 0, bad("payload %#x+%#x outside the %d-byte image", h.PayloadOffset, h.PayloadLength, size)
	}
	return h.PayloadOffset, h.PayloadLength, nil
}
