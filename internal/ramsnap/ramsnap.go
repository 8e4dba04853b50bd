// Package ramsnap copies guest RAM between its file and a snapshot file
// page by page, keeping only the pages that are not zero: guest RAM is a
// sparse tmpfs file the size of the guest's memory, of which a device
// touches a fraction, so a snapshot stores (and a rollback writes) only
// what the guest used, and a snapshot file is sparse on any filesystem
// that has holes. Each copy digests what it moves, in one canonical form
// (Digest), so that a snapshot is verified before it is used.
//
// Hand-written: the job is a few dozen lines over lseek(SEEK_DATA/
// SEEK_HOLE), pread, pwrite and fallocate(PUNCH_HOLE), and no library does
// it with the digest gatevisor needs. Reflinks do not apply: guest RAM is
// on tmpfs, snapshots on a disk.
package ramsnap

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// PageSize is the unit of copying and of the digest.
const PageSize = 4096

// chunk is how much is read at a time.
const chunk = 1 << 20

var zeroPage [PageSize]byte

// Result is what one copy or check saw.
type Result struct {
	// Pages is how many non-zero pages there were.
	Pages int64
	// Digest is the hex SHA-256 over every non-zero page in offset order,
	// each as its 8-byte little-endian offset followed by its bytes: two
	// files with the same contents (zero pages and holes alike) have the
	// same digest.
	Digest string
}

// Copy writes the non-zero pages of the first size bytes of src to dst at
// the same offsets (dst is truncated to size first: what is not written
// stays a hole, reading as zero).
func Copy(dst, src *os.File, size int64) (Result, error) {
	if err := dst.Truncate(0); err != nil {
		return Result{}, fmt.Errorf("ramsnap: %w", err)
	}
	if err := dst.Truncate(size); err != nil {
		return Result{}, fmt.Errorf("ramsnap: %w", err)
	}
	return walk(src, size, func(off int64, page []byte) error {
		if _, err := dst.WriteAt(page, off); err != nil {
			return fmt.Errorf("ramsnap: write %s at %#x: %w", dst.Name(), off, err)
		}
		return nil
	})
}

// Check digests the first size bytes of f without copying.
func Check(f *os.File, size int64) (Result, error) {
	return walk(f, size, nil)
}

// Restore makes the first size bytes of dst equal to src's: it punches a
// hole over all of dst (its pages are freed and read as zero) and writes
// src's non-zero pages. dst must be a file that can punch holes (tmpfs,
// ext4, xfs, btrfs).
func Restore(dst, src *os.File, size int64) (Result, error) {
	if err := unix.Fallocate(int(dst.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, size); err != nil {
		return Result{}, fmt.Errorf("ramsnap: clear %s: %w", dst.Name(), err)
	}
	return walk(src, size, func(off int64, page []byte) error {
		if _, err := dst.WriteAt(page, off); err != nil {
			return fmt.Errorf("ramsnap: write %s at %#x: %w", dst.Name(), off, err)
		}
		return nil
	})
}

// walk calls page (if not nil) for every non-zero page of the first size
// bytes of f, in offset order, reading only f's data extents, and digests
// them.
func walk(f *os.File, size int64, page func(off int64, p []byte) error) (Result, error) {
	if size < 0 || size%PageSize != 0 {
		return Result{}, fmt.Errorf("ramsnap: size %d is not a whole number of %d-byte pages", size, PageSize)
	}
	fi, err := f.Stat()
	if err != nil {
		return Result{}, fmt.Errorf("ramsnap: %w", err)
	}
	if fi.Size() < size {
		return Result{}, fmt.Errorf("ramsnap: %s holds %d bytes, want %d", f.Name(), fi.Size(), size)
	}
	h := sha256.New()
	var res Result
	buf := make([]byte, chunk)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole from off on
		}
		if err != nil {
			return res, fmt.Errorf("ramsnap: %s: seek data from %#x: %w", f.Name(), off, err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return res, fmt.Errorf("ramsnap: %s: seek hole from %#x: %w", f.Name(), data, err)
		}
		if hole > size {
			hole = size
		}
		if hole <= data {
			return res, fmt.Errorf("ramsnap: %s: the file changed while it was read (extent %#x-%#x)", f.Name(), data, hole)
		}
		data &^= PageSize - 1 // extents are page-aligned on every filesystem that matters; align anyway
		if err := pages(f, data, hole, buf, h, &res, page); err != nil {
			return res, err
		}
		off = hole
	}
	res.Digest = hex.EncodeToString(h.Sum(nil))
	return res, nil
}

// pages handles the extent [from, to) of f.
func pages(f *os.File, from, to int64, buf []byte, h hash.Hash, res *Result, page func(int64, []byte) error) error {
	var offb [8]byte
	for off := from; off < to; {
		n := int64(len(buf))
		if rest := to - off; rest < n {
			n = (rest + PageSize - 1) &^ (PageSize - 1)
		}
		got, err := f.ReadAt(buf[:n], off)
		if err != nil && !(errors.Is(err, io.EOF) && got > 0) {
			return fmt.Errorf("ramsnap: read %s at %#x: %w", f.Name(), off, err)
		}
		for i := 0; i+PageSize <= got; i += PageSize {
			p := buf[i : i+PageSize]
			if bytes.Equal(p, zeroPage[:]) {
				continue
			}
			binary.LittleEndian.PutUint64(offb[:], uint64(off)+uint64(i))
			h.Write(offb[:])
			h.Write(p)
			res.Pages++
			if page != nil {
				if err := page(off+int64(i), p); err != nil {
					return err
				}
			}
		}
		if got < PageSize {
			return fmt.Errorf("ramsnap: %s ends at %#x, inside its size", f.Name(), off+int64(got))
		}
		off += int64(got) &^ (PageSize - 1)
	}
	return nil
}
