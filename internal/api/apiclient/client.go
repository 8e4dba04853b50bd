// Package apiclient calls one VM's local API (package api) over its unix
// socket: what the CLI, the benchmarks and the tests use.
package apiclient

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

	"github.com/gatevisor/gatevisor/internal/api"
)

// maxResponse bounds a response body the client reads: the largest answer
// is an exec's, two outputs of api.MaxExecOutput in base64 (a physical
// read of api.MaxReadLength is smaller), plus headroom.
const maxResponse = max(api.MaxReadLength, 2*(api.MaxExecOutput+2)/3*4) + 64<<10

// Client calls one api.VM's API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
	// onBehalfOf, when set, is every request's api.OnBehalfOfHeader.
	onBehalfOf string
}

// OnBehalfOf returns a client that makes every request for the user uid,
// gid (api.OnBehalfOfHeader): the server honours it only when this process
// is root, and refuses the requests otherwise. It shares c's connections.
func (c *Client) OnBehalfOf(uid, gid uint32) *Client {
	d := *c
	d.onBehalfOf = api.FormatOnBehalfOf(uid, gid)
	return &d
}

// header sets what every request of c carries.
func (c *Client) header(req *http.Request) {
	if c.onBehalfOf != "" {
		req.Header.Set(api.OnBehalfOfHeader, c.onBehalfOf)
	}
}

