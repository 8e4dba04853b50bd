package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// FD is one open file descriptor of a process and what it refers to.
type FD struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	FD   int    `json:"fd"`
	// Type is the file's type from its inode's mode, as crash's files
	// command names it: REG, DIR, CHR, BLK, FIFO, SOCK or LNK; ANON for an
	// anonymous inode (eventfd, epoll, timerfd, signalfd...); UNKN when the
	// mode names no type.
	Type string `json:"type"`
	// Target is what /proc/PID/fd/N links to: the path from the global
	// root, " (deleted)" appended when the file was unlinked; or a pseudo
	// file's name: "pipe:[INODE]", "socket:[INODE]",
	// "anon_inode:[eventpoll]", "net:[INODE]" (a namespace).
	Target string `json:"target"`
	// Mode is how the file is open (f_mode): "r", "w", "rw" or "" (O_PATH),
	// as the permissions of ls -l /proc/PID/fd show it.
	Mode string `json:"mode"`
	// Flags are the open flags the file keeps (f_flags: O_APPEND,
	// O_NONBLOCK...). O_CLOEXEC belongs to the descriptor and is not here.
	Flags uint32 `json:"flags"`
	Inode uint64 `json:"inode"`
	// File is the struct file's kernel virtual address.
	File uint64 `json:"file"`
	// Socket is the socket behind a socket descriptor: protocol,
	// addresses, state (nil for other files, or when it cannot be read).
	Socket *Socket `json:"socket,omitempty"`
	// Error says what of the file could not be read (Target is then
	// incomplete or "").
	Error string `json:"error,omitempty"`
}

// MaxFDRows bounds the descriptors one listing returns: past it, the
// listing is incomplete.
const MaxFDRows = 1 << 16

// fdLayout holds the offsets the fd listing reads besides fileLayout's:
// f_path, f_flags, f_mode, the inode's mode, and what names a pseudo
// file (dentry->d_op->d_dname, as d_path does).
type fdLayout struct {
	err error

	fMnt, fDentry, fFlags, fMode uint64 // struct file
	iMode                        uint64 // struct inode (u16)
	dOp, dHashPprev, dParent     uint64 // struct dentry
	dFsdata, dNameLen, dNamePtr  uint64
	dBlock                       span
	dDname                       uint64 // struct dentry_operations
	vfsRoot                      uint64 // struct vfsmount.mnt_root
	nsName                       uint64 // struct proc_ns_operations.name (0 if absent)
	hasNS                        bool
}

func newFDLayout(p *Profile) fdLayout {
	var l fdLayout
	f := &fields{p: p}
	path := f.off("file.f_path")
	l.fMnt, l.fDentry = path+f.off("path.mnt"), path+f.off("path.dentry")
	l.fFlags, l.fMode = f.off("file.f_flags"), f.off("file.f_mode")
	l.iMode = f.off("inode.i_mode")
	l.dOp = f.off("dentry.d_op")
	l.dHashPprev = f.off("dentry.d_hash.pprev")
	l.dParent = f.off("dentry.d_parent")
	l.dFsdata = f.off("dentry.d_fsdata")
	l.dNameLen = f.off("dentry.d_name") + f.off("qstr.len")
	l.dNamePtr = f.off("dentry.d_name") + f.off("qstr.name")
	l.dDname = f.off("dentry_operations.d_dname")
	l.vfsRoot = f.off("vfsmount.mnt_root")
	if f.err != nil {
		l.err = fmt.Errorf("linux: fd layout: %w", f.err)
		return l
	}
	if o, err := p.FieldOffset("proc_ns_operations.name"); err == nil {
		l.nsName, l.hasNS = o, true
	}
	l.dBlock = spanOf(l.dOp, l.dHashPprev, l.dParent, l.dFsdata, l.dNameLen, l.dNamePtr)
	if l.dBlock.len() > 4096 {
		l.err = fmt.Errorf("linux: fd layout: implausible struct dentry offsets")
	}
	return l
}

