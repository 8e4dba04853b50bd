package gdbrsp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeStub is the server end of a net.Pipe that behaves like QEMU's
// gdbstub in the ways the client depends on: acks (optionally
// QStartNoAckMode), qSupported, qXfer of QEMU 7.2's target description,
// all-stop run control, and a RAM of mem bytes at memBase.
type fakeStub struct {
	t          *testing.T
	conn       net.Conn
	files      map[string][]byte
	offerNoAck bool
	packetSize int
	// handle answers requests the fake does not know; ok=false means no reply.
	handle func(req string) (reply string, ok bool)
	// nacks makes the fake NAK that many incoming packets before accepting one.
	nacks int
	// badSums makes the fake send that many replies with a wrong checksum first.
	badSums int

	wmu    sync.Mutex // keeps packets whole in out
	out    chan []byte
	closed chan struct{}

	mu       sync.Mutex
	noAck    bool     // guarded by mu
	running  bool     // guarded by mu
	reqs     []string // guarded by mu; every packet received, raw
	acksSeen []byte   // guarded by mu; '+'/'-' received from the client
	// stoppedBy is every byte that stopped the running fake; guarded by mu.
	stoppedBy []byte
	// unacked: the fake's last packet awaits its acknowledgement, and, as
	// QEMU 7.2's gdb_read_byte, it swallows every byte but '+', '-' and
	// '$' until then, an interrupt too (guarded by mu). swallowed counts
	// them.
	unacked   bool
	swallowed int
	memBase   uint64
	mem       []byte // guarded by mu
	xOK       bool   // the fake implements 'X'
	maxRead   int    // when > 0, 'm' returns at most this many bytes
	mReply    string // when set, the reply to every 'm'
}

func newFakeStub(t *testing.T) *fakeStub {
	return &fakeStub{
		t:          t,
		files:      qemuFiles(t),
		packetSize: 0x1000,
		memBase:    0x1000,
		mem:        make([]byte, 10000),
		xOK:        true,
		out:        make(chan []byte, 1024),
		closed:     make(chan struct{}),
	}
}

// write queues b for the writer goroutine, so that the fake, like a real
// socket, never blocks on a client that is itself writing (net.Pipe has no
// buffer).
func (f *fakeStub) write(b []byte) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	select {
	case f.out <- b:
	case <-f.closed:
	}
}

func (f *fakeStub) writer() {
	for {
		select {
		case b := <-f.out:
			if _, err := f.conn.Write(b); err != nil {
				return
			}
		case <-f.closed:
			return
		}
	}
}

func (f *fakeStub) sendPacket(payload string) {
	f.mu.Lock()
	bad := f.badSums > 0
	if bad {
		f.badSums--
	}
	f.mu.Unlock()
	if bad {
		f.write([]byte("$" + payload + "#00"))
	}
	f.mu.Lock()
	f.unacked = !f.noAck
	f.mu.Unlock()
	f.write(encodePacket([]byte(payload)))
}

