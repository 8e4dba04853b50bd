package monitoring

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

func TestCategoryAndRepeatKey(t *testing.T) {
	at := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	sub := event.Subject{PID: 42, Start: 7}
	open := FromDecision("cam", &event.Event{Class: event.ClassFile, Op: "open", Path: "/a", Subject: sub, Time: at}, "deny", 13, "r", "", nil)
	sys := FromDecision("cam", &event.Event{Class: event.ClassSyscall, Op: "openat", Path: "/a", Subject: sub, Time: at}, "deny", 13, "r", "", nil)
	flow := FromNet("cam", gatenet.Record{Time: at, Dir: event.DirOut, Proto: "udp", Remote: "10.0.2.3:53", Subject: sub, Verdict: "deny", Rule: "dns"})
	for _, tc := range []struct {
		name string
		p    Point
		cat  Category
		key  *RepeatKey
	}{
		{"file op", open, CategoryDecision, &RepeatKey{Kind: "file", PID: 42, Start: 7, Verdict: "deny", Rule: "r", Op: "open"}},
		{"syscall", sys, CategoryDecision, &RepeatKey{Kind: "syscall", PID: 42, Start: 7, Verdict: "deny", Rule: "r", Op: "openat"}},
		{"flow", flow, CategoryDecision, &RepeatKey{Kind: "net-deny", PID: 42, Start: 7, Verdict: "deny", Rule: "dns", Op: "udp", Dir: "out"}},
		{"IDS observation", FromIDS(ids.Event{Time: at, Type: ids.EventProcessStart, Process: &linux.Task{PID: 1}}), CategoryIDS, nil},
		{"scan error", Point{Time: at, Kind: ScanError, Error: "x"}, CategoryIDS, nil},
		{"notice", Notice("cam", AuditNotice, "x"), CategoryNotice, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := tc.p.Category(); c != tc.cat {
				t.Errorf("category %v, want %v", c, tc.cat)
			}
			k, ok := tc.p.RepeatKey()
			if ok != (tc.key != nil) {
				t.Fatalf("RepeatKey ok = %v", ok)
			}
			if tc.key != nil {
				if diff := cmp.Diff(*tc.key, k); diff != "" {
					t.Errorf("key (-want +got):\n%s", diff)
				}
				want := RepeatKey{Kind: tc.key.Kind, Verdict: tc.key.Verdict, Rule: tc.key.Rule, Merged: true}
				if diff := cmp.Diff(want, k.MergedKey()); diff != "" {
					t.Errorf("merged key (-want +got):\n%s", diff)
				}
			}
		})
	}
	// Another path, the same key; another process start, another key.
	other := open
	d := *open.Decision
	d.Path = "/b"
	other.Decision = &d
	k1, _ := open.RepeatKey()
	k2, _ := other.RepeatKey()
	d2 := d
	d2.Start = 8
	other.Decision = &d2
	k3, _ := other.RepeatKey()
	if k1 != k2 || k1 == k3 {
		t.Errorf("keys: %+v %+v %+v", k1, k2, k3)
	}
}