// Inode types (include/uapi/linux/stat.h).
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000

	fmodeRead  = 0x1
	fmodeWrite = 0x2
)

// inodeType names the type bits of an inode's mode.
func inodeType(mode uint16) string {
	switch mode & sIFMT {
	case sIFSOCK:
		return "SOCK"
	case sIFLNK:
		return "LNK"
	case sIFREG:
		return "REG"
	case sIFBLK:
		return "BLK"
	case sIFDIR:
		return "DIR"
	case sIFCHR:
		return "CHR"
	case sIFIFO:
		return "FIFO"
	}
	return "UNKN"
}

// openMode is f_mode as "r", "w", "rw" or "".
func openMode(m uint32) string {
	return [4]string{"", "r", "w", "rw"}[m&(fmodeRead|fmodeWrite)]
}

// Files lists the file descriptors in the file tables of tasks (a
// process listing, as from Tasks; threads sharing a table are listed
// once, under the first task holding it), sorted by the tasks' order and
// then by descriptor. A descriptor whose file cannot be read is skipped
// and counted; one whose target or socket cannot be read is listed with
// Error. A listing that skipped anything or stopped at MaxFDRows returns
// its rows with an *IncompleteError.
func (k *Kernel) Files(tasks []Task) ([]FD, error) {
	fl := layoutForFiles(k.Profile)
	if fl.err != nil {
		return nil, fl.err
	}
	if fl.fd.err != nil {
		return nil, fl.fd.err
	}
	r, err := k.newTaskReader()
	if err != nil {
		return nil, err
	}
	d := newFDDescriber(k, r, fl)
	tl := &tally{view: "files"}
	seen := make(map[uint64]bool, len(tasks))
	out := make([]FD, 0, min(4*len(tasks), MaxFDRows)) // a few descriptors each
	for _, t := range tasks {
		if t.KernelThread || !k.kernelPointer(t.Addr) {
			continue
		}
		files, err := k.filesOf(fl, t.Addr)
		if err != nil {
			tl.skipAt(t.Addr, fmt.Errorf("linux: pid %d: %w", t.PID, err))
			continue
		}
		if files == 0 || seen[files] {
			continue
		}
		seen[files] = true
		bad, truncated, err := k.walkFiles(fl, files, func(f openFile) {
			if len(out) >= MaxFDRows {
				if tl.stop == nil {
					tl.stop = fmt.Errorf("%w: more than %d file descriptors", vmi.ErrListTooLong, MaxFDRows)
				}
				return
			}
			out = append(out, d.describe(t, f))
		})
		switch {
		case err != nil:
			tl.skipAt(files, fmt.Errorf("linux: pid %d: %w", t.PID, err))
		case bad > 0:
			tl.skipN(bad, fmt.Errorf("linux: pid %d: %d unreadable fd slots", t.PID, bad))
		}
		if truncated && tl.stop == nil {
			tl.stop = fmt.Errorf("%w: pid %d has more than %d descriptors", vmi.ErrListTooLong, t.PID, maxFDs)
		}
	}
	return out, tl.err()
}

// skipN counts n skipped entries with no address.
func (t *tally) skipN(n int, err error) {
	t.skipped += n
	if t.first == nil {
		t.first = err
	}
}

// fdDescriber names what descriptors point to, for one listing.
type fdDescriber struct {
	k         *Kernel
	r         *taskReader
	fl        *fileLayout
	sl        *sockLayout // nil when sockets cannot be read on this kernel
	socketOps uint64
	socketBuf []byte
	sockBuf   []byte
	dbuf      []byte
	// named caches what each {mount, dentry, inode} was found to be, for
	// the listing: most descriptors of a system point at a few files
	// (/dev/null, a tty), each process's own struct file but the same
	// dentry and inode.
	named map[namedKey]named
}

// named is what a descriptor's file is, as describe found it.
type named struct {
	ino         uint64
	typ, target string
	inodeErr    error
	targetErr   error
	anon        bool
}

