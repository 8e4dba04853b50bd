package vmdir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiserver"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// other is the uid (and gid) that plants files in these tests.
const other = 12345

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to plant files owned by another user (chown); the CI runs as root")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// wantUnsafe checks that err refuses path for why, as safefile does.
func wantUnsafe(t *testing.T, err error, path, why string) {
	t.Helper()
	if !errors.Is(err, safefile.ErrUnsafe) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), why) {
		t.Fatalf("got %v; want a refusal (safefile.ErrUnsafe) of %s naming %q", err, path, why)
	}
}

// TestRootRefusals plants the runtime root: a link or another user's
// directory is refused, naming the path and the fix; our own root that
// others may write to is tightened, not refused.
func TestRootRefusals(t *testing.T) {
	t.Run("ours, writable by others, is tightened", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "run")
		must(t, os.Mkdir(root, 0o700))
		must(t, os.Chmod(root, 0o777))
		t.Setenv("GATEVISOR_RUNTIME_DIR", root)
		got, err := Root()
		must(t, err)
		fi, err := os.Stat(got)
		must(t, err)
		if fi.Mode().Perm() != 0o755 {
			t.Fatalf("root mode %04o, want 0755 (go-w)", fi.Mode().Perm())
		}
	})
	t.Run("created 0700", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "a", "run")
		t.Setenv("GATEVISOR_RUNTIME_DIR", root)
		_, err := Root()
		must(t, err)
		fi, err := os.Stat(root)
		must(t, err)
		if fi.Mode().Perm() != 0o700 {
			t.Fatalf("root mode %04o, want 0700", fi.Mode().Perm())
		}
	})
	needRoot(t)
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, root string)
		why   string
	}{
		{"a symbolic link", func(t *testing.T, root string) {
			elsewhere := filepath.Join(filepath.Dir(root), "elsewhere")
			must(t, os.Mkdir(elsewhere, 0o700))
			must(t, os.Symlink(elsewhere, root))
		}, "symbolic link"},
		{"another user's", func(t *testing.T, root string) {
			must(t, os.Mkdir(root, 0o700))
			must(t, os.Chown(root, other, other))
		}, "belongs to uid 12345"},
		{"another user's, open to all", func(t *testing.T, root string) {
			must(t, os.Mkdir(root, 0o700))
			must(t, os.Chmod(root, 0o777))
			must(t, os.Chown(root, other, other))
		}, "belongs to uid 12345"},
		{"in a directory others can write", func(t *testing.T, root string) {
			must(t, os.Chmod(filepath.Dir(root), 0o777))
		}, "writable by group or others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "run")
			tc.plant(t, root)
			t.Setenv("GATEVISOR_RUNTIME_DIR", root)
			_, err := Root()
			wantUnsafe(t, err, filepath.Dir(root), tc.why)
			if !strings.Contains(err.Error(), "GATEVISOR_RUNTIME_DIR") {
				t.Errorf("the error names no fix: %v", err)
			}
			if tc.name == "another user's, open to all" {
				if got := perm(t, root); got != 0o777 {
					t.Errorf("another user's root was changed to %04o", got)
				}
			}
		})
	}
}

