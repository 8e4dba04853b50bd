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
