package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadInput checks that each user mistake gives one clear line that
// names the fix, and a non-zero exit.
func TestBadInput(t *testing.T) {
	needVM(t)
	notKernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(notKernel, []byte(strings.Repeat("not a kernel\n", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown flag", []string{"run", "--bogus"}, []string{"unknown flag: --bogus", "gatevisor run --help"}},
		{"memory too small", []string{"run", "--name", "bad1", "--mem", "16M"}, []string{"too small", "at least 64M"}},
		{"memory too large", []string{"run", "--name", "bad2", "--mem", "4096G"}, []string{"too large"}},
		{"memory unparsable", []string{"run", "--name", "bad3", "--mem", "lots"}, []string{"--mem", "256M"}},
		{"bad accel", []string{"run", "--name", "bad4", "--accel", "xen"}, []string{"use auto, kvm or tcg"}},
		{"bad name", []string{"run", "--name", "Bad/Name"}, []string{"invalid VM name"}},
		{"kernel not bzImage", []string{"run", "--name", "bad5", "--kernel", notKernel}, []string{"not an x86 bzImage", "--kernel"}},
		{"kernel missing", []string{"run", "--name", "bad6", "--kernel", "/no/such/vmlinuz"}, []string{"/no/such/vmlinuz"}},
		{"initrd without kernel", []string{"run", "--name", "bad7", "--initrd", "/x"}, []string{"--initrd needs --kernel"}},
		{"bad add", []string{"run", "--name", "bad8", "--add", "nocolon"}, []string{"HOST:GUEST"}},
		{"status of unknown VM", []string{"status", "nosuchvm"}, []string{"no such VM", "gatevisor ls"}},
		{"exec without dash", []string{"exec", "nosuchvm", "ls"}, []string{"--"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := gv(t, time.Minute, tc.args...)
			if r.code == 0 {
				t.Fatalf("gatevisor %v succeeded; want an error", tc.args)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("gatevisor %v: stderr %q lacks %q", tc.args, r.stderr, w)
				}
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 2 {
				t.Errorf("error is %d lines, want one:\n%s", n+1, r.stderr)
			}
		})
	}
}

// TestMissingTools runs gatevisor with a PATH that lacks QEMU, then one
// with QEMU but without apt-get and with an empty kit cache.
func TestMissingTools(t *testing.T) {
	needVM(t)
	empty := t.TempDir()
	r := gvEnv(t, time.Minute, []string{"PATH=" + empty}, "run", "--name", "noqemu")
	if r.code == 0 || !strings.Contains(r.stderr, "apt-get install -y qemu-system-x86") {
		t.Fatalf("without QEMU: exit %d, stderr %q", r.code, r.stderr)
	}
	qdir := t.TempDir()
	if err := os.Symlink("/usr/bin/qemu-system-x86_64", filepath.Join(qdir, "qemu-system-x86_64")); err != nil {
		t.Fatal(err)
	}
	r = gvEnv(t, time.Minute, []string{"PATH=" + qdir, "XDG_CACHE_HOME=" + t.TempDir()}, "run", "--name", "noapt")
	if r.code == 0 || !strings.Contains(r.stderr, "apt-get not found") {
		t.Fatalf("without apt-get: exit %d, stderr %q", r.code, r.stderr)
	}
}
