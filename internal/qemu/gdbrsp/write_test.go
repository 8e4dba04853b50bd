package gdbrsp

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestWriteRegister(t *testing.T) {
	tests := []struct {
		name    string
		reg     string
		v       uint64
		reply   string
		wantReq string
		wantErr error
	}{
		{"rax", "rax", 0xfffffffffffffff3, "OK", "P0=f3ffffffffffffff", nil},
		{"rip", "rip", 0xffffffff81000000, "OK", "P10=00000081ffffffff", nil},
		{"rsp", "rsp", 0x1234, "OK", "P7=3412000000000000", nil},
		{"eflags is 32 bits", "eflags", 0x1_0000_0246, "OK", "P11=46020000", nil},
		{"stub error", "rip", 0, "E16", "P10=0000000000000000", &TargetError{}},
		{"unsupported", "rip", 0, "", "P10=0000000000000000", ErrUnsupported},
		{"unknown", "dr7", 0, "", "", ErrUnknownRegister},
		{"too wide", "xmm0", 0, "", "", ErrRegisterTooWide},
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
			err := c.WriteRegister(testContext(t), tt.reg, tt.v)
			switch want := tt.wantErr.(type) {
			case nil:
				if err != nil {
					t.Fatalf("WriteRegister: %v", err)
				}
			case *TargetError:
				if !errors.As(err, &want) || want.Code != 0x16 {
					t.Fatalf("WriteRegister error = %v, want E16", err)
				}
			default:
				if !errors.Is(err, want) {
					t.Fatalf("WriteRegister error = %v, want %v", err, want)
				}
			}
			if tt.wantReq == "" {
				if len(got) != 0 {
					t.Fatalf("sent %q, want nothing", got)
				}
				return
			}
			if len(got) != 1 || got[0] != tt.wantReq {
				t.Fatalf("sent %q, want [%q]", got, tt.wantReq)
			}
		})
	}
}

func TestStopRepliesChannel(t *testing.T) {
	f := newFakeStub(t)
	c := f.start()
	f.sendPacket("T05thread:02;swbreak:;")
	select {
	case sr := <-c.StopReplies():
		if sr.Thread != 2 || sr.Signal != 5 || sr.Reason != "swbreak" {
			t.Fatalf("stop reply %+v", sr)
		}
	case <-testContext(t).Done():
		t.Fatal("no stop reply")
	}
}

func TestWriteRegisters(t *testing.T) {
	f := newFakeStub(t)
	var got []string
	f.handle = func(req string) (string, bool) {
		got = append(got, req)
		switch req {
		case "P6=0100000000000000":
			return "E16", true
		case "p10":
			return "f0ff000000000000", true
		}
		return "OK", true
	}
	c := f.start()
	ctx := testContext(t)
	// A deny's writes, in one burst; the stub answers each in order.
	deny := []RegValue{{"rax", 0xffffffffffffffff}, {"rbx", 2}, {"rip", 0xffffffff81000000}, {"rsp", 0x1234}}
	if err := c.WriteRegisters(ctx, deny); err != nil {
		t.Fatalf("WriteRegisters: %v", err)
	}
	want := []string{"P0=ffffffffffffffff", "P1=0200000000000000", "P10=00000081ffffffff", "P7=3412000000000000"}
	if len(got) != len(want) {
		t.Fatalf("sent %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("sent %q, want %q", got, want)
		}
	}
	// More than a burst holds goes in several; a refused write is an
	// error naming the register, and the connection stays in step.
	got = nil
	var many []RegValue
	for i := range maxBurst + 3 {
		many = append(many, RegValue{"rax", uint64(i)})
	}
	if err := c.WriteRegisters(ctx, many); err != nil || len(got) != maxBurst+3 {
		t.Fatalf("WriteRegisters of %d: %v, %d sent", len(many), err, len(got))
	}
	err := c.WriteRegisters(ctx, []RegValue{{"rbx", 1}, {"rbp", 1}, {"rsp", 1}})
	var te *TargetError
	if !errors.As(err, &te) || te.Code != 0x16 {
		t.Fatalf("a refused write: %v, want E16", err)
	}
	if v, err := c.ReadRegister(ctx, "rip"); err != nil || v != 0xfff0 {
		t.Fatalf("after a refused burst, rip: %#x, %v; want the answer to its own request", v, err)
	}
	if err := c.WriteRegisters(ctx, []RegValue{{"dr7", 0}}); !errors.Is(err, ErrUnknownRegister) {
		t.Fatalf("unknown register: %v", err)
	}
}