// start connects a client to the fake and returns it after the handshake.
func (f *fakeStub) start() *Client {
	f.t.Helper()
	cconn, sconn := net.Pipe()
	f.conn = sconn
	go f.serve()
	go f.writer()
	f.t.Cleanup(func() {
		close(f.closed)
		sconn.Close()
	})
	c, err := NewClient(testContext(f.t), cconn)
	if err != nil {
		f.t.Fatalf("NewClient: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

func (f *fakeStub) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func (f *fakeStub) serve() {
	r := bufio.NewReader(f.conn)
	for {
		b, err := r.ReadByte()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.unacked {
			if b == '+' || b == '$' {
				f.unacked = false
			} else if b != '-' {
				f.swallowed++
			}
			if b != '$' {
				if b == '+' || b == '-' {
					f.acksSeen = append(f.acksSeen, b)
				}
				f.mu.Unlock()
				continue
			}
		} else if b != '$' && b != '+' && b != '-' && !f.running {
			f.swallowed++ // garbage while stopped (0x03 too)
		}
		running := f.running
		f.mu.Unlock()
		if running {
			// QEMU: any byte stops a running VM and is then discarded.
			f.mu.Lock()
			f.running = false
			f.stoppedBy = append(f.stoppedBy, b)
			f.mu.Unlock()
			f.sendPacket("T02thread:01;")
			continue
		}
		switch b {
		case '+', '-':
			f.mu.Lock()
			f.acksSeen = append(f.acksSeen, b)
			f.mu.Unlock()
			continue
		case '$':
		default:
			continue // garbage, including 0x03 while stopped
		}
		raw, err := r.ReadBytes('#')
		if err != nil {
			return
		}
		var cs [2]byte
		if _, err := r.Read(cs[:1]); err != nil {
			return
		}
		if _, err := r.Read(cs[1:]); err != nil {
			return
		}
		payload := raw[:len(raw)-1]
		f.mu.Lock()
		noAck := f.noAck
		nack := f.nacks > 0
		if nack {
			f.nacks--
		}
		f.mu.Unlock()
		if sum(string(payload)) != string(cs[:]) {
			f.t.Errorf("fake stub: bad checksum on %q", payload)
		}
		if !noAck && nack {
			f.write([]byte{'-'})
			continue
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, string(payload))
		if string(payload) == "c" {
			// Running from the moment the packet is taken, before the ack
			// that lets the client return, so that tests see one state.
			f.running = true
		}
		f.mu.Unlock()
		if !noAck {
			f.write([]byte{'+'})
		}
		if reply, ok := f.answer(payload); ok {
			f.sendPacket(reply)
		}
	}
}

func (f *fakeStub) answer(p []byte) (string, bool) {
	req := string(p)
	switch {
	case strings.HasPrefix(req, "qSupported"):
		s := fmt.Sprintf("PacketSize=%x;qXfer:features:read+;vContSupported+", f.packetSize)
		if f.offerNoAck {
			s += ";QStartNoAckMode+"
		}
		return s, true
	case req == "QStartNoAckMode":
		f.mu.Lock()
		f.noAck = true
		f.mu.Unlock()
		return "OK", true
	case strings.HasPrefix(req, "qXfer:features:read:"):
		annex, rng, _ := strings.Cut(strings.TrimPrefix(req, "qXfer:features:read:"), ":")
		offS, lenS, _ := strings.Cut(rng, ",")
		off, _ := strconv.ParseUint(offS, 16, 32)
		n, _ := strconv.ParseUint(lenS, 16, 32)
		data, ok := f.files[annex]
		if !ok {
			return "E00", true
		}
		n = min(n, 100) // force several chunks
		if off >= uint64(len(data)) {
			return "l", true
		}
		end := min(off+n, uint64(len(data)))
		kind := "m"
		if end == uint64(len(data)) {
			kind = "l"
		}
		return kind + string(escapeBinary(nil, data[off:end])), true
	case req == "qC":
		return "QC01", true
	case req == "c" || req == "s":
		f.mu.Lock()
		f.running = req == "c"
		f.mu.Unlock()
		if req == "s" {
			return "T05thread:01;", true
		}
		return "", false
	case strings.HasPrefix(req, "vCont;s:"):
		return "T05thread:" + strings.TrimPrefix(req, "vCont;s:") + ";", true
	case req == "D":
		return "OK", true
	case strings.HasPrefix(req, "m"):
		var addr, n uint64
		if _, err := fmt.Sscanf(req, "m%x,%x", &addr, &n); err != nil {
			return "E16", true
		}
		if f.mReply != "" {
			return f.mReply, true
		}
		if 2*n > uint64(f.packetSize) {
			f.t.Errorf("fake stub: read of %d bytes exceeds PacketSize %d", n, f.packetSize)
			return "E22", true
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.maxRead > 0 {
			n = min(n, uint64(f.maxRead))
		}
		if addr < f.memBase || addr+n > f.memBase+uint64(len(f.mem)) {
			return "E0e", true
		}
		return hex.EncodeToString(f.mem[addr-f.memBase : addr-f.memBase+n]), true
	case strings.HasPrefix(req, "M"), strings.HasPrefix(req, "X"):
		if len(p) > f.packetSize {
			f.t.Errorf("fake stub: %c packet of %d bytes exceeds PacketSize %d", p[0], len(p), f.packetSize)
		}
		if req[0] == 'X' && !f.xOK {
			return "", true
		}
		head, data, _ := bytes.Cut(p[1:], []byte{':'})
		var addr, n uint64
		if _, err := fmt.Sscanf(string(head), "%x,%x", &addr, &n); err != nil {
			return "E16", true
		}
		var b []byte
		var err error
		if req[0] == 'X' {
			b, err = unescapeBinary(data)
		} else {
			b, err = hex.DecodeString(string(data))
		}
		if err != nil || uint64(len(b)) != n {
			f.t.Errorf("fake stub: bad %c payload for %d bytes: %v", p[0], n, err)
			return "E16", true
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if addr < f.memBase || addr+n > f.memBase+uint64(len(f.mem)) {
			return "E0e", true
		}
		copy(f.mem[addr-f.memBase:], b)
		return "OK", true
	}
	if f.handle != nil {
		return f.handle(req)
	}
	return "", true
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshake(t *testing.T) {
	for _, noAck := range []bool{false, true} {
		t.Run(fmt.Sprintf("noack=%v", noAck), func(t *testing.T) {
			f := newFakeStub(t)
			f.offerNoAck = noAck
			f.packetSize = 0x200
			c := f.start()
			if c.PacketSize() != 0x200 {
				t.Errorf("PacketSize = %d, want 512", c.PacketSize())
			}
			if got := len(c.Registers()); got != 66 {
				t.Errorf("%d registers, want 66", got)
			}
			if v, _ := c.Feature("vContSupported"); v != "+" {
				t.Errorf("Feature(vContSupported) = %q", v)
			}
			if c.noAck.Load() != noAck {
				t.Errorf("noAck = %v, want %v", c.noAck.Load(), noAck)
			}
			// Every request works in either mode.
			if _, err := c.ReadRegisters(testContext(t)); err != nil && !errors.Is(err, ErrUnsupported) {
				t.Errorf("request after handshake: %v", err)
			}
			for _, r := range f.requests() {
				if r == "?" {
					t.Error("client sent '?', which makes QEMU drop all breakpoints")
				}
			}
		})
	}
}

func TestReadRegister(t *testing.T) {
	tests := []struct {
		name    string
		reg     string
		reply   string
		wantReq string
		want    uint64
		wantErr error
	}{
		{"rip", "rip", "f0ff000000000000", "p10", 0xfff0, nil},
		{"cs is 32 bits", "cs", "00f00000", "p12", 0xf000, nil},
		{"cr3", "cr3", "0010000000000000", "p1d", 0x1000, nil},
		{"gs_base", "gs_base", "0000c0ffee8effff", "p19", 0xffff8eeeffc00000, nil},
		{"unavailable", "cr3", "xxxxxxxxxxxxxxxx", "p1d", 0, ErrRegisterUnavailable},
		{"wrong length", "rip", "f0ff", "p10", 0, ErrProtocol},
		{"not hex", "rip", "f0ff00000000000g", "p10", 0, ErrProtocol},
		{"stub error", "rip", "E14", "p10", 0, &TargetError{}},
		{"unsupported", "rip", "", "p10", 0, ErrUnsupported},
		{"unknown register", "dr7", "", "", 0, ErrUnknownRegister},
		{"too wide", "xmm0", "", "", 0, ErrRegisterTooWide},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeStub(t)
			var got []string
			f.handle = func(req string) (string, bool) {
				got = append(got, req)
				return tt.reply, true
			}
			c := f.start()
			v, err := c.ReadRegister(testContext(t), tt.reg)
			switch want := tt.wantErr.(type) {
			case nil:
				if err != nil {
					t.Fatalf("ReadRegister: %v", err)
				}
			case *TargetError:
				if !errors.As(err, &want) || want.Code != 0x14 {
					t.Fatalf("ReadRegister error = %v, want E14", err)
				}
			default:
				if !errors.Is(err, want) {
					t.Fatalf("ReadRegister error = %v, want %v", err, want)
				}
			}
			if v != tt.want {
				t.Errorf("ReadRegister = %#x, want %#x", v, tt.want)
			}
			var wantReqs []string
			if tt.wantReq != "" {
				wantReqs = []string{tt.wantReq}
			}
			if diff := cmp.Diff(wantReqs, got); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadRegisters(t *testing.T) {
	f := newFakeStub(t)
	g := string(mustRead(t, "testdata/qemu-7.2/g.reply"))
	f.handle = func(req string) (string, bool) {
		if req == "g" {
			return g, true
		}
		return "", true
	}
	c := f.start()
	regs, err := c.ReadRegisters(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if regs["rip"] != 0xfff0 || regs["cs"] != 0xf000 || len(regs) != 66-8-16 {
		t.Errorf("rip=%#x cs=%#x, %d registers; want 0xfff0 0xf000 42", regs["rip"], regs["cs"], len(regs))
	}
}

func TestThreadsAndVCPU(t *testing.T) {
	f := newFakeStub(t)
	f.handle = func(req string) (string, bool) {
		switch req {
		case "qfThreadInfo":
			return "m1,2", true
		case "qsThreadInfo":
			f.handle = func(req string) (string, bool) {
				if req == "qsThreadInfo" {
					return "l", true
				}
				return "OK", true
			}
			return "mp01.03", true
		}
		return "", true
	}
	c := f.start()
	ids, err := c.Threads(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{1, 2, 3}, ids); diff != "" {
		t.Errorf("Threads (-want +got):\n%s", diff)
	}
	if err := c.SetVCPU(testContext(t), 2); err != nil {
		t.Fatal(err)
	}
	if reqs := f.requests(); reqs[len(reqs)-1] != "Hg3" {
		t.Errorf("SetVCPU(2) sent %q, want Hg3", reqs[len(reqs)-1])
	}
	if err := c.SetVCPU(testContext(t), -1); err == nil {
		t.Error("SetVCPU(-1) succeeded")
	}
}

func TestThreadsEndless(t *testing.T) {
	f := newFakeStub(t)
	f.handle = func(req string) (string, bool) { return "m1", true }
	c := f.start()
	if _, err := c.Threads(testContext(t)); !errors.Is(err, ErrProtocol) {
		t.Errorf("endless thread list: err = %v, want ErrProtocol", err)
	}
}

func TestMemory(t *testing.T) {
	tests := []struct {
		name       string
		packetSize int
		xOK        bool
		maxRead    int
	}{
		{"X packets", 0x1000, true, 0},
		{"M fallback", 0x1000, false, 0},
		{"small packets", 0x100, true, 0},
		{"short reads", 0x1000, true, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeStub(t)
			f.packetSize, f.xOK, f.maxRead = tt.packetSize, tt.xOK, tt.maxRead
			c := f.start()
			ctx := testContext(t)
			want := make([]byte, 6000)
			for i := range want {
				want[i] = []byte("#$}*\x00ab")[i%7] + byte(i/7)
			}
			if err := c.WriteMemory(ctx, 0x1234, want); err != nil {
				t.Fatalf("WriteMemory: %v", err)
			}
			got := make([]byte, len(want))
			if err := c.ReadMemory(ctx, 0x1234, got); err != nil {
				t.Fatalf("ReadMemory: %v", err)
			}
			if !bytes.Equal(want, got) {
				t.Error("memory read back differs from what was written")
			}
			var sawX, sawM int
			for _, r := range f.requests() {
				switch r[0] {
				case 'X':
					sawX++
				case 'M':
					sawM++
				}
			}
			if tt.xOK && (sawX < 2 || sawM != 0) || !tt.xOK && (sawX != 1 || sawM < 2) {
				t.Errorf("%d X and %d M packets; X supported = %v", sawX, sawM, tt.xOK)
			}
		})
	}
}

func TestMemoryErrors(t *testing.T) {
	f := newFakeStub(t)
	c := f.start()
	ctx := testContext(t)
	var te *TargetError
	if err := c.ReadMemory(ctx, 0x100000, make([]byte, 8)); !errors.As(err, &te) || te.Code != 0x0e {
		t.Errorf("ReadMemory of unmapped memory = %v, want E0e", err)
	}
	if err := c.WriteMemory(ctx, 0x100000, []byte{1}); !errors.As(err, &te) {
		t.Errorf("WriteMemory of unmapped memory = %v, want *TargetError", err)
	}
	before := len(f.requests())
	if err := c.ReadMemory(ctx, 0x1000, nil); err != nil {
		t.Errorf("empty read: %v", err)
	}
	if got := len(f.requests()) - before; got != 0 {
		t.Errorf("empty read sent %d requests, want 0", got)
	}

	// Replies that are too long, not hex or empty are errors, not loops.
	for _, reply := range []string{"000000000000000000", "0g", "0"} {
		f := newFakeStub(t)
		f.mReply = reply
		c := f.start()
		if err := c.ReadMemory(testContext(t), 0x1000, make([]byte, 8)); err == nil {
			t.Errorf("ReadMemory with reply %q succeeded", reply)
		}
	}
}

func TestPhysicalMemoryMode(t *testing.T) {
	f := newFakeStub(t)
	f.handle = func(req string) (string, bool) {
		if strings.HasPrefix(req, "Qqemu.PhyMemMode:") {
			return "OK", true
		}
		return "", true
	}
	c := f.start()
	ctx := testContext(t)
	if err := c.SetPhysicalMemoryMode(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPhysicalMemoryMode(ctx, false); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if diff := cmp.Diff([]string{"Qqemu.PhyMemMode:1", "Qqemu.PhyMemMode:0"}, reqs[len(reqs)-2:]); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	f.handle = func(string) (string, bool) { return "", true }
	if err := c.SetPhysicalMemoryMode(ctx, true); !errors.Is(err, ErrUnsupported) {
		t.Errorf("on a stub without it: %v, want ErrUnsupported", err)
	}
}

func TestBreakpoints(t *testing.T) {
	tests := []struct {
		name    string
		call    func(c *Client, ctx context.Context) error
		reply   string
		wantReq string
		wantErr error
	}{
		{"set software", func(c *Client, ctx context.Context) error { return c.SetBreakpoint(ctx, Software, 0xffffffff81000000) },
			"OK", "Z0,ffffffff81000000,1", nil},
		{"clear software", func(c *Client, ctx context.Context) error { return c.ClearBreakpoint(ctx, Software, 0xfe05b) },
			"OK", "z0,fe05b,1", nil},
		{"set hardware", func(c *Client, ctx context.Context) error { return c.SetBreakpoint(ctx, Hardware, 0x1000) },
			"OK", "Z1,1000,1", nil},
		{"clear hardware", func(c *Client, ctx context.Context) error { return c.ClearBreakpoint(ctx, Hardware, 0x1000) },
			"OK", "z1,1000,1", nil},
		{"unsupported", func(c *Client, ctx context.Context) error { return c.SetBreakpoint(ctx, Hardware, 0x1000) },
			"", "Z1,1000,1", ErrUnsupported},
		{"garbage reply", func(c *Client, ctx context.Context) error { return c.SetBreakpoint(ctx, Software, 0x1000) },
			"KO", "Z0,1000,1", ErrProtocol},
		{"set read watchpoint", func(c *Client, ctx context.Context) error {
			return c.SetWatchpoint(ctx, ReadWatch, 0xffffffff8242eac0, 8)
		}, "OK", "Z3,ffffffff8242eac0,8", nil},
		{"clear read watchpoint", func(c *Client, ctx context.Context) error {
			return c.ClearWatchpoint(ctx, ReadWatch, 0xffffffff8242eac0, 8)
		}, "OK", "z3,ffffffff8242eac0,8", nil},
		{"set access watchpoint", func(c *Client, ctx context.Context) error {
			return c.SetWatchpoint(ctx, AccessWatch, 0x1000, 4)
		}, "OK", "Z4,1000,4", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeStub(t)
			var got []string
			f.handle = func(req string) (string, bool) {
				got = append(got, req)
				return tt.reply, true
			}
			c := f.start()
			if err := tt.call(c, testContext(t)); !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff([]string{tt.wantReq}, got); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
	c := newFakeStub(t).start()
	if err := c.SetBreakpoint(testContext(t), BreakpointKind(7), 0); err == nil {
		t.Error("invalid breakpoint kind accepted")
	}
	if err := c.SetWatchpoint(testContext(t), ReadWatch, 0x1000, 3); err == nil {
		t.Error("watchpoint length 3 accepted")
	}
}

func TestContinueInterrupt(t *testing.T) {
	f := newFakeStub(t)
	c := f.start()
	ctx := testContext(t)
	if err := c.Continue(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.Running() {
		t.Error("Running = false after Continue")
	}
	if _, err := c.ReadRegister(ctx, "rip"); !errors.Is(err, ErrRunning) {
		t.Errorf("ReadRegister while running = %v, want ErrRunning", err)
	}
	if err := c.Continue(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("Continue while running = %v, want ErrRunning", err)
	}
	if err := c.Interrupt(ctx); err != nil {
		t.Fatal(err)
	}
	sr, err := c.WaitStop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(StopReply{Kind: 'T', Signal: 2, Thread: 1, Pairs: map[string]string{"thread": "01"}}, sr); diff != "" {
		t.Errorf("stop reply (-want +got):\n%s", diff)
	}
	if c.Running() {
		t.Error("Running = true after the stop reply")
	}
	sr, err = c.Step(ctx)
	if err != nil || sr.Signal != 5 {
		t.Errorf("Step = %+v, %v; want T05", sr, err)
	}
}

func TestWaitStopTimeout(t *testing.T) {
	c := newFakeStub(t).start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := c.WaitStop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitStop with nothing running = %v, want DeadlineExceeded", err)
	}
}

// TestWithStopped covers the three states the target can be in: stopped,
// resumed by this client, and resumed behind its back (QMP "cont").
func TestWithStopped(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(f *fakeStub, c *Client)
		wantResume bool
	}{
		{"stopped", func(f *fakeStub, c *Client) {}, false},
		{"resumed by us", func(f *fakeStub, c *Client) {
			if err := c.Continue(testContext(t)); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"resumed behind our back", func(f *fakeStub, c *Client) {
			f.mu.Lock()
			f.running = true
			f.mu.Unlock()
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeStub(t)
			f.handle = func(req string) (string, bool) {
				if req == "p10" {
					return "f0ff000000000000", true
				}
				return "", true
			}
			c := f.start()
			tt.setup(f, c)
			ctx := testContext(t)
			before := len(f.requests())
			var rip uint64
			err := c.WithStopped(ctx, func() error {
				var err error
				rip, err = c.ReadRegister(ctx, "rip")
				return err
			})
			if err != nil || rip != 0xfff0 {
				t.Fatalf("WithStopped: rip = %#x, %v", rip, err)
			}
			reqs := f.requests()[before:]
			resumed := reqs[len(reqs)-1] == "c"
			if resumed != tt.wantResume {
				t.Errorf("requests %q: resumed = %v, want %v", reqs, resumed, tt.wantResume)
			}
			f.mu.Lock()
			running := f.running
			f.mu.Unlock()
			if running != tt.wantResume || c.Running() != tt.wantResume {
				t.Errorf("after WithStopped: stub running %v, client running %v; want %v", running, c.Running(), tt.wantResume)
			}
		})
	}
}

// TestUnsolicitedStop checks that a stop reply arriving while a request is
// in flight (QEMU 7.2 sends one on QMP "stop") is not taken as its reply.
func TestUnsolicitedStop(t *testing.T) {
	f := newFakeStub(t)
	f.handle = func(req string) (string, bool) {
		if req == "p10" {
			f.sendPacket("T02thread:01;")
			return "f0ff000000000000", true
		}
		return "", true
	}
	c := f.start()
	rip, err := c.ReadRegister(testContext(t), "rip")
	if err != nil || rip != 0xfff0 {
		t.Fatalf("ReadRegister = %#x, %v", rip, err)
	}
	sr, err := c.WaitStop(testContext(t))
	if err != nil || sr.Signal != 2 {
		t.Errorf("WaitStop = %+v, %v; want the unsolicited T02", sr, err)
	}
}

func TestAcks(t *testing.T) {
	t.Run("client resends after NAK", func(t *testing.T) {
		f := newFakeStub(t)
		f.nacks = 2
		c := f.start() // qSupported is NAKed twice
		if c.PacketSize() != 0x1000 {
			t.Errorf("PacketSize = %d", c.PacketSize())
		}
	})
	t.Run("client gives up after repeated NAKs", func(t *testing.T) {
		f := newFakeStub(t)
		f.nacks = maxNackRetries + 1
		cconn, sconn := net.Pipe()
		defer sconn.Close()
		f.conn = sconn
		go f.serve()
		go f.writer()
		defer close(f.closed)
		if _, err := NewClient(testContext(t), cconn); !errors.Is(err, ErrProtocol) {
			t.Errorf("NewClient = %v, want ErrProtocol", err)
		}
	})
	t.Run("client NAKs a damaged reply", func(t *testing.T) {
		f := newFakeStub(t)
		f.badSums = 1
		c := f.start()
		if c.PacketSize() != 0x1000 {
			t.Errorf("PacketSize = %d", c.PacketSize())
		}
		f.mu.Lock()
		acks := string(f.acksSeen)
		f.mu.Unlock()
		if !strings.HasPrefix(acks, "-+") {
			t.Errorf("client sent %q, want a NAK then an ACK", acks)
		}
	})
}

func TestConnectionLoss(t *testing.T) {
	tests := []struct {
		name    string
		action  func(f *fakeStub)
		wantMsg string
	}{
		{"stub closes", func(f *fakeStub) { f.conn.Close() }, "closed the connection"},
		{"oversized packet", func(f *fakeStub) {
			f.write(append([]byte{'$'}, bytes.Repeat([]byte{'0'}, MaxPacketSize+1)...))
		}, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeStub(t)
			f.handle = func(req string) (string, bool) {
				go tt.action(f)
				return "", false
			}
			c := f.start()
			_, err := c.ReadRegister(testContext(t), "rip")
			if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("pending call error = %v, want ErrClosed mentioning %q", err, tt.wantMsg)
			}
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("Done not closed")
			}
			if _, err := c.WaitStop(testContext(t)); !errors.Is(err, ErrClosed) {
				t.Errorf("WaitStop after loss = %v, want ErrClosed", err)
			}
		})
	}
}

func TestRequestTimeout(t *testing.T) {
	f := newFakeStub(t)
	f.handle = func(req string) (string, bool) {
		if req == "p10" {
			return "", false // never answer
		}
		return "OK", true
	}
	c := f.start()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.ReadRegister(ctx, "rip"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReadRegister = %v, want DeadlineExceeded", err)
	}
	if err := c.SetVCPU(testContext(t), 0); err != nil {
		t.Errorf("request after a timeout: %v", err)
	}
}

func TestDetach(t *testing.T) {
	f := newFakeStub(t)
	c := f.start()
	if err := c.Detach(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if reqs := f.requests(); reqs[len(reqs)-1] != "D" {
		t.Errorf("last request %q, want D", reqs[len(reqs)-1])
	}
	if _, err := c.ReadRegister(testContext(t), "rip"); !errors.Is(err, ErrClosed) {
		t.Errorf("after Detach: %v, want ErrClosed", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCancelledContextKeepsConnection checks that a call whose context is
// already done fails alone, without breaking the connection.
func TestCancelledContextKeepsConnection(t *testing.T) {
	f := newFakeStub(t)
	f.handle = func(string) (string, bool) { return "OK", true }
	c := f.start()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Interrupt(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Interrupt with cancelled ctx = %v, want Canceled", err)
	}
	if err := c.SetVCPU(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("SetVCPU with cancelled ctx = %v, want Canceled", err)
	}
	if err := c.SetVCPU(testContext(t), 0); err != nil {
		t.Errorf("SetVCPU afterwards: %v", err)
	}
}

// TestAckWithNextPacket: the client acknowledges a packet in front of
// the next one it sends, not on its own (a write, and a wakeup of QEMU's
// main loop, per packet saved), and an interrupt carries an owed '+'
// too: QEMU swallows it otherwise, and a VM resumed behind the client's
// back (QMP cont) would not stop.
func TestAckWithNextPacket(t *testing.T) {
	f := newFakeStub(t)
	c := f.start()
	ctx := testContext(t)
	if _, err := c.ReadRegisters(ctx); err != nil && !errors.Is(err, ErrUnsupported) {
		t.Fatal(err) // an empty answer is an answer
	}
	f.mu.Lock()
	owed, acks := f.unacked, len(f.acksSeen)
	f.mu.Unlock()
	if !owed {
		t.Fatal("the answer was acknowledged on its own")
	}
	if _, err := c.ReadRegisters(ctx); err != nil && !errors.Is(err, ErrUnsupported) {
		t.Fatal(err)
	}
	f.mu.Lock()
	if len(f.acksSeen) != acks+1 {
		t.Errorf("acks %q, want one more for the answer before", f.acksSeen)
	}
	// Resumed behind the client's back, its last answer unacknowledged.
	f.running = true
	f.mu.Unlock()
	wasRunning, err := c.Halt(ctx)
	if err != nil {
		t.Fatalf("Halt of a VM resumed behind the client's back: %v", err)
	}
	_ = wasRunning
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running || len(f.stoppedBy) != 1 || f.stoppedBy[0] != 0x03 || f.swallowed != 0 {
		t.Errorf("running %v, stopped by %q, %d bytes swallowed: want stopped by the interrupt, nothing swallowed", f.running, f.stoppedBy, f.swallowed)
	}
}
