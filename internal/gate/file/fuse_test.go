package file

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/gatevisor/gatevisor/internal/event"
)

// fuseClient plays the guest kernel's virtiofs driver: each request is
// split over several readable buffers and the reply lands in several
// writable ones, as descriptor chains in guest RAM would be.
type fuseClient struct {
	t      *testing.T
	s      *FUSE
	unique uint64
}

// fuseReq builds a request: the header (uid/gid 4242: a claim the gate
// must not use; pid 77), the fixed arguments (a go-fuse struct, whose
// embedded header is left out), then the names, NUL-terminated.
func fuseReq(op uint32, unique, node uint64, args any, names ...string) []byte {
	var body []byte
	if args != nil {
		b, err := binary.Append(nil, binary.LittleEndian, args)
		if err != nil {
			panic(err)
		}
		body = b[inHdrSize:]
	}
	for _, n := range names {
		body = append(append(body, n...), 0)
	}
	h := fuse.InHeader{Length: uint32(inHdrSize + len(body)), Opcode: op, Unique: unique, NodeId: node}
	h.Uid, h.Gid, h.Pid = 4242, 4242, 77
	b, _ := binary.Append(nil, binary.LittleEndian, &h)
	return append(b, body...)
}

// split cuts b into buffers of at most n bytes.
func split(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// do sends a request with extra data (a write's) and returns the errno
// and the reply's payload.
func (c *fuseClient) do(op uint32, node uint64, args any, data []byte, outSize int, names ...string) (syscall.Errno, []byte) {
	c.t.Helper()
	c.unique++
	in := append(fuseReq(op, c.unique, node, args, names...), data...)
	binary.LittleEndian.PutUint32(in, uint32(len(in)))
	out := make([]byte, outHdrSize+outSize)
	n := c.s.Handle(split(in, 7), split(out, 4096), len(in), len(out))
	if n < outHdrSize {
		c.t.Fatalf("op %d: reply of %d bytes", op, n)
	}
	if got := binary.LittleEndian.Uint64(out[8:]); got != c.unique {
		c.t.Fatalf("op %d: reply unique %d, want %d", op, got, c.unique)
	}
	if l := binary.LittleEndian.Uint32(out); l != n {
		c.t.Fatalf("op %d: header length %d, written %d", op, l, n)
	}
	return syscall.Errno(-int32(binary.LittleEndian.Uint32(out[4:]))), out[outHdrSize:n]
}

func (c *fuseClient) entry(b []byte) fuse.EntryOut {
	c.t.Helper()
	var e fuse.EntryOut
	if _, err := binary.Decode(b, binary.LittleEndian, &e); err != nil {
		c.t.Fatal(err)
	}
	return e
}

func setupFUSE(t *testing.T, src string, ro bool) (*fuseClient, *policyDecider, *fixedAttr, string) {
	t.Helper()
	dir := testTree(t)
	pd := &policyDecider{srv: compile(t, src)}
	at := &fixedAttr{subj: event.Subject{PID: 77, UID: 1000, Exe: "/bin/cat"}}
	g, err := New(Config{Name: "conf", Root: dir, GuestPath: "/mnt/conf", ReadOnly: ro, Decider: pd, Attributor: at})
	if err != nil {
		t.Fatal(err)
	}
	s := g.NewFUSE(context.Background())
	t.Cleanup(func() { s.Close(); g.Close() })
	c := &fuseClient{t: t, s: s}
	if e, b := c.do(opInit, 0, &fuse.InitIn{Major: 7, Minor: 38, MaxReadAhead: 1 << 17}, nil, 64); e != 0 || len(b) != 64 {
		t.Fatalf("INIT: %v, %d bytes", e, len(b))
	}
	return c, pd, at, dir
}

func TestFUSEOps(t *testing.T) {
	c, pd, at, dir := setupFUSE(t, `default: allow;
file default: allow
  no_secret: fileEq("/mnt/conf/secret.txt") and opEq("read") deny(EACCES)
  no_unlink: opEq("unlink") and fileEq("/mnt/conf/pub/keep") deny(EPERM)
`, false)
	// Lookup, open (direct I/O), read in pieces across buffers.
	e, b := c.do(opLookup, fuseRootID, nil, nil, 128, "secret.txt")
	if e != 0 {
		t.Fatalf("LOOKUP: %v", e)
	}
	ent := c.entry(b)
	if ent.EntryValid != metaValid || ent.AttrValid != metaValid || ent.Size != 22 {
		t.Fatalf("entry %+v: want valid for %d s and size 22", ent, metaValid)
	}
	e, b = c.do(opOpen, ent.NodeId, &fuse.OpenIn{Flags: 0}, nil, 16)
	var oo fuse.OpenOut
	binary.Decode(b, binary.LittleEndian, &oo)
	if e != 0 || oo.OpenFlags&fuse.FOPEN_DIRECT_IO == 0 {
		t.Fatalf("OPEN: %v %+v: want FOPEN_DIRECT_IO", e, oo)
	}
	if e, _ = c.do(opRead, ent.NodeId, &fuse.ReadIn{Fh: oo.Fh, Size: 4096}, nil, 4096); e != syscall.EACCES {
		t.Fatalf("READ of secret.txt: %v, want EACCES (no_secret)", e)
	}
	// Create, write (data over several buffers), read back.
	var ce fuse.CreateOut
	e, b = c.do(opCreate, fuseRootID, &fuse.CreateIn{Flags: uint32(os.O_RDWR), Mode: 0o644}, nil, 144, "new")
	if e != 0 {
		t.Fatalf("CREATE: %v", e)
	}
	binary.Decode(b, binary.LittleEndian, &ce)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	if e, b = c.do(opWrite, ce.NodeId, &fuse.WriteIn{Fh: ce.Fh, Size: uint32(len(data))}, data, 8); e != 0 || binary.LittleEndian.Uint32(b) != uint32(len(data)) {
		t.Fatalf("WRITE: %v %x", e, b)
	}
	if e, b = c.do(opRead, ce.NodeId, &fuse.ReadIn{Fh: ce.Fh, Offset: 10, Size: 20000}, nil, 20000); e != 0 || !bytes.Equal(b, data[10:]) {
		t.Fatalf("READ back: %v, %d bytes", e, len(b))
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "new")); !bytes.Equal(got, data) {
		t.Fatal("the write did not reach the host")
	}
	c.do(opRelease, ce.NodeId, &fuse.ReleaseIn{Fh: ce.Fh}, nil, 0)
	// Mkdir, rename into it, readdir, unlink allowed and denied.
	e, b = c.do(opMkdir, fuseRootID, &fuse.MkdirIn{Mode: 0o755}, nil, 128, "d")
	if e != 0 {
		t.Fatalf("MKDIR: %v", e)
	}
	d := c.entry(b)
	if e, _ = c.do(opRename2, fuseRootID, &fuse.RenameIn{Newdir: d.NodeId}, nil, 0, "new", "moved"); e != 0 {
		t.Fatalf("RENAME2: %v", e)
	}
	if _, err := os.Stat(filepath.Join(dir, "d", "moved")); err != nil {
		t.Fatal(err)
	}
	if e, b = c.do(opGetattr, ce.NodeId, &fuse.GetAttrIn{}, nil, 104); e != 0 || len(b) != 104 { // the node followed its file
		t.Fatalf("GETATTR after rename: %v", e)
	}
	e, b = c.do(opOpendir, d.NodeId, &fuse.OpenIn{}, nil, 16)
	binary.Decode(b, binary.LittleEndian, &oo)
	if e != 0 || oo.OpenFlags != 0 {
		t.Fatalf("OPENDIR: %v %+v", e, oo)
	}
	if e, b = c.do(opReaddir, d.NodeId, &fuse.ReadIn{Fh: oo.Fh, Size: 4096}, nil, 4096); e != 0 || !bytes.Contains(b, []byte("moved")) {
		t.Fatalf("READDIR: %v %q", e, b)
	}
	os.WriteFile(filepath.Join(dir, "pub", "keep"), nil, 0o644)
	if e, b = c.do(opLookup, fuseRootID, nil, nil, 128, "pub"); e != 0 {
		t.Fatalf("LOOKUP pub: %v", e)
	}
	pub := c.entry(b)
	if e, _ = c.do(opUnlink, pub.NodeId, nil, nil, 0, "keep"); e != syscall.EPERM {
		t.Fatalf("UNLINK keep: %v, want EPERM", e)
	}
	if e, _ = c.do(opUnlink, d.NodeId, nil, nil, 0, "moved"); e != 0 {
		t.Fatalf("UNLINK moved: %v", e)
	}
	// Names that are not one entry, unknown nodes and ops.
	for _, n := range []string{"..", ".", "a/b", ""} {
		if e, _ = c.do(opLookup, fuseRootID, nil, nil, 128, n); e != syscall.EINVAL {
			t.Errorf("LOOKUP %q: %v, want EINVAL", n, e)
		}
	}
	if e, _ = c.do(opGetattr, 999, &fuse.GetAttrIn{}, nil, 104); e != syscall.ESTALE {
		t.Errorf("GETATTR of an unknown node: %v", e)
	}
	if e, _ = c.do(4000, fuseRootID, nil, nil, 0); e != syscall.ENOSYS {
		t.Errorf("unknown op: %v", e)
	}
	if e, _ = c.do(opMknod, fuseRootID, &fuse.MknodIn{Mode: syscall.S_IFIFO | 0o644}, nil, 128, "fifo"); e != syscall.EPERM {
		t.Errorf("MKNOD: %v", e)
	}
	// Every decision had the attributor's subject, never the header's
	// uid 4242; the attributor saw the header's pid.
	for _, ev := range pd.events() {
		if ev.Subject.UID != 1000 || ev.Subject.PID != 77 {
			t.Fatalf("event subject %+v", ev.Subject)
		}
	}
	if len(at.pids) == 0 || at.pids[0] != 77 {
		t.Fatalf("attributor pids %v", at.pids)
	}
}

