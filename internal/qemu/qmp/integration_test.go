package qmp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// startQEMU starts a kernel-less, paused q35 VM under TCG with a QMP socket
// in a fresh temporary directory and returns the socket path. QEMU is
// killed in t.Cleanup whatever the test did.
func startQEMU(t *testing.T) (qmpPath string, cmd *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not on PATH; install it with: apt-get install qemu-system-x86")
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	qmpPath = filepath.Join(dir, "qmp.sock")
	var stderr bytes.Buffer
	cmd = exec.Command(bin,
		"-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-m", "64",
		"-qmp", "unix:"+qmpPath+",server=on,wait=off")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("QEMU stderr:\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		// QEMU creates the file (bind) a moment before it listens.
		if c, err := net.Dial("unix", qmpPath); err == nil {
			c.Close()
			return qmpPath, cmd
		}
		select {
		case <-exited:
			t.Fatalf("QEMU exited early: %s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("QMP socket did not appear within 10s")
		}
	}
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
	path, cmd := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	cmd.Process.Kill()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after QEMU was killed")
	}
	if _, err := c.QueryStatus(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("QueryStatus after kill = %v, want ErrClosed", err)
	}
}
