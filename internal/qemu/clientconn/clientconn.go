// Package clientconn is the connection lifecycle that the QEMU protocol
// clients (internal/qemu/qmp and internal/qemu/gdbrsp) share: one reader
// goroutine that owns the read side, writes serialised and interruptible by
// a context, and one record of why the connection ended, behind
// Done/Err/Close.
//
// The rules both clients keep, and that this package keeps for them:
//
//   - The first reason recorded wins; later ones are dropped. Recording a
//     reason closes the socket, which makes the reader exit.
//   - Every reason wraps the client's own sentinel (its ErrClosed), so that
//     callers test errors.Is(err, qmp.ErrClosed) or gdbrsp.ErrClosed; the
//     cause is kept as text only (%v), never as a second wrapped error.
//   - Done is closed only after the reader has returned and a reason is
//     recorded: once Done is closed, Err is never nil.
//   - A write that fails (or that a context interrupts) may have left part
//     of a message on the wire, so it ends the connection.
//
// What is read, how messages are framed and how replies meet their requests
// stays with each client.
package clientconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is one client connection's lifecycle. Create it with [New], then
// start its reader with [Conn.Start]. It is safe for concurrent use.
type Conn struct {
	nc     net.Conn
	closed error         // the client's sentinel, wrapped by every reason
	done   chan struct{} // closed when the reader has exited

	wmu sync.Mutex // serialises writes to nc

	mu  sync.Mutex
	err error // guarded by mu; why the connection ended

	closeOnce sync.Once
}

// New takes ownership of nc. closed is the client's sentinel error (for
// example qmp.ErrClosed) that every reason recorded for the end of the
// connection wraps.
func New(nc net.Conn, closed error) *Conn {
	return &Conn{nc: nc, closed: closed, done: make(chan struct{})}
}

// Start runs read on a new goroutine, the connection's only reader, with
// the read side of the connection. read returns why the connection ended
// (nil counts as "reader exited"); that reason is recorded unless another
// was recorded first, and then Done is closed. Start must be called exactly
// once, before Close.
func (c *Conn) Start(read func(r io.Reader) error) {
	go func() {
		defer close(c.done)
		err := read(c.reader())
		if err == nil {
			err = errors.New("reader exited")
		}
		c.Fail(err)
	}()
}

// Done is closed when the connection has ended and the reader has exited.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is nil while the connection is up and afterwards (once Done is
// closed) says why it ended.
func (c *Conn) Err() error {
	select {
	case <-c.done:
		return c.Reason()
	default:
		return nil
	}
}

// Reason returns the reason recorded for the end of the connection, or nil.
// Unlike Err it may be non-nil before Done is closed: from the moment the
// connection starts to end.
func (c *Conn) Reason() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Fail records why the connection ended, as an error wrapping the client's
// sentinel with cause as text, unless a reason was recorded first, and
// closes the connection, which makes the reader exit.
func (c *Conn) Fail(cause error) {
	c.record(cause)
	c.closeOnce.Do(func() { c.nc.Close() })
}

func (c *Conn) record(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %v", c.closed, cause)
	}
}

// Close records "closed by client" (unless a reason was recorded first),
// closes the connection and waits for the reader to exit. It returns the
// error of closing the socket, nil if it was closed already.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.record(errors.New("closed by client"))
		err = c.nc.Close()
	})
	<-c.done
	return err
}

// Write writes b whole. Writes are serialised; cancelling ctx (or reaching
// its deadline) interrupts a blocked write. A write that fails ends the
// connection, because part of b may be on the wire: Write then returns
// ctx's error if ctx ended, and otherwise the recorded reason.
func (c *Conn) Write(ctx context.Context, b []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err := c.writeNow(b)
	if err != nil {
		c.Fail(fmt.Errorf("write: %v", err))
		return c.Reason()
	}
	if b = b[n:]; len(b) == 0 {
		return nil
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.nc.SetWriteDeadline(aLongTimeAgo)
		close(fired)
	})
	_, err = c.nc.Write(b)
	if !stop() {
		<-fired
	}
	c.nc.SetWriteDeadline(noDeadline)
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		c.Fail(fmt.Errorf("write interrupted: %v", ctxErr))
		return ctxErr
	}
	c.Fail(fmt.Errorf("write: %v", err))
	return c.Reason()
}

// WriteWithFD writes b, as Write does, with the file descriptor fd passed
// along (SCM_RIGHTS: QMP's getfd takes it from the message that carries the
// command). The connection must be a unix socket.
func (c *Conn) WriteWithFD(ctx context.Context, b []byte, fd int) error {
	uc, ok := c.nc.(*net.UnixConn)
	if !ok {
		return errors.New("passing a file descriptor needs a unix socket")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetWriteDeadline(dl)
		defer c.nc.SetWriteDeadline(noDeadline)
	}
	n, oobn, err := uc.WriteMsgUnix(b, unix.UnixRights(fd), nil)
	if err == nil && (n != len(b) || oobn == 0) {
		err = fmt.Errorf("short write (%d of %d bytes, %d of control)", n, len(b), oobn)
	}
	if err != nil {
		c.Fail(fmt.Errorf("write: %v", err))
		return c.Reason()
	}
	return nil
}

// writeNow writes what the socket takes at once, without waiting: the
// gdbstub's packets are small and the socket's buffer almost always has
// room, so the context's watch over a blocked write (an AfterFunc, a
// channel, two deadline changes: a quarter of a write's CPU, measured on
// every kernel-gate stop) is set up only for what is left. n is what was
// written; an error is one the socket reported (not "would block").
// Connections that are not sockets of this process write nothing here.
// Preconditions: wmu held.
func (c *Conn) writeNow(b []byte) (n int, err error) {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return 0, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, nil
	}
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		for {
			n, werr = rawIO(unix.SYS_WRITE, fd, b)
			if werr != unix.EINTR {
				return true // done: never wait in the poller here
			}
		}
	}); err != nil {
		return 0, nil // closed or deadline: the blocking path reports it
	}
	switch {
	case werr == unix.EAGAIN:
		return 0, nil
	case werr != nil:
		return 0, werr
	}
	return n, nil
}

// reader returns the connection's read side: the socket read with raw
// system calls where the connection is one (rawReader), else the
// connection itself.
func (c *Conn) reader() io.Reader {
	if sc, ok := c.nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rawReader{rc}
		}
	}
	return c.nc
}

// rawReader reads a non-blocking socket (every net.Conn's) with a raw
// read(2), waiting in the runtime's network poller when it has nothing,
// as net.Conn.Read does. The difference is the runtime's system-call
// bookkeeping (entersyscall), which net.Conn.Read pays: on the monitor's
// one P it wakes the runtime's sysmon thread from its deep sleep at the
// first system call of every kernel-gate stop and sets it polling every
// 20 µs (3 context switches and ~30 µs of CPU per stop, measured), and a
// read that lasts past sysmon's 20 µs hands the P to another thread. A
// read of a non-blocking socket never blocks, which is what makes the raw
// call safe. Reads are the reader goroutine's only: no deadline is ever
// set on them.
type rawReader struct{ rc syscall.RawConn }

func (r rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var (
		n   int
		err error
	)
	if perr := r.rc.Read(func(fd uintptr) bool {
		for {
			n, err = rawIO(unix.SYS_READ, fd, p)
			switch err {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait in the poller
			}
			return true
		}
	}); perr != nil {
		return 0, perr // closed
	}
	switch {
	case err != nil:
		return 0, os.NewSyscallError("read", err)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

var (
	noDeadline   time.Time
	aLongTimeAgo = time.Unix(1, 0)
)
