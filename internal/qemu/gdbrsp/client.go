package gdbrsp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gatevisor/gatevisor/internal/qemu/clientconn"
)

var (
	// ErrClosed is wrapped by errors of calls that fail because the
	// connection is gone (Close, Detach, QEMU exiting, a protocol error).
	ErrClosed = errors.New("gdbrsp: connection closed")
	// ErrProtocol is wrapped by errors about bytes that break the protocol.
	ErrProtocol = errors.New("gdbrsp: protocol error")
	// ErrUnsupported means the stub answered with an empty packet: it does
	// not implement the request.
	ErrUnsupported = errors.New("gdbrsp: not supported by the stub")
	// ErrRunning means the client last resumed the target and has not seen
	// it stop; interrupt it first (see [Client.WithStopped]).
	ErrRunning = errors.New("gdbrsp: target is running")
	// ErrUnknownRegister means the target description has no such register.
	ErrUnknownRegister = errors.New("gdbrsp: unknown register")
	// ErrRegisterUnavailable means the stub reported the value as unavailable ("xx").
	ErrRegisterUnavailable = errors.New("gdbrsp: register value unavailable")
	// ErrRegisterTooWide means the register has more than 64 bits; use
	// [Client.ReadRegisterBytes].
	ErrRegisterTooWide = errors.New("gdbrsp: register wider than 64 bits")
	// ErrResumed is wrapped by errors of [Client.ContinueWithRegisters]
	// that come after the continue may have reached the stub: the target
	// may be running with only some of the writes done. Stop it.
	ErrResumed = errors.New("gdbrsp: the target may be running")
)

// TargetError is an "Exx" error reply from the stub. QEMU uses errno-like
// codes: 0x0e (EFAULT) for inaccessible memory, 0x16 (EINVAL), 0x22.
type TargetError struct {
	Code uint8
}

func (e *TargetError) Error() string { return fmt.Sprintf("gdbrsp: stub error E%02x", e.Code) }

// Bounds and defaults.
const (
	defaultPacketSize = 400 // what GDB assumes when the stub says nothing
	minPacketSize     = 64
	maxNackRetries    = 3
	maxThreads        = 4096
	stopBuffer        = 16
	replyBuffer       = 16 // ≥ a WriteRegisters burst
)

// Client is a connection to a gdbstub. A Client is safe for concurrent use,
// but the protocol is strictly one request at a time: calls are serialised.
type Client struct {
	cc         *clientconn.Conn // the reader, writes, and why the connection ended
	packetSize int
	features   map[string]string
	tdesc      *TargetDescription

	noAck   atomic.Bool   // acknowledgements are off (QStartNoAckMode)
	running atomic.Bool   // we resumed the target and have not seen it stop
	stopSeq atomic.Uint64 // stop replies seen so far
	xWrites atomic.Int32  // 0 unknown, 1 X packets work, -1 use M
	// quiet is how many of the next replies the reader must not
	// acknowledge: those to the packets of a ContinueWithRegisters burst,
	// which arrive once the target runs, when QEMU takes any byte as an
	// interrupt.
	quiet atomic.Int32
	// ackOwed says a packet from the stub awaits its '+': the reader does
	// not write it, the next packet the client sends carries it in front
	// (withAck). QEMU's gdbstub in system emulation never waits for an
	// acknowledgement (it keeps its last packet only to resend it on
	// '-', and forgets it on '+' or at the next '$'), so a '+' on its own
	// costs a write here and a main-loop wakeup in QEMU for nothing, on
	// every stop reply and every answer; in front of the next request it
	// is free. A stub that does wait for it (user-mode QEMU) gets it with
	// the next request, which it would wait for anyway.
	ackOwed atomic.Bool

	// wantAcks says the request in progress waits for the stub's '+' (a
	// packet with no answer, or a burst counted by its acknowledgements);
	// otherwise the reader passes on only '-': a request that waits for
	// its answer takes the answer as its receipt, and is woken once.
	wantAcks atomic.Bool
	acks     chan byte      // '+' (when wantAcks) or '-' from the stub
	replies  chan []byte    // packets that are not stop replies
	stops    chan StopReply // stop replies, oldest dropped when full

	// cmdMu serialises request/reply exchanges.
	cmdMu sync.Mutex
}

