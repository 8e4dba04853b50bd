package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

// TestStateDirRefusals plants the state directory of a VM: a link or
// another user's directory is refused, naming the path and the fix.
func TestStateDirRefusals(t *testing.T) {
	base := t.TempDir()
	t.Setenv("XDG_STATE_HOME", base)
	dir, err := stateDir("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 || dir != filepath.Join(base, "gatevisor", "vms", "vm1") {
		t.Fatalf("stateDir = %s: %v %v", dir, fi, err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to plant files owned by another user (chown); the CI runs as root")
	}
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, dir string)
		why   string
	}{
		{"a symbolic link", func(t *testing.T, dir string) {
			elsewhere := t.TempDir()
			if err := os.Symlink(elsewhere, dir); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"another user's", func(t *testing.T, dir string) {
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, 12345, 12345); err != nil {
				t.Fatal(err)
			}
		}, "belongs to uid 12345"},
		{"under another user's directory", func(t *testing.T, dir string) {
			if err := os.Chown(filepath.Dir(dir), 12345, 12345); err != nil {
				t.Fatal(err)
			}
		}, "belongs to uid 12345"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			t.Setenv("XDG_STATE_HOME", base)
			vms := filepath.Join(base, "gatevisor", "vms")
			if err := os.MkdirAll(vms, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, filepath.Join(vms, "vm2"))
			_, err := stateDir("vm2")
			if !errors.Is(err, safefile.ErrUnsafe) || !strings.Contains(err.Error(), tc.why) || !strings.Contains(err.Error(), vms) || !strings.Contains(err.Error(), "XDG_STATE_HOME") {
				t.Fatalf("got %v; want a refusal naming %q, the path and XDG_STATE_HOME", err, tc.why)
			}
		})
	}
}

// TestClientFor finds a live VM, and names a missing one and one whose
// monitor died.
func TestClientFor(t *testing.T) {
	root := t.TempDir()
	t.Setenv("GATEVISOR_RUNTIME_DIR", root)
	d, err := vmdir.Acquire(root, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Release()
	if _, err := clientFor("vm1"); err != nil {
		t.Fatalf("live VM: %v", err)
	}
	if _, err := clientFor("nope"); !errors.Is(err, vmdir.ErrNotFound) {
		t.Fatalf("missing VM: %v", err)
	}
	// What a monitor killed with -9 leaves: a directory and an unheld lock.
	if err := os.Mkdir(filepath.Join(root, "vm2"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "vm2", vmdir.LockFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := clientFor("vm2"); err == nil || !strings.Contains(err.Error(), `VM "vm2" is not running`) {
		t.Fatalf("stale VM: %v", err)
	}
}

// TestLsText renders every kind of row, with monitor-reported strings that
// attack the table, and checks one line per row and nothing a terminal
// would act on.
func TestLsText(t *testing.T) {
	started := time.Unix(1700000000, 0)
	rows := []lsRow{
		{Name: "mine", Owner: "alice", Live: true, Status: &api.Status{State: api.StateRunning, GuestReady: true, Accel: "kvm", MemMiB: 256, CPUs: 1, MonitorPID: 10, StartedAt: started}},
		{Name: "hostile", Owner: forgedRow, Live: true, Status: &api.Status{State: clearScreen + bidiName, Accel: titleSet + tabName, StartedAt: started}},
		{Name: "shared", Owner: "root", Live: true, errCode: api.CodeForbidden, Error: "vm.status refused"},
		{Name: "closed", Owner: "root", Private: true},
		{Name: "dead", Owner: "alice"},
		{Name: "gone", Owner: "alice", Live: true, Error: "connection refused"},
	}
	var b bytes.Buffer
	if err := printLs(&b, rows, started.Add(90*time.Second)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	checkTerminalSafe(t, out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1+len(rows) {
		t.Fatalf("%d lines for %d rows:\n%s", len(lines), len(rows), out)
	}
	for i, want := range []string{"NAME", "mine", "hostile", "shared", "closed", "dead", "gone"} {
		if !strings.HasPrefix(lines[i], want) {
			t.Errorf("line %d = %q, want it to start with %q", i, lines[i], want)
		}
	}
	for i, want := range []string{"1m30s", `\x1b[2J`, "forbidden", "private", "stale", "unreachable"} {
		if !strings.Contains(lines[i+1], want) {
			t.Errorf("line %d = %q, want %q in it", i+1, lines[i+1], want)
		}
	}
}

func TestOwnerName(t *testing.T) {
	if got := ownerName(0); got != "root" {
		t.Errorf("ownerName(0) = %q", got)
	}
	if got := ownerName(4000000000); got != "uid 4000000000" {
		t.Errorf("ownerName(4000000000) = %q", got)
	}
}
