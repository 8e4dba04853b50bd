package clientconn

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var errTestClosed = errors.New("test: connection closed")

// start returns a started Conn over one end of a pipe, whose reader
// copies what it reads to got and returns the read error, and the other end.
func start(t *testing.T) (*Conn, net.Conn, chan []byte) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { b.Close() })
	c := New(a, errTestClosed)
	got := make(chan []byte, 16)
	c.Start(func(r io.Reader) error {
		buf := make([]byte, 64)
		for {
			n, err := r.Read(buf)
			if err != nil {
				if errors.Is(err, io.EOF) {
					return errors.New("peer closed")
				}
				return err
			}
			got <- append([]byte(nil), buf[:n]...)
		}
	})
	t.Cleanup(func() { c.Close() })
	return c, b, got
}

func TestEnd(t *testing.T) {
	tests := []struct {
		name    string
		end     func(c *Conn, peer net.Conn)
		wantMsg string
	}{
		{"peer closes", func(c *Conn, peer net.Conn) { peer.Close() }, "test: connection closed: peer closed"},
		{"client closes", func(c *Conn, peer net.Conn) { c.Close() }, "test: connection closed: closed by client"},
		{"fail", func(c *Conn, peer net.Conn) { c.Fail(errors.New("bad frame")) }, "test: connection closed: bad frame"},
		{"first reason wins", func(c *Conn, peer net.Conn) {
			c.Fail(errors.New("first"))
			c.Fail(errors.New("second"))
			c.Close()
		}, "test: connection closed: first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, peer, _ := start(t)
			if err := c.Err(); err != nil {
				t.Fatalf("Err before the end = %v, want nil", err)
			}
			tt.end(c, peer)
			select {
			case <-c.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("Done not closed")
			}
			err := c.Err()
			if !errors.Is(err, errTestClosed) || err.Error() != tt.wantMsg {
				t.Errorf("Err = %v, want %q wrapping the sentinel", err, tt.wantMsg)
			}
			if r := c.Reason(); r != err {
				t.Errorf("Reason = %v, want Err's %v", r, err)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	c, peer, got := start(t)
	go func() {
		buf := make([]byte, 64)
		n, _ := peer.Read(buf)
		peer.Write(buf[:n]) // echo once
	}()
	if err := c.Write(context.Background(), []byte("ping")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if b := <-got; string(b) != "ping" {
		t.Errorf("echo = %q, want ping", b)
	}
}

func TestWriteInterrupted(t *testing.T) {
	c, _, _ := start(t) // nobody reads the peer: the write blocks
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := c.Write(ctx, []byte("stuck"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Write = %v, want DeadlineExceeded", err)
	}
	<-c.Done()
	if err := c.Err(); !errors.Is(err, errTestClosed) || !strings.Contains(err.Error(), "write interrupted") {
		t.Errorf("Err = %v, want the sentinel mentioning the interrupted write", err)
	}
	if err := c.Write(context.Background(), []byte("more")); !errors.Is(err, errTestClosed) {
		t.Errorf("Write after the end = %v, want the sentinel", err)
	}
}

// unixPair returns a started Conn over one end of a connected unix socket
// pair (the kind QEMU's sockets are: writeNow's path) and the other end.
func unixPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	return startPair(t, func(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err })
}

// A write the socket's buffer cannot take at once is finished by the
// blocking path, whole and in order; one nobody reads is interrupted by
// its context.
func TestWriteSocket(t *testing.T) {
	c, peer := unixPair(t)
	big := make([]byte, 1<<20) // larger than the socket buffer (208 KiB by default)
	for i := range big {
		big[i] = byte(i * 7)
	}
	read := make(chan []byte, 1)
	go func() {
		var got []byte
		buf := make([]byte, 4096)
		for len(got) < len("ping")+len(big) {
			time.Sleep(time.Millisecond / 10) // a slow reader
			n, err := peer.Read(buf)
			if err != nil {
				break
			}
			got = append(got, buf[:n]...)
		}
		read <- got
	}()
	ctx := context.Background()
	if err := c.Write(ctx, []byte("ping")); err != nil {
		t.Fatalf("small Write: %v", err)
	}
	if err := c.Write(ctx, big); err != nil {
		t.Fatalf("Write of %d bytes: %v", len(big), err)
	}
	got := <-read
	if string(got[:4]) != "ping" || !bytes.Equal(got[4:], big) {
		t.Fatalf("the peer read %d bytes, not the two writes in order", len(got))
	}

	stuck, _ := unixPair(t) // nobody reads this one
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := stuck.Write(tctx, big); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a Write nobody reads = %v, want DeadlineExceeded", err)
	}
}

// startPair is unixPair with read as the reader.
func startPair(t *testing.T, read func(r io.Reader) error) (*Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ncs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ncs[i] = nc
	}
	t.Cleanup(func() { ncs[1].Close() })
	c := New(ncs[0], errTestClosed)
	c.Start(read)
	t.Cleanup(func() { c.Close() })
	return c, ncs[1]
}

// The reader of a socket (rawReader) gets what the peer writes, whole and
// in order, across waits in the poller (the peer writing slowly, and more
// than the socket holds at once), then io.EOF when the peer closes; a
// reader waiting when the Conn is closed returns at once with an error.
func TestReadSocket(t *testing.T) {
	got := make(chan []byte, 1)
	end := make(chan error, 1)
	c, peer := startPair(t, func(r io.Reader) error {
		if _, ok := r.(rawReader); !ok {
			t.Errorf("reader of a socket is %T, want rawReader", r)
		}
		var all []byte
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				got <- all
				end <- err
				return err
			}
		}
	})
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 13)
	}
	want := append([]byte("he"), append([]byte("llo"), big...)...)
	for _, part := range [][]byte{[]byte("he"), []byte("llo"), big} {
		time.Sleep(5 * time.Millisecond) // the reader waits in the poller meanwhile
		if _, err := peer.Write(part); err != nil {
			t.Fatal(err)
		}
	}
	peer.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("read %d bytes, not the %d written in order", len(b), len(want))
	}
	if err := <-end; err != io.EOF {
		t.Fatalf("after the peer closed: %v, want io.EOF", err)
	}
	<-c.Done()

	waiting := make(chan error, 1)
	c2, _ := startPair(t, func(r io.Reader) error {
		_, err := r.Read(make([]byte, 16))
		waiting <- err
		return err
	})
	time.Sleep(10 * time.Millisecond)
	c2.Close()
	select {
	case err := <-waiting:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a read waiting at Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a read waiting at Close did not return")
	}
}
