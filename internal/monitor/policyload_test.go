package monitor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCallersOwn: a policy loaded by a caller other than the owner or
// root includes only that caller's own files.
func TestCallersOwn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another uid")
	}
	dir := t.TempDir()
	write := func(name, text string, uid int) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	write("mine.policy", "default: allow;\n", 1000)
	write("sub/also.policy", "default: allow;\n", 1000)
	write("roots.policy", "secret\n", 0)
	if err := os.Symlink(filepath.Join(dir, "roots.policy"), filepath.Join(dir, "link.policy")); err != nil {
		t.Fatal(err)
	}
	r := callersOwn(dir, 1000)
	for _, ok := range []string{"mine.policy", "sub/also.policy"} {
		if _, b, err := r("top.policy", ok); err != nil || !strings.Contains(string(b), "default") {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []struct{ name, want string }{
		{"roots.policy", "not a regular file of uid 1000"},
		{"link.policy", "only its own files"},
		{"../x.policy", "outside the policy directory"},
		{"/etc/shadow", "no such file"}, // joined below dir: etc/shadow there
	} {
		if _, b, err := r("top.policy", bad.name); err == nil || !strings.Contains(err.Error(), bad.want) || strings.Contains(string(b), "secret") {
			t.Errorf("%s: %v, want %q", bad.name, err, bad.want)
		}
	}
}