func TestFUSEReadOnlyAndForget(t *testing.T) {
	c, _, _, _ := setupFUSE(t, "default: allow;", true)
	if e, _ := c.do(opCreate, fuseRootID, &fuse.CreateIn{Flags: uint32(os.O_RDWR), Mode: 0o644}, nil, 144, "x"); e != syscall.EROFS {
		t.Fatalf("CREATE on a read-only share: %v", e)
	}
	_, b := c.do(opLookup, fuseRootID, nil, nil, 128, "secret.txt")
	ent := c.entry(b)
	if ent.Mode&0o222 != 0 {
		t.Fatalf("mode %o on a read-only share", ent.Mode)
	}
	// FORGET has no reply; the node is gone after it.
	c.unique++
	in := fuseReq(opForget, c.unique, ent.NodeId, &fuse.ForgetIn{Nlookup: 1})
	if n := c.s.Handle([][]byte{in}, nil, len(in), 0); n != 0 {
		t.Fatalf("FORGET answered %d bytes", n)
	}
	if e, _ := c.do(opGetattr, ent.NodeId, &fuse.GetAttrIn{}, nil, 104); e != syscall.ESTALE {
		t.Fatalf("GETATTR after FORGET: %v", e)
	}
	// A request whose header's length is not the chain's: EIO.
	in = fuseReq(opGetattr, 99, fuseRootID, &fuse.GetAttrIn{})
	out := make([]byte, 200)
	if n := c.s.Handle([][]byte{in}, [][]byte{out}, len(in)+1, len(out)); n != outHdrSize || int32(binary.LittleEndian.Uint32(out[4:])) != -int32(syscall.EIO) {
		t.Fatalf("a bad length: %d bytes, %x", n, out[:16])
	}
}

