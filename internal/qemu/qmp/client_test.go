package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const testGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "test"}, "capabilities": ["oob"]}}`

// request is what the fake QEMU decodes from the client.
type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        string          `json:"id"`
}

// fakeQEMU is the server end of a net.Pipe speaking QMP.
type fakeQEMU struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex
}

func (f *fakeQEMU) send(line string) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if _, err := f.conn.Write([]byte(line + "\r\n")); err != nil {
		f.t.Logf("fake QEMU: write: %v", err)
	}
}

func (f *fakeQEMU) recv() (request, error) {
	line, err := f.r.ReadBytes('\n')
	if err != nil {
		return request{}, err
	}
	var r request
	if err := json.Unmarshal(line, &r); err != nil {
		return request{}, fmt.Errorf("fake QEMU: bad request %q: %v", line, err)
	}
	return r, nil
}

// reply sends a return value for r.
func (f *fakeQEMU) reply(r request, ret string) {
	f.send(fmt.Sprintf(`{"return": %s, "id": %q}`, ret, r.ID))
}

// newTestClient starts a fake QEMU that answers the handshake, then returns
// the client and the fake for the test to drive.
func newTestClient(t *testing.T) (*Client, *fakeQEMU) {
	t.Helper()
	cconn, sconn := net.Pipe()
	f := &fakeQEMU{t: t, conn: sconn, r: bufio.NewReader(sconn)}
	hs := make(chan error, 1)
	go func() {
		f.send(testGreeting)
		r, err := f.recv()
		if err != nil {
			hs <- err
			return
		}
		if r.Execute != "qmp_capabilities" || r.ID == "" {
			hs <- fmt.Errorf("handshake request %+v, want qmp_capabilities with an id", r)
			return
		}
		f.reply(r, "{}")
		hs <- nil
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewClient(ctx, cconn)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		sconn.Close()
	})
	return c, f
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshake(t *testing.T) {
	c, _ := newTestClient(t)
	if diff := cmp.Diff(Version{7, 2, 22, "test"}, c.Version()); diff != "" {
		t.Errorf("Version (-want +got):\n%s", diff)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err = %v, want nil", err)
	}
}

func TestHandshakeFailures(t *testing.T) {
	tests := []struct {
		name   string
		server func(f *fakeQEMU)
		want   error
	}{
		{"eof before greeting", func(f *fakeQEMU) { f.conn.Close() }, ErrClosed},
		{"garbage greeting", func(f *fakeQEMU) { f.send("hello") }, ErrClosed},
		{"capabilities refused", func(f *fakeQEMU) {
			f.send(testGreeting)
			r, _ := f.recv()
			f.send(fmt.Sprintf(`{"error": {"class": "GenericError", "desc": "no"}, "id": %q}`, r.ID))
		}, &Error{}},
		{"silent server", func(f *fakeQEMU) {}, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cconn, sconn := net.Pipe()
			defer sconn.Close()
			f := &fakeQEMU{t: t, conn: sconn, r: bufio.NewReader(sconn)}
			go tt.server(f)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := NewClient(ctx, cconn)
			var qe *Error
			if _, isQMP := tt.want.(*Error); isQMP {
				if !errors.As(err, &qe) {
					t.Fatalf("NewClient error = %v, want *Error", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewClient error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestExecute(t *testing.T) {
	tests := []struct {
		name     string
		command  string
		args     any
		reply    func(r request) string
		wantArgs string
		wantRet  any
		wantErr  *Error
	}{
		{
			name:    "query-status",
			command: "query-status",
			reply: func(r request) string {
				return fmt.Sprintf(`{"return": {"status": "paused", "singlestep": false, "running": false}, "id": %q}`, r.ID)
			},
			wantRet: &Status{Status: "paused"},
		},
		{
			name:     "arguments are sent",
			command:  "human-monitor-command",
			args:     map[string]string{"command-line": "info mtree"},
			wantArgs: `{"command-line":"info mtree"}`,
			reply:    func(r request) string { return fmt.Sprintf(`{"return": "out\r\n", "id": %q}`, r.ID) },
			wantRet:  ptr("out\r\n"),
		},
		{
			name:    "QMP error is typed",
			command: "nope",
			reply: func(r request) string {
				return fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": %q}`, r.ID)
			},
			wantErr: &Error{Class: "CommandNotFound", Desc: "The command nope has not been found"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, f := newTestClient(t)
			go func() {
				r, err := f.recv()
				if err != nil {
					return
				}
				if r.Execute != tt.command || string(r.Arguments) != tt.wantArgs {
					t.Errorf("server got execute=%q arguments=%s, want %q %s", r.Execute, r.Arguments, tt.command, tt.wantArgs)
				}
				f.send(tt.reply(r))
			}()
			var got any
			switch tt.wantRet.(type) {
			case *Status:
				got = new(Status)
			case *string:
				got = new(string)
			}
			err := c.Execute(testContext(t), tt.command, tt.args, got)
			if tt.wantErr != nil {
				var qe *Error
				if !errors.As(err, &qe) {
					t.Fatalf("Execute error = %v, want *Error", err)
				}
				if diff := cmp.Diff(tt.wantErr, qe); diff != "" {
					t.Errorf("Execute error (-want +got):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if diff := cmp.Diff(tt.wantRet, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestExecuteOutOfOrder answers concurrent requests in reverse order and
// checks that every caller gets its own reply.
func TestExecuteOutOfOrder(t *testing.T) {
	c, f := newTestClient(t)
	const n = 8
	go func() {
		var reqs []request
		for range n {
			r, err := f.recv()
			if err != nil {
				return
			}
			reqs = append(reqs, r)
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			var arg struct{ N int }
			json.Unmarshal(reqs[i].Arguments, &arg)
			f.reply(reqs[i], fmt.Sprint(arg.N*10))
		}
	}()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var got int
			if err := c.Execute(testContext(t), "echo", struct{ N int }{i}, &got); err != nil {
				t.Errorf("Execute %d: %v", i, err)
				return
			}
			if got != i*10 {
				t.Errorf("Execute %d got %d, want %d", i, got, i*10)
			}
		})
	}
	wg.Wait()
}

func TestEvents(t *testing.T) {
	c, f := newTestClient(t)
	f.send(`{"timestamp": {"seconds": 10, "microseconds": 5}, "event": "STOP"}`)
	f.send(`{"timestamp": {"seconds": 11, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`)
	want := []Event{
		{Name: "STOP", Timestamp: time.Unix(10, 5000).UTC()},
		{Name: "SHUTDOWN", Data: json.RawMessage(`{"guest": false, "reason": "host-qmp-quit"}`), Timestamp: time.Unix(11, 0).UTC()},
	}
	var got []Event
	for range want {
		select {
		case ev := <-c.Events():
			got = append(got, ev)
		case <-time.After(5 * time.Second):
			t.Fatal("timeout waiting for events")
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestEventsDropOldest floods events nobody reads and checks that the reader
// keeps serving replies and that the newest events survive.
func TestEventsDropOldest(t *testing.T) {
	c, f := newTestClient(t)
	const extra = 10
	go func() {
		for i := range EventBuffer + extra {
			f.send(fmt.Sprintf(`{"event": "E%d", "timestamp": {"seconds": 1, "microseconds": 0}}`, i))
		}
		r, err := f.recv()
		if err == nil {
			f.reply(r, `{"status": "running", "running": true}`)
		}
	}()
	// The reply comes after every event, so once it arrives all were handled.
	st, err := c.QueryStatus(testContext(t))
	if err != nil {
		t.Fatalf("QueryStatus while events pile up: %v", err)
	}
	if !st.Running {
		t.Errorf("QueryStatus = %+v, want running", st)
	}
	if got := c.DroppedEvents(); got != extra {
		t.Errorf("DroppedEvents = %d, want %d", got, extra)
	}
	first := <-c.Events()
	if want := fmt.Sprintf("E%d", extra); first.Name != want {
		t.Errorf("oldest kept event = %s, want %s", first.Name, want)
	}
}

func TestConnectionLoss(t *testing.T) {
	tests := []struct {
		name    string
		server  func(f *fakeQEMU)
		wantErr string
	}{
		{"eof", func(f *fakeQEMU) { f.conn.Close() }, "QEMU closed the connection"},
		{"malformed json", func(f *fakeQEMU) { f.send(`{"return": `) }, "malformed"},
		{"not an object", func(f *fakeQEMU) { f.send(`42`) }, "malformed"},
		{"second greeting", func(f *fakeQEMU) { f.send(testGreeting) }, "second greeting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, f := newTestClient(t)
			go func() {
				if _, err := f.recv(); err == nil {
					tt.server(f)
				}
			}()
			err := c.Execute(testContext(t), "query-status", nil, nil)
			if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("pending Execute error = %v, want ErrClosed mentioning %q", err, tt.wantErr)
			}
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("Done not closed")
			}
			if _, ok := <-c.Events(); ok {
				t.Error("Events channel still open after connection loss")
			}
			if err := c.Execute(testContext(t), "query-status", nil, nil); !errors.Is(err, ErrClosed) {
				t.Errorf("Execute after loss = %v, want ErrClosed", err)
			}
			if !errors.Is(c.Err(), ErrClosed) {
				t.Errorf("Err = %v, want ErrClosed", c.Err())
			}
		})
	}
}

func TestLineTooLong(t *testing.T) {
	c, f := newTestClient(t)
	go func() {
		f.wmu.Lock()
		defer f.wmu.Unlock()
		big := make([]byte, 1<<20)
		for i := range big {
			big[i] = ' '
		}
		for range MaxLineSize/len(big) + 1 {
			if _, err := f.conn.Write(big); err != nil {
				return
			}
		}
	}()
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("client accepted an unbounded line")
	}
	if err := c.Err(); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("Err = %v, want ErrClosed about line length", err)
	}
}

