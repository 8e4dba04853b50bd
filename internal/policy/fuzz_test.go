package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/event"
)

// FuzzParse checks that any input parses or fails with a positioned error,
// never panics, and that whatever compiles can evaluate events. Seeds are in
// testdata/fuzz/FuzzParse (the shipped policies and fragments).
func FuzzParse(f *testing.F) {
	f.Add([]byte("open default: allow\n  fileEq(\"/etc/passwd\")\n  or filePrefixEq(\"/etc/cron.d\")\n  deny(EPERM)\n"))
	f.Add([]byte("call in ext.ext2.open(mode) = neq {0} (mode), neq {-1} (mode);"))
	events := []event.Event{
		{Class: event.ClassSyscall, Op: "open", Path: "/etc/passwd", Args: []int64{0, 1, 2}},
		{Class: event.ClassFile, Op: "write", Path: "/x", Subject: event.Subject{UID: 1000, Exe: "/bin/a"}},
		{Class: event.ClassNet, Op: "connect", Dir: event.DirOut, Proto: "tcp", Addr: netip.MustParseAddr("10.0.0.1"), Port: 23},
		{Class: event.ClassAPI, Op: "vm.stop"},
		{Class: event.ClassCall, Op: "ext.ext2.open", Dir: event.DirIn, Args: []int64{0, 0}, Subject: event.Subject{Labels: []string{"FS"}}},
		{Class: event.ClassExec, Path: "/tmp/x"},
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		s, err := Parse("fuzz", src)
		if err != nil {
			if strings.Contains(err.Error(), "internal") {
				t.Fatalf("parser bug: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz:") {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		p, err := Compile(s)
		if err != nil {
			if strings.Contains(err.Error(), "internal") {
				t.Fatalf("compiler bug: %v", err)
			}
			return
		}
		for i := range events {
			r := p.Evaluate(&events[i], nil)
			if r.Verdict < VerdictAllow || r.Verdict > VerdictKill {
				t.Fatalf("bad verdict %d", r.Verdict)
			}
			if r.Next != nil {
				p.Evaluate(&events[i], r.Next)
			}
		}
	})
}
