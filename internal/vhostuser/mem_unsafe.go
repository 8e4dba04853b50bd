package vhostuser

import (
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ring's index words are shared with the guest's driver on other
// CPUs: they are read and written with atomic operations on the aligned
// 32-bit word that holds them (the ring's parts are at least 2-byte
// aligned, checked when the ring is set up), which orders the accesses
// to the ring entries around them (acquire on load, release on store).

// word32 is the aligned 32-bit word of b holding b[off:off+2], and the
// shift of those 16 bits in it.
// Preconditions: off is even; the word lies in b's mapping (a ring part's
// slice of guest RAM, whose neighbours are guest RAM too).
func word32(b []byte, off int) (*uint32, uint) {
	p := unsafe.Add(unsafe.Pointer(&b[0]), off)
	mis := uintptr(p) & 3
	return (*uint32)(unsafe.Add(p, -int(mis))), uint(mis) * 8
}

// load16 reads the little-endian u16 at b[off:] atomically.
func load16(b []byte, off int) uint16 {
	w, shift := word32(b, off)
	return uint16(atomic.LoadUint32(w) >> shift)
}

// store16 writes the u16 at b[off:] atomically, keeping the other half
// of its word (the device's own: the used ring's flags or index).
func store16(b []byte, off int, v uint16) {
	w, shift := word32(b, off)
	for {
		old := atomic.LoadUint32(w)
		nw := old&^(0xffff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return
		}
	}
}

// mapRegion maps size bytes of fd from offset 0, shared.
func mapRegion(fd int, size uint64) ([]byte, error) {
	return unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// signal adds 1 to an eventfd (a raw write: the call is made per request,
// and the runtime's entry would wake its monitor thread).
func signal(fd int) {
	one := uint64(1)
	unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&one)), 8)
}

// readKick waits in the runtime's poller for the kick eventfd and reads
// its counter with a raw system call: os.File's Read enters the system
// call through the runtime, which wakes its sysmon thread whenever the
// process was idle, and sysmon then polls every 20 µs while the request
// is served (profiled: 16 % of the monitor's CPU serving small files).
func readKick(f *os.File, ev *[8]byte) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var e syscall.Errno
	err = rc.Read(func(fd uintptr) bool {
		for {
			_, _, e = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&ev[0])), 8)
			if e != unix.EINTR {
				return e != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return err
	}
	if e != 0 {
		return e
	}
	return nil
}
