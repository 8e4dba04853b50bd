// Package safefile creates and opens the directories and files gatevisor
// keeps its state in (runtime directories, console and monitor logs, audit
// and event logs, the guest-RAM directory) so that another local user cannot
// redirect them: it never follows a symbolic link at the place gatevisor
// creates something, and it refuses a directory or file that is owned by
// someone else or writable by others, with an error that names the path and
// the fix.
//
// The rules, in the spirit of OpenSSH's StrictModes:
//   - every existing directory on the way to the target must be owned by
//     root or by us, and writable by group or others only if sticky (/tmp):
//     otherwise another user could rename our directory away and plant one
//     of their own;
//   - a symbolic link on the way is followed only if it and the directory it
//     sits in belong to root or to us (a system link such as /var/run, or a
//     user's own $HOME link);
//   - the target itself (the directory Dir makes, the file OpenFile opens)
//     must not be a symbolic link, must be owned by us, and must not be
//     writable by group or others; a file must be a regular file.
//
// A path is checked and then used, so a component could in principle change
// in between; the rules make that impossible for anyone but root and us,
// because every directory on the way is closed to everyone else.
//
// Every package that creates host-side state uses it. A leaf: it imports
// nothing from gatevisor.
package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrUnsafe is wrapped by every refusal.
var ErrUnsafe = errors.New("unsafe path")

// maxLinks bounds the symbolic links followed while checking one path.
const maxLinks = 32

// Dir makes sure dir is a directory only we control: it creates dir (mode
// perm) and any missing parent (0700), checks every component on the way,
// and refuses a dir that is a symbolic link, owned by someone else or
// writable by group or others. An existing dir keeps its mode.
func Dir(dir string, perm fs.FileMode) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	parent, err := walk(filepath.Dir(abs), true)
	if err != nil {
		return err
	}
	target := filepath.Join(parent, filepath.Base(abs))
	if abs == "/" {
		target = "/"
	}
	if err := os.Mkdir(target, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	return checkTarget(target, dir, true)
}

// OpenFile opens name like os.OpenFile with O_NOFOLLOW and O_CLOEXEC added,
// after checking its directory as Dir does (creating it 0700 if missing),
// and refuses a file that is not regular, owned by someone else or writable
// by group or others.
func OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error) {
	abs, err := filepath.Abs(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := Dir(filepath.Dir(abs), 0o700); err != nil {
		return nil, err
	}
	// Refuse a FIFO or device before opening it: opening one may block or
	// never end. O_NONBLOCK keeps even a raced-in FIFO from blocking; it
	// has no effect on a regular file.
	if fi, err := os.Lstat(abs); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		if err := checkInfo(fi, name, false); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(abs, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, perm)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, unsafeErr(name, "it is a symbolic link (gatevisor never follows a link where it keeps state)", "remove it, or choose another path")
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = checkInfo(fi, name, false)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// WriteFile writes data to name through OpenFile (O_WRONLY|O_CREATE|O_TRUNC).
func WriteFile(name string, data []byte, perm fs.FileMode) error {
	f, err := OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// CheckRegular refuses a path that is not a regular file (a FIFO, a device,
// a directory) before a reader opens it: a FIFO would block forever and a
// device such as /dev/zero never ends. It follows symbolic links: reading a
// file the user named is not creating state.
func CheckRegular(name string) error {
	fi, err := os.Stat(name)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s): give a file", name, Kind(fi.Mode()))
	}
	return nil
}

// walk checks the existing directories from / to dir, creating the missing
// ones 0700 if create is set, and returns dir with the links on the way
// resolved.
func walk(dir string, create bool) (string, error) {
	cur := "/"
	if err := checkOnWay(cur); err != nil {
		return "", err
	}
	rest := strings.Split(strings.TrimPrefix(filepath.Clean(dir), "/"), "/")
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		if c == "" || c == "." {
			continue
		}
		if c == ".." {
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		switch {
		case errors.Is(err, fs.ErrNotExist) && create:
			if err := os.Mkdir(next, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return "", fmt.Errorf("create directory %s: %w", next, err)
			}
			if err := checkTarget(next, next, true); err != nil {
				return "", err
			}
		case err != nil:
			return "", err
		case fi.Mode()&fs.ModeSymlink != 0:
			links++
			if links > maxLinks {
				return "", unsafeErr(next, "too many symbolic links", "")
			}
			if err := trustedOwner(fi, next); err != nil {
				return "", err
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", err
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			rest = append(strings.Split(strings.Trim(target, "/"), "/"), rest...)
			continue
		default:
			if err := checkOnWay(next); err != nil {
				return "", err
			}
		}
		cur = next
	}
	return cur, nil
}

// checkOnWay checks a directory on the way to a target: owned by root or
// us, and closed to writes by others unless sticky.
func checkOnWay(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := trustedOwner(fi, dir); err != nil {
		return err
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return unsafeErr(dir, fmt.Sprintf("it is writable by group or others (mode %04o) and not sticky, so another user could replace what gatevisor keeps in it", fi.Mode().Perm()),
			"chmod go-w "+dir+", or choose another directory")
	}
	return nil
}

func trustedOwner(fi fs.FileInfo, name string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", name)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return unsafeErr(name, fmt.Sprintf("it belongs to uid %d, neither root nor you (uid %d)", st.Uid, os.Geteuid()), "remove it or choose another path")
	}
	return nil
}

// checkTarget checks what gatevisor itself creates or opens.
func checkTarget(path, shown string, dir bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	return checkInfo(fi, shown, dir)
}

func checkInfo(fi fs.FileInfo, name string, dir bool) error {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return unsafeErr(name, "it is a symbolic link (gatevisor never follows a link where it keeps state)", "remove it, or choose another path")
	case dir && !fi.IsDir():
		return unsafeErr(name, "it is not a directory but "+Kind(fi.Mode()), "remove it, or choose another path")
	case !dir && !fi.Mode().IsRegular():
		return unsafeErr(name, "it is not a regular file but "+Kind(fi.Mode()), "remove it, or choose another path")
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", name)
	}
	if int(st.Uid) != os.Geteuid() {
		return unsafeErr(name, fmt.Sprintf("it belongs to uid %d, not to you (uid %d)", st.Uid, os.Geteuid()), "remove it (it may have been planted) or choose another path")
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return unsafeErr(name, fmt.Sprintf("it is writable by group or others (mode %04o)", fi.Mode().Perm()), "chmod go-w "+name)
	}
	return nil
}

// Kind names the kind of file a mode says, for messages ("a directory",
// "a FIFO", "a regular file", ...).
func Kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "a regular file"
}

func unsafeErr(name, why, fix string) error {
	if fix != "" {
		return fmt.Errorf("%w: refusing %s: %s: %s", ErrUnsafe, name, why, fix)
	}
	return fmt.Errorf("%w: refusing %s: %s", ErrUnsafe, name, why)
}
