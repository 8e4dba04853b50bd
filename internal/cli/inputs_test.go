package cli

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// TestInputFilesRefuseNonRegular: a dump, kernel, policy, include, cases or
// event file that is a FIFO, a device or a directory is refused at once.
// Before, opening a FIFO blocked until a writer came, and /dev/zero was read
// until a cap or forever.
func TestInputFilesRefuseNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		run        func() error
	}{
		{"ids --dump FIFO", "a FIFO", func() error { _, _, err := openDump(fifo, "", linux.ProfileOptions{}); return err }},
		{"ids --symbols FIFO", "a FIFO", func() error { _, err := profileOptions(fifo); return err }},
		{"ids --dump /dev/zero", "a character device", func() error { _, _, err := openDump("/dev/zero", "", linux.ProfileOptions{}); return err }},
		{"ids --dump directory", "a directory", func() error { _, _, err := openDump(dir, "", linux.ProfileOptions{}); return err }},
		{"ids --kernel FIFO", "--kernel: " + fifo + " is not a regular file", func() error {
			dump := filepath.Join(dir, "dump")
			if err := os.WriteFile(dump, []byte("not a dump"), 0o600); err != nil {
				return err
			}
			_, _, err := openDump(dump, fifo, linux.ProfileOptions{})
			return err
		}},
		{"policy FILE FIFO", "a FIFO", func() error { _, err := loadPolicy(fifo); return err }},
		{"policy FILE /dev/zero", "a character device", func() error { _, err := loadPolicy("/dev/zero"); return err }},
		{"policy include FIFO", "not a regular file", func() error {
			main := filepath.Join(dir, "main.policy")
			if err := os.WriteFile(main, []byte("include \"fifo\";\n"), 0o600); err != nil {
				return err
			}
			_, err := loadPolicy(main)
			return err
		}},
		{"policy test CASES FIFO", "a FIFO", func() error { _, err := readCases(fifo); return err }},
		{"policy explain @EVENT FIFO", "a FIFO", func() error { _, err := readCapped(fifo, 1<<20); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- tc.run() }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("still blocked after 10s")
			}
		})
	}
}
