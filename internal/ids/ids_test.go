package ids

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// memBytes is guest-physical memory in a byte slice.
type memBytes []byte

func (m memBytes) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 || gpa >= int64(len(m)) {
		return 0, vmi.ErrNotMapped
	}
	n := copy(p, m[gpa:])
	if n < len(p) {
		return n, vmi.ErrNotMapped
	}
	return n, nil
}
func (m memBytes) Ranges() []vmi.Range { return []vmi.Range{{Start: 0, End: uint64(len(m))}} }

func TestFindBanner(t *testing.T) {
	mem := make(memBytes, 9<<20)
	// A decoy without the compiler part, then the real banner across the
	// 4 MiB scan-chunk boundary.
	copy(mem[1000:], "Linux version %s (%s)\x00")
	copy(mem[2000:], "Linux version junk")
	banner := "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP\n"
	at := 4<<20 - 20
	copy(mem[at:], banner)
	got, pa, err := FindBanner(mem)
	if err != nil || got != banner || pa != uint64(at) {
		t.Fatalf("FindBanner = %q at %#x, %v; want %q at %#x", got, pa, err, banner, at)
	}
	if _, _, err := FindBanner(make(memBytes, 1<<20)); err == nil {
		t.Fatal("FindBanner found a banner in zeroed memory")
	}
}

func task(pid, ppid int, uid, euid uint32, comm, exe string) linux.Task {
	return linux.Task{PID: pid, TGID: pid, PPID: ppid, UID: uid, EUID: euid, Comm: comm, Exe: exe, StartTime: uint64(pid)}
}

func TestCommExe(t *testing.T) {
	in := &Inspector{Opts: DefaultOptions()}
	tasks := []linux.Task{
		task(1, 0, 0, 0, "init", "/bin/busybox"),                               // multi-call: fine
		task(2, 1, 0, 0, "sshd", "/usr/sbin/sshd"),                             // matches
		task(3, 1, 0, 0, "averyveryverylon", "/usr/bin/averyveryverylongname"), // truncated to 15
		task(4, 1, 1000, 1000, "kworker/0:1", "/tmp/.x/miner"),                 // disguised
		{PID: 5, Comm: "kthreadd", KernelThread: true},
	}
	tasks[2].Comm = "averyveryverylo"
	got := in.checkCommExe(tasks)
	if len(got) != 1 || got[0].PID != 4 || !strings.Contains(got[0].Summary, "/tmp/.x/miner") {
		t.Fatalf("checkCommExe = %+v; want one finding for pid 4", got)
	}
}

func TestUnexpectedRoot(t *testing.T) {
	in := &Inspector{Opts: DefaultOptions()}
	tasks := []linux.Task{
		task(1, 0, 0, 0, "init", "/bin/busybox"),
		task(10, 1, 1000, 1000, "sh", "/bin/busybox"),
		task(11, 10, 1000, 0, "su", "/bin/su"),           // setuid, allowed
		task(12, 10, 1000, 0, "exploit", "/tmp/exploit"), // euid 0 for uid 1000
		task(13, 10, 0, 0, "sh", "/bin/busybox"),         // root child of a user shell
		task(14, 1, 0, 0, "httpd", "/bin/busybox"),       // root child of root: fine
	}
	got := in.checkUnexpectedRoot(tasks)
	var pids []int
	for _, f := range got {
		pids = append(pids, f.PID)
	}
	if diff := cmp.Diff([]int{12, 13}, pids); diff != "" {
		t.Fatalf("unexpected-root findings (-want +got):\n%s", diff)
	}
}

