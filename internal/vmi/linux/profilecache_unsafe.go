package linux

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The profile cache's views of a mapped file (profilecache.go). The
// sections they view are aligned to 8 bytes in a page-aligned mapping.

// mapFile maps f's size bytes read-only, for the life of the process.
func mapFile(f *os.File, size uint64) ([]byte, error) {
	if size == 0 || size > 1<<40 {
		return nil, fmt.Errorf("linux: map profile cache: size %d", size)
	}
	// The page cache may hold the file in large folios (written or read
	// ahead in bulk), and the kernel maps a folio whole on the first
	// touch of any of its pages: a lookup would then make up to 2 MiB
	// resident. Drop the cached pages no process maps, and ask for no
	// read-ahead on the mapping: a lookup's fault then reads and maps
	// only the pages it needs.
	_ = unix.Fadvise(int(f.Fd()), 0, int64(size), unix.FADV_DONTNEED)
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("linux: map profile cache: %w", err)
	}
	_ = unix.Madvise(m, unix.MADV_RANDOM)
	return m, nil
}

// littleEndianHost reports whether the host's byte order is little-endian,
// the cache files' order.
func littleEndianHost() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}

// u64s views b as uint64s. Preconditions: b is 8-byte aligned.
func u64s(b []byte) []uint64 {
	if len(b) < 8 {
		return nil
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
}

// u32s views b as uint32s. Preconditions: b is 4-byte aligned.
func u32s(b []byte) []uint32 {
	if len(b) < 4 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

// i32s views b as int32s. Preconditions: b is 4-byte aligned.
func i32s(b []byte) []int32 {
	if len(b) < 4 {
		return nil
	}
	return unsafe.Slice((*int32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

// bytesString views b, which must never change, as a string.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}
