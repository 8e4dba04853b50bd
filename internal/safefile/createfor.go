package safefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CreateFor creates the new file path (mode 0600) on behalf of the user
// uid/gid who asked a more privileged process to write it (an API caller
// asking the monitor for a dump), so that the request cannot be turned into
// a write elsewhere: path must be absolute, no component may be a symbolic
// link (resolved by the kernel with RESOLVE_NO_SYMLINKS, so nothing can be
// swapped in between), the file must not exist, and unless uid is this
// process's own or root's, the directory must belong to uid and be
// writable by no one else. A file created for another uid is given to it.
func CreateFor(path string, uid, gid uint32) (*os.File, error) {
	if !filepath.IsAbs(path) {
		return nil, unsafeErr(path, "is not an absolute path", "give an absolute path")
	}
	dir, base := filepath.Split(filepath.Clean(path))
	if base == "" || base == "." || base == ".." {
		return nil, unsafeErr(path, "names no file", "give a file's path")
	}
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	dfd, err := unix.Openat2(unix.AT_FDCWD, dir, how)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return nil, unsafeErr(dir, "goes through a symbolic link", "give a path without symbolic links")
		}
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	self := uint32(os.Geteuid())
	if uid != self && uid != 0 {
		if st.Uid != uid {
			return nil, unsafeErr(dir, fmt.Sprintf("belongs to uid %d, not to the requester (uid %d)", st.Uid, uid), "write into a directory of your own")
		}
		if st.Mode&0o022 != 0 {
			return nil, unsafeErr(dir, "is writable by group or others", "write into a directory only you can write")
		}
	}
	fd, err := unix.Openat(dfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, unsafeErr(path, "exists", "give the path of a new file (nothing is overwritten)")
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	if uid != self {
		if err := f.Chown(int(uid), int(gid)); err != nil {
			f.Close()
			_ = unix.Unlinkat(dfd, base, 0)
			return nil, fmt.Errorf("%s: give it to uid %d: %w", path, uid, err)
		}
	}
	return f, nil
}
