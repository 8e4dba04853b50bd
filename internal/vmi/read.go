package vmi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// VirtualReader reads guest virtual memory; *AddressSpace implements it.
type VirtualReader interface {
	ReadVirtual(va uint64, p []byte) (int, error)
}

var (
	// ErrStringTooLong means no NUL was found within the allowed length.
	ErrStringTooLong = errors.New("vmi: string longer than allowed")
	// ErrListTooLong means a guest list has more entries than allowed.
	ErrListTooLong = errors.New("vmi: list longer than allowed")
	// ErrListCycle means a guest list loops without returning to its head.
	ErrListCycle = errors.New("vmi: list has a cycle")
)

// MaxStringLen caps ReadCString's max argument.
const MaxStringLen = 1 << 20

// ReadU64 reads a little-endian uint64 at va.
func ReadU64(r VirtualReader, va uint64) (uint64, error) {
	var b [8]byte
	if _, err := r.ReadVirtual(va, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// ReadU32 reads a little-endian uint32 at va.
func ReadU32(r VirtualReader, va uint64) (uint32, error) {
	var b [4]byte
	if _, err := r.ReadVirtual(va, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// ReadCString reads a NUL-terminated string of at most max bytes (NUL not
// counted) at va. It reads page by page, so a short string at the end of a
// mapping does not fail because of the unmapped page after it. Without a NUL
// in max bytes it returns the max bytes read and ErrStringTooLong.
func ReadCString(r VirtualReader, va uint64, max int) (string, error) {
	if max < 0 || max > MaxStringLen {
		return "", fmt.Errorf("vmi: string length limit %d out of range [0, %d]", max, MaxStringLen)
	}
	var out []byte
	for len(out) <= max {
		addr := va + uint64(len(out))
		n := PageSize4K - int(addr&(PageSize4K-1))
		if want := max + 1 - len(out); n > want {
			n = want
		}
		buf := make([]byte, n)
		if _, err := r.ReadVirtual(addr, buf); err != nil {
			return string(out), fmt.Errorf("vmi: read string at %#x: %w", va, err)
		}
		if i := bytes.IndexByte(buf, 0); i >= 0 {
			return string(append(out, buf[:i]...)), nil
		}
		out = append(out, buf...)
	}
	return string(out[:max]), fmt.Errorf("%w: no NUL in %d bytes at %#x", ErrStringTooLong, max, va)
}

// WalkList walks a circular doubly linked list in the style of Linux's
// list_head: head is the address of the list head, each node's first 8 bytes
// point to the next node. fn is called with each node's address (not the
// head), in order; subtract the link field's offset to get the containing
// object. The walk ends when it comes back to head. It stops with
// ErrListTooLong after max nodes, with ErrListCycle if a node repeats without
// the walk returning to head, and with fn's error if fn fails.
func WalkList(r VirtualReader, head uint64, max int, fn func(node uint64) error) error {
	seen := make(map[uint64]struct{})
	node, err := ReadU64(r, head)
	if err != nil {
		return fmt.Errorf("vmi: list head %#x: %w", head, err)
	}
	for count := 0; node != head; count++ {
		if count >= max {
			return fmt.Errorf("%w: more than %d entries from head %#x", ErrListTooLong, max, head)
		}
		if _, dup := seen[node]; dup {
			return fmt.Errorf("%w: node %#x revisited after %d entries from head %#x", ErrListCycle, node, count, head)
		}
		seen[node] = struct{}{}
		if err := fn(node); err != nil {
			return err
		}
		next, err := ReadU64(r, node)
		if err != nil {
			return fmt.Errorf("vmi: list node %#x (entry %d from head %#x): %w", node, count, head, err)
		}
		node = next
	}
	return nil
}
