package safefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCreateFor(t *testing.T) {
	dir := t.TempDir()
	self := uint32(os.Geteuid())
	p := filepath.Join(dir, "dump.elf")
	f, err := CreateFor(p, self, uint32(os.Getegid()))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("created file: %v %v", fi, err)
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"exists", p, "exists"},
		{"relative", "dump.elf", "not an absolute path"},
		{"a directory", dir + "/", "exists"},
	} {
		if _, err := CreateFor(tc.path, self, 0); err == nil || !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A symbolic link anywhere on the way is refused, not followed.
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateFor(filepath.Join(link, "x.elf"), self, 0); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("through a symlinked directory: %v", err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(real, "last")); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateFor(filepath.Join(real, "last"), self, 0); err == nil {
		t.Error("a symbolic link as the file itself was followed")
	}
	if os.Geteuid() == 0 {
		// For another user: the directory must be theirs.
		if _, err := CreateFor(filepath.Join(real, "y.elf"), 1000, 1000); err == nil || !strings.Contains(err.Error(), "not to the requester (uid 1000)") {
			t.Errorf("root's directory for uid 1000: %v", err)
		}
		theirs := filepath.Join(dir, "theirs")
		if err := os.Mkdir(theirs, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(theirs, 1000, 1000); err != nil {
			t.Fatal(err)
		}
		f, err := CreateFor(filepath.Join(theirs, "z.elf"), 1000, 1000)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		f.Close()
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("the dump is not uid 1000's: %+v", fi.Sys())
		}
		if err := os.Chmod(theirs, 0o777); err != nil {
			t.Fatal(err)
		}
		if _, err := CreateFor(filepath.Join(theirs, "w.elf"), 1000, 1000); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("a world-writable directory: %v", err)
		}
	}
}
