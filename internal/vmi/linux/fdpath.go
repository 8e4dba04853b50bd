package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// FDPath returns the path of open file descriptor fd of the task at addr
// (task->files->fdt->fd[fd]->f_path), from the global root and bounded like
// Task.Exe: what a path relative to that directory fd is relative to.
func (k *Kernel) FDPath(addr uint64, fd int) (string, error) {
	if fd < 0 || fd >= maxFDs {
		return "", fmt.Errorf("linux: fd %d out of range", fd)
	}
	l := layoutForFiles(k.Profile)
	if l.err != nil {
		return "", l.err
	}
	files, err := k.filesOf(l, addr)
	if err != nil {
		return "", err
	}
	if files == 0 {
		return "", fmt.Errorf("%w: task %#x has no files", ErrInconsistent, addr)
	}
	fdt, err := vmi.ReadU64(k.AS, files+l.filesFdt)
	if err != nil || !k.kernelPointer(fdt) {
		return "", fmt.Errorf("%w: files %#x has no readable fdtable", ErrInconsistent, files)
	}
	n, err := vmi.ReadU32(k.AS, fdt+l.fdtMaxFds)
	if err != nil {
		return "", err
	}
	if uint32(fd) >= n {
		return "", fmt.Errorf("linux: fd %d is beyond the task's table (%d)", fd, n)
	}
	arr, err := vmi.ReadU64(k.AS, fdt+l.fdtFd)
	if err != nil || !k.kernelPointer(arr) {
		return "", fmt.Errorf("%w: fdtable %#x has no readable fd array", ErrInconsistent, fdt)
	}
	file, err := vmi.ReadU64(k.AS, arr+8*uint64(fd))
	if err != nil {
		return "", err
	}
	if file == 0 {
		return "", fmt.Errorf("linux: fd %d is not open", fd)
	}
	if !k.kernelPointer(file) {
		return "", fmt.Errorf("%w: fd %d: file %#x is not a kernel pointer", ErrInconsistent, fd, file)
	}
	return k.FilePath(file)
}
