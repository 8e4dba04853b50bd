package vmdir

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"vm1", true}, {"a.b_c-d", true}, {"", false}, {"-x", false}, {"UPPER", false}, {"a/b", false}, {"..", false}, {strings.Repeat("a", 33), false}} {
		if err := ValidateName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestAcquireIsExclusiveAndListed(t *testing.T) {
	root := t.TempDir()
	d, err := Acquire(root, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteState(State{Name: "vm1", MonitorPID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(root, "vm1"); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Acquire: %v, want ErrRunning", err)
	}
	list, err := List(root)
	if err != nil || len(list) != 1 || !list[0].Live || list[0].State.MonitorPID != os.Getpid() {
		t.Fatalf("List = %+v, %v", list, err)
	}
	d.Release()
	if _, err := os.Stat(filepath.Join(root, "vm1")); !os.IsNotExist(err) {
		t.Fatalf("Release left the directory: %v", err)
	}
}

// TestStaleStateIsCleaned simulates a monitor killed with -9: its directory,
// state and a QEMU-like process remain; the next Acquire kills that process
// (it names the directory) and removes the files.
func TestStaleStateIsCleaned(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "vm1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A stand-in for QEMU: this test binary, sleeping, with a command line
	// that names QEMU and the VM directory.
	sleeper := exec.Command(os.Args[0], "-test.run=^TestHelperSleeper$", "--", "qemu-system-x86_64", dir+"/qmp.sock")
	sleeper.Env = append(os.Environ(), "GATEVISOR_TEST_SLEEPER=1")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sleeper.Wait() }()
	_ = os.WriteFile(filepath.Join(dir, "qmp.sock"), nil, 0o600)
	_ = os.WriteFile(filepath.Join(dir, LockFile), nil, 0o600)
	st := `{"name":"vm1","monitor_pid":999999,"qemu_pid":` + strconv.Itoa(sleeper.Process.Pid) + `}`
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(st), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := Lookup(root, "vm1")
	if err != nil || e.Live {
		t.Fatalf("stale VM looks live: %+v, %v", e, err)
	}
	d, err := Acquire(root, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Release()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != LockFile {
		t.Fatalf("stale files left: %v", ents)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the stale QEMU stand-in was not killed: %v", err)
	}
}

func TestHelperSleeper(t *testing.T) {
	if os.Getenv("GATEVISOR_TEST_SLEEPER") != "1" {
		t.Skip("helper process for TestStaleStateIsCleaned; runs only when that test starts it")
	}
	time.Sleep(60 * time.Second)
}
