package file

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// The host side of the decided operations, shared by the 9P server
// (gate.go) and the FUSE server (fuse.go): each checks the share is
// writable where it must be, asks the security server for the process
// behind req, then acts below the root (host).

// guestPath is the path the guest sees rel at.
func (g *Gate) guestPath(rel string) string {
	if rel == "." {
		return g.cfg.GuestPath
	}
	return path.Join(g.cfg.GuestPath, rel)
}

// decide asks the security server about op on rel for the process that
// sent req; a non-nil error is the guest's answer.
func (g *Gate) decide(ctx context.Context, req *Request, op, rel string, args ...int64) error {
	start := time.Now()
	runtime.LockOSThread()
	cpu0 := threadCPU()
	defer func() {
		if cpu1 := threadCPU(); cpu0 > 0 && cpu1 >= cpu0 {
			g.decideCPUNs.Add(uint64(cpu1 - cpu0))
		}
		runtime.UnlockOSThread()
		g.decideNs.Add(uint64(time.Since(start)))
	}()
	g.decided.Add(1)
	ev := &event.Event{Class: event.ClassFile, Op: op, Path: g.guestPath(rel), Args: args, Labels: []string{Label}, Time: start}
	var d secserver.Decision
	subj, err := g.cfg.Attributor.Attribute(ctx, req)
	if err != nil {
		g.attrFail.Add(1)
		d = g.cfg.Decider.GateFailure(ev, RuleAttribution, "no guest process could be attributed: "+err.Error(), int32(syscall.EACCES))
	} else {
		ev.Subject = subj
		d = g.cfg.Decider.Decide(ev)
	}
	if g.cfg.OnDecision != nil {
		g.cfg.OnDecision(ev, d)
	}
	if d.Allows() {
		return nil
	}
	g.denied.Add(1)
	errno := d.Errno
	if errno <= 0 || errno > 4095 {
		errno = int32(syscall.EACCES)
	}
	return rerror(errno)
}

func (g *Gate) writable() error {
	if g.cfg.ReadOnly {
		return rerror(syscall.EROFS)
	}
	return nil
}

// closeFid closes what the fid (or FUSE file handle) has open.
func (g *Gate) closeFid(f *fid) {
	if f.f != nil {
		f.f.Close()
		f.f = nil
	}
	if f.hasFD {
		g.h.closeFD(f.fd)
		f.hasFD = false
	}
}

// openEntry opens rel (a directory when isDir) for the process behind
// req with the guest's open flags, decided as open (and as truncate for
// O_TRUNC); the result is an opened fid and the file's stat.
func (g *Gate) openEntry(ctx context.Context, req *Request, rel string, isDir bool, flags uint32) (*fid, unix.Stat_t, error) {
	var st unix.Stat_t
	fl := openFlags(flags)
	if fl&3 != os.O_RDONLY || fl&os.O_TRUNC != 0 {
		if err := g.writable(); err != nil {
			return nil, st, err
		}
	}
	if err := g.decide(ctx, req, "open", rel, int64(flags)); err != nil {
		return nil, st, err
	}
	if fl&os.O_TRUNC != 0 && !isDir {
		// As at the kernel's hooks: an open that truncates is a truncate too.
		if err := g.decide(ctx, req, "truncate", rel, 0); err != nil {
			return nil, st, err
		}
	}
	f := &fid{rel: rel, isDir: isDir}
	if !isDir {
		fd, st, ok, err := g.h.openRegular(rel, fl, 0)
		if err != nil {
			return nil, st, err
		}
		if ok {
			f.fd, f.hasFD = fd, true
			return f, st, nil
		}
		// Not a regular file: os.Root's path, which may block.
	} else {
		fl = os.O_RDONLY
	}
	h, err := g.h.root.OpenFile(rel, fl, 0)
	if err != nil {
		return nil, st, err
	}
	if err := unix.Fstat(int(h.Fd()), &st); err != nil {
		h.Close()
		return nil, st, err
	}
	f.f, f.isDir = h, st.Mode&unix.S_IFMT == unix.S_IFDIR
	return f, st, nil
}

