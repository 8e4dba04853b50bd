package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxResponse bounds a response body the client reads (a physical read of
// MaxReadLength plus headroom; JSON answers are far smaller).
const maxResponse = MaxReadLength + 64<<10

// Client calls one VM's API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// Socket is the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gatevisor"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

// send performs req and decodes a JSON answer into out (or raw bytes into
// a *[]byte).
func (c *Client) send(req *http.Request, out any) error {
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("api %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("api %s %s: %w", req.Method, req.URL.Path, err)
	}
	if out == nil {
		return nil
	}
	if b, ok := out.(*[]byte); ok {
		*b = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("api %s %s: bad response: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// Status returns the VM's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Stop asks the VM to shut down.
func (c *Client) Stop(ctx context.Context, req StopRequest) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodPost, "/v1/stop", req, &s)
	return s, err
}

// Exec runs a command in the guest.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	var r ExecResult
	err := c.do(ctx, http.MethodPost, "/v1/exec", req, &r)
	return r, err
}

// Registers reads one vCPU's registers.
func (c *Client) Registers(ctx context.Context, vcpu int) (Registers, error) {
	var r Registers
	err := c.do(ctx, http.MethodGet, "/v1/vcpus/"+strconv.Itoa(vcpu)+"/registers", nil, &r)
	return r, err
}

// MemoryLayout returns guest RAM's layout.
func (c *Client) MemoryLayout(ctx context.Context) (MemoryLayout, error) {
	var m MemoryLayout
	err := c.do(ctx, http.MethodGet, "/v1/memory", nil, &m)
	return m, err
}

// ReadPhysical reads n bytes of guest-physical memory at addr.
func (c *Client) ReadPhysical(ctx context.Context, addr uint64, n int) ([]byte, error) {
	var b []byte
	q := url.Values{"address": {"0x" + strconv.FormatUint(addr, 16)}, "length": {strconv.Itoa(n)}}
	err := c.do(ctx, http.MethodGet, "/v1/memory/physical?"+q.Encode(), nil, &b)
	if err == nil && len(b) != n {
		return nil, fmt.Errorf("api: read %d bytes at %#x, got %d", n, addr, len(b))
	}
	return b, err
}

// Console attaches to the serial console; the returned connection carries
// raw console bytes both ways.
func (c *Client) Console(ctx context.Context, replay int) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, fmt.Errorf("api %s: %w", c.socket, err)
	}
	req := fmt.Sprintf("GET /v1/console?replay=%d HTTP/1.1\r\nHost: gatevisor\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", replay, ConsoleUpgrade)
	if _, err := conn.Write([]byte(req)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("api console: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("api console: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Message != "" {
			return nil, &e
		}
		return nil, fmt.Errorf("api console: %s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// readError turns a non-2xx response into an *Error.
func readError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e Error
	if json.Unmarshal(data, &e) == nil && e.Message != "" {
		return &e
	}
	return &Error{Code: CodeInternal, Message: fmt.Sprintf("api %s %s: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status)}
}