// fuseSession frames requests for FuzzFUSE: each is len[2] then its bytes.
func fuseSession(reqs ...[]byte) []byte {
	var out []byte
	for _, r := range reqs {
		out = binary.LittleEndian.AppendUint16(out, uint16(len(r)))
		out = append(out, r...)
	}
	return out
}

// FuzzFUSE feeds arbitrary requests to the FUSE server after INIT, as a
// hostile guest kernel could put in the virtqueue: it must never panic,
// never write outside the reply's buffers, and never touch a file
// outside its root.
func FuzzFUSE(f *testing.F) {
	f.Add(fuseSession(
		fuseReq(opLookup, 2, fuseRootID, nil, "f"),
		fuseReq(opOpen, 3, 2, &fuse.OpenIn{Flags: uint32(os.O_RDWR)}),
		fuseReq(opRead, 4, 2, &fuse.ReadIn{Fh: 1, Size: 100}),
		append(fuseReq(opWrite, 5, 2, &fuse.WriteIn{Fh: 1, Size: 3}), 'a', 'b', 'c'),
		fuseReq(opCreate, 6, fuseRootID, &fuse.CreateIn{Flags: uint32(os.O_RDWR), Mode: 0o644}, "n"),
		fuseReq(opRename, 7, fuseRootID, &fuse.ForgetIn{Nlookup: fuseRootID}, "n", "m"),
		fuseReq(opSymlink, 8, fuseRootID, nil, "l", "/etc/passwd"),
		fuseReq(opMkdir, 9, fuseRootID, &fuse.MkdirIn{Mode: 0o755}, "d"),
		fuseReq(opOpendir, 10, fuseRootID, &fuse.OpenIn{}),
		fuseReq(opReaddir, 11, fuseRootID, &fuse.ReadIn{Fh: 3, Size: 4096}),
		fuseReq(opSetattr, 12, 2, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_SIZE | fuse.FATTR_MODE, Size: 1, Mode: 0o777}}),
		fuseReq(opBatchForget, 13, 0, nil),
		fuseReq(opUnlink, 14, fuseRootID, nil, "m"),
		fuseReq(opStatfs, 15, fuseRootID, nil),
	))
	f.Add(fuseSession(fuseReq(opLookup, 2, fuseRootID, nil, ".."), fuseReq(opLink, 3, fuseRootID, &fuse.LinkIn{Oldnodeid: 1}, "x")))
	f.Add([]byte{40, 0, 40, 0, 0, 0, 15, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		g, check := fuzzGate(t)
		s := g.NewFUSE(context.Background())
		defer s.Close()
		init := fuseReq(opInit, 1, 0, &fuse.InitIn{Major: 7, Minor: 38})
		s.Handle([][]byte{init}, [][]byte{make([]byte, 80)}, len(init), 80)
		for len(data) >= 2 {
			n := int(binary.LittleEndian.Uint16(data))
			data = data[2:]
			if n > len(data) {
				n = len(data)
			}
			req := data[:n]
			data = data[n:]
			// The reply's buffers, with guards around them.
			out := make([]byte, 3*4096)
			for i := range out {
				out[i] = 0xa5
			}
			bufs := [][]byte{out[64:100], out[200 : 200+4096], out[5000 : 5000+4096]}
			w := s.Handle(split(req, 5), bufs, len(req), 36+2*4096)
			if w > 36+2*4096 {
				t.Fatalf("wrote %d bytes into %d", w, 36+2*4096)
			}
			for _, r := range [][2]int{{0, 64}, {100, 200}, {200 + 4096, 5000}, {5000 + 4096, len(out)}} {
				for i := r[0]; i < r[1]; i++ {
					if out[i] != 0xa5 {
						t.Fatalf("byte %d outside the reply's buffers written", i)
					}
				}
			}
		}
		check()
	})
}
