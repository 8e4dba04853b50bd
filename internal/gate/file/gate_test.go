package file

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// policyDecider decides with a real compiled policy.
type policyDecider struct {
	srv *secserver.Server
	mu  sync.Mutex
	evs []event.Event
}

func (p *policyDecider) Decide(ev *event.Event) secserver.Decision {
	p.mu.Lock()
	p.evs = append(p.evs, *ev)
	p.mu.Unlock()
	return p.srv.Decide(ev)
}

// events is a copy of the events decided so far (the server's goroutine
// appends to them).
func (p *policyDecider) events() []event.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]event.Event(nil), p.evs...)
}

func (p *policyDecider) GateFailure(ev *event.Event, rule, reason string, errno int32) secserver.Decision {
	return p.srv.GateFailure(ev, rule, reason, errno)
}

type fixedAttr struct {
	subj event.Subject
	err  error
	tags []uint16
	pids []uint32 // FUSE requests' header pids
}

func (a *fixedAttr) Attribute(_ context.Context, req *Request) (event.Subject, error) {
	if req.FUSE {
		a.pids = append(a.pids, req.PID)
		return a.subj, a.err
	}
	tag, msg := req.Tag, req.Msg
	a.tags = append(a.tags, tag)
	if len(msg) < hdrLen || uint16(msg[5])|uint16(msg[6])<<8 != tag {
		return event.Subject{}, errors.New("tag mismatch")
	}
	return a.subj, a.err
}

func compile(t *testing.T, src string) *secserver.Server {
	t.Helper()
	spec, err := policy.Parse("test.policy", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	return secserver.New(p, secserver.Config{})
}

// client is a minimal 9P2000.L client over a pipe to Serve.
type client struct {
	t   *testing.T
	rw  io.ReadWriter
	tag uint16
}

func (c *client) rpc(typ uint8, body func(e *enc)) (uint8, *dec) {
	c.t.Helper()
	c.tag++
	e := newReply(make([]byte, 0, 256), typ, c.tag)
	body(e)
	if _, err := c.rw.Write(e.finish()); err != nil {
		c.t.Fatal(err)
	}
	buf := make([]byte, MaxMsize)
	msg, err := readMsg(c.rw, buf, MaxMsize)
	if err != nil {
		c.t.Fatal(err)
	}
	if got := uint16(msg[5]) | uint16(msg[6])<<8; got != c.tag {
		c.t.Fatalf("reply tag %d, want %d", got, c.tag)
	}
	return msg[4], &dec{b: msg[hdrLen:]}
}

// errno returns the Rlerror errno of a reply, 0 if it is not one.
func errno(typ uint8, d *dec) syscall.Errno {
	if typ != tLerror+1 {
		return 0
	}
	return syscall.Errno(d.u32())
}

// testTree is a served directory: secret.txt (a canary) and pub/hello.
func testTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), []byte("CANARY-1234 top secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "pub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pub", "hello"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func setup(t *testing.T, src string, subj event.Subject, ro bool) (*client, *policyDecider, string) {
	t.Helper()
	return setupOver(t, src, subj, ro, pipePair)
}

func setupOver(t *testing.T, src string, subj event.Subject, ro bool, pair func() (io.ReadWriteCloser, io.ReadWriteCloser), tweak ...func(*Gate)) (*client, *policyDecider, string) {
	t.Helper()
	dir := testTree(t)
	pd := &policyDecider{srv: compile(t, src)}
	g, err := New(Config{Name: "conf", Root: dir, GuestPath: "/mnt/conf", ReadOnly: ro, Decider: pd, Attributor: &fixedAttr{subj: subj}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	for _, f := range tweak {
		f(g)
	}
	a, b := pair()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, b) }()
	t.Cleanup(func() { cancel(); a.Close(); <-done })
	c := &client{t: t, rw: a}
	typ, d := c.rpc(tVersion, func(e *enc) { e.u32(MaxMsize); e.str("9P2000.L") })
	if typ != tVersion+1 || d.u32() != MaxMsize || d.str(64) != "9P2000.L" {
		t.Fatalf("version: %d", typ)
	}
	typ, d = c.rpc(tAttach, func(e *enc) { e.u32(1); e.u32(noFid); e.str("x"); e.str("conf"); e.u32(0) })
	if typ != tAttach+1 {
		t.Fatalf("attach: %v", errno(typ, d))
	}
	return c, pd, dir
}

// pipePair is a full-duplex in-memory connection.
func pipePair() (io.ReadWriteCloser, io.ReadWriteCloser) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return rwc{ar, aw}, rwc{br, bw}
}

type rwc struct {
	*io.PipeReader
	*io.PipeWriter
}

func (r rwc) Close() error { r.PipeReader.Close(); return r.PipeWriter.Close() }

func (c *client) walk(from, to uint32, names ...string) syscall.Errno {
	typ, d := c.rpc(tWalk, func(e *enc) {
		e.u32(from)
		e.u32(to)
		e.u16(uint16(len(names)))
		for _, n := range names {
			e.str(n)
		}
	})
	if en := errno(typ, d); en != 0 {
		return en
	}
	if n := d.u16(); int(n) != len(names) {
		return syscall.ENOENT
	}
	return 0
}

