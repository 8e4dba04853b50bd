package file

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"

	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// Decider is the security server as the file gate uses it.
type Decider interface {
	Decide(*event.Event) secserver.Decision
	GateFailure(ev *event.Event, rule, reason string, errno int32) secserver.Decision
}

// Request is what the guest sent, as the Attributor needs it to find
// the process behind it: a 9P request by its tag and bytes, a FUSE
// request (virtio-fs) by its unique id and the pid the guest kernel
// wrote in its header.
type Request struct {
	// FUSE tells a FUSE request (Unique, PID) from a 9P one (Tag, Msg).
	FUSE   bool
	Tag    uint16
	Msg    []byte
	Unique uint64
	PID    uint32
}

// Attributor names the guest process that sent a request: for 9P, the
// task that waits for the request with this tag whose bytes begin with
// msg, on the share's mount; for FUSE, the task the header's pid names,
// read from guest memory. It may wait briefly for the task to queue
// itself.
type Attributor interface {
	Attribute(ctx context.Context, req *Request) (event.Subject, error)
}

// Ops are the file gate's ops, sorted: what it decides (coverage).
var Ops = []string{"chmod", "create", "link", "mkdir", "open", "read", "readdir", "rename", "rmdir", "symlink", "truncate", "unlink", "write"}

// Label is the object label of every event the file gate decides: a
// policy tells served files from the guest's own with labelIs(served).
const Label = "served"

// RuleAttribution names the gate failure of a request no process could
// be attributed to.
const RuleAttribution = "file-gate-attribution"

// Config configures a Gate.
type Config struct {
	// Name is the share's name: the attach name (aname) the guest mounts
	// it with, and its virtio-serial port's suffix.
	Name string
	// Root is the host directory served; GuestPath where the guest mounts
	// it (event paths are GuestPath joined with the file's path in Root).
	Root, GuestPath string
	ReadOnly        bool
	Decider         Decider
	Attributor      Attributor
	// OnDecision, if set, sees every decided event and its decision.
	OnDecision func(*event.Event, secserver.Decision)
	// Logf receives notices (guest-derived text escaped by the caller).
	Logf func(format string, a ...any)
}

// namePattern is what a share's name may be.
var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// ValidName checks a share name: 1-32 of [a-z0-9_-], starting with a
// letter or digit (it becomes a port name and a mount option).
func ValidName(s string) error {
	if !namePattern.MatchString(s) {
		return fmt.Errorf("file share name %q: use 1-32 characters of a-z, 0-9, _ and -, starting with a letter or digit", s)
	}
	return nil
}

// Stats are a gate's counters.
type Stats struct {
	Requests, Decided, Denied, AttributionFailures, Malformed uint64
	// DecideNs is the monitor's time spent attributing and deciding.
	DecideNs uint64
	// DecideCPUNs is the CPU time of it: the serving thread's CPU clock
	// around each decision (the goroutine locked to its thread meanwhile,
	// so a wait for the guest counts no other goroutine's work).
	DecideCPUNs uint64
}

// Gate serves one share.
type Gate struct {
	cfg Config
	h   *host

	requests, decided, denied, attrFail, malformed, decideNs, decideCPUNs atomic.Uint64
}