// Dial connects to a gdbstub listening on the unix socket at path and runs
// the handshake (see [NewClient]). Connecting pauses a QEMU VM.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("gdbrsp: dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("gdbrsp: %s: %w", path, err)
	}
	return c, nil
}

// NewClient runs the handshake on an established connection: qSupported,
// QStartNoAckMode when offered, and the target description when
// qXfer:features:read is offered. It takes ownership of conn.
//
// It does not send '?', because QEMU removes all breakpoints on '?'.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		cc:         clientconn.New(conn, ErrClosed),
		packetSize: defaultPacketSize,
		features:   map[string]string{},
		acks:       make(chan byte, 16),
		replies:    make(chan []byte, replyBuffer),
		stops:      make(chan StopReply, stopBuffer),
	}
	c.cc.Start(c.readLoop)
	if err := c.handshake(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) handshake(ctx context.Context) error {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	r, err := c.exchange(ctx, "qSupported:swbreak+;hwbreak+;vContSupported+")
	if err != nil {
		return fmt.Errorf("qSupported: %w", err)
	}
	for f := range strings.SplitSeq(string(r), ";") {
		switch {
		case f == "":
		case strings.HasSuffix(f, "+"), strings.HasSuffix(f, "-"), strings.HasSuffix(f, "?"):
			c.features[f[:len(f)-1]] = f[len(f)-1:]
		default:
			k, v, _ := strings.Cut(f, "=")
			c.features[k] = v
		}
		if len(c.features) > 256 {
			return fmt.Errorf("%w: qSupported reply lists too many features", ErrProtocol)
		}
	}
	if s, ok := c.features["PacketSize"]; ok {
		n, err := strconv.ParseUint(s, 16, 32)
		if err != nil {
			return fmt.Errorf("%w: bad PacketSize %q", ErrProtocol, s)
		}
		c.packetSize = int(min(max(n, minPacketSize), MaxPacketSize))
	}
	if c.features["QStartNoAckMode"] == "+" {
		r, err := c.exchange(ctx, "QStartNoAckMode")
		if err != nil {
			return fmt.Errorf("QStartNoAckMode: %w", err)
		}
		if string(r) == "OK" {
			c.noAck.Store(true)
		}
	}
	if c.features["qXfer:features:read"] == "+" {
		td, err := parseTargetDescription(func(annex string) ([]byte, error) {
			return c.readXfer(ctx, "features", annex, maxTdescBytes)
		})
		if err != nil {
			return err
		}
		c.tdesc = td
	}
	return nil
}

// PacketSize is the largest packet the stub accepts (from qSupported).
func (c *Client) PacketSize() int { return c.packetSize }

// Feature returns a qSupported feature as the stub sent it: "+", "-", "?"
// or the value after '='.
func (c *Client) Feature(name string) (string, bool) {
	v, ok := c.features[name]
	return v, ok
}

// TargetDescription returns the parsed target description, or nil when
// the stub does not offer one.
func (c *Client) TargetDescription() *TargetDescription { return c.tdesc }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.cc.Done() }

// Err is nil while the connection is up and afterwards says why it ended.
func (c *Client) Err() error { return c.cc.Err() }

// Close closes the connection without detaching. QEMU leaves the VM in
// whatever state it is: paused if the client stopped it. Use Detach to let
// the VM run.
func (c *Client) Close() error { return c.cc.Close() }