// createEntry creates the regular file rel, exclusively, decided as
// create, and opens it.
func (g *Gate) createEntry(ctx context.Context, req *Request, rel string, flags, mode uint32) (*fid, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := g.writable(); err != nil {
		return nil, st, err
	}
	if err := g.decide(ctx, req, "create", rel, int64(mode&0o7777)); err != nil {
		return nil, st, err
	}
	fd, st, ok, err := g.h.openRegular(rel, openFlags(flags)|os.O_CREATE|os.O_EXCL, mode&0o777)
	if err != nil {
		return nil, st, err
	}
	if !ok { // replaced by something else at once: not ours to open
		return nil, st, rerror(syscall.EEXIST)
	}
	return &fid{rel: rel, fd: fd, hasFD: true}, st, nil
}

// readAt reads the opened file f at off into b, decided as read.
func (g *Gate) readAt(ctx context.Context, req *Request, f *fid, b [][]byte, off uint64) (int, error) {
	if !f.hasFD && (f.f == nil || f.isDir) {
		return 0, rerror(syscall.EBADF)
	}
	if err := g.decide(ctx, req, "read", f.rel); err != nil {
		return 0, err
	}
	o := int64(off & (1<<62 - 1))
	if f.hasFD {
		return g.h.preadv(f.fd, b, o)
	}
	got := 0
	for _, p := range b {
		n, err := f.f.ReadAt(p, o+int64(got))
		got += n
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return got, err
		}
	}
	return got, nil
}