// New returns a client for the API socket at path.
func New(path string) *Client {
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
	c.header(req)
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

// api.Status returns the api.VM's status.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var s api.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Stop asks the api.VM to shut down.
func (c *Client) Stop(ctx context.Context, req api.StopRequest) (api.Status, error) {
	var s api.Status
	err := c.do(ctx, http.MethodPost, "/v1/stop", req, &s)
	return s, err
}

// Exec runs a command in the guest.
func (c *Client) Exec(ctx context.Context, req api.ExecRequest) (api.ExecResult, error) {
	var r api.ExecResult
	err := c.do(ctx, http.MethodPost, "/v1/exec", req, &r)
	return r, err
}

// api.Registers reads one vCPU's registers.
func (c *Client) Registers(ctx context.Context, vcpu int) (api.Registers, error) {
	var r api.Registers
	err := c.do(ctx, http.MethodGet, "/v1/vcpus/"+strconv.Itoa(vcpu)+"/registers", nil, &r)
	return r, err
}

// api.MemoryLayout returns guest RAM's layout.
func (c *Client) MemoryLayout(ctx context.Context) (api.MemoryLayout, error) {
	var m api.MemoryLayout
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
	extra := ""
	if c.onBehalfOf != "" {
		extra = api.OnBehalfOfHeader + ": " + c.onBehalfOf + "\r\n"
	}
	req := fmt.Sprintf("GET /v1/console?replay=%d HTTP/1.1\r\nHost: gatevisor\r\n%sConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", replay, extra, api.ConsoleUpgrade)
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
		var e api.Error
		if json.Unmarshal(data, &e) == nil && e.Message != "" {
			return nil, &e
		}
		return nil, fmt.Errorf("api console: %s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// readError turns a non-2xx response into an *api.Error.
func readError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e api.Error
	if json.Unmarshal(data, &e) == nil && e.Message != "" {
		return &e
	}
	return &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("api %s %s: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status)}
}

// IDS runs an introspection query; source is "ram" (default) or "gdbstub".
func (c *Client) IDS(ctx context.Context, query, source string) (api.IDSResult, error) {
	var res api.IDSResult
	path := "/v1/ids/" + url.PathEscape(query)
	if source != "" {
		path += "?source=" + url.QueryEscape(source)
	}
	err := c.do(ctx, http.MethodGet, path, nil, &res)
	return res, err
}

// Dump writes an ELF dump of guest memory to path (absolute, on the host).
func (c *Client) Dump(ctx context.Context, path string) (api.DumpResult, error) {
	var res api.DumpResult
	err := c.do(ctx, http.MethodPost, "/v1/dump", api.DumpRequest{Path: path}, &res)
	return res, err
}

// WritePhysical writes data to guest-physical memory at addr.
func (c *Client) WritePhysical(ctx context.Context, addr uint64, data []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://gatevisor/v1/memory/physical?address=0x"+strconv.FormatUint(addr, 16), strings.NewReader(string(data)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	return c.send(req, nil)
}

// Events returns the event stream (history, then new events if follow).
// The caller closes it.
func (c *Client) Events(ctx context.Context, follow bool) (io.ReadCloser, error) {
	return c.QueryEvents(ctx, api.EventsQuery{Follow: follow})
}

// QueryEvents returns the events q selects as JSON lines (see
// api.EventsQuery): the history, or a page read back from the VM's event
// files, then new events if q.Follow. The caller closes it.
func (c *Client) QueryEvents(ctx context.Context, q api.EventsQuery) (io.ReadCloser, error) {
	v := url.Values{"follow": {strconv.FormatBool(q.Follow)}}
	if q.Before > 0 {
		v.Set("before", strconv.FormatUint(q.Before, 10))
	}
	if q.HasAfter {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://gatevisor/v1/events?"+v.Encode(), nil)
	if err != nil {
		return nil, err
	}
	c.header(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp.Body, nil
}

// LoadPolicy replaces the api.VM's policy.
func (c *Client) LoadPolicy(ctx context.Context, req api.PolicyRequest) (api.PolicyResult, error) {
	var res api.PolicyResult
	err := c.do(ctx, http.MethodPost, "/v1/policy", req, &res)
	return res, err
}

// Proc does action (stop, cont, kill, freeze, thaw) to a guest process.
func (c *Client) Proc(ctx context.Context, action string, req api.ProcRequest) (api.ProcResult, error) {
	var res api.ProcResult
	err := c.do(ctx, http.MethodPost, "/v1/proc/"+url.PathEscape(action), req, &res)
	return res, err
}

// Metrics returns the VM's Prometheus metrics (text exposition format).
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	var b []byte
	err := c.do(ctx, http.MethodGet, "/v1/metrics", nil, &b)
	return b, err
}

// NetIsolate cuts the VM's network until NetRestore.
func (c *Client) NetIsolate(ctx context.Context, reason string) (api.NetIsolation, error) {
	var res api.NetIsolation
	err := c.do(ctx, http.MethodPost, "/v1/net/isolate", api.NetIsolateRequest{Reason: reason}, &res)
	return res, err
}

// NetRestore ends an isolation.
func (c *Client) NetRestore(ctx context.Context) (api.NetIsolation, error) {
	var res api.NetIsolation
	err := c.do(ctx, http.MethodPost, "/v1/net/restore", nil, &res)
	return res, err
}

// NetFlows returns the network gate's newest limit flows (0: the
// server's default).
func (c *Client) NetFlows(ctx context.Context, limit int) (api.NetFlows, error) {
	path := "/v1/net/flows"
	if limit != 0 {
		path += "?limit=" + strconv.Itoa(limit)
	}
	var res api.NetFlows
	err := c.do(ctx, http.MethodGet, path, nil, &res)
	return res, err
}

// bufferedConn is a console connection whose first bytes are already in a
// reader.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// Restart replaces QEMU under the running guest.
func (c *Client) Restart(ctx context.Context, req api.RestartRequest) (api.RestartResult, error) {
	var res api.RestartResult
	err := c.do(ctx, http.MethodPost, "/v1/restart", req, &res)
	return res, err
}

// Upgrade asks for the monitor to be replaced with the guest running.
func (c *Client) Upgrade(ctx context.Context, req api.UpgradeRequest) (api.UpgradeResult, error) {
	var res api.UpgradeResult
	err := c.do(ctx, http.MethodPost, "/v1/upgrade", req, &res)
	return res, err
}

// Snapshot saves the guest's RAM and device state under tag.
func (c *Client) Snapshot(ctx context.Context, tag string) (api.Snapshot, error) {
	var res api.Snapshot
	err := c.do(ctx, http.MethodPost, "/v1/snapshot", api.SnapshotRequest{Tag: tag}, &res)
	return res, err
}

// Snapshots lists the VM's snapshots.
func (c *Client) Snapshots(ctx context.Context) (api.Snapshots, error) {
	var res api.Snapshots
	err := c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &res)
	return res, err
}

// Rollback puts the guest back to snapshot tag.
func (c *Client) Rollback(ctx context.Context, tag string) (api.RollbackResult, error) {
	var res api.RollbackResult
	err := c.do(ctx, http.MethodPost, "/v1/rollback", api.SnapshotRequest{Tag: tag}, &res)
	return res, err
}

// RemoveSnapshot deletes snapshot tag.
func (c *Client) RemoveSnapshot(ctx context.Context, tag string) error {
	return c.do(ctx, http.MethodPost, "/v1/snapshot/remove", api.SnapshotRequest{Tag: tag}, nil)
}
