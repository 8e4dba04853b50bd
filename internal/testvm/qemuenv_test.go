package testvm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/gatevisor/gatevisor/internal/qemu"
)

// TestQEMUEnvAgreesWithQEMU is the oracle test for checkQEMUEnv, the copy
// of internal/qemu.CheckBinary's rules: the tests must accept exactly the
// QEMU binaries gatevisor accepts, and resolve them to the same file.
func TestQEMUEnvAgreesWithQEMU(t *testing.T) {
	if QEMUEnv != qemu.EnvBinary {
		t.Fatalf("QEMUEnv = %q, qemu.EnvBinary = %q: they must be the same variable", QEMUEnv, qemu.EnvBinary)
	}
	const nobody = 65534
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	exe := func(t *testing.T, p string, mode fs.FileMode) string {
		t.Helper()
		must(t, os.WriteFile(p, []byte("#!/bin/sh\n"), 0o600))
		must(t, os.Chmod(p, mode))
		return p
	}
	dir := func(t *testing.T, p string, mode fs.FileMode) string {
		t.Helper()
		must(t, os.Mkdir(p, 0o700))
		must(t, os.Chmod(p, mode))
		return p
	}
	link := func(t *testing.T, target, p string) string {
		t.Helper()
		must(t, os.Symlink(target, p))
		return p
	}
	for _, tc := range []struct {
		name  string
		root  bool
		setup func(t *testing.T, d string) string
	}{
		{"executable", false, func(t *testing.T, d string) string { return exe(t, filepath.Join(d, "q"), 0o755) }},
		{"owner-only executable", false, func(t *testing.T, d string) string { return exe(t, filepath.Join(d, "q"), 0o700) }},
		{"relative link", false, func(t *testing.T, d string) string {
			exe(t, filepath.Join(dir(t, filepath.Join(d, "r"), 0o755), "q"), 0o755)
			return link(t, "r/q", filepath.Join(d, "l"))
		}},
		{"absolute link through a link to a directory", false, func(t *testing.T, d string) string {
			exe(t, filepath.Join(dir(t, filepath.Join(d, "r"), 0o755), "q"), 0o755)
			link(t, filepath.Join(d, "r"), filepath.Join(d, "rl"))
			return link(t, filepath.Join(d, "rl", "q"), filepath.Join(d, "l"))
		}},
		{"dot-dot on the way", false, func(t *testing.T, d string) string {
			dir(t, filepath.Join(d, "a"), 0o755)
			exe(t, filepath.Join(d, "q"), 0o755)
			return d + "/a/../q"
		}},
		{"sticky world-writable directory", false, func(t *testing.T, d string) string {
			return exe(t, filepath.Join(dir(t, filepath.Join(d, "t"), 0o777|fs.ModeSticky), "q"), 0o755)
		}},
		{"empty", false, func(t *testing.T, d string) string { return "" }},
		{"relative", false, func(t *testing.T, d string) string { return "q" }},
		{"missing", false, func(t *testing.T, d string) string { return filepath.Join(d, "q") }},
		{"dangling link", false, func(t *testing.T, d string) string { return link(t, "gone", filepath.Join(d, "l")) }},
		{"group-writable", false, func(t *testing.T, d string) string { return exe(t, filepath.Join(d, "q"), 0o775) }},
		{"world-writable through a link", false, func(t *testing.T, d string) string {
			return link(t, exe(t, filepath.Join(d, "q"), 0o757), filepath.Join(d, "l"))
		}},
		{"group-writable directory", false, func(t *testing.T, d string) string {
			return exe(t, filepath.Join(dir(t, filepath.Join(d, "b"), 0o770), "q"), 0o755)
		}},
		{"not executable", false, func(t *testing.T, d string) string { return exe(t, filepath.Join(d, "q"), 0o644) }},
		{"directory", false, func(t *testing.T, d string) string { return dir(t, filepath.Join(d, "q"), 0o755) }},
		{"file under a file", false, func(t *testing.T, d string) string { return exe(t, filepath.Join(d, "q"), 0o755) + "/x" }},
		{"link loop", false, func(t *testing.T, d string) string {
			link(t, "b", filepath.Join(d, "a"))
			return link(t, "a", filepath.Join(d, "b"))
		}},
		{"file of another user", true, func(t *testing.T, d string) string {
			p := exe(t, filepath.Join(d, "q"), 0o755)
			must(t, os.Chown(p, nobody, nobody))
			return p
		}},
		{"link to a file of another user", true, func(t *testing.T, d string) string {
			p := exe(t, filepath.Join(d, "q"), 0o755)
			must(t, os.Chown(p, nobody, nobody))
			return link(t, p, filepath.Join(d, "l"))
		}},
		{"link of another user", true, func(t *testing.T, d string) string {
			l := link(t, exe(t, filepath.Join(d, "q"), 0o755), filepath.Join(d, "l"))
			must(t, os.Lchown(l, nobody, nobody))
			return l
		}},
		{"directory of another user", true, func(t *testing.T, d string) string {
			b := dir(t, filepath.Join(d, "b"), 0o755)
			p := exe(t, filepath.Join(b, "q"), 0o755)
			must(t, os.Chown(b, nobody, nobody))
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("gives a file to another user (uid 65534): run as root (scripts/test does in CI)")
			}
			v := tc.setup(t, t.TempDir())
			want, wantErr := qemu.CheckBinary(v)
			got, gotErr := checkQEMUEnv(v)
			if got != want || (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("%s=%q: testvm says %q, %v\ngatevisor says %q, %v", QEMUEnv, v, got, gotErr, want, wantErr)
			}
			if errors.Is(gotErr, fs.ErrNotExist) != errors.Is(wantErr, fs.ErrNotExist) {
				t.Errorf("%s=%q: testvm's error %v and gatevisor's %v differ on fs.ErrNotExist", QEMUEnv, v, gotErr, wantErr)
			}
			if gotErr != nil {
				t.Log(gotErr)
			}
		})
	}
}

// TestFindQEMUHonoursEnv checks that a bad QEMUEnv is an error naming the
// variable, never a fall back to $PATH.
func TestFindQEMUHonoursEnv(t *testing.T) {
	t.Setenv(QEMUEnv, "qemu-system-x86_64")
	if p, _, err := findQEMU(); err == nil {
		t.Fatalf("findQEMU() with %s=qemu-system-x86_64 = %q, want an error", QEMUEnv, p)
	}
}