func TestContinueWithRegisters(t *testing.T) {
	for _, noAck := range []bool{false, true} {
		t.Run(fmt.Sprintf("noack=%v", noAck), func(t *testing.T) {
			f := newFakeStub(t)
			f.offerNoAck = noAck
			f.handle = func(req string) (string, bool) {
				switch req {
				case "P11=46020000":
					return "E16", true
				case "p10":
					return "0000000000000000", true
				}
				return "OK", true
			}
			c := f.start()
			ctx := testContext(t)
			// An allow's move past the watched load: eflags, rip, continue.
			at, err := c.ContinueWithRegisters(ctx, []RegValue{{"eflags", 0x282}, {"rip", 0xffffffff81000010}})
			if err != nil || at.IsZero() {
				t.Fatalf("ContinueWithRegisters: %v (at %v)", err, at)
			}
			if !c.Running() {
				t.Fatal("Running = false after ContinueWithRegisters")
			}
			// The answers came while the target ran: had the client
			// acknowledged them, a '+' would have stopped it before the
			// interrupt (written after them on the same stream).
			if err := c.Interrupt(ctx); err != nil {
				t.Fatal(err)
			}
			if sr, err := c.WaitStop(ctx); err != nil || sr.Signal != 2 {
				t.Fatalf("WaitStop = %+v, %v", sr, err)
			}
			f.mu.Lock()
			by := string(f.stoppedBy)
			f.mu.Unlock()
			if by != "\x03" {
				t.Fatalf("the target was stopped by %q, want only the interrupt", by)
			}
			// Checked once the stop is seen: the stub reads the writes and
			// the continue after ContinueWithRegisters has returned.
			if want := []string{"P11=82020000", "P10=10000081ffffffff", "c"}; !slices.Equal(f.requests()[len(f.requests())-3:], want) {
				t.Fatalf("sent %q, want %q last", f.requests(), want)
			}
			// Every later exchange is in step, acknowledged as before.
			if v, err := c.ReadRegister(ctx, "rip"); err != nil || v != 0 {
				t.Fatalf("ReadRegister after: %#x, %v", v, err)
			}

			// A refused write: the target was resumed anyway, and the
			// error says so (the caller must stop it).
			_, err = c.ContinueWithRegisters(ctx, []RegValue{{"eflags", 0x246}, {"rip", 1}})
			var te *TargetError
			if !errors.Is(err, ErrResumed) || !errors.As(err, &te) || te.Code != 0x16 {
				t.Fatalf("a refused write: %v, want ErrResumed and E16", err)
			}
			if _, err := c.Halt(ctx); err != nil {
				t.Fatalf("Halt after a refused write: %v", err)
			}
			if v, err := c.ReadRegister(ctx, "rip"); err != nil || v != 0 {
				t.Fatalf("ReadRegister after a refused write: %#x, %v", v, err)
			}

			// Errors before anything is written leave the target stopped.
			n := len(f.requests())
			if _, err := c.ContinueWithRegisters(ctx, []RegValue{{"dr7", 0}}); !errors.Is(err, ErrUnknownRegister) || errors.Is(err, ErrResumed) {
				t.Fatalf("unknown register: %v", err)
			}
			if _, err := c.ContinueWithRegisters(ctx, make([]RegValue, maxBurst+1)); err == nil || errors.Is(err, ErrResumed) {
				t.Fatalf("too many writes: %v", err)
			}
			if len(f.requests()) != n || c.Running() {
				t.Fatalf("a refused call sent %q or resumed the target", f.requests()[n:])
			}
			if err := c.Continue(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.ContinueWithRegisters(ctx, nil); !errors.Is(err, ErrRunning) || errors.Is(err, ErrResumed) {
				t.Fatalf("while running: %v", err)
			}
		})
	}
}

func TestContinueWithRegistersConnectionLoss(t *testing.T) {
	f := newFakeStub(t)
	f.handle = func(req string) (string, bool) {
		if strings.HasPrefix(req, "P") {
			f.conn.Close() // the stub goes away before it answers
			return "", false
		}
		return "OK", true
	}
	c := f.start()
	_, err := c.ContinueWithRegisters(testContext(t), []RegValue{{"rip", 1}})
	if !errors.Is(err, ErrResumed) || !errors.Is(err, ErrClosed) {
		t.Fatalf("connection lost mid-burst: %v, want ErrResumed and ErrClosed", err)
	}
}
