package vnet

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestHostProcessOutlivesMembers: with a Spawn function the switch runs in
// a host of its own (here a goroutine standing in for the process), which
// the first member starts; a member that leaves and joins again finds the
// same host, and the host ends once it has had no member for HostLinger.
func TestHostProcessOutlivesMembers(t *testing.T) {
	root := t.TempDir()
	oldLinger := HostLinger
	HostLinger = 300 * time.Millisecond
	t.Cleanup(func() { HostLinger = oldLinger })
	spawns := make(chan error, 8)
	ended := make(chan error, 8)
	spawn := func(dir string) error {
		if filepath.Dir(filepath.Dir(dir)) != root {
			t.Errorf("spawn for %s, not under %s", dir, root)
		}
		ready := make(chan error, 1)
		go func() {
			ended <- HostNetwork(root, filepath.Base(dir), nil, func(err error) { ready <- err }, t.Logf)
		}()
		err := <-ready
		spawns <- err
		if errors.Is(err, ErrHosted) {
			return nil
		}
		return err
	}
	da, ca := collect()
	a, err := Join(root, "lab", da, t.Logf, spawn)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-spawns; err != nil {
		t.Fatalf("first spawn: %v", err)
	}
	if a.Hosting() {
		t.Fatal("a member with a Spawn function hosts the switch itself")
	}
	db, cb := collect()
	b, err := Join(root, "lab", db, t.Logf, spawn)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-spawns:
		t.Fatalf("a second host was spawned (%v) while one listens", err)
	default:
	}
	bcast := MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	macA, macB := MAC{2, 0, 0, 0, 0, 0xa}, MAC{2, 0, 0, 0, 0, 0xb}
	eventually(t, func() bool { a.Send([][]byte{frame(bcast, macA, 0xa1)}); return gotFill(cb, 0xa1) })
	// a leaves and comes back: the host (and its services) stayed.
	a.Close()
	a, err = Join(root, "lab", da, t.Logf, spawn)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { b.Send([][]byte{frame(bcast, macB, 0xb2)}); return gotFill(ca, 0xb2) })
	select {
	case err := <-ended:
		t.Fatalf("the host ended (%v) while members were connected", err)
	case err := <-spawns:
		t.Fatalf("a host was spawned again (%v) after a member rejoined", err)
	default:
	}
	a.Close()
	b.Close()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the host did not end without members")
	}
	if _, err := os.Stat(filepath.Join(root, "net")); !os.IsNotExist(err) {
		t.Fatalf("the host left its directory behind: %v", err)
	}
}

