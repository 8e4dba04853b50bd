package file

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
)

// session builds a stream of requests as a guest kernel would send them.
func session(msgs ...func(e *enc) uint8) []byte {
	var out []byte
	for i, m := range msgs {
		e := newReply(make([]byte, 0, 256), 0, uint16(i))
		typ := m(e)
		e.b[4] = typ
		out = append(out, e.finish()...)
	}
	return out
}

// FuzzServe feeds arbitrary bytes to the server side as a guest would:
// it must never panic, never touch a file outside its root, and end the
// connection on a message it cannot parse.
func FuzzServe(f *testing.F) {
	f.Add(session(
		func(e *enc) uint8 { e.u32(8192); e.str("9P2000.L"); return tVersion },
		func(e *enc) uint8 {
			e.u32(1)
			e.u32(noFid)
			e.str("u")
			e.str("s")
			e.u32(1000)
			return tAttach
		},
		func(e *enc) uint8 { e.u32(1); e.u32(2); e.u16(1); e.str("f"); return tWalk },
		func(e *enc) uint8 { e.u32(2); e.u32(0); return tLopen },
		func(e *enc) uint8 { e.u32(2); e.u64(0); e.u32(100); return tRead },
		func(e *enc) uint8 { e.u32(2); e.u64(0); e.u32(1); e.b = append(e.b, 'x'); return tWrite },
		func(e *enc) uint8 { e.u32(1); e.u32(3); e.u16(0); return tWalk },
		func(e *enc) uint8 { e.u32(3); e.u32(0); return tLopen },
		func(e *enc) uint8 { e.u32(3); e.u64(0); e.u32(4096); return tReaddir },
		func(e *enc) uint8 {
			e.u32(1)
			e.str("n")
			e.u32(2)
			e.u32(0o644)
			e.u32(0)
			return tLcreate
		},
		func(e *enc) uint8 { e.u32(1); e.str("n"); e.u32(1); e.str("m"); return tRenameat },
		func(e *enc) uint8 { e.u32(1); e.str("m"); e.u32(0); return tUnlinkat },
		func(e *enc) uint8 { e.u32(2); return tClunk },
	))
	f.Add(session(
		func(e *enc) uint8 { e.u32(8192); e.str("9P2000.L"); return tVersion },
		func(e *enc) uint8 {
			e.u32(1)
			e.u32(noFid)
			e.str("u")
			e.str("s")
			e.u32(0)
			return tAttach
		},
		func(e *enc) uint8 {
			e.u32(1)
			e.u32(2)
			e.u16(2)
			e.str("..")
			e.str("etc")
			return tWalk
		},
		func(e *enc) uint8 {
			e.u32(1)
			e.u32(0x3fff)
			e.u32(0o777)
			e.u32(0)
			e.u32(0)
			e.u64(1)
			e.u64(0)
			e.u64(0)
			e.u64(0)
			e.u64(0)
			return tSetattr
		},
		func(e *enc) uint8 { e.u32(1); e.str("d"); e.u32(0o755); e.u32(0); return tMkdir },
		func(e *enc) uint8 { e.u32(1); e.str("l"); e.str("/etc/passwd"); e.u32(0); return tSymlink },
		func(e *enc) uint8 { e.u32(1); return tStatfs },
		func(e *enc) uint8 { e.u16(3); return tFlush },
	))
	f.Add([]byte{7, 0, 0, 0, 100, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		g, check := fuzzGate(t)
		_ = g.Serve(context.Background(), struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(data), io.Discard})
		check()
	})
}

// fuzzGate is a gate over a root with one file, next to a file outside
// it; check fails the test if anything outside the root changed.
func fuzzGate(t *testing.T) (g *Gate, check func()) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	os.WriteFile(filepath.Join(root, "f"), []byte("content"), 0o644)
	os.WriteFile(filepath.Join(dir, "outside"), []byte("keep"), 0o644)
	g, err := New(Config{Name: "s", Root: root, GuestPath: "/mnt/s",
		Decider: &policyDecider{srv: compile(t, "default: allow;")}, Attributor: &fixedAttr{subj: event.Subject{UID: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g, func() {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(dir, "outside")); err != nil || string(b) != "keep" {
			t.Fatalf("a file outside the root changed: %q %v", b, err)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 2 {
			t.Fatalf("entries next to the root: %d", len(ents))
		}
	}
}
