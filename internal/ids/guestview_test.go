package ids

import (
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

const sampleGuestView = `1
2
66
--net--
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5678 1 0000000000000000 100 0 0 10 0
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  511: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2 0000000000000000 0
`

func TestParseGuestView(t *testing.T) {
	v, err := parseGuestView([]byte(sampleGuestView))
	if err != nil {
		t.Fatal(err)
	}
	if len(v.pids) != 3 || !v.pids[66] || len(v.inodes) != 3 || !v.inodes[5678] || !v.inodes[999] {
		t.Fatalf("parsed %+v", v)
	}
	for _, bad := range []string{
		"1\n[0-9]*\n--net--\n",    // the glob matched nothing: no /proc
		"1\n2\n",                  // cut short
		"1\n--net--\n 0: a b c\n", // not a socket line
		"1\n--net--\n" + strings.Repeat("x", 5000) + "\n", // over a line's bound
	} {
		if _, err := parseGuestView([]byte(bad)); err == nil {
			t.Errorf("parseGuestView(%.40q) accepted", bad)
		}
	}
}

func FuzzParseGuestView(f *testing.F) {
	f.Add([]byte(sampleGuestView))
	f.Add([]byte("1\n--net--\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := parseGuestView(b)
		if err == nil && (len(v.pids) > maxGuestViewLines || len(v.inodes) > maxGuestViewLines) {
			t.Fatal("over the bound")
		}
	})
}

func TestGuestViewFindings(t *testing.T) {
	a, b, c := task(1, 0, 0, 0, "init", ""), task(66, 1, 0, 0, "hidden", ""), task(77, 1, 0, 0, "new", "")
	listen := linux.Socket{Family: "inet", Proto: "tcp", LocalAddr: "0.0.0.0", LocalPort: 4444, State: "LISTEN", Inode: 42, PID: 66, Comm: "hidden"}
	shown := linux.Socket{Family: "inet", Proto: "tcp", LocalAddr: "0.0.0.0", LocalPort: 80, State: "LISTEN", Inode: 1234, PID: 1, Comm: "init"}
	late := linux.Socket{Family: "inet", Proto: "tcp", LocalAddr: "0.0.0.0", LocalPort: 81, State: "LISTEN", Inode: 43, PID: 77, Comm: "new"}
	before := kernelView{tasks: []linux.Task{a, b}, sockets: []linux.Socket{listen, shown}}
	after := kernelView{tasks: []linux.Task{a, b, c}, sockets: []linux.Socket{listen, shown, late}}
	gv, err := parseGuestView([]byte(sampleGuestView))
	if err != nil {
		t.Fatal(err)
	}
	delete(gv.pids, 66)
	var got []string
	for _, f := range guestViewFindings(before, after, gv) {
		got = append(got, f.Check+" "+f.Name)
	}
	// 77 started between the reads: not judged; 66 and its socket are hidden.
	if strings.Join(got, ",") != "hidden-process hidden,hidden-socket hidden" {
		t.Fatalf("findings %v", got)
	}
}
