package qemu

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// otherUID owns the files that belong to "another user" (nobody).
const otherUID = 65534

// binaryCase builds one file layout in dir and returns the value of
// GATEVISOR_QEMU to check and the path CheckBinary should return ("" when it
// should refuse).
type binaryCase struct {
	name     string
	root     bool // needs root: it gives a file to another user
	setup    func(t *testing.T, dir string) (value, want string)
	wantErr  string  // in the message
	wantIs   []error // errors.Is targets
	wantPass bool
}

func writeExe(t *testing.T, p string, mode fs.FileMode) string {
	t.Helper()
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func mkdir(t *testing.T, p string, mode fs.FileMode) string {
	t.Helper()
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func symlink(t *testing.T, target, p string) string {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func chown(t *testing.T, p string, link bool) {
	t.Helper()
	chown := os.Chown
	if link {
		chown = os.Lchown
	}
	if err := chown(p, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
}

// binaryCases are CheckBinary's cases (internal/testvm finds QEMU with
// FindBinary too).
var binaryCases = []binaryCase{
	{
		name: "executable file",
		setup: func(t *testing.T, dir string) (string, string) {
			p := writeExe(t, filepath.Join(dir, "qemu"), 0o755)
			return p, p
		},
		wantPass: true,
	},
	{
		name: "symbolic link to an executable file",
		setup: func(t *testing.T, dir string) (string, string) {
			p := writeExe(t, filepath.Join(mkdir(t, filepath.Join(dir, "real"), 0o755), "qemu"), 0o700)
			return symlink(t, "real/qemu", filepath.Join(dir, "link")), p
		},
		wantPass: true,
	},
	{
		name: "file in a sticky world-writable directory",
		setup: func(t *testing.T, dir string) (string, string) {
			p := writeExe(t, filepath.Join(mkdir(t, filepath.Join(dir, "tmp"), 0o777|fs.ModeSticky), "qemu"), 0o755)
			return p, p
		},
		wantPass: true,
	},
	{
		name:    "empty",
		setup:   func(t *testing.T, dir string) (string, string) { return "", "" },
		wantErr: "set but empty",
	},
	{
		name:    "relative path",
		setup:   func(t *testing.T, dir string) (string, string) { return "bin/qemu-system-x86_64", "" },
		wantErr: "not an absolute path",
	},
	{
		name:    "missing file",
		setup:   func(t *testing.T, dir string) (string, string) { return filepath.Join(dir, "nope", "qemu"), "" },
		wantErr: "nope: file does not exist: install QEMU 10.0 with 'scripts/install-deps --qemu-10'",
		wantIs:  []error{fs.ErrNotExist},
	},
	{
		name: "dangling symbolic link",
		setup: func(t *testing.T, dir string) (string, string) {
			return symlink(t, "gone", filepath.Join(dir, "link")), ""
		},
		wantErr: "gone: file does not exist",
		wantIs:  []error{fs.ErrNotExist},
	},
	{
		name: "group-writable file",
		setup: func(t *testing.T, dir string) (string, string) {
			return writeExe(t, filepath.Join(dir, "qemu"), 0o775), ""
		},
		wantErr: "is writable by group or others (mode 0775), so another user could replace what gatevisor runs: chmod go-w",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "symbolic link to a world-writable file",
		setup: func(t *testing.T, dir string) (string, string) {
			writeExe(t, filepath.Join(dir, "real"), 0o757)
			return symlink(t, filepath.Join(dir, "real"), filepath.Join(dir, "link")), ""
		},
		wantErr: "(the link's target) is writable by group or others (mode 0757)",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "group-writable directory on the way",
		setup: func(t *testing.T, dir string) (string, string) {
			return writeExe(t, filepath.Join(mkdir(t, filepath.Join(dir, "bin"), 0o775), "qemu"), 0o755), ""
		},
		wantErr: "(a directory on the way) is writable by group or others (mode 0775) and not sticky",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "not executable",
		setup: func(t *testing.T, dir string) (string, string) {
			return writeExe(t, filepath.Join(dir, "qemu"), 0o644), ""
		},
		wantErr: "is not executable (mode 0644): chmod +x",
	},
	{
		name: "directory",
		setup: func(t *testing.T, dir string) (string, string) {
			return mkdir(t, filepath.Join(dir, "qemu"), 0o755), ""
		},
		wantErr: "is not a regular file but a directory",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "file under a file",
		setup: func(t *testing.T, dir string) (string, string) {
			return filepath.Join(writeExe(t, filepath.Join(dir, "qemu"), 0o755), "x"), ""
		},
		wantErr: "is not a directory",
	},
	{
		name: "symbolic link loop",
		setup: func(t *testing.T, dir string) (string, string) {
			symlink(t, "b", filepath.Join(dir, "a"))
			return symlink(t, "a", filepath.Join(dir, "b")), ""
		},
		wantErr: "more than 32 symbolic links",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "file owned by another user",
		root: true,
		setup: func(t *testing.T, dir string) (string, string) {
			p := writeExe(t, filepath.Join(dir, "qemu"), 0o755)
			chown(t, p, false)
			return p, ""
		},
		wantErr: "belongs to uid 65534, neither root nor you",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "symbolic link to a file owned by another user",
		root: true,
		setup: func(t *testing.T, dir string) (string, string) {
			p := writeExe(t, filepath.Join(dir, "real"), 0o755)
			chown(t, p, false)
			return symlink(t, p, filepath.Join(dir, "link")), ""
		},
		wantErr: "real (the link's target) belongs to uid 65534, neither root nor you",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "symbolic link owned by another user to our file",
		root: true,
		setup: func(t *testing.T, dir string) (string, string) {
			p := writeExe(t, filepath.Join(dir, "real"), 0o755)
			l := symlink(t, p, filepath.Join(dir, "link"))
			chown(t, l, true)
			return l, ""
		},
		wantErr: "link (a symbolic link on the way) belongs to uid 65534",
		wantIs:  []error{ErrUnsafeBinary},
	},
	{
		name: "directory on the way owned by another user",
		root: true,
		setup: func(t *testing.T, dir string) (string, string) {
			d := mkdir(t, filepath.Join(dir, "bin"), 0o755)
			p := writeExe(t, filepath.Join(d, "qemu"), 0o755)
			chown(t, d, false)
			return p, ""
		},
		wantErr: "bin (a directory on the way) belongs to uid 65534",
		wantIs:  []error{ErrUnsafeBinary},
	},
}

func TestCheckBinary(t *testing.T) {
	for _, tc := range binaryCases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("gives a file to another user (uid 65534): run as root (scripts/test does in CI)")
			}
			value, want := tc.setup(t, t.TempDir())
			got, err := CheckBinary(value)
			if tc.wantPass {
				if err != nil {
					t.Fatalf("CheckBinary(%q): %v", value, err)
				}
				if got != want {
					t.Errorf("CheckBinary(%q) = %q, want %q", value, got, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckBinary(%q) = %q, want an error with %q", value, got, tc.wantErr)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CheckBinary(%q): %v\nwant it to contain %q", value, err, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), EnvBinary) {
				t.Errorf("CheckBinary(%q): %v\nwant it to name %s first", value, err, EnvBinary)
			}
			for _, target := range tc.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("CheckBinary(%q): %v\nis not %v", value, err, target)
				}
			}
		})
	}
}

func TestFindBinaryHonoursEnv(t *testing.T) {
	dir := t.TempDir()
	exe := writeExe(t, filepath.Join(dir, "qemu"), 0o755)
	t.Setenv(EnvBinary, exe)
	if got, err := FindBinary(); err != nil || got != exe {
		t.Errorf("FindBinary() with %s=%s = %q, %v; want the file", EnvBinary, exe, got, err)
	}
	// A bad selection fails; it never falls back to $PATH.
	t.Setenv("PATH", dir)
	t.Setenv(EnvBinary, "qemu")
	if got, err := FindBinary(); err == nil {
		t.Errorf("FindBinary() with %s=qemu = %q, want an error", EnvBinary, got)
	}
	t.Setenv(EnvBinary, "")
	if got, err := FindBinary(); err == nil {
		t.Errorf("FindBinary() with %s empty = %q, want an error", EnvBinary, got)
	}
}