// TestHostNetworkRefusesSecondHost: a second host process for a network
// already hosted reports ErrHosted and changes nothing.
func TestHostNetworkRefusesSecondHost(t *testing.T) {
	root := t.TempDir()
	stop := make(chan struct{})
	ready := make(chan error, 2)
	done := make(chan error, 1)
	go func() { done <- HostNetwork(root, "lab", stop, func(err error) { ready <- err }, t.Logf) }()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	if err := HostNetwork(root, "lab", nil, func(err error) { ready <- err }, t.Logf); !errors.Is(err, ErrHosted) || !errors.Is(<-ready, ErrHosted) {
		t.Fatalf("second host: %v", err)
	}
	if err := HostNetwork(root, "../x", nil, func(err error) { ready <- err }, t.Logf); err == nil || <-ready == nil {
		t.Fatal("a bad network name was hosted")
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func gotFill(ch chan []byte, fill byte) bool {
	for {
		select {
		case f := <-ch:
			if len(f) > 14 && f[14] == fill {
				return true
			}
		case <-time.After(100 * time.Millisecond):
			return false
		}
	}
}

func eventually(t *testing.T, f func() bool) {
	t.Helper()
	for i := 0; i < 50; i++ {
		if f() {
			return
		}
	}
	t.Fatal("condition not met within 50 tries")
}

// TestDetachAdopt: a member hands its connection to the host over (as a
// monitor upgrade does across exec); the host never sees it leave, and the
// frames switched to it meanwhile arrive, whole and in order, through the
// adopted connection.
func TestDetachAdopt(t *testing.T) {
	root := t.TempDir()
	oldLinger := HostLinger
	HostLinger = 100 * time.Millisecond
	t.Cleanup(func() { HostLinger = oldLinger })
	ended := make(chan error, 4)
	spawns := 0
	spawn := func(dir string) error {
		spawns++
		ready := make(chan error, 1)
		go func() { ended <- HostNetwork(root, filepath.Base(dir), nil, func(err error) { ready <- err }, t.Logf) }()
		return <-ready
	}
	da, ca := collect()
	a, err := Join(root, "lab", da, t.Logf, spawn)
	if err != nil {
		t.Fatal(err)
	}
	db, cb := collect()
	b, err := Join(root, "lab", db, t.Logf, spawn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	macA, macB := MAC{2, 0, 0, 0, 0, 0xa}, MAC{2, 0, 0, 0, 0, 0xb}
	// Both learned by the switch.
	eventually(t, func() bool { a.Send([][]byte{frame(macB, macA, 0x01)}); return gotFill(cb, 0x01) })
	eventually(t, func() bool { b.Send([][]byte{frame(macA, macB, 0x02)}); return gotFill(ca, 0x02) })
	f, rest, err := a.Detach()
	if err != nil {
		t.Fatal(err)
	}
	// Switched to a's port while nobody reads it: buffered in the socket.
	for i := 0; i < 20; i++ {
		b.Send([][]byte{frame(macA, macB, byte(0x10+i))})
	}
	time.Sleep(3 * HostLinger)
	select {
	case err := <-ended:
		t.Fatalf("the host ended (%v) while a member was handed over", err)
	default:
	}
	a2, err := Adopt(root, "lab", f, rest, da, t.Logf, spawn)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	for i := 0; i < 20; i++ {
		got := recv(t, ca)
		if got[14] != byte(0x10+i) {
			t.Fatalf("frame %d after the adoption: fill %#x, want %#x", i, got[14], 0x10+i)
		}
	}
	eventually(t, func() bool { a2.Send([][]byte{frame(macB, macA, 0x03)}); return gotFill(cb, 0x03) })
	if spawns != 1 {
		t.Fatalf("%d hosts spawned, want 1", spawns)
	}
	if _, _, err := a2.Detach(); err != nil {
		t.Fatalf("a second hand-over: %v", err)
	}
	if _, _, err := a2.Detach(); err == nil {
		t.Fatal("a detached network detached again")
	}
	if _, err := Adopt(root, "lab", mustTempFile(t), make([]byte, maxAdoptRest+1), da, t.Logf, spawn); err == nil {
		t.Fatal("an oversized partial frame was adopted")
	}
}

func mustTempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestFrameReaderStopsAtFrameBoundary: a read that fails in the middle of
// a frame leaves the partial frame for Unread.
func TestFrameReaderStopsAtFrameBoundary(t *testing.T) {
	var buf bytes.Buffer
	w := NewFrameWriter(&buf)
	if err := w.WriteFrames([][]byte{bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 60)}); err != nil {
		t.Fatal(err)
	}
	whole := buf.Bytes()
	cut := len(whole) - 10
	r := NewFrameReader(bytes.NewReader(whole[:cut]))
	if f, err := r.ReadFrame(); err != nil || f[0] != 1 {
		t.Fatalf("first frame: %v", err)
	}
	if _, err := r.ReadFrame(); err == nil {
		t.Fatal("a partial frame was read")
	}
	rest := r.Unread()
	if !bytes.Equal(rest, whole[64:cut]) {
		t.Fatalf("unread %d bytes, want %d", len(rest), cut-64)
	}
	r2 := NewFrameReader(io.MultiReader(bytes.NewReader(rest), bytes.NewReader(whole[cut:])))
	if f, err := r2.ReadFrame(); err != nil || len(f) != 60 || f[0] != 2 {
		t.Fatalf("the frame completed after the hand-over: %v", err)
	}
}
