package cli

import (
	"strings"
	"testing"
)

// policy explain's EVENT: every bad input gets an error that names what is
// wrong and shows an event that works; the example itself decodes.
func TestDecodeEventArg(t *testing.T) {
	ev, err := decodeEventArg([]byte(strings.Trim(exampleEvent, "'")))
	if err != nil || ev.Path != "/etc/shadow" || ev.Subject.UID != 1000 || ev.Op != "open" {
		t.Fatalf("the example event: %+v, %v", ev, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"not json", "not JSON"},
		{"  \n", "empty"},
		{`{"class":"file","op":"open","pth":"/x"}`, `unknown field "pth"`},
		{`{"class":"file","op":"open","args":"x"}`, `field "args"`},
		{`{"class":"file"`, "ends early"},
		{`{"class":"file","op":"open"} {}`, "more than one JSON value"},
		{`{"class":"nosuch","op":"open"}`, "class"},
	} {
		_, err := decodeEventArg([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"class":"file"`) {
			t.Errorf("%q: %v; want an error naming %q and showing an example event", tc.in, err, tc.want)
		}
	}
}