// readLoop reads frames until the connection ends, and returns why it
// ended. It is the connection's only reader.
func (c *Client) readLoop(r io.Reader) error {
	fr := newFrameReader(r)
	for {
		f, err := fr.next()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				return errors.New("the stub closed the connection")
			case errors.Is(err, ErrProtocol):
				return err
			default:
				return fmt.Errorf("read: %w", err)
			}
		}
		switch f.kind {
		case frameAck, frameNack:
			b := byte('+')
			if f.kind == frameNack {
				b = '-'
			} else if !c.wantAcks.Load() {
				continue // the answer that follows says as much
			}
			select {
			case c.acks <- b:
			default: // nobody waits for it
			}
		case frameBadSum:
			if !c.noAck.Load() {
				c.writeRaw([]byte{'-'})
			}
		case frameNotify:
			// Non-stop notifications; QEMU in all-stop mode sends none.
		case framePacket:
			var sr StopReply
			stop := false
			if isStopReply(f.payload) {
				var err error
				sr, err = parseStopReply(f.payload)
				stop = err == nil
			}
			if !c.noAck.Load() && (stop || !c.takeQuiet()) {
				c.ackOwed.Store(true)
			}
			if stop {
				c.onStop(sr)
				continue
			}
			pushDropOldest(c.replies, f.payload)
		}
	}
}