func TestDiff(t *testing.T) {
	now := time.Unix(100, 0)
	prev := &Snapshot{
		Processes: []linux.Task{task(1, 0, 0, 0, "init", ""), task(50, 1, 0, 0, "old", "")},
		Modules:   []linux.Module{{Name: "virtio_net", Base: 0x1000}},
		Report:    &Report{Findings: []Finding{{Check: CheckCommExe, PID: 50}}, Checks: []CheckStatus{{Name: "x", Ran: false, Error: "e"}}},
	}
	cur := &Snapshot{
		Processes: []linux.Task{task(1, 0, 0, 0, "init", ""), task(60, 1, 0, 0, "new", "")},
		Modules:   []linux.Module{{Name: "virtio_net", Base: 0x1000}, {Name: "rootkit", Base: 0x2000}},
		Listening: []linux.Socket{{Family: "inet", Proto: "tcp", LocalAddr: "0.0.0.0", LocalPort: 2323, PID: 60, State: "LISTEN"}},
		Report: &Report{Findings: []Finding{{Check: CheckCommExe, PID: 50}, {Check: CheckHiddenModule, Name: "rootkit"}},
			Checks: []CheckStatus{{Name: "x", Ran: false, Error: "e"}}},
	}
	var got []string
	for _, e := range Diff("vm", prev, cur, now) {
		s := e.Type
		switch {
		case e.Process != nil:
			s += " " + e.Process.Comm
		case e.Module != nil:
			s += " " + e.Module.Name
		case e.Socket != nil:
			s += " " + e.Socket.Proto
		case e.Finding != nil:
			s += " " + e.Finding.Check
		}
		got = append(got, s)
	}
	want := []string{"process-start new", "process-exit old", "module-load rootkit", "listen-open tcp", "finding hidden-module"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Diff (-want +got):\n%s", diff)
	}
	// The first scan reports only findings and checks that did not run.
	first := Diff("vm", nil, cur, now)
	if len(first) != 3 || first[0].Type != EventFinding || first[2].Type != EventError {
		t.Fatalf("first Diff = %+v", first)
	}
}

func TestWriteTree(t *testing.T) {
	tasks := []linux.Task{
		task(1, 0, 0, 0, "init", ""), task(2, 0, 0, 0, "kthreadd", ""),
		task(10, 1, 0, 0, "sh", ""), task(11, 10, 0, 0, "ps", ""), task(12, 1, 0, 0, "httpd", ""),
		// A corrupt parent cycle must not loop or vanish.
		task(20, 21, 0, 0, "a", ""), task(21, 20, 0, 0, "b", ""),
	}
	var buf bytes.Buffer
	if err := WriteTree(&buf, tasks); err != nil {
		t.Fatal(err)
	}
	want := "init(1)\n├─ sh(10)\n│  └─ ps(11)\n└─ httpd(12)\nkthreadd(2)\na(20)\n└─ b(21)\n"
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Fatalf("WriteTree (-want +got):\n%s", diff)
	}
}

func TestReportClean(t *testing.T) {
	r := &Report{Checks: []CheckStatus{{Name: "a", Ran: true}}}
	if !r.Clean() {
		t.Fatal("empty report not clean")
	}
	r.Checks = append(r.Checks, CheckStatus{Name: "b", Ran: false})
	if r.Clean() || r.Complete() {
		t.Fatal("a check that did not run leaves the report clean")
	}
}

func FuzzFindBanner(f *testing.F) {
	f.Add([]byte("Linux version 6.1 (gcc) #1\n"))
	f.Add([]byte("xxLinux version Linux version (\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		banner, pa, err := FindBanner(memBytes(b))
		if err == nil && (!strings.HasPrefix(banner, "Linux version ") || pa >= uint64(len(b)) || len(banner) > maxBannerLen) {
			t.Fatalf("bad banner %q at %d", banner, pa)
		}
	})
}