// TestVMDirRefusals plants the VM directory, its lock and state.json:
// Acquire, WriteState and Lookup refuse them with the path and the fix,
// and never write through a link.
func TestVMDirRefusals(t *testing.T) {
	needRoot(t)
	victim := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "victim")
		must(t, os.WriteFile(p, []byte("precious"), 0o600))
		return p
	}
	checkVictim := func(t *testing.T, p string) {
		t.Helper()
		if b, err := os.ReadFile(p); err != nil || string(b) != "precious" {
			t.Fatalf("the link's target was touched: %q, %v", b, err)
		}
	}
	t.Run("VM dir is a symbolic link", func(t *testing.T) {
		root := t.TempDir()
		elsewhere := t.TempDir()
		must(t, os.Symlink(elsewhere, filepath.Join(root, "vm1")))
		_, err := Acquire(root, "vm1")
		wantUnsafe(t, err, filepath.Join(root, "vm1"), "symbolic link")
		_, err = Lookup(root, "vm1")
		wantUnsafe(t, err, filepath.Join(root, "vm1"), "symbolic link")
	})
	t.Run("VM dir is another user's", func(t *testing.T) {
		root := t.TempDir()
		p := filepath.Join(root, "vm1")
		must(t, os.Mkdir(p, 0o700))
		must(t, os.WriteFile(filepath.Join(p, LockFile), nil, 0o600))
		must(t, os.Chown(p, other, other))
		_, err := Acquire(root, "vm1")
		wantUnsafe(t, err, p, "belongs to uid 12345")
		_, err = Lookup(root, "vm1")
		wantUnsafe(t, err, p, "belongs to uid 12345")
		if l, err := List(root); err != nil || len(l) != 0 {
			t.Fatalf("List = %+v, %v; want the planted directory left out", l, err)
		}
	})
	t.Run("lock is a symbolic link", func(t *testing.T) {
		root := t.TempDir()
		v := victim(t)
		p := filepath.Join(root, "vm1")
		must(t, os.Mkdir(p, 0o700))
		must(t, os.Symlink(v, filepath.Join(p, LockFile)))
		_, err := Acquire(root, "vm1")
		wantUnsafe(t, err, filepath.Join(p, LockFile), "symbolic link")
		checkVictim(t, v)
	})
	t.Run("lock is another user's", func(t *testing.T) {
		root := t.TempDir()
		p := filepath.Join(root, "vm1")
		must(t, os.Mkdir(p, 0o700))
		must(t, os.WriteFile(filepath.Join(p, LockFile), nil, 0o600))
		must(t, os.Chown(filepath.Join(p, LockFile), other, other))
		_, err := Acquire(root, "vm1")
		wantUnsafe(t, err, filepath.Join(p, LockFile), "belongs to uid 12345")
		_, err = Lookup(root, "vm1")
		wantUnsafe(t, err, filepath.Join(p, LockFile), "belongs to uid 12345")
	})
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, p, victim string)
		why   string
	}{
		{"link", func(t *testing.T, p, victim string) { must(t, os.Symlink(victim, p)) }, "symbolic link"},
		{"another user's", func(t *testing.T, p, _ string) {
			must(t, os.WriteFile(p, []byte(`{"name":"vm1","qemu_pid":1}`), 0o600))
			must(t, os.Chown(p, other, other))
		}, "belongs to uid 12345"},
	} {
		t.Run("state.json is a "+tc.name, func(t *testing.T) {
			root := t.TempDir()
			d, err := Acquire(root, "vm1")
			must(t, err)
			defer d.Release()
			v := victim(t)
			// The temporary file WriteState writes through.
			tmp := d.File(StateFile + ".tmp")
			tc.plant(t, tmp, v)
			wantUnsafe(t, d.WriteState(State{Name: "vm1"}), tmp, tc.why)
			checkVictim(t, v)
			must(t, os.Remove(tmp))
			// state.json itself, as Lookup reads it.
			tc.plant(t, d.File(StateFile), v)
			_, err = Lookup(root, "vm1")
			wantUnsafe(t, err, d.File(StateFile), tc.why)
			// WriteState replaces a planted state.json, never writing
			// through it.
			must(t, d.WriteState(State{Name: "vm1"}))
			checkVictim(t, v)
			fi, err := os.Lstat(d.File(StateFile))
			must(t, err)
			if !fi.Mode().IsRegular() || fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Mode().Perm() != 0o600 {
				t.Fatalf("state.json after WriteState: %v", fi.Mode())
			}
		})
	}
}

// nopVM stands in for a VM; the tests below never call it.
type nopVM struct{ api.VM }