func (c *client) open(fid uint32, flags uint32) syscall.Errno {
	typ, d := c.rpc(tLopen, func(e *enc) { e.u32(fid); e.u32(flags) })
	return errno(typ, d)
}

func (c *client) read(fid uint32) ([]byte, syscall.Errno) {
	typ, d := c.rpc(tRead, func(e *enc) { e.u32(fid); e.u64(0); e.u32(4096) })
	if en := errno(typ, d); en != 0 {
		return nil, en
	}
	return d.data(), 0
}

const basePolicy = `
default: allow;
file default: allow
  secret_uid: filePrefixEq("/mnt/conf/secret") and not uidEq(1000) deny(EACCES)
  no_rm: opEq("unlink") and fileEq("/mnt/conf/pub/hello") deny(EPERM)
`

func TestReadDecidedPerProcess(t *testing.T) {
	for _, tc := range []struct {
		name string
		uid  uint32
		want syscall.Errno
	}{{"owner", 1000, 0}, {"other", 1001, syscall.EACCES}} {
		t.Run(tc.name, func(t *testing.T) {
			c, pd, _ := setup(t, basePolicy, event.Subject{PID: 7, UID: tc.uid, Exe: "/bin/cat"}, false)
			if en := c.walk(1, 2, "secret.txt"); en != 0 {
				t.Fatalf("walk: %v", en)
			}
			if en := c.open(2, syscall.O_RDONLY); en != tc.want {
				t.Fatalf("open: %v, want %v", en, tc.want)
			}
			if tc.want != 0 {
				return
			}
			data, en := c.read(2)
			if en != 0 || string(data) != "CANARY-1234 top secret" {
				t.Fatalf("read: %q %v", data, en)
			}
			var ops []string
			for _, ev := range pd.events() {
				ops = append(ops, ev.Op+" "+ev.Path)
				if ev.Subject.UID != tc.uid || len(ev.Labels) != 1 || ev.Labels[0] != Label {
					t.Errorf("event %+v", ev)
				}
			}
			if want := "open /mnt/conf/secret.txt,read /mnt/conf/secret.txt"; strings.Join(ops, ",") != want {
				t.Errorf("events %q, want %q", ops, want)
			}
		})
	}
}

func TestCreateWriteUnlinkRename(t *testing.T) {
	c, _, dir := setup(t, basePolicy, event.Subject{PID: 7, UID: 1000}, false)
	if en := c.walk(1, 2, "pub"); en != 0 {
		t.Fatal(en)
	}
	typ, d := c.rpc(tLcreate, func(e *enc) { e.u32(2); e.str("new"); e.u32(syscall.O_RDWR); e.u32(0o644); e.u32(0) })
	if en := errno(typ, d); en != 0 {
		t.Fatalf("create: %v", en)
	}
	typ, d = c.rpc(tWrite, func(e *enc) { e.u32(2); e.u64(0); e.u32(3); e.b = append(e.b, "abc"...) })
	if en := errno(typ, d); en != 0 || d.u32() != 3 {
		t.Fatalf("write: %v", en)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "pub", "new")); string(b) != "abc" {
		t.Fatalf("host file %q", b)
	}
	if en := c.walk(1, 3, "pub"); en != 0 {
		t.Fatal(en)
	}
	typ, d = c.rpc(tRenameat, func(e *enc) { e.u32(3); e.str("new"); e.u32(3); e.str("renamed") })
	if en := errno(typ, d); en != 0 {
		t.Fatalf("rename: %v", en)
	}
	typ, d = c.rpc(tUnlinkat, func(e *enc) { e.u32(3); e.str("hello"); e.u32(0) })
	if en := errno(typ, d); en != syscall.EPERM {
		t.Fatalf("unlink hello: %v, want EPERM", en)
	}
	typ, d = c.rpc(tUnlinkat, func(e *enc) { e.u32(3); e.str("renamed"); e.u32(0) })
	if en := errno(typ, d); en != 0 {
		t.Fatalf("unlink renamed: %v", en)
	}
	if _, err := os.Stat(filepath.Join(dir, "pub", "renamed")); !os.IsNotExist(err) {
		t.Fatalf("renamed still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pub", "hello")); err != nil {
		t.Fatalf("hello removed: %v", err)
	}
}

func TestTruncatingOpenIsATruncate(t *testing.T) {
	c, pd, dir := setup(t, basePolicy+"  no_trunc: opEq(\"truncate\") and fileEq(\"/mnt/conf/pub/hello\") deny(EPERM)\n", event.Subject{UID: 1000}, false)
	c.walk(1, 2, "pub", "hello")
	if en := c.open(2, syscall.O_WRONLY|syscall.O_TRUNC); en != syscall.EPERM {
		t.Fatalf("open O_TRUNC: %v, want EPERM", en)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "pub", "hello")); string(b) != "hello" {
		t.Fatalf("the file was truncated: %q", b)
	}
	var ops []string
	for _, ev := range pd.events() {
		ops = append(ops, ev.Op)
	}
	if strings.Join(ops, ",") != "open,truncate" {
		t.Fatalf("ops %v", ops)
	}
}

