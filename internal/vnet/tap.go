package vnet

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenTap attaches to the existing tap device name (IFF_TAP|IFF_NO_PI).
// It needs CAP_NET_ADMIN or a tap owned by the caller. Frames go to and
// from the host's network stack as the tap's configuration allows: this is
// the opt-in way off the machine.
func OpenTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w (does the tap exist and may you use it?)", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// ReadTap delivers the tap's frames one by one until it is closed.
func ReadTap(f *os.File, deliver func([][]byte)) {
	buf := make([]byte, MaxFrame)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		deliver([][]byte{append([]byte(nil), buf[:n]...)})
	}
}
