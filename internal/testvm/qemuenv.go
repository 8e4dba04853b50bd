package testvm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// QEMUEnv selects the QEMU binary the tests boot, as it does for gatevisor
// (internal/qemu.EnvBinary): with GATEVISOR_QEMU set, the suites that start
// QEMU themselves run the same QEMU as the ones that run gatevisor.
const QEMUEnv = "GATEVISOR_QEMU"

// checkQEMUEnv applies internal/qemu.CheckBinary's rules to the value of
// QEMUEnv and returns the path with its links resolved: an absolute path to
// a regular executable file that belongs to root or us and is not writable
// by group or others, reached through directories and symbolic links that
// belong to root or us, with no directory writable by others unless sticky.
//
// It is a copy because testvm may not import internal/qemu (the allowed
// imports in docs/design.md); TestQEMUEnvAgreesWithQEMU runs the layouts of
// both packages' tests through both and fails when they disagree.
func checkQEMUEnv(p string) (string, error) {
	bad := func(why, fix string) error {
		return fmt.Errorf("%s=%s: unsafe QEMU binary: %s: %s", QEMUEnv, p, why, fix)
	}
	if p == "" {
		return "", fmt.Errorf("%s is set but empty: give the absolute path of a qemu-system-x86_64 (scripts/install-deps --qemu-10 prints one), or unset it to use %s from $PATH", QEMUEnv, QEMUBinary)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%s=%s is not an absolute path: give the full path (scripts/install-deps --qemu-10 prints it)", QEMUEnv, p)
	}
	owner := func(fi fs.FileInfo, name string) error {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner information", name)
		}
		if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			return bad(fmt.Sprintf("%s belongs to uid %d, neither root nor you (uid %d)", name, st.Uid, os.Geteuid()), "install QEMU as root or as yourself, or unset "+QEMUEnv)
		}
		return nil
	}
	dirOK := func(dir string) error {
		fi, err := os.Lstat(dir)
		if err != nil {
			return err
		}
		if err := owner(fi, dir); err != nil {
			return err
		}
		if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
			return bad(fmt.Sprintf("%s is writable by group or others (mode %04o) and not sticky", dir, fi.Mode().Perm()), "chmod go-w "+dir)
		}
		return nil
	}
	cur := "/"
	if err := dirOK(cur); err != nil {
		return "", err
	}
	rest := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	for links := 0; len(rest) > 0; {
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
			return "", fmt.Errorf("%s=%s: %s: %w: install QEMU 10.0 with 'scripts/install-deps --qemu-10', or unset %s", QEMUEnv, p, next, fs.ErrNotExist, QEMUEnv)
		}
		if err != nil {
			return "", fmt.Errorf("%s=%s: %w", QEMUEnv, p, err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if links++; links > 32 {
				return "", bad("more than 32 symbolic links", "give the path of the file itself")
			}
			if err := owner(fi, next); err != nil {
				return "", err
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", fmt.Errorf("%s=%s: %w", QEMUEnv, p, err)
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			rest = append(strings.Split(strings.Trim(target, "/"), "/"), rest...)
			continue
		case len(rest) > 0:
			if !fi.IsDir() {
				return "", fmt.Errorf("%s=%s: %s is not a directory", QEMUEnv, p, next)
			}
			if err := dirOK(next); err != nil {
				return "", err
			}
		}
		cur = next
	}
	fi, err := os.Lstat(cur)
	if err != nil {
		return "", err
	}
	switch {
	case !fi.Mode().IsRegular():
		return "", bad(cur+" is not a regular file", "give the path of the qemu-system-x86_64 program")
	case owner(fi, cur) != nil:
		return "", owner(fi, cur)
	case fi.Mode().Perm()&0o022 != 0:
		return "", bad(fmt.Sprintf("%s is writable by group or others (mode %04o)", cur, fi.Mode().Perm()), "chmod go-w "+cur)
	case fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("%s=%s: %s is not executable (mode %04o): chmod +x %s", QEMUEnv, p, cur, fi.Mode().Perm(), cur)
	}
	return cur, nil
}