// takeQuiet reports whether the reply just read is one the reader must
// not acknowledge (see quiet), and counts it.
func (c *Client) takeQuiet() bool {
	for {
		n := c.quiet.Load()
		if n <= 0 {
			return false
		}
		if c.quiet.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func (c *Client) onStop(sr StopReply) {
	c.running.Store(false)
	c.stopSeq.Add(1)
	pushDropOldest(c.stops, sr)
}

// pushDropOldest queues v without blocking, dropping the oldest queued
// value when ch is full. Only the reader goroutine sends on ch.
func pushDropOldest[T any](ch chan T, v T) {
	for range 2 {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

func drain[T any](ch chan T) {
	for range cap(ch) + 1 {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// writeRaw writes b without waiting for anything. Errors end the connection.
func (c *Client) writeRaw(b []byte) error {
	return c.cc.Write(context.Background(), b)
}

// withAck returns pkt (one or more packets the client sends with the
// target stopped) with the owed '+' in front, if one is owed (ackOwed).
func (c *Client) withAck(pkt []byte) []byte {
	if !c.ackOwed.Swap(false) {
		return pkt
	}
	out := make([]byte, 0, len(pkt)+1)
	return append(append(out, '+'), pkt...)
}

// send writes one packet and, unless acknowledgements are off, waits for
// the stub's '+' (resending on '-', a bounded number of times).
//
// Preconditions: c.cmdMu held.
func (c *Client) send(ctx context.Context, payload []byte) error {
	c.wantAcks.Store(true)
	pkt := encodePacket(payload)
	for attempt := 0; ; attempt++ {
		drain(c.acks)
		if err := c.cc.Write(ctx, c.withAck(pkt)); err != nil {
			return err
		}
		if c.noAck.Load() {
			return nil
		}
		select {
		case a := <-c.acks:
			if a == '+' {
				return nil
			}
			if attempt >= maxNackRetries {
				return fmt.Errorf("%w: packet rejected %d times", ErrProtocol, attempt+1)
			}
		case <-c.cc.Done():
			return c.cc.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// exchange sends a request and returns the reply payload. Stale replies
// (to an earlier request whose caller gave up) are discarded first.
//
// Preconditions: c.cmdMu held.
func (c *Client) exchange(ctx context.Context, req string) ([]byte, error) {
	return c.exchangeBytes(ctx, []byte(req))
}

func (c *Client) exchangeBytes(ctx context.Context, req []byte) ([]byte, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	drain(c.replies)
	if c.noAck.Load() {
		if err := c.send(ctx, req); err != nil {
			return nil, err
		}
		return c.answer(ctx)
	}
	// The answer is the receipt: only a '-' (resend) is waited for
	// besides it, so the requester wakes once per exchange, not for the
	// '+' and again for the answer.
	c.wantAcks.Store(false)
	pkt := encodePacket(req)
	for attempt := 0; ; attempt++ {
		drain(c.acks)
		if err := c.cc.Write(ctx, c.withAck(pkt)); err != nil {
			return nil, err
		}
		for nack := false; !nack; {
			select {
			case r := <-c.replies:
				return r, nil
			case a := <-c.acks:
				nack = a == '-' // a '+' was passed on before wantAcks changed
			case <-c.cc.Done():
				return nil, c.cc.Err()
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if attempt >= maxNackRetries {
			return nil, fmt.Errorf("%w: packet rejected %d times", ErrProtocol, attempt+1)
		}
	}
}

// answer waits for the reply to the request just sent.
func (c *Client) answer(ctx context.Context) ([]byte, error) {
	select {
	case r := <-c.replies:
		return r, nil
	case <-c.cc.Done():
		return nil, c.cc.Err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// command runs one request while the target is stopped and turns "Exx"
// and empty replies into errors.
func (c *Client) command(ctx context.Context, req string) ([]byte, error) {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	return c.commandLocked(ctx, []byte(req))
}

// Preconditions: c.cmdMu held.
func (c *Client) commandLocked(ctx context.Context, req []byte) ([]byte, error) {
	if c.running.Load() {
		return nil, ErrRunning
	}
	r, err := c.exchangeBytes(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := replyError(r); err != nil {
		return nil, err
	}
	return r, nil
}

// replyError maps "" to ErrUnsupported and "Exx" to *TargetError.
func replyError(r []byte) error {
	if len(r) == 0 {
		return ErrUnsupported
	}
	if len(r) == 3 && r[0] == 'E' {
		if v, err := strconv.ParseUint(string(r[1:]), 16, 8); err == nil {
			return &TargetError{Code: uint8(v)}
		}
	}
	if len(r) > 2 && r[0] == 'E' && r[1] == '.' { // "E.errtext"
		return fmt.Errorf("gdbrsp: stub error: %s", truncate(r[2:]))
	}
	return nil
}

// okReply is the error an answer that should be "OK" means: an "Exx", an
// empty (unsupported) or any other answer.
func okReply(r []byte) error {
	if err := replyError(r); err != nil {
		return err
	}
	return expectOK(r)
}

func expectOK(r []byte) error {
	if string(r) != "OK" {
		return fmt.Errorf("%w: want OK, got %q", ErrProtocol, truncate(r))
	}
	return nil
}

// readXfer reads a whole qXfer object in chunks, bounded by limit bytes.
func (c *Client) readXfer(ctx context.Context, object, annex string, limit int) ([]byte, error) {
	if !validAnnex(annex) {
		return nil, fmt.Errorf("%w: bad annex %q", ErrProtocol, annex)
	}
	chunk := c.packetSize - 8
	var out []byte
	for len(out) <= limit {
		r, err := c.commandLocked(ctx, fmt.Appendf(nil, "qXfer:%s:read:%s:%x,%x", object, annex, len(out), chunk))
		if err != nil {
			return nil, fmt.Errorf("qXfer %s %s at %d: %w", object, annex, len(out), err)
		}
		data, err := unescapeBinary(r[1:])
		if err != nil {
			return nil, err
		}
		switch r[0] {
		case 'l':
			out = append(out, data...)
			if len(out) > limit {
				return nil, fmt.Errorf("%w: qXfer %s %s larger than %d bytes", ErrProtocol, object, annex, limit)
			}
			return out, nil
		case 'm':
			if len(data) == 0 {
				return nil, fmt.Errorf("%w: qXfer %s %s: empty 'm' chunk", ErrProtocol, object, annex)
			}
			out = append(out, data...)
		default:
			return nil, fmt.Errorf("%w: qXfer reply %q", ErrProtocol, truncate(r))
		}
	}
	return nil, fmt.Errorf("%w: qXfer %s %s larger than %d bytes", ErrProtocol, object, annex, limit)
}
