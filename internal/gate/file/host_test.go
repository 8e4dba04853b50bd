package file

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/event"
)

// socketPair is a connected pair of unix stream sockets as the monitor
// gets them from QEMU (a net.Conn: Serve reads and writes it raw).
func socketPair(t *testing.T) func() (io.ReadWriteCloser, io.ReadWriteCloser) {
	return func() (io.ReadWriteCloser, io.ReadWriteCloser) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		var cs [2]io.ReadWriteCloser
		for i, fd := range fds {
			f := os.NewFile(uintptr(fd), "sock")
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			cs[i] = c
		}
		return cs[0], cs[1]
	}
}

func readAt(c *client, fid uint32, off uint64, count uint32) ([]byte, syscall.Errno) {
	typ, d := c.rpc(tRead, func(e *enc) { e.u32(fid); e.u64(off); e.u32(count) })
	if en := errno(typ, d); en != 0 {
		return nil, en
	}
	return bytes.Clone(d.data()), 0
}

// TestServeOverSocket serves a session over a unix socket (the raw system
// call path): whole-msize reads and writes of a regular file, and EOF.
func TestServeOverSocket(t *testing.T) {
	var g *Gate
	c, pd, dir := setupOver(t, basePolicy, event.Subject{PID: 7, UID: 1000, Exe: "/bin/cat"}, false, socketPair(t), func(gg *Gate) { g = gg })
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i * 13)
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if en := c.walk(1, 2, "big"); en != 0 {
		t.Fatal(en)
	}
	if en := c.open(2, syscall.O_RDWR); en != 0 {
		t.Fatal(en)
	}
	var got []byte
	for {
		b, en := readAt(c, 2, uint64(len(got)), MaxMsize)
		if en != 0 {
			t.Fatal(en)
		}
		if len(b) == 0 {
			break
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("read %d bytes, not the file's %d", len(got), len(big))
	}
	data := bytes.Repeat([]byte("w"), MaxMsize-hdrLen-16)
	typ, d := c.rpc(tWrite, func(e *enc) { e.u32(2); e.u64(8); e.u32(uint32(len(data))); e.b = append(e.b, data...) })
	if en := errno(typ, d); en != 0 || d.u32() != uint32(len(data)) {
		t.Fatalf("write: %v", en)
	}
	onDisk, _ := os.ReadFile(filepath.Join(dir, "big"))
	if !bytes.Equal(onDisk[8:8+len(data)], data) || !bytes.Equal(onDisk[:8], big[:8]) {
		t.Fatal("the write did not land at its offset")
	}
	if n := len(pd.events()); n < 4 {
		t.Fatalf("%d decisions, want open, reads and the write", n)
	}
	if st := g.Stats(); st.Decided < 4 || st.DecideCPUNs == 0 || st.DecideCPUNs > st.DecideNs+uint64(1e9) {
		t.Fatalf("stats %+v: want the decisions' CPU time counted", st)
	}
}

// TestNoEscapeByRace: a fid's directory replaced by a symbolic link out
// of the root after the walk: opening, creating or stat-ing through it
// fails (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), on both paths.
func TestNoEscapeByRace(t *testing.T) {
	for _, raw := range []bool{true, false} {
		c, _, dir := setupOver(t, basePolicy, event.Subject{UID: 1000}, false, pipePair, func(g *Gate) { g.h.raw = raw })
		outside := t.TempDir()
		if err := os.WriteFile(filepath.Join(outside, "f"), []byte("outside"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "d", "f"), []byte("inside"), 0o644); err != nil {
			t.Fatal(err)
		}
		if en := c.walk(1, 2, "d", "f"); en != 0 {
			t.Fatal(en)
		}
		if en := c.walk(1, 3, "d"); en != 0 {
			t.Fatal(en)
		}
		if err := os.RemoveAll(filepath.Join(dir, "d")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(dir, "d")); err != nil {
			t.Fatal(err)
		}
		if en := c.open(2, syscall.O_RDONLY); en == 0 {
			t.Fatal("opened a file through a symlink out of the root")
		}
		typ, d := c.rpc(tGetattr, func(e *enc) { e.u32(2); e.u64(0x3fff) })
		if errno(typ, d) == 0 {
			t.Fatal("stat through a symlink out of the root")
		}
		typ, d = c.rpc(tLcreate, func(e *enc) { e.u32(3); e.str("new"); e.u32(2); e.u32(0o644); e.u32(0) })
		if errno(typ, d) == 0 {
			t.Fatal("created a file through a symlink out of the root")
		}
		if _, err := os.Stat(filepath.Join(outside, "new")); err == nil {
			t.Fatal("a file was created outside the root")
		}
	}
}