func TestAttributionFailureDenies(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	pd := &policyDecider{srv: compile(t, "default: allow;")}
	g, err := New(Config{Name: "s", Root: dir, GuestPath: "/mnt/s", Decider: pd, Attributor: &fixedAttr{err: errors.New("no task")}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	a, b := pipePair()
	go g.Serve(context.Background(), b)
	defer a.Close()
	c := &client{t: t, rw: a}
	c.rpc(tVersion, func(e *enc) { e.u32(8192); e.str("9P2000.L") })
	c.rpc(tAttach, func(e *enc) { e.u32(1); e.u32(noFid); e.str(""); e.str("s"); e.u32(0) })
	c.walk(1, 2, "f")
	if en := c.open(2, 0); en != syscall.EACCES {
		t.Fatalf("open with no attribution: %v, want EACCES", en)
	}
	if s := g.Stats(); s.AttributionFailures != 1 || s.Denied != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestNoEscape(t *testing.T) {
	c, _, dir := setup(t, basePolicy, event.Subject{UID: 1000}, false)
	if err := os.Symlink("/etc", filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	if en := c.walk(1, 2, "..", "..", "etc", "passwd"); en == 0 {
		t.Fatal("walked out of the root with ..")
	}
	if en := c.walk(1, 3, "out"); en != 0 {
		t.Fatal(en)
	}
	typ, d := c.rpc(tWalk, func(e *enc) { e.u32(1); e.u32(4); e.u16(1); e.str("a/b") })
	if errno(typ, d) != syscall.EINVAL {
		t.Fatal("a name with a slash was taken")
	}
	// out is a symlink: walking through it is refused by os.Root, opening it
	// with O_NOFOLLOW fails.
	if en := c.walk(1, 5, "out", "passwd"); en == 0 {
		t.Fatal("walked through a symlink out of the root")
	}
	if en := c.open(3, 0); en == 0 {
		t.Fatal("opened a symlink out of the root")
	}
}

func TestReadOnly(t *testing.T) {
	c, _, _ := setup(t, basePolicy, event.Subject{UID: 1000}, true)
	c.walk(1, 2, "secret.txt")
	if en := c.open(2, syscall.O_WRONLY); en != syscall.EROFS {
		t.Fatalf("open for write on ro share: %v", en)
	}
	c.walk(1, 3, "pub")
	typ, d := c.rpc(tLcreate, func(e *enc) { e.u32(3); e.str("x"); e.u32(0); e.u32(0o644); e.u32(0) })
	if errno(typ, d) != syscall.EROFS {
		t.Fatal("create on ro share")
	}
}

func TestReaddir(t *testing.T) {
	c, _, _ := setup(t, basePolicy, event.Subject{UID: 1000}, false)
	c.walk(1, 2)
	if en := c.open(2, 0); en != 0 {
		t.Fatal(en)
	}
	typ, d := c.rpc(tReaddir, func(e *enc) { e.u32(2); e.u64(0); e.u32(4096) })
	if en := errno(typ, d); en != 0 {
		t.Fatal(en)
	}
	data := &dec{b: d.data()}
	var names []string
	for len(data.b) > 0 && data.err == nil {
		data.u8()
		data.u32()
		data.u64()
		data.u64()
		data.u8()
		names = append(names, data.str(maxName))
	}
	if got := strings.Join(names, ","); !strings.Contains(got, "secret.txt") || !strings.Contains(got, "pub") {
		t.Fatalf("readdir: %q", got)
	}
}

func TestMalformedClosesConnection(t *testing.T) {
	for _, msg := range [][]byte{
		{3, 0, 0, 0},                        // size below the header
		{0xff, 0xff, 0xff, 0xff, 100, 0, 0}, // size above msize
		append([]byte{13, 0, 0, 0, tWalk, 1, 0}, 1, 0, 0, 0, 2, 0), // truncated walk
	} {
		dir := t.TempDir()
		g, _ := New(Config{Name: "s", Root: dir, GuestPath: "/mnt/s", Decider: &policyDecider{srv: compile(t, "default: allow;")}, Attributor: &fixedAttr{}})
		err := g.Serve(context.Background(), struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(msg), io.Discard})
		if err == nil || errors.Is(err, io.EOF) && len(msg) > 4 && msg[0] > 7 && msg[0] < 100 {
			t.Errorf("message %x: %v", msg, err)
		}
		g.Close()
	}
}

func TestValidName(t *testing.T) {
	for _, s := range []string{"conf", "a", "x_1-2"} {
		if ValidName(s) != nil {
			t.Errorf("%q refused", s)
		}
	}
	for _, s := range []string{"", "A", "-x", "a/b", "a b", strings.Repeat("a", 33)} {
		if ValidName(s) == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