// New opens the share's root directory.
func New(cfg Config) (*Gate, error) {
	if err := ValidName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.Decider == nil || cfg.Attributor == nil {
		return nil, errors.New("file gate: a decider and an attributor are required")
	}
	h, err := openHost(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("file gate %s: %w", cfg.Name, err)
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Gate{cfg: cfg, h: h}, nil
}

// Close releases the root directory.
func (g *Gate) Close() error { return g.h.close() }

// Stats returns the gate's counters.
func (g *Gate) Stats() Stats {
	return Stats{Requests: g.requests.Load(), Decided: g.decided.Load(), Denied: g.denied.Load(),
		AttributionFailures: g.attrFail.Load(), Malformed: g.malformed.Load(), DecideNs: g.decideNs.Load(), DecideCPUNs: g.decideCPUNs.Load()}
}

// Config returns the gate's configuration.
func (g *Gate) Config() Config { return g.cfg }

// maxFids bounds the fids one connection may hold.
const maxFids = 1 << 16

// maxDirents bounds the entries of one directory listed.
const maxDirents = 1 << 16

// fid is one 9P fid: a path below the root (cleaned, "." for the root)
// and, once opened, its file: a regular file's descriptor (fd, hasFD),
// or a directory's or another file's *os.File (f).
type fid struct {
	rel     string
	f       *os.File
	fd      int
	hasFD   bool
	isDir   bool
	dirents []dirent // listed at the first Treaddir at offset 0
}

// opened reports whether the fid has been opened.
func (f *fid) opened() bool { return f.f != nil || f.hasFD }

type dirent struct {
	q    qid
	typ  uint8
	name string
}

// conn is one connection's state. Requests are handled one at a time.
type conn struct {
	g     *Gate
	rw    io.ReadWriter
	msize uint32
	fids  map[uint32]*fid
	out   []byte
}

// Serve serves one connection until it ends, ctx ends or a message does
// not parse (ErrMessage). Every fid's file is closed on return.
func (g *Gate) Serve(ctx context.Context, rw io.ReadWriter) error {
	c := &conn{g: g, rw: rw, msize: MaxMsize, fids: map[uint32]*fid{}, out: make([]byte, 0, MaxMsize)}
	defer c.closeAll()
	in := make([]byte, MaxMsize)
	// A socket is read and written with raw system calls (see host).
	if sc, ok := rw.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rw = rawConn{rc}
		}
	}
	// Buffered: a message's header and body, and the messages queued
	// behind it, in one read (the syscalls, not the decisions, are most
	// of the monitor's CPU per request).
	br := bufio.NewReaderSize(rw, MaxMsize)
	for ctx.Err() == nil {
		msg, err := readMsg(br, in, c.msize)
		if err != nil {
			if errors.Is(err, ErrMessage) {
				g.malformed.Add(1)
			}
			return err
		}
		reply, err := c.handle(ctx, msg)
		if err != nil {
			g.malformed.Add(1)
			return err
		}
		if _, err := rw.Write(reply); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (c *conn) closeAll() {
	for _, f := range c.fids {
		c.g.closeFid(f)
	}
	c.fids = nil
}

// rerror is an Rlerror answer.
type rerror syscall.Errno

func (e rerror) Error() string { return syscall.Errno(e).Error() }

// errnoOf maps a host error to the errno the guest sees.
func errnoOf(err error) rerror {
	var re rerror
	if errors.As(err, &re) {
		return re
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return rerror(en)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return rerror(syscall.ENOENT)
	case errors.Is(err, fs.ErrExist):
		return rerror(syscall.EEXIST)
	case errors.Is(err, fs.ErrPermission):
		return rerror(syscall.EACCES)
	}
	return rerror(syscall.EIO)
}

// handle answers one message; an error means the connection must close.
func (c *conn) handle(ctx context.Context, msg []byte) ([]byte, error) {
	typ := msg[4]
	tag := uint16(msg[5]) | uint16(msg[6])<<8
	d := &dec{b: msg[hdrLen:]}
	c.g.requests.Add(1)
	e := newReply(c.out, typ+1, tag)
	err := c.dispatch(ctx, typ, &Request{Tag: tag, Msg: msg}, d, e)
	if d.err != nil {
		return nil, fmt.Errorf("%w: type %d", ErrMessage, typ)
	}
	if err != nil {
		var re rerror
		if !errors.As(err, &re) {
			re = errnoOf(err)
		}
		e = newReply(c.out, tLerror+1, tag)
		e.u32(uint32(re))
	}
	if len(e.b) > int(c.msize) {
		e = newReply(c.out, tLerror+1, tag)
		e.u32(uint32(syscall.EMSGSIZE))
	}
	c.out = e.b[:0]
	return e.finish(), nil
}

// fid returns fid n.
func (c *conn) fid(n uint32) (*fid, error) {
	f, ok := c.fids[n]
	if !ok {
		return nil, rerror(syscall.EBADF)
	}
	return f, nil
}

// newFid binds n (which must be free) to rel.
func (c *conn) newFid(n uint32, f *fid) error {
	if n == noFid {
		return rerror(syscall.EBADF)
	}
	if _, ok := c.fids[n]; ok {
		return rerror(syscall.EBADF)
	}
	if len(c.fids) >= maxFids {
		return rerror(syscall.EMFILE)
	}
	c.fids[n] = f
	return nil
}

// child is the path of entry name in the directory of fid n: EBADF for
// an unknown fid, EINVAL for a name that is not one (empty, ".", "..", a
// '/' or a NUL).
func (c *conn) child(n uint32, name string) (string, error) {
	dir, err := c.fid(n)
	if err != nil {
		return "", err
	}
	return childOf(dir.rel, name)
}

// childOf is the path of entry name in directory dir: EINVAL for a name
// that is not one (empty, ".", "..", a '/' or a NUL).
func childOf(dir, name string) (string, error) {
	if !validName(name) {
		return "", rerror(syscall.EINVAL)
	}
	return join(dir, name), nil
}

// makeEntry answers a request that made rel (err: how making it went)
// with its qid.
func (c *conn) makeEntry(rel string, e *enc, err error) error {
	if err != nil {
		return err
	}
	q, err := c.qid(rel)
	if err != nil {
		return err
	}
	e.qid(q)
	return nil
}

func join(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

func (c *conn) dispatch(ctx context.Context, typ uint8, req *Request, d *dec, e *enc) error {
	switch typ {
	case tVersion:
		msize := d.u32()
		ver := d.str(64)
		if d.err != nil {
			return nil
		}
		c.closeAll()
		c.fids = map[uint32]*fid{}
		c.msize = min(max(msize, minMsize), MaxMsize)
		if ver != "9P2000.L" {
			ver = "unknown"
		}
		e.u32(c.msize)
		e.str(ver)
		return nil
	case tAuth:
		d.u32()
		d.str(maxName)
		d.str(maxName)
		d.u32()
		return rerror(syscall.EOPNOTSUPP)
	case tAttach:
		n, afid := d.u32(), d.u32()
		d.str(maxName) // uname: the guest's claim, not used
		aname := d.str(maxName)
		d.u32() // n_uname: likewise
		if d.err != nil {
			return nil
		}
		if afid != noFid {
			return rerror(syscall.EOPNOTSUPP)
		}
		if aname != c.g.cfg.Name {
			return rerror(syscall.ENOENT)
		}
		q, err := c.qid(".")
		if err != nil {
			return err
		}
		if err := c.newFid(n, &fid{rel: ".", isDir: true}); err != nil {
			return err
		}
		e.qid(q)
		return nil
	case tFlush:
		d.u16()
		return nil // requests are answered in order: the flushed one already was
	case tWalk:
		return c.walk(d, e)
	case tClunk:
		n := d.u32()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		c.g.closeFid(f)
		delete(c.fids, n)
		return nil
	case tGetattr:
		n := d.u32()
		mask := d.u64()
		if d.err != nil {
			return nil
		}
		_ = mask
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		return c.getattr(f, e)
	case tStatfs:
		n := d.u32()
		if d.err != nil {
			return nil
		}
		if _, err := c.fid(n); err != nil {
			return err
		}
		return c.statfs(e)
	case tLopen:
		n, flags := d.u32(), d.u32()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		return c.lopen(ctx, f, flags, req, e)
	case tLcreate:
		n := d.u32()
		name := d.str(maxName)
		flags, mode := d.u32(), d.u32()
		d.u32() // gid
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		return c.lcreate(ctx, f, name, flags, mode, req, e)
	case tRead:
		n, off, count := d.u32(), d.u64(), d.u32()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		count = min(count, c.msize-ioHdr)
		e.u32(0)
		start := len(e.b)
		e.b = append(e.b, make([]byte, count)...)
		got, err := c.g.readAt(ctx, req, f, [][]byte{e.b[start:]}, off)
		if err != nil {
			return err
		}
		e.b = e.b[:start+got]
		putU32(e.b[start-4:], uint32(got))
		return nil
	case tWrite:
		n, off := d.u32(), d.u64()
		data := d.data()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		got, err := c.g.writeAt(ctx, req, f, [][]byte{data}, off)
		if err != nil && got == 0 {
			return err
		}
		e.u32(uint32(got))
		return nil
	case tReaddir:
		n, off, count := d.u32(), d.u64(), d.u32()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		return c.readdir(ctx, f, off, count, req, e)
	case tMkdir:
		n := d.u32()
		name := d.str(maxName)
		mode := d.u32()
		d.u32()
		if d.err != nil {
			return nil
		}
		rel, err := c.child(n, name)
		if err != nil {
			return err
		}
		return c.makeEntry(rel, e, c.g.makeDir(ctx, req, rel, mode))
	case tUnlinkat:
		n := d.u32()
		name := d.str(maxName)
		flags := d.u32()
		if d.err != nil {
			return nil
		}
		rel, err := c.child(n, name)
		if err != nil {
			return err
		}
		return c.g.removeEntry(ctx, req, rel, flags&unix.AT_REMOVEDIR != 0)
	case tRemove:
		n := d.u32()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		c.g.closeFid(f)
		delete(c.fids, n) // Tremove clunks the fid, whatever happens
		if f.rel == "." {
			return rerror(syscall.EBUSY)
		}
		return c.g.removeEntry(ctx, req, f.rel, f.isDir)
	case tRename:
		n, dn := d.u32(), d.u32()
		name := d.str(maxName)
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		newRel, err := c.child(dn, name)
		if err != nil {
			return err
		}
		if f.rel == "." {
			return rerror(syscall.EINVAL)
		}
		if err := c.rename(ctx, f.rel, newRel, req); err != nil {
			return err
		}
		f.rel = newRel
		return nil
	case tRenameat:
		on := d.u32()
		oname := d.str(maxName)
		nn := d.u32()
		nname := d.str(maxName)
		if d.err != nil {
			return nil
		}
		oldRel, err := c.child(on, oname)
		if err != nil {
			return err
		}
		newRel, err := c.child(nn, nname)
		if err != nil {
			return err
		}
		return c.rename(ctx, oldRel, newRel, req)
	case tSetattr:
		return c.setattr(ctx, d, req)
	case tFsync:
		n := d.u32()
		d.u32()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		if f.hasFD {
			return unix.Fsync(f.fd)
		}
		if f.f != nil && !f.isDir {
			return f.f.Sync()
		}
		return nil
	case tReadlink:
		n := d.u32()
		if d.err != nil {
			return nil
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		t, err := c.g.readLink(ctx, req, f.rel)
		if err != nil {
			return err
		}
		e.str(t)
		return nil
	case tSymlink:
		n := d.u32()
		name, target := d.str(maxName), d.str(4096)
		d.u32()
		if d.err != nil {
			return nil
		}
		rel, err := c.child(n, name)
		if err != nil {
			return err
		}
		return c.makeEntry(rel, e, c.g.makeSymlink(ctx, req, rel, target))
	case tLink:
		dn, n := d.u32(), d.u32()
		name := d.str(maxName)
		if d.err != nil {
			return nil
		}
		rel, err := c.child(dn, name)
		if err != nil {
			return err
		}
		f, err := c.fid(n)
		if err != nil {
			return err
		}
		return c.g.makeLink(ctx, req, f.rel, rel)
	case tMknod:
		return rerror(syscall.EPERM) // no device nodes, fifos or sockets in a served directory
	case tXattrwalk, tXattrcreate:
		return rerror(syscall.EOPNOTSUPP)
	case tLock:
		n := d.u32()
		if d.err != nil {
			return nil
		}
		if _, err := c.fid(n); err != nil {
			return err
		}
		e.u8(0) // P9_LOCK_SUCCESS: locks are the guest's business, per mount
		return nil
	case tGetlock:
		n := d.u32()
		d.u8()
		start, length := d.u64(), d.u64()
		pid := d.u32()
		cid := d.str(maxName)
		if d.err != nil {
			return nil
		}
		if _, err := c.fid(n); err != nil {
			return err
		}
		e.u8(2) // F_UNLCK
		e.u64(start)
		e.u64(length)
		e.u32(pid)
		e.str(cid)
		return nil
	}
	return rerror(syscall.EOPNOTSUPP)
}

func putU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func (c *conn) walk(d *dec, e *enc) error {
	n, nn := d.u32(), d.u32()
	cnt := d.u16()
	if d.err != nil || cnt > maxWalk {
		d.fail()
		return nil
	}
	names := make([]string, cnt)
	for i := range names {
		names[i] = d.str(maxName)
	}
	if d.err != nil {
		return nil
	}
	f, err := c.fid(n)
	if err != nil {
		return err
	}
	rel := f.rel
	var qids []qid
	for _, name := range names {
		switch {
		case name == "..":
			if rel != "." {
				rel = path.Dir(rel)
			}
		case validName(name):
			rel = join(rel, name)
		default:
			return rerror(syscall.EINVAL)
		}
		q, err := c.qid(rel)
		if err != nil {
			if len(qids) == 0 {
				return err
			}
			break
		}
		qids = append(qids, q)
		if q.typ != qtDir && len(qids) < len(names) {
			break
		}
	}
	if len(qids) == len(names) {
		if nn == n {
			if f.opened() {
				return rerror(syscall.EBUSY)
			}
			f.rel = rel
			f.isDir = len(qids) == 0 && f.isDir || len(qids) > 0 && qids[len(qids)-1].typ == qtDir
		} else if err := c.newFid(nn, &fid{rel: rel, isDir: len(qids) == 0 && f.isDir || len(qids) > 0 && qids[len(qids)-1].typ == qtDir}); err != nil {
			return err
		}
	}
	e.u16(uint16(len(qids)))
	for _, q := range qids {
		e.qid(q)
	}
	return nil
}

func qidOf(fi fs.FileInfo) qid {
	q := qid{typ: qtFile}
	switch {
	case fi.IsDir():
		q.typ = qtDir
	case fi.Mode()&fs.ModeSymlink != 0:
		q.typ = qtSymlink
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		q.path = st.Ino
		q.version = uint32(st.Mtim.Nsec) ^ uint32(st.Mtim.Sec)
	}
	return q
}

// qidOfStat is qidOf for the host's stat.
func qidOfStat(st *unix.Stat_t) qid {
	q := qid{typ: qtFile, path: st.Ino, version: uint32(st.Mtim.Nsec) ^ uint32(st.Mtim.Sec)}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		q.typ = qtDir
	case unix.S_IFLNK:
		q.typ = qtSymlink
	}
	return q
}

func (c *conn) qid(rel string) (qid, error) {
	st, err := c.g.h.lstat(rel)
	if err != nil {
		return qid{}, err
	}
	return qidOfStat(&st), nil
}

func (c *conn) getattr(f *fid, e *enc) error {
	st, err := c.g.h.lstat(f.rel)
	if err != nil {
		return err
	}
	mode := st.Mode
	if c.g.cfg.ReadOnly {
		mode &^= 0o222
	}
	e.u64(0x3fff) // P9_GETATTR_ALL
	e.qid(qidOfStat(&st))
	e.u32(mode)
	e.u32(st.Uid)
	e.u32(st.Gid)
	e.u64(uint64(st.Nlink))
	e.u64(0) // rdev
	e.u64(uint64(st.Size))
	e.u64(uint64(st.Blksize))
	e.u64(uint64(st.Blocks))
	for _, t := range []unix.Timespec{st.Atim, st.Mtim, st.Ctim, {}} {
		e.u64(uint64(t.Sec))
		e.u64(uint64(t.Nsec))
	}
	e.u64(0) // gen
	e.u64(0) // data_version
	return nil
}

func (c *conn) statfs(e *enc) error {
	s, err := c.g.statfsHost()
	if err != nil {
		return err
	}
	e.u32(0x01021997) // V9FS_MAGIC
	e.u32(uint32(s.Bsize))
	e.u64(s.Blocks)
	e.u64(s.Bfree)
	e.u64(s.Bavail)
	e.u64(s.Files)
	e.u64(s.Ffree)
	e.u64(uint64(uint32(s.Fsid.Val[0])) | uint64(uint32(s.Fsid.Val[1]))<<32)
	e.u32(255)
	return nil
}

// openFlags keeps the open flags the host may honour (access mode,
// truncate, append); creation happens only through Tlcreate.
func openFlags(l uint32) int {
	fl := int(l & 3)
	if fl == 3 {
		fl = os.O_RDWR
	}
	if l&unix.O_TRUNC != 0 {
		fl |= os.O_TRUNC
	}
	if l&unix.O_APPEND != 0 {
		fl |= os.O_APPEND
	}
	return fl | unix.O_NOFOLLOW
}

func (c *conn) lopen(ctx context.Context, f *fid, flags uint32, req *Request, e *enc) error {
	if f.opened() {
		return rerror(syscall.EBUSY)
	}
	o, st, err := c.g.openEntry(ctx, req, f.rel, f.isDir, flags)
	if err != nil {
		return err
	}
	f.f, f.fd, f.hasFD, f.isDir = o.f, o.fd, o.hasFD, o.isDir
	e.qid(qidOfStat(&st))
	e.u32(c.msize - ioHdr)
	return nil
}

func (c *conn) lcreate(ctx context.Context, f *fid, name string, flags, mode uint32, req *Request, e *enc) error {
	if f.opened() || !f.isDir {
		return rerror(syscall.EBADF)
	}
	if !validName(name) {
		return rerror(syscall.EINVAL)
	}
	o, st, err := c.g.createEntry(ctx, req, join(f.rel, name), flags, mode)
	if err != nil {
		return err
	}
	f.rel, f.fd, f.hasFD, f.isDir = o.rel, o.fd, true, false
	e.qid(qidOfStat(&st))
	e.u32(c.msize - ioHdr)
	return nil
}

func (c *conn) readdir(ctx context.Context, f *fid, off uint64, count uint32, req *Request, e *enc) error {
	if f.f == nil || !f.isDir {
		return rerror(syscall.EBADF)
	}
	if off == 0 {
		ents, err := c.g.listDir(ctx, req, f)
		if err != nil {
			return err
		}
		f.dirents = ents
	}
	count = min(count, c.msize-ioHdr)
	e.u32(0)
	start := len(e.b)
	for i := off; i < uint64(len(f.dirents)); i++ {
		de := f.dirents[i]
		if uint32(len(e.b)-start)+24+uint32(len(de.name)) > count {
			break
		}
		e.qid(de.q)
		e.u64(i + 1)
		e.u8(de.typ)
		e.str(de.name)
	}
	putU32(e.b[start-4:], uint32(len(e.b)-start))
	return nil
}

// rename renames (decided on both names) and moves the fids below the
// old name to the new one.
func (c *conn) rename(ctx context.Context, oldRel, newRel string, req *Request) error {
	if err := c.g.renameEntry(ctx, req, oldRel, newRel); err != nil {
		return err
	}
	for _, f := range c.fids { // fids below the old name follow it
		if f.rel == oldRel {
			f.rel = newRel
		} else if len(f.rel) > len(oldRel) && f.rel[:len(oldRel)+1] == oldRel+"/" {
			f.rel = newRel + f.rel[len(oldRel):]
		}
	}
	return nil
}

// Tsetattr valid bits.
const (
	setMode  = 0x1
	setUID   = 0x2
	setGID   = 0x4
	setSize  = 0x8
	setATime = 0x10
	setMTime = 0x20
	setASet  = 0x80
	setMSet  = 0x100
)

func (c *conn) setattr(ctx context.Context, d *dec, req *Request) error {
	n, valid, mode := d.u32(), d.u32(), d.u32()
	d.u32()
	d.u32()
	size := d.u64()
	as, ans, ms, mns := d.u64(), d.u64(), d.u64(), d.u64()
	if d.err != nil {
		return nil
	}
	f, err := c.fid(n)
	if err != nil {
		return err
	}
	return c.g.changeAttr(ctx, req, f.rel, f, attrChange{
		setOwner: valid&(setUID|setGID) != 0,
		setMode:  valid&setMode != 0, mode: mode,
		setSize: valid&setSize != 0, size: size,
		setATime: valid&setATime != 0, atimeNow: valid&setASet == 0, atime: time.Unix(int64(as&(1<<62-1)), int64(ans%1e9)),
		setMTime: valid&setMTime != 0, mtimeNow: valid&setMSet == 0, mtime: time.Unix(int64(ms&(1<<62-1)), int64(mns%1e9)),
	})
}
