package kit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/kit/initramfs"
)

// within fails the test if f has not returned after d: the inputs below
// used to block forever (a FIFO's open waits for a writer, /dev/zero never
// ends).
func within(t *testing.T, d time.Duration, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("still blocked after %v", d)
		return nil
	}
}

func TestInputsRefuseNonRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifo-link")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	var base bytes.Buffer
	w := initramfs.NewWriter(&base)
	w.Dir("etc", 0o755)
	w.Close()
	basePath := filepath.Join(dir, "base")
	if err := os.WriteFile(basePath, base.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")

	for _, tc := range []struct {
		name, want string
		run        func() error
	}{
		{"kernel FIFO", "a FIFO", func() error { return CheckBzImage(fifo) }},
		{"kernel link to FIFO", "a FIFO", func() error { return CheckBzImage(fifoLink) }},
		{"kernel /dev/zero", "a character device", func() error { return CheckBzImage("/dev/zero") }},
		{"base initrd FIFO", "a FIFO", func() error { return AppendFiles(fifo, nil, out) }},
		{"base initrd /dev/zero", "a character device", func() error { return AppendFiles("/dev/zero", nil, out) }},
		{"base initrd directory", "a directory", func() error { return AppendFiles(dir, nil, out) }},
		{"--add FIFO", "not a regular file", func() error {
			return AppendFiles(basePath, []FileSpec{{Host: fifo, Guest: "/x"}}, out)
		}},
		{"--add link to FIFO", "not a regular file", func() error {
			return AppendFiles(basePath, []FileSpec{{Host: fifoLink, Guest: "/x"}}, out)
		}},
		{"--add /dev/zero", "not a regular file", func() error {
			return AppendFiles(basePath, []FileSpec{{Host: "/dev/zero", Guest: "/x"}}, out)
		}},
		// A file swapped for a FIFO after it was looked at.
		{"swapped for a FIFO", "no longer a regular file", func() error {
			return addRegular(initramfs.NewWriter(&bytes.Buffer{}), FileSpec{Host: fifo, Guest: "/x"}, fifo, "x", 0o644, 1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := within(t, 10*time.Second, tc.run)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if err := CheckBzImage(fifo); !errors.Is(err, ErrNotBzImage) {
		t.Errorf("CheckBzImage(FIFO) = %v, want ErrNotBzImage", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused build left %s: %v", out, err)
	}
}
