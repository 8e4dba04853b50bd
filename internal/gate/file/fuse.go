package file

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FUSE over virtio-fs: the share served as a FUSE filesystem to the guest
// kernel's virtiofs driver (the transport, vhost-user, is the monitor's:
// internal/vhostuser). The protocol's structs are go-fuse's
// (github.com/hanwen/go-fuse/v2/fuse), encoded and decoded with
// encoding/binary; go-fuse's server is not used, since it reads /dev/fuse
// and never sees guest RAM.
//
// Every open and create answers FOPEN_DIRECT_IO: the guest kernel keeps
// no page-cache copy of a served file's data (reads and writes go to the
// monitor each time, where they are decided). Names and attributes, which
// are not decided, may be cached by the guest for metaValid (a direct
// read is not bounded by the cached size): with 0 s every path component
// cost a LOOKUP and a GETATTR each time, 5 of the 13 requests of a small
// file's open, read and close (measured). A private mmap of a served file
// (an exec, say) still fills the page cache through reads that are
// decided; the purge finds those pages.

// FUSE opcodes (Linux include/uapi/linux/fuse.h).
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opSetattr     = 4
	opReadlink    = 5
	opSymlink     = 6
	opMknod       = 8
	opMkdir       = 9
	opUnlink      = 10
	opRmdir       = 11
	opRename      = 12
	opLink        = 13
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opFlush       = 25
	opInit        = 26
	opOpendir     = 27
	opReaddir     = 28
	opReleasedir  = 29
	opFsyncdir    = 30
	opAccess      = 34
	opCreate      = 35
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42
	opReaddirplus = 44
	opRename2     = 45
)

// FUSE protocol limits and versions.
const (
	fuseMajor = 7
	// fuseMinor is the minor version the server speaks (Linux 5.4's): the
	// structs it uses have the layout they have had since.
	fuseMinor    = 31
	fuseMinMinor = 27
	// FUSEMaxWrite is the largest read or write (FUSE's default 32 pages).
	FUSEMaxWrite = 128 << 10
	inHdrSize    = 40
	outHdrSize   = 16
	// headMax bounds the request bytes decoded (header, fixed args and
	// names: a symlink's name and target are the largest).
	headMax = inHdrSize + 64 + 2*(maxName+1) + 4096 + 1
	// maxNodes and maxHandles bound what the guest may make the server hold.
	maxNodes   = 1 << 18
	maxHandles = maxFids
	fuseRootID = 1
	// metaValid is how long the guest may keep an entry or attributes:
	// 1 s (fuse_entry_out's and fuse_attr_out's seconds).
	metaValid = 1
)

// ErrFUSE means a FUSE request does not parse; it is answered with EIO.
var ErrFUSE = errors.New("fuse: malformed request")

// fuseNode is a node id the guest kernel holds: a path below the root
// and how many lookups it has not forgotten.
type fuseNode struct {
	rel     string
	lookups uint64
}

// FUSE is one guest connection (mount) of a share over FUSE. Its Handle
// is safe for concurrent use (the virtio-fs queues are served by
// different goroutines); requests are answered one at a time.
type FUSE struct {
	g   *Gate
	ctx context.Context

	mu       sync.Mutex // guards everything below
	inited   bool
	nodes    map[uint64]*fuseNode
	byRel    map[string]uint64
	nextNode uint64
	files    map[uint64]*fid
	nextFh   uint64
	head     [headMax]byte
	tail     [][]byte
	enc      []byte
	req      Request
}

// NewFUSE starts a FUSE connection of g's share; ctx bounds its
// attributions.
func (g *Gate) NewFUSE(ctx context.Context) *FUSE {
	s := &FUSE{g: g, ctx: ctx, enc: make([]byte, 0, 512)}
	s.reset()
	return s
}

