// Package guestexec is the operator's exec channel into a guest: the agent
// script that the guest kit installs (AgentScript) and the monitor-side client
// that speaks its line protocol over the virtio-serial port named PortName.
//
// The channel is a convenience for operators and tests. No security feature
// may depend on it: the guest runs the agent, so an intruder controls it.
// Every reply is therefore parsed as hostile input: line length, field count,
// ids, exit codes and base64 payloads are all bounded and validated.
package guestexec

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// PortName is the virtio-serial port name the agent looks for.
const PortName = "org.gatevisor.exec"

// AgentScript is the guest side, installed by the kit as /sbin/gatevisor-agent.
//
//go:embed agent.sh
var AgentScript string

const (
	magic = "GVX1"
	// MaxOutput is the most stdout (and, separately, stderr) the agent returns.
	MaxOutput = 1 << 20
	// maxLine bounds one reply line: two base64 payloads plus small fields.
	maxLine = 2*((MaxOutput+2)/3*4) + 256
	// MaxScript bounds the command sent to the guest.
	MaxScript = 64 << 10
)

// ErrClosed is returned once the channel's connection is gone.
var ErrClosed = errors.New("guestexec: channel closed")

// Result is what a command run in the guest produced.
type Result struct {
	ExitCode int    `json:"exit_code"`
	Stdout   []byte `json:"stdout"`
	Stderr   []byte `json:"stderr"`
}

// Client runs commands through one agent connection, one at a time. A single
// reader goroutine owns the read side; replies whose id does not match the
// request in flight (late answers to abandoned requests) are dropped.
type Client struct {
	conn    io.ReadWriteCloser
	replies chan reply
	gone    chan struct{} // closed when the reader stops
	readErr error         // why the reader stopped; valid once gone is closed

	mu     sync.Mutex // serializes requests; guards nextID
	nextID uint64
}

type reply struct {
	id  uint64
	res Result
}

// NewClient wraps a connection to the host end of the agent's port and
// starts reading replies from it.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := &Client{conn: conn, replies: make(chan reply, 1), gone: make(chan struct{}), nextID: 1}
	go c.readLoop(bufio.NewReaderSize(conn, 64<<10))
	return c
}

// Close closes the underlying connection; pending and later calls fail.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) readLoop(r *bufio.Reader) {
	defer close(c.gone)
	for {
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				continue
			}
			c.readErr = err
			return
		}
		id, res, err := ParseReply(line)
		if err != nil {
			continue // noise on the port, such as a guest echoing input
		}
		// Replace any undelivered stale reply: only the newest can match.
		select {
		case <-c.replies:
		default:
		}
		c.replies <- reply{id: id, res: res}
	}
}

// QuoteArgv joins argv into one sh command line, quoting every word so the
// guest shell runs exactly argv.
func QuoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// EncodeRequest builds one request line.
func EncodeRequest(id uint64, timeout time.Duration, script string) []byte {
	secs := int64((timeout + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	return []byte(fmt.Sprintf("%s %d %d %s\n", magic, id, secs, base64.StdEncoding.EncodeToString([]byte(script))))
}

// ParseReply parses one reply line (without its newline).
func ParseReply(line []byte) (id uint64, res Result, err error) {
	f := bytes.Fields(line)
	if len(f) != 5 || string(f[0]) != magic {
		return 0, res, fmt.Errorf("guestexec: malformed reply (%d fields)", len(f))
	}
	id, err = strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return 0, res, fmt.Errorf("guestexec: bad reply id: %w", err)
	}
	code, err := strconv.Atoi(string(f[2]))
	if err != nil || code < 0 || code > 255 {
		return 0, res, fmt.Errorf("guestexec: bad exit code %q", f[2])
	}
	res.ExitCode = code
	if res.Stdout, err = decodeField(f[3]); err != nil {
		return 0, res, fmt.Errorf("guestexec: stdout: %w", err)
	}
	if res.Stderr, err = decodeField(f[4]); err != nil {
		return 0, res, fmt.Errorf("guestexec: stderr: %w", err)
	}
	return id, res, nil
}

func decodeField(b []byte) ([]byte, error) {
	if string(b) == "-" {
		return []byte{}, nil
	}
	if base64.StdEncoding.DecodedLen(len(b)) > MaxOutput+3 {
		return nil, errors.New("payload larger than the agent's cap")
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b)))
	n, err := base64.StdEncoding.Decode(out, b)
	if err != nil {
		return nil, fmt.Errorf("bad base64: %w", err)
	}
	return out[:n], nil
}

var errLineTooLong = fmt.Errorf("guestexec: reply longer than %d bytes", maxLine)

// readLine reads one line of at most maxLine bytes; an overlong line is
// consumed and reported as errLineTooLong so the stream stays in sync.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return nil, err
		}
		if !tooLong && len(line)+len(chunk) > maxLine {
			tooLong, line = true, nil
		}
		if !tooLong {
			line = append(line, chunk...)
		}
		if !isPrefix {
			if tooLong {
				return nil, errLineTooLong
			}
			return line, nil
		}
	}
}

// Run runs script with sh in the guest and waits for its result. The guest
// kills the command after timeout; Run gives up a few seconds later, or when
// ctx ends.
func (c *Client) Run(ctx context.Context, script string, timeout time.Duration) (Result, error) {
	if len(script) > MaxScript {
		return Result{}, fmt.Errorf("guestexec: command is %d bytes, the limit is %d", len(script), MaxScript)
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextID
	c.nextID++
	if _, err := c.conn.Write(EncodeRequest(id, timeout, script)); err != nil {
		return Result{}, fmt.Errorf("%w: send: %v", ErrClosed, err)
	}
	limit := timeout + 5*time.Second
	wait := time.NewTimer(limit)
	defer wait.Stop()
	for {
		select {
		case r := <-c.replies:
			if r.id == id {
				return r.res, nil
			}
		case <-c.gone:
			if c.readErr != nil && !errors.Is(c.readErr, io.EOF) {
				return Result{}, fmt.Errorf("%w: %v", ErrClosed, c.readErr)
			}
			return Result{}, ErrClosed
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case <-wait.C:
			return Result{}, fmt.Errorf("guestexec: no reply from the guest agent within %v", limit)
		}
	}
}
