package monitor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
)

// miniStub is the little of QEMU 7.2's gdbstub that the debugger's resume
// needs: acks, qSupported, the x86-64 target description, 'P' (answered
// by refuse), 'c', qC, and QEMU's rule that any byte stops a running VM.
type miniStub struct {
	conn   net.Conn
	files  map[string][]byte
	refuse func(req string) bool // a 'P' answered E16

	mu      sync.Mutex
	running bool
	reqs    []string
	write   func([]byte) // to the client, in order with serve's answers
}

// hitTrap stops a running VM at a breakpoint of its own accord: QEMU's
// T05 stop reply, unasked.
func (s *miniStub) hitTrap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		s.running = false
		s.write(packet("T05thread:01;"))
	}
}

func startMiniStub(t *testing.T, refuse func(string) bool) (*miniStub, *gdbrsp.Client) {
	t.Helper()
	s := &miniStub{files: map[string][]byte{}, refuse: refuse}
	for _, name := range []string{"target.xml", "i386-64bit.xml"} {
		b, err := os.ReadFile(filepath.Join("..", "qemu", "gdbrsp", "testdata", "qemu-7.2", name))
		if err != nil {
			t.Fatal(err)
		}
		s.files[name] = b
	}
	cconn, sconn := net.Pipe()
	s.conn = sconn
	out := make(chan []byte, 256)
	done := make(chan struct{})
	go func() { // a writer that never blocks the reader (net.Pipe has no buffer)
		for {
			select {
			case b := <-out:
				if _, err := sconn.Write(b); err != nil {
					return
				}
			case <-done:
				return
			}
		}
	}()
	s.write = func(b []byte) {
		select {
		case out <- b:
		case <-done:
		}
	}
	go s.serve(s.write)
	t.Cleanup(func() { close(done); sconn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gdbrsp.NewClient(ctx, cconn)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return s, c
}

func packet(payload string) []byte {
	var sum byte
	for i := range len(payload) {
		sum += payload[i]
	}
	return fmt.Appendf(nil, "$%s#%02x", payload, sum)
}

func (s *miniStub) serve(write func([]byte)) {
	r := bufio.NewReader(s.conn)
	for {
		b, err := r.ReadByte()
		if err != nil {
			return
		}
		s.mu.Lock()
		running := s.running
		s.running = false
		s.mu.Unlock()
		if running {
			write(packet("T02thread:01;"))
			continue
		}
		if b != '$' {
			continue // acks, and 0x03 while stopped
		}
		raw, err := r.ReadBytes('#')
		if err != nil {
			return
		}
		if _, err := r.Discard(2); err != nil {
			return
		}
		req := string(raw[:len(raw)-1])
		s.mu.Lock()
		s.reqs = append(s.reqs, req)
		s.running = req == "c"
		s.mu.Unlock()
		write([]byte{'+'})
		switch {
		case strings.HasPrefix(req, "qSupported"):
			write(packet("PacketSize=1000;qXfer:features:read+"))
		case strings.HasPrefix(req, "qXfer:features:read:"):
			annex, rng, _ := strings.Cut(strings.TrimPrefix(req, "qXfer:features:read:"), ":")
			offS, lenS, _ := strings.Cut(rng, ",")
			off, _ := strconv.ParseUint(offS, 16, 32)
			n, _ := strconv.ParseUint(lenS, 16, 32)
			data := s.files[annex]
			end := min(off+n, uint64(len(data)))
			kind := "m"
			if end == uint64(len(data)) {
				kind = "l"
			}
			write(packet(kind + string(data[min(off, end):end])))
		case strings.HasPrefix(req, "P"):
			if s.refuse(req) {
				write(packet("E16"))
			} else {
				write(packet("OK"))
			}
		case req == "qC":
			write(packet("QC01"))
		case req == "c":
		default:
			write(packet(""))
		}
	}
}

func (s *miniStub) state() (bool, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running, slices.Clone(s.reqs)
}

// TestDebuggerResumeWithWrites: an allowed vCPU's move past its watched
// load goes with the continue in one write, and the monitor's share is
// counted up to it; a write refused once the VM runs stops the VM and
// ends it (failClosed), as does a continue that cannot carry its writes.
func TestDebuggerResumeWithWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, c := startMiniStub(t, func(req string) bool { return strings.HasPrefix(req, "P11=") })
	var failed []error
	d := newDebugger(c, t.Logf)
	d.failClosed = func(err error) { failed = append(failed, err) }

	var nanos atomic.Uint64
	start := time.Now()
	rw := &resumeWrites{regs: []gdbrsp.RegValue{{Name: "rip", Value: 0xffffffff81000013}}, start: start, nanos: &nanos}
	if err := d.resume(ctx, rw); err != nil || len(failed) != 0 {
		t.Fatalf("resume: %v (failed closed: %v)", err, failed)
	}
	running, reqs := s.state()
	if !running || !slices.Equal(reqs[len(reqs)-2:], []string{"P10=13000081ffffffff", "c"}) {
		t.Fatalf("stub running %v after %q", running, reqs)
	}
	if nanos.Load() == 0 {
		t.Error("the monitor's share was not counted")
	}
	if _, err := c.Halt(ctx); err != nil {
		t.Fatal(err)
	}

	// eflags refused after the continue: the VM is stopped and ended.
	rw = &resumeWrites{regs: []gdbrsp.RegValue{{Name: "eflags", Value: 0x246}, {Name: "rip", Value: 1}}, start: start}
	err := d.resume(ctx, rw)
	if !errors.Is(err, errKeepStopped) || !errors.Is(err, gdbrsp.ErrResumed) || len(failed) != 1 || failed[0] != err {
		t.Fatalf("a refused write: %v (failed closed: %v)", err, failed)
	}
	if running, _ := s.state(); running || c.Running() {
		t.Fatal("the VM runs on after a refused write")
	}

	// A write the continue cannot carry (no such register): nothing is
	// sent, the vCPU is where the writes were to move it from, and the
	// VM is ended rather than resumed there.
	_, before := s.state()
	err = d.resume(ctx, &resumeWrites{regs: []gdbrsp.RegValue{{Name: "dr7", Value: 0}}, start: start})
	if !errors.Is(err, errKeepStopped) || len(failed) != 2 {
		t.Fatalf("an unknown register: %v (failed closed: %v)", err, failed)
	}
	if running, reqs := s.state(); running || slices.Contains(reqs[len(before):], "c") {
		t.Fatalf("resumed after a continue that could not carry its writes: %q", reqs[len(before):])
	}

	// No writes: a plain continue.
	if err := d.resume(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if running, reqs := s.state(); !running || reqs[len(reqs)-1] != "c" {
		t.Fatalf("plain resume: running %v after %q", running, reqs)
	}
}

// TestDebuggerDoPaused: a request that saves device state runs only with
// QEMU's run state "paused": a stop at a trap ("debug", the interrupt
// raced with a hit) is served, the VM resumed and stopped again; a VM
// that keeps stopping at traps is not saved and runs on; a VM held at a
// trap is not saved.
func TestDebuggerDoPaused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, c := startMiniStub(t, func(string) bool { return false })
	d := newDebugger(c, t.Logf)
	d.failClosed = func(err error) { t.Errorf("failed closed: %v", err) }
	var (
		states []string // what runState answers next; the last one stays
		scans  int
	)
	d.runState = func(context.Context) (string, error) {
		st := states[0]
		if len(states) > 1 {
			states = states[1:]
		}
		return st, nil
	}
	d.scan = func(context.Context, *gdbrsp.Client) (*resumeWrites, error) {
		scans++
		return nil, nil
	}
	go d.run()
	t.Cleanup(func() { c.Close(); <-d.done })
	countC := func(reqs []string) int {
		n := 0
		for _, r := range reqs {
			if r == "c" {
				n++
			}
		}
		return n
	}
	if err := c.Continue(ctx); err != nil {
		t.Fatal(err)
	}

	// Two stops at a trap, then one at the interrupt.
	states = []string{"debug", "debug", "paused"}
	_, before := s.state()
	var ranAt []string
	err := d.DoPaused(ctx, func(context.Context, *gdbrsp.Client) error {
		_, reqs := s.state()
		ranAt = reqs
		return nil
	})
	if err != nil {
		t.Fatalf("DoPaused: %v", err)
	}
	if n := countC(ranAt[len(before):]); n != 2 {
		t.Errorf("f ran after %d continues, want 2 (one per stop at a trap): %q", n, ranAt[len(before):])
	}
	if scans != 3 { // two trap stops, and the scan before the VM runs on
		t.Errorf("scans = %d, want 3", scans)
	}
	if running, _ := s.state(); !running {
		t.Error("the VM does not run on after the request")
	}

	// Always at a trap: f never runs, the VM runs on.
	states, scans = []string{"debug"}, 0
	ran := false
	err = d.DoPaused(ctx, func(context.Context, *gdbrsp.Client) error { ran = true; return nil })
	if err == nil || !strings.Contains(err.Error(), "times in a row") || ran {
		t.Fatalf("a VM always at a trap: err %v, f ran %v", err, ran)
	}
	if running, _ := s.state(); !running || scans != maxTrapRetries+1 {
		t.Errorf("after giving up: running %v, scans %d", running, scans)
	}

	// Held at a trap (not running when asked): nothing is saved, nothing
	// resumed.
	states = []string{"paused"}
	if err := d.Do(ctx, func(context.Context, *gdbrsp.Client) error { return errKeepStopped }); !errors.Is(err, errKeepStopped) {
		t.Fatal(err)
	}
	states = []string{"debug"}
	_, before = s.state()
	ran = false
	err = d.DoPaused(ctx, func(context.Context, *gdbrsp.Client) error { ran = true; return nil })
	if err == nil || !strings.Contains(err.Error(), "held at a trap") || ran {
		t.Fatalf("a VM held at a trap: err %v, f ran %v", err, ran)
	}
	if running, reqs := s.state(); running || countC(reqs[len(before):]) != 0 {
		t.Errorf("a held VM was resumed: %q", reqs[len(before):])
	}

	// Stopped at a trap whose stop reply came before the request's
	// interrupt and waits behind the request (the run loop may take
	// either first): that trap is served, the VM resumed and stopped
	// again, and f runs; the VM runs on afterwards. Called without the
	// run loop (stopped below), which would otherwise take the reply.
	c.Close()
	<-d.done
	s, c = startMiniStub(t, func(string) bool { return false })
	d = newDebugger(c, t.Logf)
	d.failClosed = func(err error) { t.Errorf("failed closed: %v", err) }
	d.runState = func(context.Context) (string, error) { st := states[0]; states = states[1:]; return st, nil }
	trapped := 0
	d.trap = func(context.Context, *gdbrsp.Client, gdbrsp.StopReply) (bool, *resumeWrites, error) {
		trapped++
		return true, nil, nil
	}
	if err := c.Continue(ctx); err != nil {
		t.Fatal(err)
	}
	s.hitTrap()
	for deadline := time.Now().Add(5 * time.Second); c.Running(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not take the trap's stop reply")
		}
	}
	states = []string{"debug", "paused"}
	ran = false
	req := &dbgReq{ctx: ctx, f: func(context.Context, *gdbrsp.Client) error { ran = true; return nil }, done: make(chan error, 1), paused: true}
	err = d.serve(req)
	running, _ := s.state()
	go d.run() // the cleanup waits for it
	if err != nil || !ran || trapped != 1 {
		t.Fatalf("a trap stop waiting behind the request: err %v, f ran %v, trap served %d times (want nil, true, 1)", err, ran, trapped)
	}
	if !running {
		t.Error("the VM does not run on after the request")
	}

	// Plain Do does not look at the run state.
	states = []string{"debug"}
	if err := d.Do(ctx, func(context.Context, *gdbrsp.Client) error { return nil }); err != nil {
		t.Fatalf("Do: %v", err)
	}
}
