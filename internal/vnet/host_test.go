package vnet

import (
	"errors"
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
