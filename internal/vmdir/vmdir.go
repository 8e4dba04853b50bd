// Package vmdir lays out the per-VM runtime directories, holds the lock
// that marks a VM as running, and cleans up after a monitor that died
// without cleaning up (kill -9, power loss).
//
// Layout: <root>/<name>/ holds lock, state.json, the sockets of QEMU (qmp,
// gdb, serial, exec) and of the monitor (the network's, the API's). The
// root is $GATEVISOR_RUNTIME_DIR, else /run/gatevisor (SystemRoot) for
// root, else $XDG_RUNTIME_DIR/gatevisor, else /tmp/gatevisor-<uid>.
//
// Who can reach what: a VM directory is 0700, because the gdbstub socket
// inside grants full control of the guest. A VM whose API a policy opens to
// other users is shared (Dir.Share): everything in its directory but the
// API socket is made owner-only (0600), then the directory becomes 0711
// (others can reach the API socket by name, not list or open anything
// else) and the root 0755 (others can list the VM names, which QEMU's
// command line shows anyway).
//
// Nothing here follows a symbolic link or uses a directory or file that
// belongs to another user (internal/safefile): the root and the VM
// directories are created and checked through safefile, the lock and
// state.json are opened without following links and must be ours. A root we
// own that others may write to is tightened (go-w); one we do not own is
// refused. Another user's root (root's /run/gatevisor, seen by the CLI of
// a user) is only looked at: no lock, no cleanup, no file opened; whether
// its VM is live is asked of its API socket.
package vmdir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// Files inside a VM directory.
const (
	LockFile  = "lock"
	StateFile = "state.json"
	APISocket = "api.sock"
)

// SystemRoot is root's runtime root; a user's CLI also looks for VMs there.
const SystemRoot = "/run/gatevisor"

// systemRoot is SystemRoot, but for tests.
var systemRoot = SystemRoot

// Modes of a VM directory and of the root, private and shared.
const (
	dirMode        = 0o700
	sharedDirMode  = 0o711
	sharedRootMode = 0o755
)

// NetworksDir is the runtime root's directory of isolated networks
// (package vnet): not a VM.
const NetworksDir = "net"

// ErrRunning means a live monitor holds the VM's lock.
var ErrRunning = errors.New("a VM with this name is already running")

// ErrNotFound means no VM directory exists for the name.
var ErrNotFound = errors.New("no such VM")

