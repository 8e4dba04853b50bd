package linux

import (
	"encoding/binary"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// maxFDs bounds the file descriptors read from one process's table. The
// kernel allows more (fs.nr_open, up to 1<<30), but a table that large is
// walked only this far and reported as truncated.
const maxFDs = 1 << 16

// fdChunk is how many fd slots one read covers: a page of pointers.
const fdChunk = vmi.PageSize4K / 8

// maxBadSlots is how many unreadable fd slots make a table garbage rather
// than caught mid-update: the walk stops there.
const maxBadSlots = 256

// fileLayout holds the BTF offsets of task -> files_struct -> fdtable ->
// struct file.
type fileLayout struct {
	err error

	taskFiles, filesFdt, fdtMaxFds, fdtFd    uint64
	fileOp, filePrivate, fileInode, inodeIno uint64
	// fileBlock is how many bytes of struct file one read covers: through
	// the last field used.
	fileBlock uint64
	// fd holds what the fd listing reads besides (fd.err says why it
	// cannot be read; the socket walk does not need it).
	fd fdLayout
}

// layoutForFiles returns p's file layout, computed on first use (see
// profileCache.files).
func layoutForFiles(p *Profile) *fileLayout {
	c := p.caches()
	c.filesOnce.Do(func() { c.files = newFileLayout(p) })
	return c.files
}

func newFileLayout(p *Profile) *fileLayout {
	l := &fileLayout{}
	for _, f := range []struct {
		dst  *uint64
		path string
	}{
		{&l.taskFiles, "task_struct.files"},
		{&l.filesFdt, "files_struct.fdt"},
		{&l.fdtMaxFds, "fdtable.max_fds"},
		{&l.fdtFd, "fdtable.fd"},
		{&l.fileOp, "file.f_op"},
		{&l.filePrivate, "file.private_data"},
		{&l.fileInode, "file.f_inode"},
		{&l.inodeIno, "inode.i_ino"},
	} {
		off, err := p.FieldOffset(f.path)
		if err != nil {
			l.err = err
			break
		}
		*f.dst = off
	}
	l.fileBlock = max(l.fileOp, l.filePrivate, l.fileInode) + 8
	l.fd = newFDLayout(p)
	if l.fd.err == nil {
		l.fileBlock = max(l.fileBlock, l.fd.fMnt+8, l.fd.fDentry+8, l.fd.fFlags+4, l.fd.fMode+4)
	}
	if l.fileBlock > 4096 {
		l.err = fmt.Errorf("linux: file layout: implausible struct file offsets")
	}
	return l
}

// kernelPointer reports whether v can be a kernel pointer: canonical and in
// the upper half.
func (k *Kernel) kernelPointer(v uint64) bool {
	if k.AS.Paging == vmi.PagingARM64 {
		return v>>48 == 0xffff
	}
	return v>>63 == 1 && vmi.Canonical(v, k.AS.LA57)
}

// openFile is one open file of a process.
type openFile struct {
	fd   int
	addr uint64 // struct file
	op   uint64 // f_op
	priv uint64 // private_data
	ino  uint64 // f_inode
	// f_path, f_flags and f_mode, when the layout has them (fd.err == nil).
	mnt, dentry  uint64
	flags, fmode uint32
}

// filesOf returns the address of task's files_struct (0 for none, as for
// kernel threads).
func (k *Kernel) filesOf(l *fileLayout, task uint64) (uint64, error) {
	files, err := vmi.ReadU64(k.AS, task+l.taskFiles)
	if err != nil {
		return 0, fmt.Errorf("linux: task %#x files: %w", task, err)
	}
	if files != 0 && !k.kernelPointer(files) {
		return 0, fmt.Errorf("linux: task %#x: files %#x is not a kernel pointer", task, files)
	}
	return files, nil
}

// walkFiles calls fn for each open file in files_struct files: fdt->fd[i]
// for i below fdt->max_fds, at most maxFDs of them. A slot whose file
// cannot be read is counted in bad and skipped; truncated reports a table
// larger than maxFDs. An error means the table itself could not be read,
// or that so many slots were bad (maxBadSlots) that it is garbage.
func (k *Kernel) walkFiles(l *fileLayout, files uint64, fn func(openFile)) (bad int, truncated bool, err error) {
	fdt, err := vmi.ReadU64(k.AS, files+l.filesFdt)
	if err != nil {
		return 0, false, fmt.Errorf("linux: files %#x fdt: %w", files, err)
	}
	if !k.kernelPointer(fdt) {
		return 0, false, fmt.Errorf("linux: files %#x: fdt %#x is not a kernel pointer", files, fdt)
	}
	n, err := vmi.ReadU32(k.AS, fdt+l.fdtMaxFds)
	if err != nil {
		return 0, false, fmt.Errorf("linux: fdtable %#x max_fds: %w", fdt, err)
	}
	arr, err := vmi.ReadU64(k.AS, fdt+l.fdtFd)
	if err != nil {
		return 0, false, fmt.Errorf("linux: fdtable %#x fd: %w", fdt, err)
	}
	if !k.kernelPointer(arr) {
		return 0, false, fmt.Errorf("linux: fdtable %#x: fd array %#x is not a kernel pointer", fdt, arr)
	}
	count := int(n)
	if n > maxFDs {
		count, truncated = maxFDs, true
	}
	slots := make([]byte, 8*min(fdChunk, count)) // most tables have 64 slots
	block := make([]byte, l.fileBlock)
	le := binary.LittleEndian
	for base := 0; base < count; base += fdChunk {
		if bad >= maxBadSlots {
			return bad, truncated, fmt.Errorf("linux: fd array %#x: %d unreadable slots, giving up", arr, bad)
		}
		m := min(fdChunk, count-base)
		if _, err := k.AS.ReadVirtual(arr+uint64(8*base), slots[:8*m]); err != nil {
			if base == 0 {
				return bad, truncated, fmt.Errorf("linux: fd array %#x: %w", arr, err)
			}
			bad += m // a later page of a vmalloc'd array may be unmapped mid-resize
			continue
		}
		for i := range m {
			file := le.Uint64(slots[8*i:])
			if file == 0 {
				continue
			}
			if !k.kernelPointer(file) {
				bad++
				continue
			}
			if _, err := k.AS.ReadVirtual(file, block); err != nil {
				bad++
				continue
			}
			of := openFile{fd: base + i, addr: file,
				op:   le.Uint64(block[l.fileOp:]),
				priv: le.Uint64(block[l.filePrivate:]),
				ino:  le.Uint64(block[l.fileInode:])}
			if d := &l.fd; d.err == nil {
				of.mnt, of.dentry = le.Uint64(block[d.fMnt:]), le.Uint64(block[d.fDentry:])
				of.flags, of.fmode = le.Uint32(block[d.fFlags:]), le.Uint32(block[d.fMode:])
			}
			fn(of)
		}
	}
	return bad, truncated, nil
}

// inodeNumber reads inode->i_ino.
func (k *Kernel) inodeNumber(l *fileLayout, inode uint64) (uint64, error) {
	if !k.kernelPointer(inode) {
		return 0, fmt.Errorf("linux: inode %#x is not a kernel pointer", inode)
	}
	return vmi.ReadU64(k.AS, inode+l.inodeIno)
}
