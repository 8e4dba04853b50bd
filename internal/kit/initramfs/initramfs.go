// Package initramfs writes Linux initramfs archives in the "newc" cpio
// format (magic 070701) that the kernel unpacks into its rootfs.
//
// It is a small writer of its own rather than github.com/cavaliergopher/cpio:
// that library cannot write device nodes (the rdevmajor/rdevminor fields are
// always zero, and the kit needs /dev/console before devtmpfs is mounted) and
// its writer mutates a package-level magic slice when a checksum is set. Its
// reader is still used in tests, to read our output back independently.
package initramfs

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// File types in Header.Mode (the S_IF* values of the newc format).
const (
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
	typeMask    = 0o170000
)

// MaxName bounds an entry name, as the kernel does (PATH_MAX).
const MaxName = 4095

// Header describes one archive entry.
type Header struct {
	Name      string // relative path without a leading "/", e.g. "bin/sh"
	Mode      uint32 // type and permission bits, e.g. TypeReg|0o755
	UID, GID  uint32
	MTime     uint32
	Size      int64 // content bytes for regular files; the target for symlinks
	RdevMajor uint32
	RdevMinor uint32
}

// Writer writes a newc archive. Entries must be written parents first; the
// kernel does not create missing directories.
type Writer struct {
	w       io.Writer
	off     int64 // bytes written so far
	left    int64 // content bytes still expected for the current entry
	ino     uint32
	closed  bool
	written map[string]bool
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, written: map[string]bool{}} }

func (w *Writer) write(b []byte) error {
	n, err := w.w.Write(b)
	w.off += int64(n)
	if err != nil {
		return fmt.Errorf("initramfs: write: %w", err)
	}
	return nil
}

func (w *Writer) pad() error {
	if n := (4 - w.off%4) % 4; n > 0 {
		return w.write(make([]byte, n))
	}
	return nil
}

// WriteHeader starts a new entry; for regular files, Size bytes of content
// must follow through Write.
func (w *Writer) WriteHeader(h Header) error {
	if w.closed {
		return errors.New("initramfs: write after close")
	}
	if w.left != 0 {
		return fmt.Errorf("initramfs: previous entry is %d bytes short", w.left)
	}
	if err := w.pad(); err != nil {
		return err
	}
	name := h.Name
	if name != "TRAILER!!!" {
		if name == "" || len(name) > MaxName || strings.HasPrefix(name, "/") || path.Clean(name) != name || strings.HasPrefix(name, "../") || name == ".." || strings.ContainsRune(name, 0) {
			return fmt.Errorf("initramfs: bad entry name %q", name)
		}
		if h.Size < 0 || h.Size > 0xFFFFFFFF {
			return fmt.Errorf("initramfs: %s: size %d out of range", name, h.Size)
		}
		switch h.Mode & typeMask {
		case TypeReg, TypeSymlink:
		case TypeDir, TypeChar, TypeBlock:
			if h.Size != 0 {
				return fmt.Errorf("initramfs: %s: non-regular entry with content", name)
			}
		default:
			return fmt.Errorf("initramfs: %s: unsupported mode %#o", name, h.Mode)
		}
		w.written[name] = true
	}
	w.ino++
	nlink := uint32(1)
	if h.Mode&typeMask == TypeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, h.Mode, h.UID, h.GID, nlink, h.MTime, uint32(h.Size),
		0, 0, h.RdevMajor, h.RdevMinor, len(name)+1, 0)
	if err := w.write([]byte(hdr + name + "\x00")); err != nil {
		return err
	}
	if err := w.pad(); err != nil {
		return err
	}
	w.left = h.Size
	return nil
}

// Write writes content of the current entry.
func (w *Writer) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, fmt.Errorf("initramfs: write of %d bytes exceeds the entry's remaining %d", len(p), w.left)
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	w.left -= int64(n)
	if err != nil {
		return n, fmt.Errorf("initramfs: write: %w", err)
	}
	return n, nil
}

// Has reports whether an entry named name was written.
func (w *Writer) Has(name string) bool { return w.written[name] }

// Dir writes a directory entry.
func (w *Writer) Dir(name string, perm uint32) error {
	return w.WriteHeader(Header{Name: name, Mode: TypeDir | perm&0o7777})
}

// MkdirAll writes directory entries (mode 0755) for name and its parents that
// were not written yet.
func (w *Writer) MkdirAll(name string) error {
	if name == "." || name == "" || w.written[name] {
		return nil
	}
	if err := w.MkdirAll(path.Dir(name)); err != nil {
		return err
	}
	return w.Dir(name, 0o755)
}

// File writes a regular file owned by uid/gid with the given content.
func (w *Writer) File(name string, perm uint32, uid, gid uint32, data []byte) error {
	if err := w.WriteHeader(Header{Name: name, Mode: TypeReg | perm&0o7777, UID: uid, GID: gid, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

// Symlink writes a symbolic link name -> target.
func (w *Writer) Symlink(name, target string) error {
	if target == "" || len(target) > MaxName {
		return fmt.Errorf("initramfs: %s: bad symlink target", name)
	}
	if err := w.WriteHeader(Header{Name: name, Mode: TypeSymlink | 0o777, Size: int64(len(target))}); err != nil {
		return err
	}
	_, err := w.Write([]byte(target))
	return err
}

// CharDev writes a character device node.
func (w *Writer) CharDev(name string, perm, major, minor uint32) error {
	return w.WriteHeader(Header{Name: name, Mode: TypeChar | perm&0o7777, RdevMajor: major, RdevMinor: minor})
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if err := w.WriteHeader(Header{Name: "TRAILER!!!"}); err != nil {
		return err
	}
	w.closed = true
	return w.pad()
}
