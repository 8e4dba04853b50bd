package kit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// maxBzImage bounds a kernel image; distribution kernels are about 8 MiB.
const maxBzImage = 256 << 20

// CheckBzImage returns an error wrapping ErrNotBzImage unless path is an x86
// bzImage: the boot sector signature 0xAA55 at 0x1FE, the boot protocol
// header "HdrS" at 0x202 with version 2.00 or later, the "loaded high" flag
// that distinguishes a bzImage from a zImage, and setup and payload sizes that
// fit the file.
func CheckBzImage(path string) error {
	// Checked before the open: opening a FIFO blocks until a writer comes.
	if err := safefile.CheckRegular(path); err != nil {
		if _, ok := errors.AsType[*fs.PathError](err); ok {
			return fmt.Errorf("kit: kernel: %w", err) // missing or unreadable
		}
		return fmt.Errorf("kit: kernel: %w: %w", ErrNotBzImage, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("kit: kernel %s: %w: not a regular file", path, ErrNotBzImage)
	}
	var hdr [0x240]byte
	n, err := io.ReadFull(f, hdr[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return fmt.Errorf("kit: kernel %s: %w", path, err)
	}
	return checkBzImageHeader(path, hdr[:n], st.Size())
}

func checkBzImageHeader(path string, hdr []byte, size int64) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("kit: kernel %s: %w: %s", path, ErrNotBzImage, fmt.Sprintf(format, args...))
	}
	if len(hdr) < 0x240 {
		return bad("only %d bytes", size)
	}
	if size > maxBzImage {
		return bad("%d bytes, larger than %d", size, maxBzImage)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		if string(hdr[0:4]) == "\x7fELF" {
			return bad("it is an ELF file (vmlinux?); QEMU -kernel wants the compressed bzImage (vmlinuz)")
		}
		return bad("no \"HdrS\" boot protocol header at 0x202")
	}
	if binary.LittleEndian.Uint16(hdr[0x1FE:]) != 0xAA55 {
		return bad("no boot signature 0xAA55 at 0x1FE")
	}
	version := binary.LittleEndian.Uint16(hdr[0x206:])
	if version < 0x0200 {
		return bad("boot protocol %d.%02d is too old", version>>8, version&0xff)
	}
	if hdr[0x211]&0x01 == 0 {
		return bad("a zImage, not a bzImage (loadflags LOADED_HIGH clear)")
	}
	setupSects := int64(hdr[0x1F1])
	if setupSects == 0 {
		setupSects = 4
	}
	setup := (setupSects + 1) * 512
	if setup >= size {
		return bad("setup of %d bytes does not fit a %d-byte file", setup, size)
	}
	syssize := int64(binary.LittleEndian.Uint32(hdr[0x1F4:])) * 16
	if syssize == 0 || setup+syssize > size+16 {
		return bad("payload of %d bytes after %d bytes of setup does not fit a %d-byte file", syssize, setup, size)
	}
	return nil
}
