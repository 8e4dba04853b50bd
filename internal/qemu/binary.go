package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// EnvBinary names the environment variable that selects the QEMU binary
// explicitly, instead of Binary on $PATH: an absolute path, such as the
// QEMU 10.0 wrapper that 'scripts/install-deps --qemu-10' installs (see
// docs/qemu-10.md). gatevisor runs that file with the guest's memory and its
// gdbstub, so CheckBinary refuses one that another user could have planted.
const EnvBinary = "GATEVISOR_QEMU"

// ErrUnsafeBinary is wrapped by every refusal of the file EnvBinary names
// because someone other than root or the caller could change it.
var ErrUnsafeBinary = errors.New("unsafe QEMU binary")

// maxBinaryLinks bounds the symbolic links followed while checking EnvBinary.
const maxBinaryLinks = 32

// FindBinary returns the path of the QEMU binary: the file EnvBinary names,
// checked by CheckBinary, when the variable is set, and Binary on $PATH
// otherwise.
func FindBinary() (string, error) {
	if p, ok := os.LookupEnv(EnvBinary); ok {
		return CheckBinary(p)
	}
	p, err := exec.LookPath(Binary)
	if err != nil {
		return "", ErrNoQEMU
	}
	return p, nil
}

// CheckBinary checks a QEMU binary a user selected with EnvBinary and
// returns its path with every symbolic link resolved. It refuses:
//   - an empty or relative path (what runs would depend on the directory
//     gatevisor starts in);
//   - a path that does not exist, or that is not a regular file with an
//     execute bit;
//   - a file, a symbolic link on the way to it, or a directory on the way
//     that belongs to neither root nor the caller;
//   - a file writable by group or others, or a directory on the way that is
//     (unless sticky, like /tmp): another user could replace what runs.
//
// The rules are safefile's for state (OpenSSH's StrictModes), applied to a
// program: a symbolic link is followed, and checked the same way, because a
// packaged QEMU is often reached through one. The error names the problem
// and the fix.
func CheckBinary(p string) (string, error) {
	bad := func(why, fix string) error {
		return fmt.Errorf("%s=%s: %w: %s: %s", EnvBinary, p, ErrUnsafeBinary, why, fix)
	}
	if p == "" {
		return "", fmt.Errorf("%s is set but empty: give the absolute path of a qemu-system-x86_64 (scripts/install-deps --qemu-10 prints one), or unset it to use %s from $PATH", EnvBinary, Binary)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%s=%s is not an absolute path: what runs would depend on the directory gatevisor starts in: give the full path (scripts/install-deps --qemu-10 prints it)", EnvBinary, p)
	}
	resolved, err := resolveBinary(p, bad)
	if err != nil {
		return "", err
	}
	fi, err := os.Lstat(resolved)
	if err != nil {
		return "", err
	}
	shown := resolved
	if shown != p {
		shown = fmt.Sprintf("%s (the link's target)", resolved)
	}
	if !fi.Mode().IsRegular() {
		return "", bad(shown+" is not a regular file but "+safefile.Kind(fi.Mode()), "give the path of the qemu-system-x86_64 program")
	}
	if err := trustedOwner(fi, shown, bad); err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return "", bad(fmt.Sprintf("%s is writable by group or others (mode %04o), so another user could replace what gatevisor runs", shown, fi.Mode().Perm()), "chmod go-w "+resolved)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s=%s: %s is not executable (mode %04o): chmod +x %s, or give the path of the qemu-system-x86_64 program", EnvBinary, p, shown, fi.Mode().Perm(), resolved)
	}
	return resolved, nil
}

// resolveBinary walks p from /, following symbolic links, and returns the
// final path. Every directory on the way must belong to root or the caller
// and be closed to writes by others unless sticky; every link must belong to
// root or the caller.
func resolveBinary(p string, bad func(why, fix string) error) (string, error) {
	cur := "/"
	if err := checkBinaryDir(cur, bad); err != nil {
		return "", err
	}
	rest := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s=%s: %s: %w: install QEMU 10.0 with 'scripts/install-deps --qemu-10' (it prints the path to give), or unset %s to use %s from $PATH", EnvBinary, p, next, fs.ErrNotExist, EnvBinary, Binary)
		}
		if err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			links++
			if links > maxBinaryLinks {
				return "", bad("more than "+fmt.Sprint(maxBinaryLinks)+" symbolic links", "give the path of the file itself")
			}
			if err := trustedOwner(fi, next+" (a symbolic link on the way)", bad); err != nil {
				return "", err
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			rest = append(strings.Split(strings.Trim(target, "/"), "/"), rest...)
			continue
		case len(rest) > 0:
			if !fi.IsDir() {
				return "", fmt.Errorf("%s=%s: %s is not a directory: give the path of the qemu-system-x86_64 program", EnvBinary, p, next)
			}
			if err := checkBinaryDir(next, bad); err != nil {
				return "", err
			}
		}
		cur = next
	}
	return cur, nil
}

// checkBinaryDir checks a directory on the way to the binary.
func checkBinaryDir(dir string, bad func(why, fix string) error) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if err := trustedOwner(fi, dir+" (a directory on the way)", bad); err != nil {
		return err
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return bad(fmt.Sprintf("%s (a directory on the way) is writable by group or others (mode %04o) and not sticky, so another user could replace what gatevisor runs", dir, fi.Mode().Perm()),
			"chmod go-w "+dir+", or install QEMU elsewhere")
	}
	return nil
}

func trustedOwner(fi fs.FileInfo, name string, bad func(why, fix string) error) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", name)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return bad(fmt.Sprintf("%s belongs to uid %d, neither root nor you (uid %d)", name, st.Uid, os.Geteuid()),
			"install QEMU as root or as yourself ('scripts/install-deps --qemu-10' run by the user who runs gatevisor), or unset "+EnvBinary)
	}
	return nil
}
