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

// Restore makes the first size bytes of dst equal to src's, writing only
// what differs: the pages of src's data extents that dst does not hold
// already, then, over dst's own data extents, a hole punched (freed, read
// as zero) where src is zero and dst is not. Rolling guest RAM back to a
// snapshot of the same boot rewrites what changed since, not all of it.
// dst must be a file that can punch holes (tmpfs, ext4, xfs, btrfs). The
// result digests src.
func Restore(dst, src *os.File, size int64) (Result, error) {
	h := sha256.New()
	var res Result
	buf, cur := make([]byte, chunk), make([]byte, chunk)
	// readAt reads len(b) bytes of f at off; holes read as zero.
	readAt := func(f *os.File, b []byte, off int64) error {
		if n, err := f.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
			return fmt.Errorf("ramsnap: read %s at %#x: %w", f.Name(), off, err)
		}
		return nil
	}
	punch := func(at int64) error {
		if err := unix.Fallocate(int(dst.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, at, PageSize); err != nil {
			return fmt.Errorf("ramsnap: clear %s at %#x: %w", dst.Name(), at, err)
		}
		return nil
	}
	err := extents(src, size, func(from, to int64) error {
		return chunks(src, from, to, buf, func(off int64, b []byte) error {
			o := cur[:len(b)]
			if err := readAt(dst, o, off); err != nil {
				return err
			}
			for i := 0; i+PageSize <= len(b); i += PageSize {
				p, at := b[i:i+PageSize], off+int64(i)
				if bytes.Equal(p, zeroPage[:]) {
					continue // pass 2 clears dst here if it must
				}
				digestPage(h, at, p)
				res.Pages++
				if bytes.Equal(p, o[i:i+PageSize]) {
					continue
				}
				if _, err := dst.WriteAt(p, at); err != nil {
					return fmt.Errorf("ramsnap: write %s at %#x: %w", dst.Name(), at, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		return res, err
	}
	res.Digest = hex.EncodeToString(h.Sum(nil))
	err = extents(dst, size, func(from, to int64) error {
		return chunks(dst, from, to, buf, func(off int64, b []byte) error {
			o := cur[:len(b)]
			if err := readAt(src, o, off); err != nil {
				return err
			}
			for i := 0; i+PageSize <= len(b); i += PageSize {
				if bytes.Equal(o[i:i+PageSize], zeroPage[:]) && !bytes.Equal(b[i:i+PageSize], zeroPage[:]) {
					if err := punch(off + int64(i)); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	return res, err
}

// walk calls page (if not nil) for every non-zero page of the first size
// bytes of f, in offset order, reading only f's data extents, and digests
// them.
func walk(f *os.File, size int64, page func(off int64, p []byte) error) (Result, error) {
	h := sha256.New()
	var res Result
	buf := make([]byte, chunk)
	err := extents(f, size, func(from, to int64) error {
		return chunks(f, from, to, buf, func(off int64, b []byte) error {
			for i := 0; i+PageSize <= len(b); i += PageSize {
				p := b[i : i+PageSize]
				if bytes.Equal(p, zeroPage[:]) {
					continue
				}
				digestPage(h, off+int64(i), p)
				res.Pages++
				if page != nil {
					if err := page(off+int64(i), p); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	res.Digest = hex.EncodeToString(h.Sum(nil))
	return res, err
}

// digestPage adds a non-zero page at off to the digest.
func digestPage(h hash.Hash, off int64, p []byte) {
	var offb [8]byte
	binary.LittleEndian.PutUint64(offb[:], uint64(off))
	h.Write(offb[:])
	h.Write(p)
}

// extents calls fn for each data extent of the first size bytes of f,
// page-aligned, in order.
func extents(f *os.File, size int64, fn func(from, to int64) error) error {
	if size < 0 || size%PageSize != 0 {
		return fmt.Errorf("ramsnap: size %d is not a whole number of %d-byte pages", size, PageSize)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("ramsnap: %w", err)
	}
	if fi.Size() < size {
		return fmt.Errorf("ramsnap: %s holds %d bytes, want %d", f.Name(), fi.Size(), size)
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole from off on
		}
		if err != nil {
			return fmt.Errorf("ramsnap: %s: seek data from %#x: %w", f.Name(), off, err)
		}
		if data >= size {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("ramsnap: %s: seek hole from %#x: %w", f.Name(), data, err)
		}
		hole = min((hole+PageSize-1)&^(PageSize-1), size)
		data &^= PageSize - 1 // extents are page-aligned on every filesystem that matters; align anyway
		if hole <= data || data < off&^(PageSize-1) {
			return fmt.Errorf("ramsnap: %s: the file changed while it was read (extent %#x-%#x)", f.Name(), data, hole)
		}
		if err := fn(data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// chunks reads [from, to) of f (page-aligned) in pieces of buf's size and
// calls fn with each.
func chunks(f *os.File, from, to int64, buf []byte, fn func(off int64, b []byte) error) error {
	for off := from; off < to; {
		n := min(int64(len(buf)), to-off)
		got, err := f.ReadAt(buf[:n], off)
		if err != nil && !(errors.Is(err, io.EOF) && got > 0) {
			return fmt.Errorf("ramsnap: read %s at %#x: %w", f.Name(), off, err)
		}
		if got < PageSize {
			return fmt.Errorf("ramsnap: %s ends at %#x, inside its size", f.Name(), off+int64(got))
		}
		got &^= PageSize - 1
		if err := fn(off, buf[:got]); err != nil {
			return err
		}
		off += int64(got)
	}
	return nil
}

// Sync makes the first size bytes of dst equal to src's again after an
// earlier Copy from src, and digests src: it reads src's data extents and
// dst at the same offsets, and writes (or, for a page that became zero,
// punches out of dst) only the pages that differ. Taken with src stable
// (the guest stopped), after a Copy made while it ran, it turns that
// inconsistent copy into a consistent one at the cost of reading both,
// not of writing all of it again.
//
// Preconditions: no page of src became a hole since the Copy (guest RAM
// only gains pages while the guest runs: nothing but Restore punches it).
func Sync(dst, src *os.File, size int64) (Result, error) {
	if fi, err := dst.Stat(); err != nil || fi.Size() != size {
		return Result{}, fmt.Errorf("ramsnap: sync %s: not a copy of %d bytes (%v)", dst.Name(), size, err)
	}
	h := sha256.New()
	var res Result
	buf, old := make([]byte, chunk), make([]byte, chunk)
	err := extents(src, size, func(from, to int64) error {
		return chunks(src, from, to, buf, func(off int64, b []byte) error {
			o := old[:len(b)]
			if n, err := dst.ReadAt(o, off); err != nil && !(errors.Is(err, io.EOF) && n == len(o)) {
				return fmt.Errorf("ramsnap: read %s at %#x: %w", dst.Name(), off, err)
			}
			for i := 0; i+PageSize <= len(b); i += PageSize {
				p, q := b[i:i+PageSize], o[i:i+PageSize]
				at := off + int64(i)
				zero := bytes.Equal(p, zeroPage[:])
				if !zero {
					digestPage(h, at, p)
					res.Pages++
				}
				if bytes.Equal(p, q) {
					continue
				}
				if zero {
					if err := unix.Fallocate(int(dst.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, at, PageSize); err != nil {
						return fmt.Errorf("ramsnap: clear %s at %#x: %w", dst.Name(), at, err)
					}
					continue
				}
				if _, err := dst.WriteAt(p, at); err != nil {
					return fmt.Errorf("ramsnap: write %s at %#x: %w", dst.Name(), at, err)
				}
			}
			return nil
		})
	})
	res.Digest = hex.EncodeToString(h.Sum(nil))
	return res, err
}
