package gdbrsp

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseStopReply(t *testing.T) {
	tests := []struct {
		in   string
		want StopReply
	}{
		{"S05", StopReply{Kind: 'S', Signal: 5}},
		{"T02thread:01;", StopReply{Kind: 'T', Signal: 2, Thread: 1, Pairs: map[string]string{"thread": "01"}}},
		{"T05thread:p01.03;", StopReply{Kind: 'T', Signal: 5, Thread: 3, Pairs: map[string]string{"thread": "p01.03"}}},
		{"T05thread:p01;", StopReply{Kind: 'T', Signal: 5, Thread: -1, Pairs: map[string]string{"thread": "p01"}}},
		{"T05thread:02;watch:ffff8000001000;", StopReply{Kind: 'T', Signal: 5, Thread: 2, Reason: "watch", Addr: 0xffff8000001000,
			Pairs: map[string]string{"thread": "02", "watch": "ffff8000001000"}}},
		{"T05swbreak:;thread:1;core:0;10:f0ff000000000000", StopReply{Kind: 'T', Signal: 5, Thread: 1, Reason: "swbreak",
			Pairs: map[string]string{"swbreak": "", "thread": "1", "core": "0", "10": "f0ff000000000000"}}},
		{"T05", StopReply{Kind: 'T', Signal: 5, Pairs: map[string]string{}}},
		{"W00", StopReply{Kind: 'W', Status: 0}},
		{"W01;process:1", StopReply{Kind: 'W', Status: 1}},
		{"X09", StopReply{Kind: 'X', Signal: 9}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseStopReply([]byte(tt.in))
			if err != nil {
				t.Fatalf("parseStopReply(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseStopReply(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseStopReplyMalformed(t *testing.T) {
	for _, in := range []string{
		"", "T", "T0", "Tzz", "OK", "E01", "S05x", "W00x", "T05thread", "T05:1;", "T05thread:zz;",
		"T05thread:p1.zz;", "T05watch:nothex;", "T05thread:100000000;",
	} {
		t.Run(in, func(t *testing.T) {
			if sr, err := parseStopReply([]byte(in)); !errors.Is(err, ErrProtocol) {
				t.Errorf("parseStopReply(%q) = %+v, %v; want ErrProtocol", in, sr, err)
			}
		})
	}
}

func TestParseStopReplyBounded(t *testing.T) {
	in := []byte("T05")
	for range maxStopPairs + 1 {
		in = append(in, "a:b;"...)
	}
	if _, err := parseStopReply(in); !errors.Is(err, ErrProtocol) {
		t.Errorf("too many pairs: err = %v, want ErrProtocol", err)
	}
}

func FuzzParseStopReply(f *testing.F) {
	for _, s := range []string{
		"S05", "T02thread:01;", "T05thread:p01.03;", "T05swbreak:;thread:1;core:0;10:f0ff000000000000",
		"T05thread:02;watch:ffff8000001000;", "W00", "W01;process:1", "X09",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		sr, err := parseStopReply(in)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if !isStopReply(in) {
			t.Fatalf("accepted %q, which isStopReply rejects", in)
		}
		if len(sr.Pairs) > maxStopPairs {
			t.Fatalf("%d pairs", len(sr.Pairs))
		}
	})
}