func TestExecuteContextCancel(t *testing.T) {
	c, f := newTestClient(t)
	late := make(chan request, 1)
	go func() {
		r, err := f.recv()
		if err != nil {
			return
		}
		late <- r
		r2, err := f.recv()
		if err != nil {
			return
		}
		f.reply(r, `"stale"`) // reply to the abandoned call first
		f.reply(r2, `"fresh"`)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Execute(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute = %v, want DeadlineExceeded", err)
	}
	<-late
	var got string
	if err := c.Execute(testContext(t), "next", nil, &got); err != nil {
		t.Fatalf("Execute after cancel: %v", err)
	}
	if got != "fresh" {
		t.Errorf("got %q, want the reply to the second call", got)
	}
}

func TestConvenienceCommands(t *testing.T) {
	tests := []struct {
		name     string
		call     func(c *Client, ctx context.Context) error
		wantExec string
		wantArgs string
		reply    string // "" closes the connection instead of replying
	}{
		{"cont", (*Client).Cont, "cont", "", "{}"},
		{"stop", (*Client).Stop, "stop", "", "{}"},
		{"powerdown", (*Client).SystemPowerdown, "system_powerdown", "", "{}"},
		{"quit", (*Client).Quit, "quit", "", "{}"},
		{"quit, QEMU gone before reply", (*Client).Quit, "quit", "", ""},
		{"dump", func(c *Client, ctx context.Context) error { return c.DumpGuestMemory(ctx, "/tmp/x.elf") },
			"dump-guest-memory", `{"paging":false,"protocol":"file:/tmp/x.elf","detach":false}`, "{}"},
		{"hmp", func(c *Client, ctx context.Context) error {
			out, err := c.HumanMonitorCommand(ctx, "info status")
			if err == nil && out != "VM status: paused\r\n" {
				err = fmt.Errorf("output %q", out)
			}
			return err
		}, "human-monitor-command", `{"command-line":"info status"}`, `"VM status: paused\r\n"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, f := newTestClient(t)
			go func() {
				r, err := f.recv()
				if err != nil {
					return
				}
				if r.Execute != tt.wantExec || string(r.Arguments) != tt.wantArgs {
					t.Errorf("server got %q %s, want %q %s", r.Execute, r.Arguments, tt.wantExec, tt.wantArgs)
				}
				if tt.reply == "" {
					f.conn.Close()
					return
				}
				f.reply(r, tt.reply)
			}()
			if err := tt.call(c, testContext(t)); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
		})
	}
}

func TestCloseUnblocksCallers(t *testing.T) {
	c, f := newTestClient(t)
	received := make(chan struct{})
	go func() { // read the request, never answer
		if _, err := f.recv(); err == nil {
			close(received)
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "query-status", nil, nil) }()
	// Close while the call is pending: once its request is on the wire.
	select {
	case <-received:
	case err := <-errc:
		t.Fatalf("Execute returned %v before its request was read", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the request never reached the fake QEMU")
	}
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Execute after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Execute still blocked after Close")
	}
}

// TestCancelledContextKeepsConnection checks that a call whose context is
// already done fails alone, without breaking the connection for others.
func TestCancelledContextKeepsConnection(t *testing.T) {
	c, f := newTestClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Execute(ctx, "stop", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute with cancelled ctx = %v, want Canceled", err)
	}
	go func() {
		if r, err := f.recv(); err == nil {
			f.reply(r, "{}")
		}
	}()
	if err := c.Execute(testContext(t), "cont", nil, nil); err != nil {
		t.Errorf("Execute afterwards: %v", err)
	}
}
