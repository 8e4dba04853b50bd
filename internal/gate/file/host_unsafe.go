package file

import (
	"io"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls of the hot path. Each pointer is converted to uintptr
// in the call expression itself (unsafe.Pointer rule 4), so that the
// object stays alive and in place for the call; h.raw chooses the raw
// entry (no runtime bookkeeping, see host) or the runtime's.

func (h *host) openMode(rel string, flags int, mode uint32) (int, error) {
	p, err := unix.BytePtrFromString(rel)
	if err != nil {
		return -1, syscall.EINVAL
	}
	how := unix.OpenHow{Flags: uint64(flags) | unix.O_CLOEXEC, Mode: uint64(mode), Resolve: resolve}
	for try := 0; ; try++ {
		var r uintptr
		var e syscall.Errno
		if h.raw {
			r, _, e = unix.RawSyscall6(unix.SYS_OPENAT2, uintptr(h.dirfd), uintptr(unsafe.Pointer(p)), uintptr(unsafe.Pointer(&how)), unsafe.Sizeof(how), 0, 0)
		} else {
			r, _, e = unix.Syscall6(unix.SYS_OPENAT2, uintptr(h.dirfd), uintptr(unsafe.Pointer(p)), uintptr(unsafe.Pointer(&how)), unsafe.Sizeof(how), 0, 0)
		}
		runtime.KeepAlive(p)
		if e == unix.EINTR || e == unix.EAGAIN && try < 8 {
			continue // EAGAIN: a concurrent rename raced the lookup (RESOLVE_BENEATH), or a lease
		}
		if e != 0 {
			return -1, e
		}
		return int(r), nil
	}
}

func (h *host) fstat(fd int, st *unix.Stat_t) error {
	for {
		var e syscall.Errno
		if h.raw {
			_, _, e = unix.RawSyscall(unix.SYS_FSTAT, uintptr(fd), uintptr(unsafe.Pointer(st)), 0)
		} else {
			_, _, e = unix.Syscall(unix.SYS_FSTAT, uintptr(fd), uintptr(unsafe.Pointer(st)), 0)
		}
		if e != unix.EINTR {
			return errnoErr(e)
		}
	}
}

// preadv reads at off into bufs in order (the FUSE reply's pages); the
// count is short at the end of the file.
func (h *host) preadv(fd int, bufs [][]byte, off int64) (int, error) {
	return h.vectored(unix.SYS_PREADV, fd, bufs, off)
}

// pwritev writes bufs in order at off.
func (h *host) pwritev(fd int, bufs [][]byte, off int64) (int, error) {
	return h.vectored(unix.SYS_PWRITEV, fd, bufs, off)
}

// vectored makes the positioned vectored trap (SYS_PREADV, SYS_PWRITEV)
// of bufs at off, at most len(iov) buffers a call, raw when h.raw; it
// stops at a short transfer (the end of the file, or a full disk).
func (h *host) vectored(trap uintptr, fd int, bufs [][]byte, off int64) (int, error) {
	var iov [64]unix.Iovec
	total := 0
	for len(bufs) > 0 {
		n, want := 0, 0
		for len(bufs) > 0 && n < len(iov) {
			if b := bufs[0]; len(b) > 0 {
				iov[n].Base = &b[0]
				iov[n].SetLen(len(b))
				want += len(b)
				n++
			}
			bufs = bufs[1:]
		}
		if n == 0 {
			break
		}
		for {
			var r uintptr
			var e syscall.Errno
			pos := off + int64(total)
			if h.raw {
				r, _, e = unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n), uintptr(pos), uintptr(pos>>32), 0)
			} else {
				r, _, e = unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n), uintptr(pos), uintptr(pos>>32), 0)
			}
			if e == unix.EINTR {
				continue
			}
			runtime.KeepAlive(&iov)
			if e != 0 {
				if total > 0 {
					return total, nil
				}
				return 0, e
			}
			total += int(r)
			if int(r) < want {
				return total, nil
			}
			break
		}
	}
	return total, nil
}

func (h *host) closeFD(fd int) {
	if h.raw {
		unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
		return
	}
	unix.Close(fd)
}

// rawConn is the connection from QEMU read and written with raw system
// calls on its non-blocking socket, waiting in the runtime's poller only
// when it would block (see host for why: measured, the runtime's system
// call entry was half of the monitor's CPU per request).
type rawConn struct {
	rc syscall.RawConn
}

func (c rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n uintptr
	var e syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, _, e = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			if e != unix.EINTR {
				return e != unix.EAGAIN
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case e != 0:
		return 0, e
	case n == 0:
		return 0, io.EOF
	}
	return int(n), nil
}

func (c rawConn) Write(b []byte) (int, error) {
	done := 0
	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		for done < len(b) {
			n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[done])), uintptr(len(b)-done))
			switch e {
			case 0:
				done += int(n)
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				werr = e
				return true
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return done, err
}

// threadCPU is the calling thread's CPU time in nanoseconds (0 if it
// cannot be read), by a raw clock_gettime (the vDSO does not serve
// CLOCK_THREAD_CPUTIME_ID, and the runtime's entry would wake sysmon).
func threadCPU() int64 {
	var ts unix.Timespec
	if _, _, e := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, unix.CLOCK_THREAD_CPUTIME_ID, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		return 0
	}
	return ts.Nano()
}
