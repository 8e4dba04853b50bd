package file

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// host is the served directory on the host, as the hot requests (walk,
// getattr, lopen, lcreate, read, write, clunk) reach it: paths resolved
// by openat2 below a descriptor of the root with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS (no name, "..", absolute or relative symbolic link
// leaves the root, as with os.Root; the guest's 9P client follows
// symbolic links itself, so the server never needs to), and the system
// calls made directly, without the Go runtime's syscall bookkeeping when
// the root is on a local filesystem (raw).
//
// Why raw: on the measured host, the runtime's entry into a system call
// from an idle process wakes its monitor thread (sysmon), which then polls
// every 20 µs while the request is served; that doubled the monitor's CPU
// per 9P request (docs/benchmarks.md, "File gate"). A raw system call
// holds its P while it runs, so it is used only where the call cannot
// wait for long: a local filesystem's files (regular files and
// directories only: a FIFO or a device is opened non-blocking, found out
// by fstat and handed to os.Root's blocking path), never a network
// filesystem that could hang (those use the runtime's entry, Syscall).
// The rare requests (mkdir, unlink, rename, link, symlink, chmod,
// readlink, readdir, statfs) go through os.Root.
type host struct {
	root  *os.Root
	dirfd int  // the root directory, O_PATH
	raw   bool // local filesystem: raw system calls
}

// resolve is openat2's RESOLVE_* for every path below the root.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// localFS are the filesystems (statfs f_type) whose calls do not wait on
// a remote party: the raw path is taken only on these.
var localFS = map[int64]string{
	0xef53:     "ext4",
	0x58465342: "xfs",
	0x9123683e: "btrfs",
	0x01021994: "tmpfs",
	0x794c7630: "overlayfs",
	0xf2f52010: "f2fs",
}

// errNoOpenat2 means the host kernel has no openat2 (Linux < 5.6).
var errNoOpenat2 = errors.New("the host kernel has no openat2 (Linux 5.6 or later is needed to serve files)")

// openHost opens dir as the root of a share.
func openHost(dir string) (*host, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	h := &host{root: r, dirfd: fd}
	// The descriptor and os.Root must be the same directory (dir could
	// have been replaced between the two opens).
	var a, b unix.Stat_t
	rf, err := r.Open(".")
	if err == nil {
		err = unix.Fstat(int(rf.Fd()), &a)
		rf.Close()
	}
	if err == nil {
		err = unix.Fstat(fd, &b)
	}
	if err == nil && (a.Dev != b.Dev || a.Ino != b.Ino) {
		err = fmt.Errorf("%s changed while it was opened", dir)
	}
	if err != nil {
		h.close()
		return nil, err
	}
	var sf unix.Statfs_t
	if err := unix.Fstatfs(fd, &sf); err == nil {
		_, h.raw = localFS[int64(sf.Type)]
	}
	p, err := h.open(".", unix.O_PATH)
	if err != nil {
		h.close()
		if errors.Is(err, syscall.ENOSYS) {
			return nil, errNoOpenat2
		}
		return nil, fmt.Errorf("openat2 %s: %w", dir, err)
	}
	h.closeFD(p)
	return h, nil
}

func (h *host) close() error {
	unix.Close(h.dirfd)
	return h.root.Close()
}

// lstat is rel's metadata (a symbolic link's own).
func (h *host) lstat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := h.open(rel, unix.O_PATH|unix.O_NOFOLLOW)
	if err != nil {
		return st, err
	}
	err = h.fstat(fd, &st)
	h.closeFD(fd)
	return st, err
}

// openRegular opens rel (flags: access mode, O_TRUNC, O_APPEND, O_CREAT
// with O_EXCL) when it is a regular file, never following a symbolic
// link; ok is false, and nothing is open, when it is something else.
func (h *host) openRegular(rel string, flags int, mode uint32) (fd int, st unix.Stat_t, ok bool, err error) {
	fd, err = h.openMode(rel, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, mode)
	if err != nil {
		return -1, st, false, err
	}
	if err = h.fstat(fd, &st); err != nil {
		h.closeFD(fd)
		return -1, st, false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		h.closeFD(fd)
		return -1, st, false, nil
	}
	return fd, st, true, nil
}

func (h *host) open(rel string, flags int) (int, error) { return h.openMode(rel, flags, 0) }

// errnoErr is e as an error (nil for 0).
func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
