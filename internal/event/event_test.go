package event

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValidate(t *testing.T) {
	ok := Event{Class: ClassNet, Op: "connect", Dir: DirOut, Proto: "tcp", Addr: netip.MustParseAddr("192.0.2.1"), Port: 23}
	cases := []struct {
		name string
		mod  func(*Event)
		want string // "" = valid
	}{
		{"valid", func(*Event) {}, ""},
		{"no class", func(e *Event) { e.Class = ClassInvalid }, "class 0"},
		{"class out of range", func(e *Event) { e.Class = 200 }, "class 200"},
		{"bad dir", func(e *Event) { e.Dir = 9 }, "direction 9"},
		{"long path", func(e *Event) { e.Path = strings.Repeat("a", MaxPath+1) }, "path is 4097 bytes"},
		{"long comm", func(e *Event) { e.Subject.Comm = strings.Repeat("a", MaxName+1) }, "comm is"},
		{"too many args", func(e *Event) { e.Args = make([]int64, MaxArgs+1) }, "9 args"},
		{"too many labels", func(e *Event) { e.Subject.Labels = make([]string, MaxLabels+1) }, "17 subject and 0 object labels"},
		{"long label", func(e *Event) { e.Subject.Labels = []string{strings.Repeat("l", MaxName+1)} }, "label is"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := ok
			c.mod(&e)
			err := e.Validate()
			got := ""
			if err != nil {
				got = err.Error()
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("%v is not ErrInvalid", err)
				}
			}
			if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Errorf("Validate() = %q, want containing %q", got, c.want)
			}
		})
	}
}

func TestJSONRoundTrip(t *testing.T) {
	in := Event{Class: ClassCall, Op: "ext.ext2.open", Dir: DirIn, Args: []int64{0, -1},
		Subject: Subject{PID: 5, PPID: 1, Comm: "fs", Exe: "/bin/fs", UID: 1, GID: 2, Labels: []string{"FS"}},
		Addr:    netip.MustParseAddr("2001:db8::1"), Port: 80}
	b, err := json.Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	var out Event
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, out, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("round trip (-want +got):\n%s\njson: %s", diff, b)
	}
	if _, err := json.Marshal(&Event{}); err == nil {
		t.Errorf("marshalling the invalid class succeeded")
	}
}

// FuzzEventJSON checks that decoding hostile JSON and validating it never
// panics, and that a valid event survives a round trip.
func FuzzEventJSON(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		if json.Unmarshal(b, &e) != nil || e.Validate() != nil {
			return
		}
		_ = e.String()
		out, err := json.Marshal(&e)
		if err != nil {
			t.Fatalf("valid event does not marshal: %v", err)
		}
		var e2 Event
		if err := json.Unmarshal(out, &e2); err != nil || e2.Validate() != nil {
			t.Fatalf("round trip: %v / %v", err, e2.Validate())
		}
	})
}