func newFDDescriber(k *Kernel, r *taskReader, fl *fileLayout) *fdDescriber {
	d := &fdDescriber{k: k, r: r, fl: fl, dbuf: make([]byte, fl.fd.dBlock.len()), named: map[namedKey]named{}}
	if sl := layoutForSockets(k.Profile); sl.err == nil {
		if ops, err := k.Addr("socket_file_ops"); err == nil {
			d.sl, d.socketOps = sl, ops
			d.sockBuf = make([]byte, sl.sockBlock)
			d.socketBuf = make([]byte, max(sl.socketType+2, sl.socketFile+8, sl.socketSk+8))
		}
	}
	return d
}

// describe reads what descriptor f of task t points to.
func (d *fdDescriber) describe(t Task, f openFile) FD {
	fd := FD{PID: t.PID, Comm: t.Comm, FD: f.fd, File: f.addr, Flags: f.flags, Mode: openMode(f.fmode)}
	isSock := d.sl != nil && f.op == d.socketOps
	key := namedKey{f.mnt, f.dentry, f.ino, isSock}
	n, ok := d.named[key]
	if !ok {
		n = d.resolve(f, isSock)
		if len(d.named) < MaxFDRows {
			d.named[key] = n
		}
	}
	fd.Inode, fd.Type, fd.Target = n.ino, n.typ, n.target
	if err := errors.Join(n.inodeErr, n.targetErr); err != nil {
		fd.Error = err.Error()
	}
	if isSock {
		s, err := d.k.readSocket(d.sl, d.fl, f, d.socketBuf, d.sockBuf, binary.LittleEndian)
		if err != nil {
			fd.Error = err.Error()
			return fd
		}
		s.PID, s.Comm, s.FD = t.PID, t.Comm, f.fd
		fd.Socket = &s
	}
	return fd
}

// namedKey is what names a descriptor's file: its path, inode and
// whether it is a socket.
type namedKey struct {
	mnt, dentry, inode uint64
	sock               bool
}

// resolve reads what file f is: its inode's number and type, and its
// name as /proc/PID/fd shows it.
func (d *fdDescriber) resolve(f openFile, isSock bool) named {
	n := named{typ: "UNKN"}
	ino, mode, err := d.inode(f.ino)
	if err != nil {
		n.inodeErr = err
	} else {
		n.ino, n.typ = ino, inodeType(mode)
	}
	if isSock {
		n.typ, n.target = "SOCK", "socket:["+strconv.FormatUint(n.ino, 10)+"]"
		return n
	}
	n.target, n.anon, n.targetErr = d.target(f.mnt, f.dentry, n.ino)
	if n.anon {
		n.typ = "ANON"
	}
	return n
}

// inode reads an inode's number and mode.
func (d *fdDescriber) inode(inode uint64) (uint64, uint16, error) {
	if !d.k.kernelPointer(inode) {
		return 0, 0, fmt.Errorf("linux: inode %#x is not a kernel pointer", inode)
	}
	ino, err := vmi.ReadU64(d.k.AS, inode+d.fl.inodeIno)
	if err != nil {
		return 0, 0, fmt.Errorf("linux: inode %#x: %w", inode, err)
	}
	var m [2]byte
	if _, err := d.k.AS.ReadVirtual(inode+d.fl.fd.iMode, m[:]); err != nil {
		return 0, 0, fmt.Errorf("linux: inode %#x: %w", inode, err)
	}
	return ino, le.Uint16(m[:]), nil
}