// ErrUnreachable means other users could not reach a shared VM's socket.
var ErrUnreachable = errors.New("other users cannot reach the VM's API socket")

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,31}$`)

// ValidateName checks a VM name: 1–32 of a-z 0-9 . _ -, starting with a
// letter or digit (it becomes a directory and a QEMU argument).
func ValidateName(name string) error {
	if name == NetworksDir {
		return fmt.Errorf("invalid VM name %q: the runtime directory keeps the isolated networks under that name; choose another", name)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid VM name %q: use 1-32 characters a-z 0-9 . _ - starting with a letter or digit", name)
	}
	return nil
}

// Root returns this user's runtime root, creating it 0700 if needed. It
// refuses a root that is a symbolic link or belongs to another user, or
// that lies in a directory others could replace it in; a root of ours that
// others may write to is tightened first.
func Root() (string, error) {
	root := os.Getenv("GATEVISOR_RUNTIME_DIR")
	switch {
	case root != "":
	case os.Geteuid() == 0:
		root = SystemRoot
	case os.Getenv("XDG_RUNTIME_DIR") != "":
		root = filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "gatevisor")
	default:
		root = filepath.Join(os.TempDir(), fmt.Sprintf("gatevisor-%d", os.Geteuid()))
	}
	if err := tightenOwn(root); err != nil {
		return "", fmt.Errorf("runtime directory: %w", err)
	}
	if err := safefile.Dir(root, dirMode); err != nil {
		return "", fmt.Errorf("runtime directory: %w; GATEVISOR_RUNTIME_DIR chooses another runtime directory", err)
	}
	return root, nil
}

// searchesSystemRoot reports whether this user's CLI also looks in
// SystemRoot: not for root (it is root's own) and not when the user chose
// a root with GATEVISOR_RUNTIME_DIR.
func searchesSystemRoot(own string) bool {
	return os.Getenv("GATEVISOR_RUNTIME_DIR") == "" && os.Geteuid() != 0 && filepath.Clean(own) != systemRoot
}

// tightenOwn removes the group and other write bits of directory dir if it
// is ours; it leaves anything else (missing, a link, another user's) for
// safefile to refuse.
func tightenOwn(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 == 0 {
		return nil
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777&^0o022); err != nil {
		return fmt.Errorf("%s is writable by others (mode %04o) and cannot be closed: %w", dir, st.Mode&0o7777, err)
	}
	return nil
}

// chmodOwnDir sets the mode of directory dir, which must be ours and not a
// link, to mode.
func chmodOwnDir(dir string, mode uint32) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if int(st.Uid) != os.Geteuid() {
		return unsafeErr(dir, fmt.Sprintf("it belongs to uid %d, not to you (uid %d)", st.Uid, os.Geteuid()), "remove it (it may have been planted)")
	}
	if st.Mode&0o7777 == mode {
		return nil
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("chmod %04o %s: %w", mode, dir, err)
	}
	return nil
}

func unsafeErr(name, why, fix string) error {
	return fmt.Errorf("%w: refusing %s: %s: %s", safefile.ErrUnsafe, name, why, fix)
}

// readOwned reads file name, at most max bytes, without following a link,
// and refuses anything but a regular file of ours that others cannot write.
// It creates nothing (unlike safefile.OpenFile, which would make a missing
// directory).
func readOwned(name string, max int64) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, unsafeErr(name, "it is a symbolic link (gatevisor never follows a link where it keeps state)", "remove it")
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkOwnFile(fi, name); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, max)
	}
	return b, nil
}

func checkOwnFile(fi fs.FileInfo, name string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return unsafeErr(name, "it is not a regular file", "remove it")
	case !ok:
		return fmt.Errorf("%s: no owner information", name)
	case int(st.Uid) != os.Geteuid():
		return unsafeErr(name, fmt.Sprintf("it belongs to uid %d, not to you (uid %d)", st.Uid, os.Geteuid()), "remove it (it may have been planted)")
	case fi.Mode().Perm()&0o022 != 0:
		return unsafeErr(name, fmt.Sprintf("it is writable by group or others (mode %04o)", fi.Mode().Perm()), "remove it")
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
// by a dead monitor (its QEMU is killed if it is somehow still alive). The
// directory is made 0700 (a stale one left shared is closed again); see
// Share. It returns an error wrapping ErrRunning when a live monitor holds
// the lock, and one wrapping safefile.ErrUnsafe, naming the path and the
// fix, when the directory, the lock or state.json is a symbolic link or
// another user's.
func Acquire(root, name string) (*Dir, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	path := filepath.Join(root, name)
	if err := safefile.Dir(path, dirMode); err != nil {
		return nil, fmt.Errorf("VM directory: %w", err)
	}
	if err := chmodOwnDir(path, dirMode); err != nil {
		return nil, fmt.Errorf("VM directory: %w", err)
	}
	f, err := safefile.OpenFile(filepath.Join(path, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("VM lock: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
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

// WriteState publishes st atomically, owner-only (0600).
func (d *Dir) WriteState(st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.Path, StateFile+".tmp")
	f, err := safefile.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.Path, StateFile)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// File returns the path of name inside the VM directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// Share opens the VM directory to other local users so that they can reach
// its API socket by name, for a VM whose policy decides who may call the
// API (apiserver.Options.Shared). Every other entry must be ours and not a
// link, and is made owner-only (0600, a directory 0700): QEMU and the
// monitor create their sockets with the process umask, and the gdbstub's
// grants full control of the guest. Then the directory becomes 0711 and the
// root 0755.
//
// Call it once QEMU's sockets exist and before the guest runs: until then
// the directory is 0700, so nobody else can have connected to anything in
// it. It returns an error wrapping ErrUnreachable, and changes nothing,
// when a directory above the root is closed to others (as
// $XDG_RUNTIME_DIR is): share VMs from SystemRoot (run as root) or set
// GATEVISOR_RUNTIME_DIR.
func (d *Dir) Share() error {
	root := filepath.Dir(d.Path)
	for dir := filepath.Dir(root); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("share VM directory: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%w: %s (mode %04o) is not searchable by others, so %s is out of their reach: keep VMs shared with other users in %s (run as root) or set GATEVISOR_RUNTIME_DIR to a directory others can search",
				ErrUnreachable, dir, fi.Mode().Perm(), d.File(APISocket), SystemRoot)
		}
		if dir == "/" {
			break
		}
	}
	ents, err := os.ReadDir(d.Path)
	if err != nil {
		return fmt.Errorf("share VM directory: %w", err)
	}
	for _, e := range ents {
		p := d.File(e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("share VM directory: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			return unsafeErr(p, "it is a symbolic link in a VM directory", "remove it")
		case !ok || int(st.Uid) != os.Geteuid():
			return unsafeErr(p, "it does not belong to you", "remove it")
		case e.Name() == APISocket:
			continue
		}
		want := fi.Mode().Perm() & 0o600
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			// The directory is still 0700 and not a link: nobody else
			// can swap p for a link before this chmod.
			if err := os.Chmod(p, want); err != nil {
				return fmt.Errorf("share VM directory: %w", err)
			}
		}
	}
	if err := chmodOwnDir(d.Path, sharedDirMode); err != nil {
		return fmt.Errorf("share VM directory: %w", err)
	}
	fi, err := os.Lstat(root)
	if err != nil {
		return fmt.Errorf("share VM directory: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == os.Geteuid() && fi.Mode().Perm()&0o055 != 0o055 {
		if err := chmodOwnDir(root, uint32(fi.Mode().Perm()|0o055)&^0o022); err != nil {
			return fmt.Errorf("share VM directory: %w", err)
		}
	} else if fi.Mode().Perm()&0o001 == 0 {
		return fmt.Errorf("%w: %s (mode %04o) is not searchable by others", ErrUnreachable, root, fi.Mode().Perm())
	}
	return nil
}

// Release removes the directory and drops the lock.
func (d *Dir) Release() {
	if d.lock == nil {
		return
	}
	_ = os.RemoveAll(d.Path)
	d.lock.Close()
	d.lock = nil
}

// maxState caps state.json.
const maxState = 1 << 20

func readState(path string) (State, error) {
	var st State
	b, err := readOwned(filepath.Join(path, StateFile), maxState)
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(b, &st)
	return st, err
}

// Entry describes one VM directory.
type Entry struct {
	Name string
	Path string
	// Owner is the uid the VM directory belongs to: this user's, or root's
	// for a VM in SystemRoot seen by another user.
	Owner uint32
	// Live says a monitor runs the VM: it holds the lock (our VMs) or
	// answers on the API socket (another user's).
	Live bool
	// Private says another user's VM is not shared with us: its directory
	// or its API socket is closed to us.
	Private bool
	// State is empty for another user's VM: its state.json is private.
	State State
}

// Mine reports whether the VM belongs to this user.
func (e Entry) Mine() bool { return int(e.Owner) == os.Geteuid() }

// Lookup returns the entry for name under root. Under another user's root
// (only root's is trusted) it only looks: no lock is taken and no file is
// opened.
func Lookup(root, name string) (Entry, error) {
	if err := ValidateName(name); err != nil {
		return Entry{}, err
	}
	notFound := fmt.Errorf("%w: %q (see 'gatevisor ls')", ErrNotFound, name)
	rfi, err := os.Lstat(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Entry{}, notFound
		}
		return Entry{}, fmt.Errorf("runtime directory: %w", err)
	}
	rootOwner, err := ownerOf(rfi, root)
	if err != nil {
		return Entry{}, err
	}
	path := filepath.Join(root, name)
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return Entry{}, notFound
		}
		return Entry{}, err
	}
	owner, err := ownerOf(fi, path)
	if err != nil {
		return Entry{}, err
	}
	if !fi.IsDir() {
		return Entry{}, unsafeErr(path, "it is not a directory", "remove it")
	}
	if int(rootOwner) != os.Geteuid() {
		return lookupOther(rootOwner, root, name, path, owner)
	}
	if int(owner) != os.Geteuid() {
		return Entry{}, unsafeErr(path, fmt.Sprintf("it belongs to uid %d, not to you (uid %d), in your runtime directory", owner, os.Geteuid()), "remove it (it may have been planted)")
	}
	lock := filepath.Join(path, LockFile)
	lfi, err := os.Lstat(lock)
	if err != nil {
		return Entry{}, notFound
	}
	if err := checkOwnFile(lfi, lock); err != nil {
		return Entry{}, err
	}
	e := Entry{Name: name, Path: path, Owner: owner, Live: isLocked(lock)}
	e.State, err = readState(path)
	if errors.Is(err, safefile.ErrUnsafe) {
		return Entry{}, err
	}
	return e, nil
}

// lookupOther looks at VM name in another user's root: only root's is
// trusted, and its VM directories must be root's too.
func lookupOther(rootOwner uint32, root, name, path string, owner uint32) (Entry, error) {
	if rootOwner != 0 {
		return Entry{}, unsafeErr(root, fmt.Sprintf("it belongs to uid %d: only your own runtime directory and root's are used", rootOwner), "remove it, or set GATEVISOR_RUNTIME_DIR")
	}
	if owner != 0 {
		return Entry{}, unsafeErr(path, fmt.Sprintf("it belongs to uid %d, in root's runtime directory", owner), "remove it (it may have been planted)")
	}
	e := Entry{Name: name, Path: path, Owner: owner}
	if _, err := os.Lstat(filepath.Join(path, LockFile)); err != nil {
		if errors.Is(err, fs.ErrPermission) {
			e.Private = true
			return e, nil
		}
		return Entry{}, fmt.Errorf("%w: %q (see 'gatevisor ls')", ErrNotFound, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", filepath.Join(path, APISocket))
	switch {
	case err == nil:
		c.Close()
		e.Live = true
	case errors.Is(err, fs.ErrPermission):
		e.Private = true
	}
	return e, nil
}

func ownerOf(fi fs.FileInfo, name string) (uint32, error) {
	if fi.Mode()&fs.ModeSymlink != 0 {
		return 0, unsafeErr(name, "it is a symbolic link (gatevisor never follows a link where it keeps state)", "remove it")
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("%s: no owner information", name)
	}
	return st.Uid, nil
}

// List returns every VM directory under root, sorted by name. Entries
// Lookup refuses are left out.
func List(root string) ([]Entry, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
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

// Find returns VM name: from this user's root, else, for a user other than
// root without GATEVISOR_RUNTIME_DIR, from root's (SystemRoot).
func Find(name string) (Entry, error) {
	root, err := Root()
	if err != nil {
		return Entry{}, err
	}
	e, err := Lookup(root, name)
	if !errors.Is(err, ErrNotFound) || !searchesSystemRoot(root) {
		return e, err
	}
	if se, serr := Lookup(systemRoot, name); !errors.Is(serr, ErrNotFound) {
		return se, serr
	}
	return e, err
}

// ListAll lists this user's VMs and, where Find looks there too, root's
// (those in SystemRoot, when its listing is open to us).
func ListAll() ([]Entry, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	out, err := List(root)
	if err != nil || !searchesSystemRoot(root) {
		return out, err
	}
	sys, err := List(systemRoot)
	if errors.Is(err, fs.ErrPermission) {
		return out, nil
	}
	return append(out, sys...), err
}

// isLocked reports whether some process holds the lock exclusively.
func isLocked(lockPath string) bool {
	f, err := os.OpenFile(lockPath, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
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

// Adopt takes over the lock of VM name under root that this process
// inherited as lock (a monitor replacing itself, gatevisor upgrade): it
// checks that lock is that VM's lock file and that the lock is held,
// and removes nothing. It returns an error, closing lock, otherwise.
func Adopt(root, name string, lock *os.File) (*Dir, error) {
	if err := ValidateName(name); err != nil {
		lock.Close()
		return nil, err
	}
	path := filepath.Join(root, name)
	var got, want unix.Stat_t
	if err := unix.Fstat(int(lock.Fd()), &got); err != nil {
		lock.Close()
		return nil, fmt.Errorf("VM lock: %w", err)
	}
	if err := unix.Lstat(filepath.Join(path, LockFile), &want); err != nil || got.Dev != want.Dev || got.Ino != want.Ino || got.Uid != uint32(os.Geteuid()) {
		lock.Close()
		return nil, fmt.Errorf("VM lock: the inherited descriptor is not %s's lock file (%v)", filepath.Join(path, LockFile), err)
	}
	// Our own open file description holds the lock already: taking it
	// again on it succeeds; any other holder would make it fail.
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("VM lock: %w", err)
	}
	return &Dir{Name: name, Path: path, lock: lock}, nil
}

// LockFD is the descriptor of the held lock (for Adopt in the process
// that replaces this one).
func (d *Dir) LockFD() uintptr { return d.lock.Fd() }
