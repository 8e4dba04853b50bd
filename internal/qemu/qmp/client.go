package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// EventBuffer is the capacity of the channel returned by [Client.Events].
const EventBuffer = 256

// ErrClosed is wrapped by errors of calls that fail because the connection to
// QEMU is closed (by Close, by QEMU exiting, or by a protocol error).
var ErrClosed = errors.New("qmp: connection closed")

// Client is a QMP connection. Create it with [Dial] or [NewClient].
type Client struct {
	conn    net.Conn
	version Version
	nextID  atomic.Uint64
	events  chan Event
	drops   atomic.Uint64
	done    chan struct{} // closed when the reader exits

	wmu sync.Mutex // serialises writes to conn

	mu      sync.Mutex
	pending map[string]chan message // guarded by mu
	err     error                   // guarded by mu; why the connection ended, set before done is closed

	closeOnce sync.Once
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
		conn:    conn,
		events:  make(chan Event, EventBuffer),
		done:    make(chan struct{}),
		pending: make(map[string]chan message),
	}
	greeting := make(chan message, 1)
	go c.readLoop(greeting)

	select {
	case g := <-greeting:
		c.version = g.version
	case <-c.done:
		return nil, fmt.Errorf("qmp: waiting for greeting: %w", c.closedErr())
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
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is up, and afterwards an error
// wrapping ErrClosed that says why it ended.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.closedErr()
	default:
		return nil
	}
}

func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection and waits for the reader to exit. Pending
// calls fail with an error wrapping ErrClosed.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = fmt.Errorf("%w: closed by client", ErrClosed)
		}
		c.mu.Unlock()
		err = c.conn.Close()
	})
	<-c.done
	return err
}

// Execute runs a QMP command. args, if not nil, is marshalled as the
// command's "arguments"; result, if not nil, receives the "return" value.
// A QMP error reply is returned as *Error. Execute is safe to call
// concurrently; replies are matched to requests by id.
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
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

	ch := make(chan message, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	if err := c.write(ctx, b); err != nil {
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
	case <-c.done:
		return fmt.Errorf("qmp: %s: %w", command, c.closedErr())
	case <-ctx.Done():
		return fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

func (c *Client) write(ctx context.Context, b []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// Cancelling ctx (or reaching its deadline) interrupts a blocked write.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetWriteDeadline(aLongTimeAgo)
		close(fired)
	})
	_, err := c.conn.Write(b)
	if !stop() {
		<-fired
	}
	c.conn.SetWriteDeadline(noDeadline)
	if err != nil {
		// A partial line may have been written; the stream is no longer usable.
		if ctx.Err() != nil {
			c.fail(fmt.Errorf("%w: write interrupted: %v", ErrClosed, ctx.Err()))
			return ctx.Err()
		}
		c.fail(fmt.Errorf("%w: write: %v", ErrClosed, err))
		return c.closedErr()
	}
	return nil
}

// fail records why the connection ended (if nothing else was recorded
// first) and closes it, which makes the reader exit.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.closeOnce.Do(func() { c.conn.Close() })
}

func (c *Client) readLoop(greeting chan<- message) {
	defer func() {
		c.fail(fmt.Errorf("%w: reader exited", ErrClosed))
		close(c.events)
		close(c.done)
	}()
	sc := bufio.NewScanner(c.conn)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLineSize)
	gotGreeting := false
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		m, err := decodeMessage(line)
		if err != nil {
			c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
			return
		}
		switch m.kind {
		case kindGreeting:
			if gotGreeting {
				c.fail(fmt.Errorf("%w: %v: second greeting", ErrClosed, ErrMalformed))
				return
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
			c.deliver(m.event)
		}
	}
	err := sc.Err()
	switch {
	case errors.Is(err, bufio.ErrTooLong):
		c.fail(fmt.Errorf("%w: line longer than %d bytes", ErrClosed, MaxLineSize))
	case err != nil:
		c.fail(fmt.Errorf("%w: read: %v", ErrClosed, err))
	default:
		c.fail(fmt.Errorf("%w: QEMU closed the connection", ErrClosed))
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

var (
	noDeadline   time.Time
	aLongTimeAgo = time.Unix(1, 0)
)