// listenAt creates a unix socket at path with the process umask set to
// umask, as QEMU does with whatever umask it inherits.
func listenAt(t *testing.T, path string, umask int) net.Listener {
	t.Helper()
	old := unix.Umask(umask)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	must(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// openTempDirs makes the directories above dir searchable by others, as
// /run is (t.TempDir's are 0700).
func openTempDirs(t *testing.T, dir string) {
	t.Helper()
	for d := filepath.Dir(dir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		must(t, os.Chmod(d, 0o711))
	}
}

func perm(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	must(t, err)
	return fi.Mode().Perm()
}

// TestShare shares a VM directory the way the monitor does: QEMU's sockets
// made with a careless umask (0777) end up 0600, the lock and state.json
// 0600, the shared API socket 0666, the directory 0711 and the root 0755.
func TestShare(t *testing.T) {
	root := filepath.Join(t.TempDir(), "run")
	t.Setenv("GATEVISOR_RUNTIME_DIR", root)
	root, err := Root()
	must(t, err)
	d, err := Acquire(root, "vm1")
	must(t, err)
	defer d.Release()
	must(t, d.WriteState(State{Name: "vm1", MonitorPID: os.Getpid()}))
	for _, s := range []string{"qmp.sock", "gdb.sock", "serial.sock", "exec.sock", "net.sock"} {
		listenAt(t, d.File(s), 0)
	}
	must(t, os.WriteFile(d.File("console.log"), nil, 0o644))
	srv := apiserver.New(nopVM{}, apiserver.Options{Shared: true})
	must(t, srv.Listen(d.File(APISocket)))
	defer srv.Shutdown(context.Background())

	// t.TempDir's parents are 0700: others could not reach the socket.
	if err := d.Share(); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "GATEVISOR_RUNTIME_DIR") {
		t.Fatalf("Share below a closed directory: %v, want ErrUnreachable naming the fix", err)
	}
	if got := perm(t, d.Path); got != 0o700 {
		t.Fatalf("a refused Share changed the directory to %04o", got)
	}
	openTempDirs(t, root)
	must(t, d.Share())
	want := map[string]os.FileMode{
		root: 0o755, d.Path: 0o711, d.File(LockFile): 0o600, d.File(StateFile): 0o600, d.File(APISocket): 0o666,
		d.File("qmp.sock"): 0o600, d.File("gdb.sock"): 0o600, d.File("serial.sock"): 0o600, d.File("exec.sock"): 0o600,
		d.File("net.sock"): 0o600, d.File("console.log"): 0o600,
	}
	got := map[string]os.FileMode{}
	for p := range want {
		got[p] = perm(t, p)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("modes after Share (-want +got):\n%s", diff)
	}
	// A later Acquire of the same name (after kill -9) closes it again.
	d.lock.Close()
	d.lock = nil
	d2, err := Acquire(root, "vm1")
	must(t, err)
	defer d2.Release()
	if got := perm(t, d2.Path); got != 0o700 {
		t.Errorf("re-acquired directory is %04o, want 0700", got)
	}
}

// TestOtherUserSeesShared runs, as another uid, what that user's CLI does
// with root's VMs: it finds the shared one live through its API socket and
// the private one as private, lists both marked root's, and can open
// nothing else in the shared directory.
func TestOtherUserSeesShared(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	openTempDirs(t, filepath.Join(tmp, "x"))
	must(t, os.Chmod(tmp, 0o711))
	root := filepath.Join(tmp, "run")
	t.Setenv("GATEVISOR_RUNTIME_DIR", root)
	root, err := Root()
	must(t, err)
	shared, err := Acquire(root, "shared")
	must(t, err)
	defer shared.Release()
	must(t, shared.WriteState(State{Name: "shared", MonitorPID: os.Getpid()}))
	listenAt(t, shared.File("gdb.sock"), 0)
	srv := apiserver.New(nopVM{}, apiserver.Options{Shared: true, Authorize: func(context.Context, api.Caller, string) error { return nil }})
	must(t, srv.Listen(shared.File(APISocket)))
	defer srv.Shutdown(context.Background())
	must(t, shared.Share())
	private, err := Acquire(root, "private")
	must(t, err)
	defer private.Release()

	// The other user's own runtime root, empty.
	userRun := filepath.Join(tmp, "user")
	must(t, os.Mkdir(userRun, 0o700))
	must(t, os.Chown(userRun, other, other))
	bin := filepath.Join(tmp, "vmdir.test")
	data, err := os.ReadFile(os.Args[0])
	must(t, err)
	must(t, os.WriteFile(bin, data, 0o755))
	cmd := exec.Command(bin, "-test.run=^TestHelperOtherUser$")
	cmd.Dir = "/"
	cmd.Env = []string{"GATEVISOR_TEST_SYSTEM_ROOT=" + root, "XDG_RUNTIME_DIR=" + userRun, "TMPDIR=" + userRun}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: other, Gid: other}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as uid %d: %v\n%s", other, err, out)
	}
	_, res, ok := strings.Cut(string(out), "RESULT ")
	if !ok {
		t.Fatalf("no result:\n%s", out)
	}
	res, _, _ = strings.Cut(res, "\n")
	var got map[string]string
	must(t, json.Unmarshal([]byte(res), &got))
	want := map[string]string{
		"find shared":  "live=true private=false owner=0",
		"find private": "live=false private=true owner=0",
		"find none":    "not found",
		"list":         "private:0:private shared:0:live",
		"api socket":   "connected",
		"gdb socket":   "permission denied",
		"lock":         "permission denied",
		"state.json":   "permission denied",
		"readdir":      "permission denied",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("what uid %d sees (-want +got):\n%s", other, diff)
	}
	// Nothing of root's was touched: the lock is still held and the
	// directories are as they were.
	if e, err := Lookup(root, "shared"); err != nil || !e.Live {
		t.Errorf("root's VM after the other user looked: %+v, %v", e, err)
	}
	if got := perm(t, private.Path); got != 0o700 {
		t.Errorf("private VM directory is %04o", got)
	}
}

