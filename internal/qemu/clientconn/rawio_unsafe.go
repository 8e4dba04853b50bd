package clientconn

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawIO is read(2) or write(2) (trap) of b on fd without the runtime's
// system-call bookkeeping: for non-blocking descriptors only (rawReader).
func rawIO(trap, fd uintptr, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	r, _, errno := unix.RawSyscall(trap, fd, uintptr(p), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
