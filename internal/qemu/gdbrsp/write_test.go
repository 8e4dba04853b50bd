package gdbrsp

import (
	"errors"
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