// reset forgets every node and closes every handle (a new INIT, DESTROY).
// Preconditions: s.mu held, or s not shared yet.
func (s *FUSE) reset() {
	for _, f := range s.files {
		s.g.closeFid(f)
	}
	s.nodes = map[uint64]*fuseNode{fuseRootID: {rel: ".", lookups: 1}}
	s.byRel = map[string]uint64{".": fuseRootID}
	s.nextNode = fuseRootID + 1
	s.files = map[uint64]*fid{}
	s.nextFh = 1
	s.inited = false
}

// Close closes every handle of the connection.
func (s *FUSE) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
}

// gather copies the first bytes of in (at most len(dst)) into dst.
func gather(dst []byte, in [][]byte) int {
	n := 0
	for _, b := range in {
		n += copy(dst[n:], b)
		if n == len(dst) {
			break
		}
	}
	return n
}

// skip returns the buffers of bufs from byte off on, at most limit bytes,
// in dst's storage.
func skip(dst [][]byte, bufs [][]byte, off, limit int) [][]byte {
	dst = dst[:0]
	for _, b := range bufs {
		if limit <= 0 {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) > limit {
			b = b[:limit]
		}
		dst = append(dst, b)
		limit -= len(b)
	}
	return dst
}

// scatter copies b into out from byte off on and returns the bytes copied.
func scatter(out [][]byte, off int, b []byte) int {
	n := 0
	for _, o := range out {
		if off >= len(o) {
			off -= len(o)
			continue
		}
		c := copy(o[off:], b[n:])
		off = 0
		n += c
		if n == len(b) {
			break
		}
	}
	return n
}

// fuseReply is an answer: errno, or a payload in s.enc (data: bytes the
// handler already put in out after the header).
type fuseReply struct {
	errno syscall.Errno
	data  int
	none  bool // no reply at all (FORGET, BATCH_FORGET)
}

// Handle answers one request: in is what the guest sent, out where the
// reply goes (guest RAM, valid only during the call). It returns the
// bytes written to out.
func (s *FUSE) Handle(in, out [][]byte, inLen, outLen int) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.g.requests.Add(1)
	n := gather(s.head[:], in)
	head := s.head[:n]
	var h fuse.InHeader
	if _, err := binary.Decode(head, binary.LittleEndian, &h); err != nil || int(h.Length) != inLen {
		s.g.malformed.Add(1)
		if len(head) < inHdrSize {
			return 0 // not even a header to answer
		}
		h.Unique = binary.LittleEndian.Uint64(head[8:])
		return s.finish(out, outLen, h.Unique, fuseReply{errno: syscall.EIO})
	}
	s.enc = s.enc[:0]
	s.req = Request{FUSE: true, Unique: h.Unique, PID: h.Caller.Pid}
	r := s.dispatch(&h, head, in, out, inLen, outLen)
	if r.none {
		return 0
	}
	return s.finish(out, outLen, h.Unique, r)
}

// finish writes the out header and the payload.
func (s *FUSE) finish(out [][]byte, outLen int, unique uint64, r fuseReply) uint32 {
	var hdr [outHdrSize]byte
	payload := 0
	if r.errno == 0 {
		payload = len(s.enc) + r.data
		if outHdrSize+payload > outLen {
			r.errno, payload = syscall.EIO, 0
		}
	}
	binary.LittleEndian.PutUint32(hdr[:], uint32(outHdrSize+payload))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(-int32(r.errno)))
	binary.LittleEndian.PutUint64(hdr[8:], unique)
	if outLen < outHdrSize {
		return 0
	}
	scatter(out, 0, hdr[:])
	if payload > 0 && r.data == 0 {
		scatter(out, outHdrSize, s.enc)
	}
	return uint32(outHdrSize + payload)
}

// put encodes v as the reply's payload.
func (s *FUSE) put(v any) fuseReply {
	var err error
	s.enc, err = binary.Append(s.enc, binary.LittleEndian, v)
	if err != nil {
		return fuseReply{errno: syscall.EIO}
	}
	return fuseReply{}
}

// errReply is err as an answer.
func errReply(err error) fuseReply {
	if err == nil {
		return fuseReply{}
	}
	return fuseReply{errno: syscall.Errno(errnoOf(err))}
}

