package safefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestDirCreatesAndAccepts(t *testing.T) {
	base := t.TempDir()
	d := filepath.Join(base, "a", "b", "c")
	if err := Dir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b"), d} {
		fi, err := os.Lstat(p)
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v", p, fi, err)
		}
	}
	if err := Dir(d, 0o700); err != nil {
		t.Fatalf("existing dir refused: %v", err)
	}
	// A link the user made on the way is followed.
	if err := os.Symlink(filepath.Join(base, "a"), filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	if err := Dir(filepath.Join(base, "link", "b", "x"), 0o700); err != nil {
		t.Fatalf("own link on the way refused: %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "a", "b", "x")); err != nil {
		t.Fatal(err)
	}
}

func TestRefusals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to plant files owned by another user (chown); the CI runs as root")
	}
	const other = 12345
	cases := []struct {
		name  string
		setup func(t *testing.T, base string) string // returns the path to open or create
		file  bool
		want  string
	}{
		{"dir is a symlink", func(t *testing.T, base string) string {
			must(t, os.Mkdir(filepath.Join(base, "elsewhere"), 0o700))
			must(t, os.Symlink(filepath.Join(base, "elsewhere"), filepath.Join(base, "vm")))
			return filepath.Join(base, "vm")
		}, false, "symbolic link"},
		{"dir owned by another user", func(t *testing.T, base string) string {
			p := filepath.Join(base, "vm")
			must(t, os.Mkdir(p, 0o700))
			must(t, os.Chown(p, other, other))
			return p
		}, false, "belongs to uid 12345"},
		{"dir writable by others", func(t *testing.T, base string) string {
			p := filepath.Join(base, "vm")
			must(t, os.Mkdir(p, 0o700))
			must(t, os.Chmod(p, 0o777))
			return p
		}, false, "writable by group or others"},
		{"parent writable by others, not sticky", func(t *testing.T, base string) string {
			p := filepath.Join(base, "open")
			must(t, os.Mkdir(p, 0o700))
			must(t, os.Chmod(p, 0o777))
			return filepath.Join(p, "vm")
		}, false, "not sticky"},
		{"link on the way planted by another user", func(t *testing.T, base string) string {
			must(t, os.Mkdir(filepath.Join(base, "real"), 0o700))
			l := filepath.Join(base, "l")
			must(t, os.Symlink(filepath.Join(base, "real"), l))
			must(t, os.Lchown(l, other, other))
			return filepath.Join(l, "vm")
		}, false, "belongs to uid 12345"},
		{"file is a symlink", func(t *testing.T, base string) string {
			victim := filepath.Join(base, "victim")
			must(t, os.WriteFile(victim, nil, 0o600))
			must(t, os.Symlink(victim, filepath.Join(base, "audit.jsonl")))
			return filepath.Join(base, "audit.jsonl")
		}, true, "symbolic link"},
		{"file owned by another user", func(t *testing.T, base string) string {
			p := filepath.Join(base, "console.log")
			must(t, os.WriteFile(p, nil, 0o600))
			must(t, os.Chown(p, other, other))
			return p
		}, true, "belongs to uid 12345"},
		{"file writable by others", func(t *testing.T, base string) string {
			p := filepath.Join(base, "console.log")
			must(t, os.WriteFile(p, nil, 0o600))
			must(t, os.Chmod(p, 0o666))
			return p
		}, true, "writable by group or others"},
		{"file is a FIFO", func(t *testing.T, base string) string {
			p := filepath.Join(base, "events.jsonl")
			must(t, mkfifo(p))
			return p
		}, true, "FIFO"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			p := c.setup(t, base)
			var err error
			if c.file {
				var f *os.File
				f, err = OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NONBLOCK, 0o600)
				if f != nil {
					f.Close()
				}
			} else {
				err = Dir(p, 0o700)
			}
			if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "refusing") {
				t.Fatalf("got %v, want an ErrUnsafe naming %q", err, c.want)
			}
		})
	}
}

func TestOpenFileCreates(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state", "console.log")
	f, err := OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%v %v", fi, err)
	}
	if err := WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCheckRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	must(t, mkfifo(fifo))
	if err := CheckRegular(fifo); err == nil || !strings.Contains(err.Error(), "FIFO") {
		t.Fatalf("fifo: %v", err)
	}
	if err := CheckRegular("/dev/zero"); err == nil || !strings.Contains(err.Error(), "character device") {
		t.Fatalf("/dev/zero: %v", err)
	}
	if err := CheckRegular(dir); err == nil {
		t.Fatal("a directory passed")
	}
	f := filepath.Join(dir, "f")
	must(t, os.WriteFile(f, nil, 0o600))
	if err := CheckRegular(f); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