// writeAt writes data to the opened file f at off, decided as write.
func (g *Gate) writeAt(ctx context.Context, req *Request, f *fid, data [][]byte, off uint64) (int, error) {
	if !f.hasFD && (f.f == nil || f.isDir) {
		return 0, rerror(syscall.EBADF)
	}
	if err := g.decide(ctx, req, "write", f.rel); err != nil {
		return 0, err
	}
	o := int64(off & (1<<62 - 1))
	if f.hasFD {
		return g.h.pwritev(f.fd, data, o)
	}
	got := 0
	for _, p := range data {
		n, err := f.f.WriteAt(p, o+int64(got))
		got += n
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// listDir lists the opened directory f (at most maxDirents entries),
// decided as readdir.
func (g *Gate) listDir(ctx context.Context, req *Request, f *fid) ([]dirent, error) {
	if f.f == nil || !f.isDir {
		return nil, rerror(syscall.EBADF)
	}
	if err := g.decide(ctx, req, "readdir", f.rel); err != nil {
		return nil, err
	}
	if _, err := f.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	ents, err := f.f.ReadDir(maxDirents)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	out := make([]dirent, 0, len(ents))
	for _, de := range ents {
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		q := qidOf(fi)
		t := uint8(unix.DT_REG)
		switch {
		case fi.IsDir():
			t = unix.DT_DIR
		case fi.Mode()&fs.ModeSymlink != 0:
			t = unix.DT_LNK
		case !fi.Mode().IsRegular():
			t = unix.DT_UNKNOWN
		}
		out = append(out, dirent{q: q, typ: t, name: de.Name()})
	}
	return out, nil
}

// makeDir, makeSymlink and makeLink make a new name, decided as mkdir,
// symlink and link (a link on both names: it is a new name for the file).
func (g *Gate) makeDir(ctx context.Context, req *Request, rel string, mode uint32) error {
	if err := g.writable(); err != nil {
		return err
	}
	if err := g.decide(ctx, req, "mkdir", rel, int64(mode&0o7777)); err != nil {
		return err
	}
	return g.h.root.Mkdir(rel, fs.FileMode(mode&0o777))
}

func (g *Gate) makeSymlink(ctx context.Context, req *Request, rel, target string) error {
	if target == "" || len(target) > 4096 {
		return rerror(syscall.EINVAL)
	}
	if err := g.writable(); err != nil {
		return err
	}
	if err := g.decide(ctx, req, "symlink", rel); err != nil {
		return err
	}
	return g.h.root.Symlink(target, rel)
}

func (g *Gate) makeLink(ctx context.Context, req *Request, oldRel, newRel string) error {
	if err := g.writable(); err != nil {
		return err
	}
	if err := g.decide(ctx, req, "link", oldRel); err != nil {
		return err
	}
	if err := g.decide(ctx, req, "link", newRel); err != nil {
		return err
	}
	return g.h.root.Link(oldRel, newRel)
}

// readLink reads the symbolic link rel, decided as read.
func (g *Gate) readLink(ctx context.Context, req *Request, rel string) (string, error) {
	if err := g.decide(ctx, req, "read", rel); err != nil {
		return "", err
	}
	return g.h.root.Readlink(rel)
}

// removeEntry removes rel, which must be a directory when dir and not
// one otherwise, decided as rmdir or unlink.
func (g *Gate) removeEntry(ctx context.Context, req *Request, rel string, dir bool) error {
	if err := g.writable(); err != nil {
		return err
	}
	op := "unlink"
	if dir {
		op = "rmdir"
	}
	if err := g.decide(ctx, req, op, rel); err != nil {
		return err
	}
	fi, err := g.h.root.Lstat(rel)
	if err != nil {
		return err
	}
	if fi.IsDir() != dir {
		if dir {
			return rerror(syscall.ENOTDIR)
		}
		return rerror(syscall.EISDIR)
	}
	return g.h.root.Remove(rel)
}

// renameEntry decides a rename on the old name and the new one (moving a
// file out of a protected directory and into one are both renames of
// it), then renames.
func (g *Gate) renameEntry(ctx context.Context, req *Request, oldRel, newRel string) error {
	if err := g.writable(); err != nil {
		return err
	}
	if err := g.decide(ctx, req, "rename", oldRel); err != nil {
		return err
	}
	if err := g.decide(ctx, req, "rename", newRel); err != nil {
		return err
	}
	return g.h.root.Rename(oldRel, newRel)
}

// attrChange is a change of a file's attributes, as Tsetattr and
// FUSE_SETATTR ask it.
type attrChange struct {
	setMode, setSize, setATime, setMTime bool
	// atimeNow, mtimeNow: the host's time, not atime or mtime.
	atimeNow, mtimeNow bool
	setOwner           bool
	mode               uint32
	size               uint64
	atime, mtime       time.Time
}

// changeAttr applies ch to rel (f: its handle if the guest named one,
// may be nil), decided as truncate and chmod.
func (g *Gate) changeAttr(ctx context.Context, req *Request, rel string, f *fid, ch attrChange) error {
	if ch.setOwner {
		return rerror(syscall.EPERM) // the monitor serves files as its own user
	}
	if ch.setMode || ch.setSize || ch.setATime || ch.setMTime {
		if err := g.writable(); err != nil {
			return err
		}
	}
	if ch.setSize {
		n := int64(ch.size & (1<<62 - 1))
		if err := g.decide(ctx, req, "truncate", rel, n); err != nil {
			return err
		}
		// The handle if it was opened for writing; else a new one.
		switch {
		case f != nil && f.hasFD && unix.Ftruncate(f.fd, n) == nil:
		case f != nil && f.f != nil && !f.isDir && f.f.Truncate(n) == nil:
		default:
			h, err := g.h.root.OpenFile(rel, os.O_WRONLY|unix.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			err = h.Truncate(n)
			h.Close()
			if err != nil {
				return err
			}
		}
	}
	if ch.setMode {
		if err := g.decide(ctx, req, "chmod", rel, int64(ch.mode&0o7777)); err != nil {
			return err
		}
		if err := g.h.root.Chmod(rel, fs.FileMode(ch.mode&0o777)); err != nil {
			return err
		}
	}
	if ch.setATime || ch.setMTime {
		now := time.Now()
		at, mt := now, now
		if ch.setATime && !ch.atimeNow {
			at = ch.atime
		}
		if ch.setMTime && !ch.mtimeNow {
			mt = ch.mtime
		}
		if !ch.setATime || !ch.setMTime {
			st, err := g.h.lstat(rel)
			if err != nil {
				return err
			}
			if !ch.setMTime {
				mt = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
			}
			if !ch.setATime {
				at = time.Unix(st.Atim.Sec, st.Atim.Nsec)
			}
		}
		if err := g.h.root.Chtimes(rel, at, mt); err != nil {
			return err
		}
	}
	return nil
}

// statfsHost is the served directory's filesystem statistics.
func (g *Gate) statfsHost() (unix.Statfs_t, error) {
	var s unix.Statfs_t
	err := unix.Fstatfs(g.h.dirfd, &s)
	return s, err
}
