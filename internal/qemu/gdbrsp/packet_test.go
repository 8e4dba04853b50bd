package gdbrsp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEncodePacket(t *testing.T) {
	tests := []struct{ payload, want string }{
		{"", "$#00"},
		{"g", "$g#67"},
		{"qSupported", "$qSupported#37"},
		{"m1000,4", "$m1000,4#8e"},
	}
	for _, tt := range tests {
		t.Run(tt.payload, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, string(encodePacket([]byte(tt.payload)))); diff != "" {
				t.Errorf("encodePacket (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExpandRLE(t *testing.T) {
	tests := []struct {
		name, raw, want string
		wantErr         bool
	}{
		{name: "plain", raw: "0123", want: "0123"},
		{name: "spec example", raw: "0* ", want: "0000"}, // ' ' = 32 -> 3 more
		{name: "longest run", raw: "a*~", want: strings.Repeat("a", 98)},
		{name: "two runs", raw: "0*!1*\"", want: "00000" + "111111"},
		{name: "escaped byte kept for the caller", raw: "}\x03*!", want: "}\x03\x03\x03\x03\x03"},
		{name: "run at start", raw: "* ", wantErr: true},
		{name: "count missing", raw: "0*", wantErr: true},
		{name: "count too small", raw: "0*\x1f", wantErr: true},
		{name: "count too large", raw: "0*\x7f", wantErr: true},
		{name: "escape at end", raw: "ab}", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := expandRLE([]byte(tt.raw))
			if tt.wantErr {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("expandRLE(%q) = %q, %v; want ErrProtocol", tt.raw, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("expandRLE(%q): %v", tt.raw, err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("expandRLE(%q) (-want +got):\n%s", tt.raw, diff)
			}
		})
	}
}

func TestExpandRLEBounded(t *testing.T) {
	raw := bytes.Repeat([]byte("a*~"), MaxPacketSize/98+2)
	if _, err := expandRLE(raw); !errors.Is(err, ErrProtocol) {
		t.Errorf("expansion past MaxPacketSize: err = %v, want ErrProtocol", err)
	}
}

func TestEscapeBinary(t *testing.T) {
	data := []byte{0, '#', '$', '}', '*', 0x7d ^ 0x20, 0xff, 'a'}
	esc := escapeBinary(nil, data)
	if diff := cmp.Diff([]byte{0, '}', '#' ^ 0x20, '}', '$' ^ 0x20, '}', '}' ^ 0x20, '}', '*' ^ 0x20, 0x5d, 0xff, 'a'}, esc); diff != "" {
		t.Errorf("escapeBinary (-want +got):\n%s", diff)
	}
	for _, b := range esc {
		if b == '#' || b == '$' || b == '*' {
			t.Errorf("escaped data holds %q", b)
		}
	}
	back, err := unescapeBinary(esc)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(data, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// frameString renders frames compactly for diffs.
func frameString(f frame) string {
	switch f.kind {
	case frameAck:
		return "+"
	case frameNack:
		return "-"
	case frameBadSum:
		return "bad"
	case frameNotify:
		return "%" + string(f.payload)
	case framePacket:
		return "$" + string(f.payload)
	}
	return "?"
}

func readAllFrames(stream []byte) ([]string, error) {
	fr := newFrameReader(bytes.NewReader(stream))
	var out []string
	for range len(stream) + 1 { // each frame consumes at least one byte
		f, err := fr.next()
		if err != nil {
			return out, err
		}
		out = append(out, frameString(f))
	}
	return out, errors.New("frame reader did not make progress")
}

func TestFrameReader(t *testing.T) {
	tests := []struct {
		name    string
		stream  string
		want    []string
		wantErr error
	}{
		{"ack and packet", "+$OK#9a", []string{"+", "$OK"}, io.EOF},
		{"noise between packets is skipped", "xx\x03+$OK#9a\r\n-", []string{"+", "$OK", "-"}, io.EOF},
		{"uppercase checksum", "$OK#9A", []string{"$OK"}, io.EOF},
		{"bad checksum", "$OK#00$OK#9a", []string{"bad", "$OK"}, io.EOF},
		{"non-hex checksum", "$OK#zz", []string{"bad"}, io.EOF},
		{"run-length encoded", "$0* #" + sum("0* "), []string{"$0000"}, io.EOF},
		{"bad run length is a bad packet", "$*0#" + sum("*0"), []string{"bad"}, io.EOF},
		{"notification", "%Stop:T05#" + sum("Stop:T05"), []string{"%Stop:T05"}, io.EOF},
		{"restart inside packet", "$OK$E01#" + sum("E01"), []string{"$E01"}, io.EOF},
		{"truncated packet", "$OK", nil, io.ErrUnexpectedEOF},
		{"truncated checksum", "$OK#9", nil, io.ErrUnexpectedEOF},
		{"empty", "", nil, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAllFrames([]byte(tt.stream))
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("frames (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFrameReaderOversized(t *testing.T) {
	stream := append([]byte{'$'}, bytes.Repeat([]byte{'a'}, MaxPacketSize+1)...)
	_, err := readAllFrames(stream)
	if !errors.Is(err, ErrProtocol) {
		t.Errorf("oversized packet: err = %v, want ErrProtocol", err)
	}
}

func sum(payload string) string {
	const hex = "0123456789abcdef"
	c := checksum([]byte(payload))
	return string([]byte{hex[c>>4], hex[c&15]})
}

// FuzzFrameReader feeds hostile byte streams to the frame reader: it must
// never panic, always make progress, and never return a payload above
// MaxPacketSize.
func FuzzFrameReader(f *testing.F) {
	for _, s := range []string{
		"+$OK#9a",
		"$T05thread:01;#07",
		"$0* #" + sum("0* "),
		"$a*~a*~a*~#" + sum("a*~a*~a*~"),
		"%Stop:T05#" + sum("Stop:T05"),
		"$}\x03*!#" + sum("}\x03*!"),
		"-$E0#1",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		fr := newFrameReader(bytes.NewReader(stream))
		for range len(stream) + 1 {
			fm, err := fr.next()
			if err != nil {
				return
			}
			if len(fm.payload) > MaxPacketSize {
				t.Fatalf("payload of %d bytes", len(fm.payload))
			}
		}
		t.Fatal("frame reader did not make progress")
	})
}
