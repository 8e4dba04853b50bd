// Package vmdir lays out the private per-VM runtime directories, holds the
// lock that marks a VM as running, and cleans up after a monitor that died
// without cleaning up (kill -9, power loss).
//
// Layout: <root>/<name>/ (0700) holds lock, state.json and the sockets of
// QEMU (qmp, gdb, serial, exec) and of the API. The root is
// $GATEVISOR_RUNTIME_DIR, else $XDG_RUNTIME_DIR/gatevisor, else
// /run/gatevisor for root, else /tmp/gatevisor-<uid>; it must be owned by us
// and closed to others, because the gdbstub socket inside grants full control
// of the guest.
//
// Imported by monitor and cli.
package vmdir

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Files inside a VM directory.
const (
	LockFile  = "lock"
	StateFile = "state.json"
	APISocket = "api.sock"
)

// ErrRunning means a live monitor holds the VM's lock.
var ErrRunning = errors.New("a VM with this name is already running")

// ErrNotFound means no VM directory exists for the name.
var ErrNotFound = errors.New("no such VM")

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,31}$`)

// ValidateName checks a VM name: 1–32 of a-z 0-9 . _ -, starting with a
// letter or digit (it becomes a directory and a QEMU argument).
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid VM name %q: use 1-32 characters a-z 0-9 . _ - starting with a letter or digit", name)
	}
	return nil
}

// Root returns the runtime root, creating it 0700 if needed, and refuses one
// that others can enter.
func Root() (string, error) {
	root := os.Getenv("GATEVISOR_RUNTIME_DIR")
	switch {
	case root != "":
	case os.Getenv("XDG_RUNTIME_DIR") != "":
		root = filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "gatevisor")
	case os.Getuid() == 0:
		root = "/run/gatevisor"
	default:
		root = filepath.Join(os.TempDir(), fmt.Sprintf("gatevisor-%d", os.Getuid()))
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("runtime directory: %w", err)
	}
	if err := checkPrivate(root); err != nil {
		return "", err
	}
	return root, nil
}

func checkPrivate(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("runtime directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("runtime directory %s is not a directory", dir)
	}
	if int(st.Uid) != os.Getuid() {
		return fmt.Errorf("runtime directory %s belongs to uid %d, not to us (uid %d): remove it or set GATEVISOR_RUNTIME_DIR", dir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("runtime directory %s is open to others and cannot be closed: %w", dir, err)
		}
	}
	return nil
}

// State is what a running monitor publishes about itself.
type State struct {
	Name       string    `json:"name"`
	MonitorPID int       `json:"monitor_pid"`
	QEMUPID    int       `json:"qemu_pid,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	ConsoleLog string    `json:"console_log,omitempty"`
}

// Dir is a VM directory whose lock this process holds.
type Dir struct {
	Name string
	Path string
	lock *os.File
}

// Acquire takes the lock of VM name under root, cleaning up stale state left
// by a dead monitor (its QEMU is killed if it is somehow still alive). It
// returns an error wrapping ErrRunning when a live monitor holds the lock.
func Acquire(root, name string) (*Dir, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	path := filepath.Join(root, name)
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("VM directory: %w", err)
	}
	if err := checkPrivate(path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(path, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("VM lock: %w", err)
	}
	// A concurrent probe (List) holds a shared lock for a moment; retry briefly.
	for i := 0; ; i++ {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || i == 20 {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				st, _ := readState(path)
				return nil, fmt.Errorf("%w: %q (monitor pid %d); stop it with 'gatevisor stop %s' or choose another --name", ErrRunning, name, st.MonitorPID, name)
			}
			return nil, fmt.Errorf("VM lock: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := &Dir{Name: name, Path: path, lock: f}
	if err := d.cleanStale(); err != nil {
		d.Release()
		return nil, err
	}
	return d, nil
}

// cleanStale removes what a dead monitor left: its QEMU, if still alive, and
// every file but the lock.
func (d *Dir) cleanStale() error {
	if st, err := readState(d.Path); err == nil && st.QEMUPID > 0 {
		killIfOurs(st.QEMUPID, d.Path)
	}
	ents, err := os.ReadDir(d.Path)
	if err != nil {
		return fmt.Errorf("VM directory: %w", err)
	}
	for _, e := range ents {
		if e.Name() == LockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(d.Path, e.Name())); err != nil {
			return fmt.Errorf("remove stale %s: %w", e.Name(), err)
		}
	}
	return nil
}

// killIfOurs kills pid only if it is a QEMU whose command line names dir,
// so that a recycled pid is never hit.
func killIfOurs(pid int, dir string) {
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !strings.Contains(string(cmdline), dir+"/") || !strings.Contains(string(cmdline), "qemu") {
		return
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	for i := 0; i < 200; i++ {
		if unix.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WriteState publishes st atomically.
func (d *Dir) WriteState(st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.Path, StateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.Path, StateFile)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// File returns the path of name inside the VM directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// Release removes the directory and drops the lock.
func (d *Dir) Release() {
	if d.lock == nil {
		return
	}
	_ = os.RemoveAll(d.Path)
	d.lock.Close()
	d.lock = nil
}

func readState(path string) (State, error) {
	var st State
	b, err := os.ReadFile(filepath.Join(path, StateFile))
	if err != nil {
		return st, err
	}
	if len(b) > 1<<20 {
		return st, errors.New("state file too large")
	}
	err = json.Unmarshal(b, &st)
	return st, err
}

// Entry describes one VM directory.
type Entry struct {
	Name  string
	Path  string
	Live  bool // a monitor holds the lock
	State State
}

// Lookup returns the entry for name.
func Lookup(root, name string) (Entry, error) {
	if err := ValidateName(name); err != nil {
		return Entry{}, err
	}
	path := filepath.Join(root, name)
	if _, err := os.Stat(filepath.Join(path, LockFile)); err != nil {
		return Entry{}, fmt.Errorf("%w: %q (see 'gatevisor ls')", ErrNotFound, name)
	}
	e := Entry{Name: name, Path: path, Live: isLocked(filepath.Join(path, LockFile))}
	e.State, _ = readState(path)
	return e, nil
}

// List returns every VM directory under root, sorted by name.
func List(root string) ([]Entry, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	var out []Entry
	for _, de := range ents {
		if !de.IsDir() || ValidateName(de.Name()) != nil {
			continue
		}
		if e, err := Lookup(root, de.Name()); err == nil {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// isLocked reports whether some process holds the lock exclusively.
func isLocked(lockPath string) bool {
	f, err := os.Open(lockPath)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