// args decodes the fixed arguments (a go-fuse struct with the header
// embedded) from head and returns the bytes after them.
func args(head []byte, v any) ([]byte, error) {
	n, err := binary.Decode(head, binary.LittleEndian, v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFUSE, err)
	}
	return head[n:], nil
}

// names splits b into count NUL-terminated names, each a valid entry
// name (or, for a symlink's target, any text without NUL).
func names(b []byte, count int) ([]string, error) {
	out := make([]string, 0, count)
	for range count {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		if i == len(b) {
			return nil, ErrFUSE
		}
		out = append(out, string(b[:i]))
		b = b[i+1:]
	}
	return out, nil
}

// node returns node id's path.
func (s *FUSE) node(id uint64) (*fuseNode, error) { return lookup(s.nodes, id, syscall.ESTALE) }

// lookup is m[k], or errno as an error when m has no k.
func lookup[V any](m map[uint64]V, k uint64, errno syscall.Errno) (V, error) {
	v, ok := m[k]
	if !ok {
		return v, rerror(errno)
	}
	return v, nil
}

// nodeArgs decodes a request's fixed arguments into a and returns the
// node it is about; else the reply to send (ok false).
func (s *FUSE) nodeArgs(h *fuse.InHeader, head []byte, a any) (n *fuseNode, r fuseReply, ok bool) {
	if _, err := args(head, a); err != nil {
		return nil, s.malformed(), false
	}
	n, err := s.node(h.NodeId)
	if err != nil {
		return nil, errReply(err), false
	}
	return n, fuseReply{}, true
}

// fileArgs decodes a request's fixed arguments into a and returns the
// open file its handle (*fh, a field of a) names; else the reply to send.
func (s *FUSE) fileArgs(head []byte, a any, fh *uint64) (f *fid, r fuseReply, ok bool) {
	if _, err := args(head, a); err != nil {
		return nil, s.malformed(), false
	}
	f, err := s.file(*fh)
	if err != nil {
		return nil, errReply(err), false
	}
	return f, fuseReply{}, true
}

// child is the path of name in directory node id.
func (s *FUSE) child(id uint64, name string) (string, error) {
	n, err := s.node(id)
	if err != nil {
		return "", err
	}
	return childOf(n.rel, name)
}

// attrOf is a host stat as FUSE's attributes (write bits cleared on a
// read-only share).
func (s *FUSE) attrOf(st *unix.Stat_t) fuse.Attr {
	mode := st.Mode
	if s.g.cfg.ReadOnly {
		mode &^= 0o222
	}
	a := fuse.Attr{Ino: st.Ino, Size: uint64(st.Size), Blocks: uint64(st.Blocks),
		Atime: uint64(st.Atim.Sec), Mtime: uint64(st.Mtim.Sec), Ctime: uint64(st.Ctim.Sec),
		Atimensec: uint32(st.Atim.Nsec), Mtimensec: uint32(st.Mtim.Nsec), Ctimensec: uint32(st.Ctim.Nsec),
		Mode: mode, Nlink: uint32(st.Nlink), Blksize: uint32(st.Blksize)}
	a.Uid, a.Gid = st.Uid, st.Gid
	return a
}

// entry answers with rel's entry: a node id the guest now holds one more
// lookup of, valid for 0 s.
func (s *FUSE) entry(rel string) fuseReply {
	st, err := s.g.h.lstat(rel)
	if err != nil {
		return errReply(err)
	}
	id, err := s.ref(rel)
	if err != nil {
		return errReply(err)
	}
	return s.put(&fuse.EntryOut{NodeId: id, EntryValid: metaValid, AttrValid: metaValid, Attr: s.attrOf(&st)})
}

// ref adds a lookup of rel's node (made if new).
func (s *FUSE) ref(rel string) (uint64, error) {
	if id, ok := s.byRel[rel]; ok {
		s.nodes[id].lookups++
		return id, nil
	}
	if len(s.nodes) >= maxNodes {
		return 0, rerror(syscall.ENFILE)
	}
	id := s.nextNode
	s.nextNode++
	s.nodes[id] = &fuseNode{rel: rel, lookups: 1}
	s.byRel[rel] = id
	return id, nil
}

