package monitor

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// consoleHistory is how much recent console output is kept for replay.
const consoleHistory = 64 << 10

// console pumps the guest's serial port to the terminal, the log and any
// attached API clients, watches for the ready marker, and forwards input.
// A slow or dead attached client is dropped rather than allowed to stall the
// guest's serial output.
type console struct {
	outs    []io.Writer
	marker  []byte
	onReady func()

	// Owned by the pump goroutine (one at a time: reattach starts the
	// next after the previous ended).
	found  bool          // the ready marker was seen
	window []byte        // the last len(marker)-1 bytes, to match across reads
	pumped chan struct{} // closed when the current pump ends

	inMu   sync.Mutex // serializes writes to serial; guards serial
	serial net.Conn

	mu      sync.Mutex // guards the fields below
	history []byte
	subs    map[io.ReadWriteCloser]bool
	closed  bool
}

func newConsole(serial net.Conn, outs []io.Writer, marker string, onReady func()) *console {
	c := &console{serial: serial, outs: outs, marker: []byte(marker), onReady: onReady, subs: map[io.ReadWriteCloser]bool{}, pumped: make(chan struct{})}
	go c.pump(serial, c.pumped)
	return c
}

func (c *console) pump(serial net.Conn, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 4096)
	for {
		n, err := serial.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			for _, w := range c.outs {
				_, _ = w.Write(chunk)
			}
			if !c.found {
				hay := append(c.window, chunk...)
				if bytes.Contains(hay, c.marker) {
					c.found = true
					c.onReady()
				}
				if keep := len(c.marker) - 1; len(hay) > keep {
					hay = hay[len(hay)-keep:]
				}
				c.window = append(c.window[:0], hay...)
			}
			c.broadcast(chunk)
		}
		if err != nil {
			return
		}
	}
}

// reattach moves the console to a new QEMU's serial connection (a QEMU
// restart): what the old connection still holds is delivered first (the
// old QEMU has exited, so its connection ends), then the new one's output,
// in order. Input goes to the new connection from now on.
func (c *console) reattach(serial net.Conn, wait time.Duration) {
	c.inMu.Lock()
	old := c.serial
	c.serial = serial
	c.inMu.Unlock()
	select {
	case <-c.pumped:
	case <-time.After(wait):
		old.Close() // a connection that does not end is cut
		<-c.pumped
	}
	c.pumped = make(chan struct{})
	go c.pump(serial, c.pumped)
}

func (c *console) broadcast(chunk []byte) {
	c.mu.Lock()
	c.history = append(c.history, chunk...)
	if len(c.history) > consoleHistory {
		c.history = append([]byte(nil), c.history[len(c.history)-consoleHistory:]...)
	}
	subs := make([]io.ReadWriteCloser, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		if nc, ok := s.(interface{ SetWriteDeadline(time.Time) error }); ok {
			_ = nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
		}
		if _, err := s.Write(chunk); err != nil {
			c.drop(s)
		}
	}
}

func (c *console) drop(s io.ReadWriteCloser) {
	c.mu.Lock()
	delete(c.subs, s)
	c.mu.Unlock()
	s.Close()
}

// write sends input to the guest's serial port.
func (c *console) write(p []byte) error {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	_, err := c.serial.Write(p)
	return err
}

// feed forwards r to the console until r ends.
func (c *console) feed(r io.Reader) {
	buf := make([]byte, 1024)
	for {
		n, err := r.Read(buf)
		if n > 0 && c.write(buf[:n]) != nil {
			return
		}
		if err != nil {
			return
		}
	}
}

// attach streams the console over conn: replay bytes of history first, then
// live output; conn's input goes to the guest. It returns when conn closes,
// ctx ends or the VM is over (done).
func (c *console) attach(ctx context.Context, conn io.ReadWriteCloser, replay int, done <-chan struct{}) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return io.ErrClosedPipe
	}
	if replay > len(c.history) {
		replay = len(c.history)
	}
	first := append([]byte(nil), c.history[len(c.history)-replay:]...)
	if _, err := conn.Write(first); err != nil {
		c.mu.Unlock()
		return err
	}
	c.subs[conn] = true
	c.mu.Unlock()

	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		c.feed(conn)
	}()
	select {
	case <-inputDone:
	case <-ctx.Done():
	case <-done:
	}
	c.drop(conn)
	return nil
}

func (c *console) close() {
	c.mu.Lock()
	c.closed = true
	subs := c.subs
	c.subs = map[io.ReadWriteCloser]bool{}
	c.mu.Unlock()
	for s := range subs {
		s.Close()
	}
	c.inMu.Lock()
	c.serial.Close()
	c.inMu.Unlock()
}
