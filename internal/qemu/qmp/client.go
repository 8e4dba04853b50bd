package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/gatevisor/gatevisor/internal/qemu/clientconn"
)

// EventBuffer is the capacity of the channel returned by [Client.Events].
const EventBuffer = 256

// ErrClosed is wrapped by errors of calls that fail because the connection to
// QEMU is closed (by Close, by QEMU exiting, or by a protocol error).
var ErrClosed = errors.New("qmp: connection closed")

// Client is a QMP connection. Create it with [Dial] or [NewClient].
type Client struct {
	cc      *clientconn.Conn // the reader, writes, and why the connection ended
	version Version
	nextID  atomic.Uint64
	events  chan Event
	drops   atomic.Uint64
	ignored ignoredSet // IgnoreEvents
	stopped stopClock  // StoppedTime

	mu      sync.Mutex
	pending map[string]chan message // guarded by mu
}

// Dial connects to the QMP unix socket at path, reads the greeting and
// negotiates capabilities. ctx bounds the whole handshake.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", path, err)
	}
	return c, nil
}

// NewClient runs the QMP handshake on an established connection and takes
// ownership of conn: it is closed when the handshake fails or by Close.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		cc:      clientconn.New(conn, ErrClosed),
		events:  make(chan Event, EventBuffer),
		pending: make(map[string]chan message),
	}
	greeting := make(chan message, 1)
	c.cc.Start(func(r io.Reader) error {
		err := c.readLoop(r, greeting)
		c.cc.Fail(err) // the reason is recorded before Events is closed
		close(c.events)
		return err
	})

	select {
	case g := <-greeting:
		c.version = g.version
	case <-c.cc.Done():
		return nil, fmt.Errorf("qmp: waiting for greeting: %w", c.cc.Err())
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("qmp: waiting for greeting: %w", ctx.Err())
	}
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: negotiate capabilities: %w", err)
	}
	return c, nil
}

// Version returns QEMU's version from the greeting.
func (c *Client) Version() Version { return c.version }

// Events returns the channel of asynchronous events. It is buffered
// ([EventBuffer]); when it is full the oldest event is dropped so the reader
// never blocks. The channel is closed when the connection ends.
func (c *Client) Events() <-chan Event { return c.events }

// DroppedEvents reports how many events were dropped because the consumer
// of [Client.Events] was too slow.
func (c *Client) DroppedEvents() uint64 { return c.drops.Load() }

// Done is closed when the connection to QEMU has ended, for example because
// QEMU exited. [Client.Err] then says why.
func (c *Client) Done() <-chan struct{} { return c.cc.Done() }

// Err returns nil while the connection is up, and afterwards an error
// wrapping ErrClosed that says why it ended.
func (c *Client) Err() error { return c.cc.Err() }

// Close closes the connection and waits for the reader to exit. Pending
// calls fail with an error wrapping ErrClosed.
func (c *Client) Close() error { return c.cc.Close() }

// Execute runs a QMP command. args, if not nil, is marshalled as the
// command's "arguments"; result, if not nil, receives the "return" value.
// A QMP error reply is returned as *Error. Execute is safe to call
// concurrently; replies are matched to requests by id.
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
	return c.execute(ctx, command, args, result, -1)
}

// ExecuteWithFD is Execute with the file descriptor fd passed along with
// the command (for getfd and add-fd).
func (c *Client) ExecuteWithFD(ctx context.Context, command string, args any, result any, fd int) error {
	return c.execute(ctx, command, args, result, fd)
}

func (c *Client) execute(ctx context.Context, command string, args any, result any, fd int) error {
	id := "gv-" + strconv.FormatUint(c.nextID.Add(1), 10)
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp: %s: encode arguments: %w", command, err)
	}
	b = append(b, '\n')

	if err := c.cc.Reason(); err != nil {
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	ch := make(chan message, 1)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	write := c.cc.Write
	if fd >= 0 {
		write = func(ctx context.Context, b []byte) error { return c.cc.WriteWithFD(ctx, b, fd) }
	}
	if err := write(ctx, b); err != nil {
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	select {
	case m := <-ch:
		if m.kind == kindError {
			return fmt.Errorf("qmp: %s: %w", command, m.err)
		}
		if result != nil {
			if err := json.Unmarshal(m.ret, result); err != nil {
				return fmt.Errorf("qmp: %s: decode result: %w", command, err)
			}
		}
		return nil
	case <-c.cc.Done():
		return fmt.Errorf("qmp: %s: %w", command, c.cc.Err())
	case <-ctx.Done():
		return fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

// readLoop reads and dispatches messages until the connection ends, and
// returns why it ended. It is the connection's only reader.
func (c *Client) readLoop(r io.Reader, greeting chan<- message) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLineSize)
	gotGreeting := false
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		if name, ts, skip := c.skipLine(line); skip {
			c.stopped.note(string(name), ts)
			continue
		}
		m, err := decodeMessage(line)
		if err != nil {
			return err
		}
		switch m.kind {
		case kindGreeting:
			if gotGreeting {
				return fmt.Errorf("%w: second greeting", ErrMalformed)
			}
			gotGreeting = true
			greeting <- m // buffered, sent at most once
		case kindReturn, kindError:
			c.mu.Lock()
			ch := c.pending[m.id]
			delete(c.pending, m.id)
			c.mu.Unlock()
			if ch != nil {
				ch <- m // buffered, one reply per id
			}
			// A reply nobody waits for (its caller gave up) is dropped.
		case kindEvent:
			c.stopped.note(m.event.Name, m.event.Timestamp)
			c.deliver(m.event)
		}
	}
	err := sc.Err()
	switch {
	case errors.Is(err, bufio.ErrTooLong):
		return fmt.Errorf("line longer than %d bytes", MaxLineSize)
	case err != nil:
		return fmt.Errorf("read: %w", err)
	default:
		return errors.New("QEMU closed the connection")
	}
}

// deliver queues ev without blocking, dropping the oldest queued event when
// the buffer is full. Only the reader goroutine sends on c.events.
func (c *Client) deliver(ev Event) {
	for range 2 {
		select {
		case c.events <- ev:
			return
		default:
		}
		select {
		case <-c.events:
			c.drops.Add(1)
		default:
		}
	}
	// The consumer can only take events, never add them, so the second
	// attempt always has room; this line is a bound, not a path.
	c.drops.Add(1)
}
