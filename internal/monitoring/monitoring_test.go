package monitoring

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// TestWireFormat pins the JSON lines consumers read (gatevisor events,
// events.jsonl, the tests and scripts that parse them): the kind is
// "type", the stream's number "seq", a kernel-gate decision's fields sit
// at the top level, the other payloads under their own key, and an
// aggregate of repeated decisions adds "repeat".
func TestWireFormat(t *testing.T) {
	at := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	ev := &event.Event{Class: event.ClassSyscall, Op: "open", Path: "/etc/shadow", Args: []int64{0, 0, 0}, Time: at,
		Subject: event.Subject{PID: 42, Comm: "cat", Exe: "/bin/busybox", UID: 1000}}
	startEv := &event.Event{Class: event.ClassSyscall, Op: "open", Path: "/etc/shadow", Time: at,
		Subject: event.Subject{PID: 42, Start: 99, Comm: "cat", Exe: "/bin/busybox", UID: 1000}}
	aggregate := func(p Point, at time.Time, path string) Point {
		a := Aggregate(p, false)
		next := p
		d := *p.Decision
		d.Path = path
		next.Decision, next.Time = &d, at
		a.Repeat.Add(&next)
		a.Seq = 12
		return a
	}
	for _, tc := range []struct {
		name string
		p    Point
		want map[string]any
	}{
		{"kernel-gate decision", FromDecision("cam", ev, "deny", 13, "shadow", "deny: ...", errors.New("path unreadable")), map[string]any{
			"time": "2026-12-06T05:00:00Z", "vm": "cam", "type": "syscall", "class": "syscall", "pid": 42.0, "comm": "cat",
			"exe": "/bin/busybox", "uid": 1000.0, "syscall": "open", "op": "open", "args": []any{0.0, 0.0, 0.0},
			"path": "/etc/shadow", "verdict": "deny", "errno": 13.0, "rule": "shadow", "reason": "deny: ...", "error": "path unreadable"}},
		{"module decision", FromDecision("cam", &event.Event{Class: event.ClassModule, Op: "load", Module: "evil", Hash: "ab", Time: at}, "deny", 13, "m", "", nil), map[string]any{
			"time": "2026-12-06T05:00:00Z", "vm": "cam", "type": "module", "class": "module", "pid": 0.0, "comm": "", "exe": "", "uid": 0.0,
			"op": "load", "module_name": "evil", "hash": "ab", "verdict": "deny", "errno": 13.0, "rule": "m"}},
		{"IDS observation", FromIDS(ids.Event{Time: at, VM: "cam", Type: ids.EventModuleLoad, Module: &linux.Module{Name: "evil"}}), nil},
		{"network decision", FromNet("cam", gatenet.Record{Time: at, Verdict: "deny", Remote: "10.0.2.3:80"}), nil},
		{"notice", Point{Time: at, VM: "cam", Kind: AuditNotice, Detail: "near the limit"}, map[string]any{
			"time": "2026-12-06T05:00:00Z", "vm": "cam", "type": "audit", "detail": "near the limit"}},
		{"numbered notice", Point{Time: at, VM: "cam", Kind: EventsNotice, Seq: 7, Detail: "write failed"}, map[string]any{
			"time": "2026-12-06T05:00:00Z", "vm": "cam", "type": "events", "seq": 7.0, "detail": "write failed"}},
		{"aggregate of kernel-gate decisions", aggregate(FromDecision("cam", startEv, "deny", 13, "shadow", "", nil), at.Add(time.Second/2), "/etc/gshadow"), map[string]any{
			"time": "2026-12-06T05:00:00Z", "vm": "cam", "type": "syscall", "seq": 12.0, "class": "syscall", "pid": 42.0, "comm": "cat",
			"exe": "/bin/busybox", "uid": 1000.0, "start": 99.0, "syscall": "open", "op": "open", "path": "/etc/shadow",
			"verdict": "deny", "errno": 13.0, "rule": "shadow",
			"repeat": map[string]any{"count": 2.0, "first": "2026-12-06T05:00:00Z", "last": "2026-12-06T05:00:00.5Z", "last_path": "/etc/gshadow"}}},
		{"merged aggregate of network decisions", func() Point {
			p := Aggregate(FromNet("cam", gatenet.Record{Time: at, Verdict: "deny", Local: "10.0.2.15:4000", Remote: "10.0.2.3:80"}), true)
			p.Net = nil // the payload is pinned by its own package
			return p
		}(), map[string]any{
			"time": "2026-12-06T05:00:00Z", "vm": "cam", "type": "net-deny",
			"repeat": map[string]any{"count": 1.0, "first": "2026-12-06T05:00:00Z", "last": "2026-12-06T05:00:00Z",
				"last_local": "10.0.2.15:4000", "last_remote": "10.0.2.3:80", "merged": true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if tc.want != nil {
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("JSON (-want +got):\n%s", diff)
				}
				return
			}
			switch tc.p.Kind {
			case ModuleLoad:
				if m, ok := got["module"].(map[string]any); !ok || m["name"] != "evil" || got["type"] != "module-load" {
					t.Errorf("IDS point: %s", b)
				}
			default:
				if n, ok := got["net"].(map[string]any); !ok || got["type"] != "net-deny" || n["verdict"] != "deny" {
					t.Errorf("network point: %s", b)
				}
			}
		})
	}
}