// forget drops n lookups of node id.
func (s *FUSE) forget(id, n uint64) {
	nd, ok := s.nodes[id]
	if !ok || id == fuseRootID {
		return
	}
	if n >= nd.lookups {
		delete(s.nodes, id)
		if s.byRel[nd.rel] == id {
			delete(s.byRel, nd.rel)
		}
		return
	}
	nd.lookups -= n
}

// handle registers an opened file.
func (s *FUSE) handle(f *fid) (uint64, error) {
	if len(s.files) >= maxHandles {
		s.g.closeFid(f)
		return 0, rerror(syscall.EMFILE)
	}
	fh := s.nextFh
	s.nextFh++
	s.files[fh] = f
	return fh, nil
}

// file returns open file fh.
func (s *FUSE) file(fh uint64) (*fid, error) { return lookup(s.files, fh, syscall.EBADF) }

func (s *FUSE) dispatch(h *fuse.InHeader, head []byte, in, out [][]byte, inLen, outLen int) fuseReply {
	ctx, req := s.ctx, &s.req
	if h.Opcode != opInit && !s.inited {
		return fuseReply{errno: syscall.EIO}
	}
	switch h.Opcode {
	case opInit:
		var a fuse.InitIn
		if _, err := args(head, &a); err != nil {
			// An older kernel's shorter INIT: major, minor, readahead, flags.
			if len(head) < inHdrSize+16 {
				return s.malformed()
			}
			a.Major = binary.LittleEndian.Uint32(head[inHdrSize:])
			a.Minor = binary.LittleEndian.Uint32(head[inHdrSize+4:])
		}
		if a.Major != fuseMajor || a.Minor < fuseMinMinor {
			return fuseReply{errno: syscall.EPROTO}
		}
		s.reset()
		s.inited = true
		o := fuse.InitOut{Major: fuseMajor, Minor: min(a.Minor, fuseMinor), MaxReadAhead: 0,
			Flags: fuse.CAP_ATOMIC_O_TRUNC | fuse.CAP_BIG_WRITES, MaxBackground: 16, CongestionThreshold: 12,
			MaxWrite: FUSEMaxWrite, TimeGran: 1}
		r := s.put(&o)
		// The INIT reply of minor 31 is 64 bytes (go-fuse's struct may be
		// longer as the protocol grows).
		s.enc = s.enc[:min(len(s.enc), 64)]
		return r
	case opDestroy:
		s.reset()
		return fuseReply{}
	case opForget:
		var a fuse.ForgetIn
		if _, err := args(head, &a); err != nil {
			return fuseReply{none: true}
		}
		s.forget(h.NodeId, a.Nlookup)
		return fuseReply{none: true}
	case opBatchForget:
		if len(head) < inHdrSize+8 {
			return fuseReply{none: true}
		}
		count := int(binary.LittleEndian.Uint32(head[inHdrSize:]))
		b := head[inHdrSize+8:]
		// The header part gathered bounds the count too (headMax).
		for i := 0; i < count && len(b) >= 16; i++ {
			s.forget(binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:]))
			b = b[16:]
		}
		return fuseReply{none: true}
	case opLookup:
		rel, _, err := s.childArg(h, head, nil)
		if err != nil {
			return errReply(err)
		}
		return s.entry(rel)
	case opGetattr:
		var a fuse.GetAttrIn
		n, r, ok := s.nodeArgs(h, head, &a)
		if !ok {
			return r
		}
		st, err := s.g.h.lstat(n.rel)
		if err != nil {
			return errReply(err)
		}
		return s.put(&fuse.AttrOut{AttrValid: metaValid, Attr: s.attrOf(&st)})
	case opSetattr:
		var a fuse.SetAttrIn
		n, r, ok := s.nodeArgs(h, head, &a)
		if !ok {
			return r
		}
		var f *fid
		if a.Valid&fuse.FATTR_FH != 0 {
			f = s.files[a.Fh]
		}
		v := a.Valid
		ch := attrChange{
			setOwner: v&(fuse.FATTR_UID|fuse.FATTR_GID) != 0,
			setMode:  v&fuse.FATTR_MODE != 0, mode: a.Mode,
			setSize: v&fuse.FATTR_SIZE != 0, size: a.Size,
			setATime: v&fuse.FATTR_ATIME != 0, atimeNow: v&fuse.FATTR_ATIME_NOW != 0, atime: time.Unix(int64(a.Atime&(1<<62-1)), int64(a.Atimensec%1e9)),
			setMTime: v&fuse.FATTR_MTIME != 0, mtimeNow: v&fuse.FATTR_MTIME_NOW != 0, mtime: time.Unix(int64(a.Mtime&(1<<62-1)), int64(a.Mtimensec%1e9)),
		}
		if err := s.g.changeAttr(ctx, req, n.rel, f, ch); err != nil {
			return errReply(err)
		}
		st, err := s.g.h.lstat(n.rel)
		if err != nil {
			return errReply(err)
		}
		return s.put(&fuse.AttrOut{AttrValid: metaValid, Attr: s.attrOf(&st)})
	case opOpen, opOpendir:
		var a fuse.OpenIn
		n, r, ok := s.nodeArgs(h, head, &a)
		if !ok {
			return r
		}
		f, _, err := s.g.openEntry(ctx, req, n.rel, h.Opcode == opOpendir, a.Flags)
		if err != nil {
			return errReply(err)
		}
		if (h.Opcode == opOpendir) != f.isDir {
			s.g.closeFid(f)
			if f.isDir {
				return fuseReply{errno: syscall.EISDIR}
			}
			return fuseReply{errno: syscall.ENOTDIR}
		}
		fh, err := s.handle(f)
		if err != nil {
			return errReply(err)
		}
		o := fuse.OpenOut{Fh: fh}
		if h.Opcode == opOpen {
			o.OpenFlags = fuse.FOPEN_DIRECT_IO
		}
		return s.put(&o)
	case opCreate:
		var a fuse.CreateIn
		rel, _, err := s.childArg(h, head, &a)
		if err != nil {
			return errReply(err)
		}
		f, st, err := s.g.createEntry(ctx, req, rel, a.Flags, a.Mode&^a.Umask)
		if err != nil {
			return errReply(err)
		}
		fh, err := s.handle(f)
		if err != nil {
			return errReply(err)
		}
		id, err := s.ref(rel)
		if err != nil {
			delete(s.files, fh)
			s.g.closeFid(f)
			return errReply(err)
		}
		return s.put(&fuse.CreateOut{EntryOut: fuse.EntryOut{NodeId: id, EntryValid: metaValid, AttrValid: metaValid, Attr: s.attrOf(&st)},
			OpenOut: fuse.OpenOut{Fh: fh, OpenFlags: fuse.FOPEN_DIRECT_IO}})
	case opRead:
		var a fuse.ReadIn
		f, r, ok := s.fileArgs(head, &a, &a.Fh)
		if !ok {
			return r
		}
		size := min(int(a.Size), outLen-outHdrSize, FUSEMaxWrite)
		if size < 0 {
			return s.malformed()
		}
		s.tail = skip(s.tail, out, outHdrSize, size)
		got, err := s.g.readAt(ctx, req, f, s.tail, a.Offset)
		if err != nil {
			return errReply(err)
		}
		return fuseReply{data: got}
	case opWrite:
		var a fuse.WriteIn
		f, r, ok := s.fileArgs(head, &a, &a.Fh)
		if !ok {
			return r
		}
		const off = inHdrSize + 40
		if int(a.Size) > inLen-off || a.Size > FUSEMaxWrite {
			return s.malformed()
		}
		s.tail = skip(s.tail, in, off, int(a.Size))
		got, err := s.g.writeAt(ctx, req, f, s.tail, a.Offset)
		if err != nil && got == 0 {
			return errReply(err)
		}
		return s.put(&fuse.WriteOut{Size: uint32(got)})
	case opRelease, opReleasedir:
		var a fuse.ReleaseIn
		if _, err := args(head, &a); err != nil {
			return s.malformed()
		}
		if f, ok := s.files[a.Fh]; ok {
			s.g.closeFid(f)
			delete(s.files, a.Fh)
		}
		return fuseReply{}
	case opFlush:
		// ENOSYS: the guest kernel sends no FLUSH again (no_flush): a
		// request per close saved; nothing is buffered here to flush.
		return fuseReply{errno: syscall.ENOSYS}
	case opFsync, opFsyncdir:
		var a fuse.FsyncIn
		f, r, ok := s.fileArgs(head, &a, &a.Fh)
		if !ok {
			return r
		}
		switch {
		case f.hasFD:
			return errReply(unix.Fsync(f.fd))
		case f.f != nil:
			return errReply(f.f.Sync())
		}
		return fuseReply{}
	case opMknod:
		return fuseReply{errno: syscall.EPERM} // no device nodes, fifos or sockets in a served directory
	case opMkdir:
		var a fuse.MkdirIn
		rel, _, err := s.childArg(h, head, &a)
		if err == nil {
			err = s.g.makeDir(ctx, req, rel, a.Mode&^a.Umask)
		}
		return s.entryAfter(rel, err)
	case opSymlink:
		rel, rest, err := s.childArg(h, head, nil)
		if err == nil {
			var target []string
			if target, err = names(rest, 1); err != nil {
				return s.malformed()
			}
			err = s.g.makeSymlink(ctx, req, rel, target[0])
		}
		return s.entryAfter(rel, err)
	case opLink:
		var a fuse.LinkIn
		rel, _, err := s.childArg(h, head, &a)
		if err == nil {
			var old *fuseNode
			if old, err = s.node(a.Oldnodeid); err == nil {
				err = s.g.makeLink(ctx, req, old.rel, rel)
			}
		}
		return s.entryAfter(rel, err)
	case opReadlink:
		n, err := s.node(h.NodeId)
		if err != nil {
			return errReply(err)
		}
		t, err := s.g.readLink(ctx, req, n.rel)
		if err != nil {
			return errReply(err)
		}
		s.enc = append(s.enc, t...)
		return fuseReply{}
	case opUnlink, opRmdir:
		rel, _, err := s.childArg(h, head, nil)
		if err == nil {
			err = s.g.removeEntry(ctx, req, rel, h.Opcode == opRmdir)
		}
		return errReply(err)
	case opRename, opRename2:
		var newDir uint64
		var rest []byte
		if h.Opcode == opRename2 {
			var a fuse.RenameIn
			r, err := args(head, &a)
			if err != nil {
				return s.malformed()
			}
			if a.Flags != 0 {
				return fuseReply{errno: syscall.EINVAL} // RENAME_NOREPLACE, _EXCHANGE, _WHITEOUT: not served
			}
			newDir, rest = a.Newdir, r
		} else {
			if len(head) < inHdrSize+8 {
				return s.malformed()
			}
			newDir, rest = binary.LittleEndian.Uint64(head[inHdrSize:]), head[inHdrSize+8:]
		}
		ns, err := names(rest, 2)
		if err != nil {
			return s.malformed()
		}
		oldRel, err := s.child(h.NodeId, ns[0])
		if err != nil {
			return errReply(err)
		}
		newRel, err := s.child(newDir, ns[1])
		if err != nil {
			return errReply(err)
		}
		if err := s.g.renameEntry(ctx, req, oldRel, newRel); err != nil {
			return errReply(err)
		}
		s.moved(oldRel, newRel)
		return fuseReply{}
	case opReaddir:
		var a fuse.ReadIn
		f, r, ok := s.fileArgs(head, &a, &a.Fh)
		if !ok {
			return r
		}
		if a.Offset == 0 || f.dirents == nil {
			ents, err := s.g.listDir(ctx, req, f)
			if err != nil {
				return errReply(err)
			}
			f.dirents = ents
		}
		size := min(int(a.Size), outLen-outHdrSize, FUSEMaxWrite)
		for i := a.Offset; i < uint64(len(f.dirents)); i++ {
			de := f.dirents[i]
			rec := (24 + len(de.name) + 7) &^ 7
			if len(s.enc)+rec > size {
				break
			}
			s.enc = binary.LittleEndian.AppendUint64(s.enc, de.q.path)
			s.enc = binary.LittleEndian.AppendUint64(s.enc, i+1)
			s.enc = binary.LittleEndian.AppendUint32(s.enc, uint32(len(de.name)))
			s.enc = binary.LittleEndian.AppendUint32(s.enc, uint32(de.typ))
			s.enc = append(s.enc, de.name...)
			for len(s.enc)%8 != 0 {
				s.enc = append(s.enc, 0)
			}
		}
		return fuseReply{}
	case opStatfs:
		st, err := s.g.statfsHost()
		if err != nil {
			return errReply(err)
		}
		o := fuse.StatfsOut{Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail, Files: st.Files, Ffree: st.Ffree,
			Bsize: uint32(st.Bsize), NameLen: maxName, Frsize: uint32(st.Frsize)}
		return s.put(&o)
	case opAccess:
		// Not a decided op (as a 9P walk): the accesses it precedes are.
		if _, err := s.node(h.NodeId); err != nil {
			return errReply(err)
		}
		return fuseReply{}
	case opReaddirplus, opInterrupt:
		return fuseReply{errno: syscall.ENOSYS}
	}
	return fuseReply{errno: syscall.ENOSYS}
}