// TestHelperOtherUser is the other user of TestOtherUserSeesShared.
func TestHelperOtherUser(t *testing.T) {
	sys := os.Getenv("GATEVISOR_TEST_SYSTEM_ROOT")
	if sys == "" {
		t.Skip("helper process for TestOtherUserSeesShared; runs only when that test starts it")
	}
	systemRoot = sys
	res := map[string]string{}
	for _, name := range []string{"shared", "private", "none"} {
		e, err := Find(name)
		switch {
		case errors.Is(err, ErrNotFound):
			res["find "+name] = "not found"
		case err != nil:
			res["find "+name] = err.Error()
		default:
			res["find "+name] = fmt.Sprintf("live=%v private=%v owner=%d", e.Live, e.Private, e.Owner)
		}
	}
	l, err := ListAll()
	if err != nil {
		res["list"] = err.Error()
	} else {
		var s []string
		for _, e := range l {
			state := "stale"
			switch {
			case e.Private:
				state = "private"
			case e.Live:
				state = "live"
			}
			s = append(s, fmt.Sprintf("%s:%d:%s", e.Name, e.Owner, state))
		}
		res["list"] = strings.Join(s, " ")
	}
	dir := filepath.Join(sys, "shared")
	errText := func(err error) string {
		if errors.Is(err, os.ErrPermission) {
			return "permission denied"
		}
		if err == nil {
			return "connected"
		}
		return err.Error()
	}
	dial := func(name string) string {
		c, err := net.Dial("unix", filepath.Join(dir, name))
		if err == nil {
			c.Close()
		}
		return errText(err)
	}
	res["api socket"] = dial(APISocket)
	res["gdb socket"] = dial("gdb.sock")
	_, err = os.Open(filepath.Join(dir, LockFile))
	res["lock"] = errText(err)
	_, err = os.ReadFile(filepath.Join(dir, StateFile))
	res["state.json"] = errText(err)
	_, err = os.ReadDir(dir)
	res["readdir"] = errText(err)
	b, _ := json.Marshal(res)
	fmt.Println("RESULT " + string(b))
}