// target names the file at {mnt, dentry} as d_path does for
// /proc/PID/fd: a pseudo file's dentry names itself (d_op->d_dname) unless
// it is its mount's root; any other file is its path from the global root,
// " (deleted)" when its dentry is unhashed and not a root. anon reports an
// anonymous inode.
func (d *fdDescriber) target(mnt, dentry, ino uint64) (name string, anon bool, err error) {
	l := &d.fl.fd
	if !d.k.kernelPointer(mnt) || !d.k.kernelPointer(dentry) {
		return "", false, fmt.Errorf("%w: f_path {%#x, %#x} is not a pair of kernel pointers", ErrInconsistent, mnt, dentry)
	}
	if err := d.r.readAt(dentry+l.dBlock.lo, d.dbuf); err != nil {
		return "", false, fmt.Errorf("linux: read dentry %#x: %w", dentry, err)
	}
	u64 := func(off uint64) uint64 { return le.Uint64(d.dbuf[off-l.dBlock.lo:]) }
	isRoot := u64(l.dParent) == dentry
	if op := u64(l.dOp); op != 0 && d.k.kernelPointer(op) {
		dname, err := d.r.u64at(op + l.dDname)
		if err == nil && dname != 0 {
			root, err := d.r.u64at(mnt + l.vfsRoot)
			if err != nil {
				return "", false, fmt.Errorf("linux: read vfsmount %#x: %w", mnt, err)
			}
			if !isRoot || dentry != root {
				return d.pseudoName(dname, dentry, ino, u64)
			}
		}
	}
	p, err := d.r.dPath(mnt, dentry)
	if err != nil {
		return "", false, err
	}
	if u64(l.dHashPprev) == 0 && !isRoot {
		p += " (deleted)"
	}
	return p, false, nil
}

// pseudoName is what the d_dname function at fn makes of dentry: the
// kernel's own formats for pipes, sockets, anonymous inodes, namespaces
// and internal shmem files; "NAME:[INODE]" for other d_dname functions,
// after the function's name.
func (d *fdDescriber) pseudoName(fn, dentry, ino uint64, u64 func(uint64) uint64) (string, bool, error) {
	sym, off, ok := d.k.SymbolAt(fn)
	if !ok || off != 0 {
		return "", false, fmt.Errorf("%w: dentry %#x: d_dname %#x is not a kernel function", ErrInconsistent, dentry, fn)
	}
	n := strconv.FormatUint(ino, 10)
	switch sym.Name {
	case "pipefs_dname":
		return "pipe:[" + n + "]", false, nil
	case "sockfs_dname":
		return "socket:[" + n + "]", false, nil
	case "anon_inodefs_dname":
		name, err := d.name(u64)
		return "anon_inode:" + name, true, err
	case "simple_dname":
		name, err := d.name(u64)
		return "/" + name + " (deleted)", false, err
	case "ns_dname":
		if name, err := d.nsName(u64(d.fl.fd.dFsdata)); err == nil {
			return name + ":[" + n + "]", false, nil
		}
	}
	name := sym.Name
	if len(name) > 6 && name[len(name)-6:] == "_dname" {
		name = name[:len(name)-6]
	}
	return name + ":[" + n + "]", false, nil
}

// name reads the dentry's own name (d_name), bounded like a path component.
func (d *fdDescriber) name(u64 func(uint64) uint64) (string, error) {
	l := &d.fl.fd
	n := u64(l.dNameLen) & 0xffffffff
	if n == 0 || n > maxNameLen {
		return "", fmt.Errorf("%w: dentry name length %d", ErrInconsistent, n)
	}
	b := make([]byte, n)
	if err := d.r.readAt(u64(l.dNamePtr), b); err != nil {
		return "", fmt.Errorf("linux: read dentry name: %w", err)
	}
	return string(b), nil
}

// nsName reads the name of the namespace type whose proc_ns_operations
// are at ops ("net", "mnt", ...).
func (d *fdDescriber) nsName(ops uint64) (string, error) {
	if !d.fl.fd.hasNS || !d.k.kernelPointer(ops) {
		return "", fmt.Errorf("%w: no namespace operations", ErrInconsistent)
	}
	p, err := d.r.u64at(ops + d.fl.fd.nsName)
	if err != nil || !d.k.kernelPointer(p) {
		return "", fmt.Errorf("%w: namespace operations %#x have no name", ErrInconsistent, ops)
	}
	s, err := vmi.ReadCString(d.k.AS, p, 32)
	if err != nil || s == "" {
		return "", fmt.Errorf("%w: namespace operations %#x have no name", ErrInconsistent, ops)
	}
	return s, nil
}
