package qmp

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/testvm"
)

// startQEMU starts a kernel-less, paused q35 VM under TCG and returns its
// QMP socket, listening. The harness kills QEMU when the test ends,
// whatever the test did.
func startQEMU(t *testing.T) (qmpPath string, vm *testvm.VM) {
	t.Helper()
	vm = testvm.Start(t, testvm.Config{Paused: true})
	return vm.QMP, vm
}

func waitEvent(t *testing.T, c *Client, name string) Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-c.Events():
			if !ok {
				t.Fatalf("events closed while waiting for %s: %v", name, c.Err())
			}
			if ev.Name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event within 10s", name)
		}
	}
}

func TestMain(m *testing.M) { os.Exit(testvm.Main(m)) }

func TestQEMU(t *testing.T) {
	path, _ := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if v := c.Version(); v.Major < 2 {
		t.Errorf("Version = %v, want a real QEMU version", v)
	}
	t.Logf("QEMU %v (%s)", c.Version(), c.Version().Package)

	st, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	if st.Running || st.Status != "prelaunch" {
		t.Errorf("QueryStatus at start = %+v, want prelaunch, not running", st)
	}

	if err := c.Cont(ctx); err != nil {
		t.Fatalf("Cont: %v", err)
	}
	waitEvent(t, c, "RESUME")
	if st, err := c.QueryStatus(ctx); err != nil || !st.Running {
		t.Errorf("QueryStatus after cont = %+v, %v; want running", st, err)
	}

	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	ev := waitEvent(t, c, "STOP")
	if ev.Timestamp.IsZero() {
		t.Error("STOP event has no timestamp")
	}
	if st, err := c.QueryStatus(ctx); err != nil || st.Running || st.Status != "paused" {
		t.Errorf("QueryStatus after stop = %+v, %v; want paused", st, err)
	}

	out, err := c.HumanMonitorCommand(ctx, "info status")
	if err != nil || !bytes.Contains([]byte(out), []byte("paused")) {
		t.Errorf("HumanMonitorCommand(info status) = %q, %v", out, err)
	}

	err = c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command error = %v, want *Error CommandNotFound", err)
	}

	dump := filepath.Join(t.TempDir(), "mem.elf")
	if err := c.DumpGuestMemory(ctx, dump); err != nil {
		t.Fatalf("DumpGuestMemory: %v", err)
	}
	waitEvent(t, c, "DUMP_COMPLETED")
	hdr := make([]byte, 4)
	if f, err := os.Open(dump); err != nil {
		t.Errorf("open dump: %v", err)
	} else {
		f.Read(hdr)
		f.Close()
		if string(hdr) != "\x7fELF" {
			t.Errorf("dump starts with %q, want an ELF header", hdr)
		}
	}

	if err := c.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	ev = waitEvent(t, c, "SHUTDOWN")
	if !bytes.Contains(ev.Data, []byte("host-qmp-quit")) {
		t.Errorf("SHUTDOWN data = %s, want reason host-qmp-quit", ev.Data)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after QEMU quit")
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after quit = %v, want ErrClosed", err)
	}
}

// TestQEMUKilled checks that a call pending when QEMU dies fails with
// ErrClosed and Done fires.
func TestQEMUKilled(t *testing.T) {
	path, vm := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	vm.Kill()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after QEMU was killed")
	}
	if _, err := c.QueryStatus(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("QueryStatus after kill = %v, want ErrClosed", err)
	}
}
