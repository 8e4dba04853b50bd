package kit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/gatevisor/gatevisor/internal/bzimage"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// maxBzImage bounds a kernel image; distribution kernels are about 8 MiB.
const maxBzImage = 256 << 20

// CheckBzImage returns an error wrapping ErrNotBzImage unless path is an x86
// bzImage: the boot sector signature 0xAA55 at 0x1FE, the boot protocol
// header "HdrS" at 0x202 with version 2.00 or later, the "loaded high" flag
// that distinguishes a bzImage from a zImage, and setup and payload sizes that
// fit the file. The header is read by internal/bzimage, vmi/linux's parser.
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
	var hdr [bzimage.HeaderSize]byte
	n, err := io.ReadFull(f, hdr[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return fmt.Errorf("kit: kernel %s: %w", path, err)
	}
	return checkBzImageHeader(path, hdr[:n], st.Size())
}

// checkBzImageHeader checks the header hdr of a file of size bytes.
func checkBzImageHeader(path string, hdr []byte, size int64) error {
	if size > maxBzImage {
		return fmt.Errorf("kit: kernel %s: %w: %d bytes, larger than %d", path, ErrNotBzImage, size, maxBzImage)
	}
	h, err := bzimage.Parse(hdr)
	if err == nil {
		err = h.CheckBootable(size)
	}
	if fe, ok := errors.AsType[*bzimage.FormatError](err); ok {
		return fmt.Errorf("kit: kernel %s: %w: %s", path, ErrNotBzImage, fe.Reason)
	}
	return err
}