// TestDiffCannotBeBlinded: a view that cannot be read, whole or in part,
// reports its error once and no exit for what it could not see; findings
// clear only when their check ran.
func TestDiffCannotBeBlinded(t *testing.T) {
	now := time.Unix(100, 0)
	a, b := task(1, 0, 0, 0, "init", ""), task(66, 1, 0, 0, "victim", "")
	a.Addr, b.Addr = 0xffff0001, 0xffff0002
	hidden := Finding{Check: CheckHiddenModule, Name: "rk", Addr: 0xc0}
	prev := &Snapshot{Processes: []linux.Task{a, b}, Modules: []linux.Module{{Name: "m", Addr: 0xa0}},
		Report: &Report{Findings: []Finding{hidden}, Checks: []CheckStatus{{Name: CheckHiddenModule, Ran: true, Findings: 1}}}}
	corrupt := Finding{Check: CheckCorrupt, Addr: b.Addr, Name: "tasks"}
	partial := func() *Snapshot {
		return &Snapshot{Processes: []linux.Task{a}, Errors: map[string]string{"processes": "1 entry skipped"},
			Failed: map[string]bool{"modules": true}, Bad: map[uint64]bool{b.Addr: true},
			Report: &Report{Findings: []Finding{hidden, corrupt}, Checks: []CheckStatus{{Name: CheckHiddenModule, Ran: true}, {Name: CheckCorrupt, Ran: true}}}}
	}
	types := func(evs []Event) []string {
		var out []string
		for _, e := range evs {
			s := e.Type
			if e.Finding != nil {
				s += " " + e.Finding.Check
			}
			if e.Error != "" {
				s += " " + e.Error
			}
			out = append(out, s)
		}
		return out
	}
	cur := partial()
	got := types(Diff("vm", prev, cur, now))
	want := []string{"finding corrupt-kernel-object", "error processes: 1 entry skipped"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("partial scan (-want +got):\n%s", diff)
	}
	if len(cur.Processes) != 2 || len(cur.Modules) != 1 {
		t.Fatalf("not carried over: %d processes, %d modules", len(cur.Processes), len(cur.Modules))
	}
	// The same state again: nothing new to say.
	next := partial()
	if got := types(Diff("vm", cur, next, now)); len(got) != 0 {
		t.Fatalf("repeated partial scan: %v", got)
	}
	// The hidden-module check did not run: its finding is not cleared;
	// the corrupt object is gone: its finding is.
	clean := &Snapshot{Processes: []linux.Task{a}, Modules: next.Modules,
		Report: &Report{Checks: []CheckStatus{{Name: CheckHiddenModule, Ran: false, Error: "x"}, {Name: CheckCorrupt, Ran: true}}}}
	got = types(Diff("vm", next, clean, now))
	want = []string{"process-exit", "finding-cleared corrupt-kernel-object", "error check hidden-module did not run: x"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("after (-want +got):\n%s", diff)
	}
}

func TestCredEscalations(t *testing.T) {
	var h credHistory
	user := task(66, 1, 1000, 1000, "app", "/usr/bin/app")
	look := func(uid, euid, suid uint32, setuid bool) []Finding {
		c := linux.Creds{UID: uid, EUID: euid, SUID: suid, FSUID: euid}
		return h.escalations([]linux.Task{user}, map[string]linux.Creds{taskKey(user): c}, func(linux.Task) bool { return setuid })
	}
	if f := look(1000, 1000, 1000, false); len(f) != 0 {
		t.Fatalf("first look: %v", f)
	}
	if f := look(0, 0, 0, false); len(f) != 1 || !strings.Contains(f[0].Summary, "became root") {
		t.Fatalf("escalation not reported: %v", f)
	}
	if f := look(0, 0, 0, false); len(f) != 1 {
		t.Fatalf("the escalation must stay reported while the process lives: %v", f)
	}
	if f := look(1000, 1000, 1000, false); len(f) != 0 {
		t.Fatalf("dropped root, still reported: %v", f)
	}
	// A saved uid 0 can give root back; a setuid-root program explains it.
	look(1000, 1000, 0, false)
	if f := look(1000, 0, 0, false); len(f) != 0 {
		t.Fatalf("seteuid(0) with a saved uid 0 reported: %v", f)
	}
	look(1000, 1000, 1000, true)
	if f := look(1000, 0, 0, true); len(f) != 0 {
		t.Fatalf("a setuid-root program reported: %v", f)
	}
	// A process that is gone is forgotten.
	h.escalations(nil, nil, nil)
	if len(h.seen) != 0 {
		t.Fatalf("history kept %d exited processes", len(h.seen))
	}
}

func TestHolesFor(t *testing.T) {
	for _, tc := range []struct {
		release string
		ok      bool
	}{{"6.1.0-57-amd64", true}, {"6.3.13", true}, {"6.4.0", false}, {"5.10.0-30-amd64", false}, {"6.12.5+bpo-amd64", false}, {"junk", false}} {
		h, ok := holesFor(tc.release)
		if ok != tc.ok || ok && h&0x20000000 == 0 {
			t.Errorf("holesFor(%q) = %#x, %v", tc.release, h, ok)
		}
	}
}