// childArg decodes a request's fixed arguments into v (nil: none) and
// the name after them, and returns the name's path in the header's node
// and the bytes after the name; a request that does not parse is
// counted and answered EIO.
func (s *FUSE) childArg(h *fuse.InHeader, head []byte, v any) (string, []byte, error) {
	rest := head[inHdrSize:]
	if v != nil {
		r, err := args(head, v)
		if err != nil {
			s.g.malformed.Add(1)
			return "", nil, rerror(syscall.EIO)
		}
		rest = r
	}
	i := bytes.IndexByte(rest, 0)
	if i < 0 {
		s.g.malformed.Add(1)
		return "", nil, rerror(syscall.EIO)
	}
	rel, err := s.child(h.NodeId, string(rest[:i]))
	return rel, rest[i+1:], err
}

// entryAfter answers a request that made rel (err: how making it went)
// with its entry.
func (s *FUSE) entryAfter(rel string, err error) fuseReply {
	if err != nil {
		return errReply(err)
	}
	return s.entry(rel)
}

// malformed counts a request that does not parse and answers EIO.
func (s *FUSE) malformed() fuseReply {
	s.g.malformed.Add(1)
	return fuseReply{errno: syscall.EIO}
}

// moved follows a rename in the node table and the open handles.
func (s *FUSE) moved(oldRel, newRel string) {
	if id, ok := s.byRel[newRel]; ok { // the replaced file's node is stale now
		delete(s.byRel, newRel)
		if n := s.nodes[id]; n != nil {
			n.rel = "\x00stale"
		}
	}
	under := func(rel string) (string, bool) {
		if rel == oldRel {
			return newRel, true
		}
		if len(rel) > len(oldRel) && rel[:len(oldRel)+1] == oldRel+"/" {
			return newRel + rel[len(oldRel):], true
		}
		return rel, false
	}
	for id, n := range s.nodes {
		if r, ok := under(n.rel); ok {
			if s.byRel[n.rel] == id {
				delete(s.byRel, n.rel)
			}
			n.rel = r
			s.byRel[r] = id
		}
	}
	for _, f := range s.files {
		f.rel, _ = under(f.rel)
	}
}
