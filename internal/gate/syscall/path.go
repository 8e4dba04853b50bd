package gate

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// MaxPath is PATH_MAX: the kernel refuses longer paths (ENAMETOOLONG), so
// the gate reads no more.
const MaxPath = 4096

// ErrPathTooLong means no NUL within MaxPath bytes.
var ErrPathTooLong = errors.New("gate: path argument longer than PATH_MAX")

// VirtualReader reads guest-virtual memory of one address space.
type VirtualReader interface {
	ReadVirtual(va uint64, p []byte) (int, error)
}

const pageSize = 4096

// userTop is the end of the x86-64 user half (4-level paging); a path
// pointer at or above it is not a user pointer.
const userTop = 1 << 47

// userTopOf is the end of the user half r reads: 1<<48 for an AArch64
// address space (TTBR0 with 48-bit VAs: arm64 user stacks sit just below
// it), userTop otherwise.
func userTopOf(r VirtualReader) uint64 {
	if as, ok := r.(*vmi.AddressSpace); ok && as.Paging == vmi.PagingARM64 {
		return 1 << 48
	}
	return userTop
}

// ReadUserPath reads the NUL-terminated path at va in user memory, page by
// page so that a path that ends just before an unmapped page reads. A bad
// pointer (kernel half, unmapped) or a missing NUL is an error: the caller
// reports the event with an unreadable path.
func ReadUserPath(r VirtualReader, va uint64) (string, error) {
	if va == 0 {
		return "", fmt.Errorf("gate: NULL path pointer")
	}
	top := userTopOf(r)
	if va >= top {
		return "", fmt.Errorf("gate: path pointer %#x is not a user address", va)
	}
	var buf [MaxPath + 1]byte
	n := 0
	for n <= MaxPath {
		addr := va + uint64(n)
		if addr >= top {
			return "", fmt.Errorf("gate: path at %#x runs out of user memory", va)
		}
		chunk := min(pageSize-int(addr&(pageSize-1)), MaxPath+1-n)
		if _, err := r.ReadVirtual(addr, buf[n:n+chunk]); err != nil {
			return "", fmt.Errorf("gate: read path at %#x: %w", va, err)
		}
		if i := bytes.IndexByte(buf[n:n+chunk], 0); i >= 0 {
			return string(buf[:n+i]), nil
		}
		n += chunk
	}
	return "", ErrPathTooLong
}

// Absolute makes p absolute against cwd when it is relative and dirfd is
// AT_FDCWD (or the syscall has no dirfd), and cleans it lexically. A path
// relative to another directory fd is returned as written. Pure.
func Absolute(p, cwd string, dirfd int64, hasDirfd bool) string {
	if p == "" {
		return ""
	}
	if !strings.HasPrefix(p, "/") {
		if (hasDirfd && dirfd != atFDCWD) || cwd == "" {
			return p
		}
		p = cwd + "/" + p
	}
	c := path.Clean(p)
	if len(c) > MaxPath {
		c = c[:MaxPath]
	}
	return c
}
