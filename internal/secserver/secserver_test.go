package secserver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
)

func compile(t testing.TB, src string) *policy.Policy {
	t.Helper()
	s, err := policy.Parse("t.policy", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const basePolicy = `
open default: allow
  passwd: fileEq("/etc/passwd") deny(EPERM)
  watch: fileEq("/etc/hosts") alert
  logged: fileEq("/etc/motd") allow audit
`

func openEv(path string) *event.Event {
	return &event.Event{Class: event.ClassSyscall, Op: "open", Path: path, Subject: event.Subject{PID: 10, Exe: "/bin/cat", Comm: "cat"}}
}

// memSink records appended records and can be made to fail.
type memSink struct {
	mu   sync.Mutex
	recs []audit.Record
	fail error
}

func (m *memSink) Append(r *audit.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.recs = append(m.recs, *r)
	return nil
}

func (m *memSink) rules() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, r := range m.recs {
		s := r.Verdict + " " + r.Rule
		if r.Permissive {
			s += " permissive"
		}
		out = append(out, s)
	}
	return out
}

type short struct {
	Verdict    string
	Errno      int32
	Rule       string
	Cached     bool
	Permissive bool
}

func shorten(d Decision) short {
	return short{d.Verdict.String(), d.Errno, d.Rule, d.Cached, d.Permissive}
}

func TestDecideAndAudit(t *testing.T) {
	sink := &memSink{}
	s := New(compile(t, basePolicy), Config{Audit: sink})
	steps := []struct {
		ev   *event.Event
		want short
	}{
		{openEv("/etc/passwd"), short{"deny", 1, "passwd", false, false}},
		{openEv("/etc/passwd"), short{"deny", 1, "passwd", true, false}},
		{openEv("/etc/hosts"), short{"alert", 0, "watch", false, false}},
		{openEv("/etc/motd"), short{"allow", 0, "logged", false, false}},
		{openEv("/tmp/x"), short{"allow", 0, "open default", false, false}},
		{openEv("/tmp/x"), short{"allow", 0, "open default", true, false}},
		{&event.Event{Class: event.ClassNet}, short{"deny", 13, "default", false, false}},
		{&event.Event{Class: 99}, short{"deny", 13, RuleInvalidEvent, false, false}},
		{&event.Event{Class: event.ClassFile, Path: strings.Repeat("x", event.MaxPath+1)}, short{"deny", 13, RuleInvalidEvent, false, false}},
	}
	var got, want []short
	for _, st := range steps {
		got = append(got, shorten(s.Decide(st.ev)))
		want = append(want, st.want)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
	wantAudit := []string{"deny passwd", "deny passwd", "alert watch", "allow logged", "deny default", "deny invalid-event", "deny invalid-event"}
	if diff := cmp.Diff(wantAudit, sink.rules()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	st := s.Stats()
	if st.CacheHits != 2 || st.CacheMisses != 5 || st.Denies != 5 {
		t.Errorf("stats %+v", st)
	}
}

func TestPermissive(t *testing.T) {
	sink := &memSink{}
	s := New(compile(t, basePolicy), Config{Audit: sink, Permissive: true})
	got := []short{shorten(s.Decide(openEv("/etc/passwd"))), shorten(s.Decide(openEv("/tmp/x")))}
	want := []short{{"allow", 0, "passwd", false, true}, {"allow", 0, "open default", false, false}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"deny passwd permissive"}, sink.rules()); diff != "" {
		t.Errorf("audit (-want +got):\n%s", diff)
	}
	// Fail-closed decisions are not relaxed by permissive mode.
	if d := s.Decide(&event.Event{}); d.Verdict != Deny {
		t.Errorf("invalid event in permissive mode: %v", d.Verdict)
	}
	s.SetPermissive(false)
	if d := s.Decide(openEv("/etc/passwd")); d.Verdict != Deny || !d.Cached {
		t.Errorf("after permissive off: %+v", d)
	}
}

func TestAuditFailureDenies(t *testing.T) {
	sink := &memSink{fail: errors.New("disk full")}
	s := New(compile(t, basePolicy), Config{Audit: sink, Permissive: true})
	for _, path := range []string{"/etc/passwd", "/etc/hosts", "/etc/motd"} {
		d := s.Decide(openEv(path))
		if d.Verdict != Deny || d.Rule != RuleAuditFailure || !strings.Contains(d.Reason, "disk full") {
			t.Errorf("%s: %+v, want deny by %s", path, d, RuleAuditFailure)
		}
	}
	// An allow that needs no audit record still goes through.
	if d := s.Decide(openEv("/tmp/x")); d.Verdict != Allow {
		t.Errorf("unaudited allow: %+v", d)
	}
	if s.Stats().AuditErrors != 3 {
		t.Errorf("audit errors %d", s.Stats().AuditErrors)
	}
}

func TestFailClosed(t *testing.T) {
	s := New(nil, Config{})
	if d := s.Decide(openEv("/tmp/x")); d.Verdict != Deny || d.Rule != RuleNoPolicy {
		t.Errorf("no policy: %+v", d)
	}
	// A panic inside evaluation (here: a nil event) is a deny, not a crash.
	s.Reload(compile(t, basePolicy), "t")
	if d := s.Decide(nil); d.Verdict != Deny || d.Rule != RuleInternal {
		t.Errorf("nil event: %+v", d)
	}
	if s.Stats().InternalErrors != 1 {
		t.Errorf("internal errors %d", s.Stats().InternalErrors)
	}
}

func TestReload(t *testing.T) {
	s := New(compile(t, basePolicy), Config{})
	if d := s.Decide(openEv("/tmp/x")); d.Verdict != Allow || d.Seq != 1 {
		t.Fatalf("%+v", d)
	}
	s.Decide(openEv("/tmp/x")) // cached under seq 1
	seq, err := s.ReloadSource("new.policy", []byte("open default: deny\n"), nil)
	if err != nil || seq != 2 {
		t.Fatalf("reload: %d %v", seq, err)
	}
	d := s.Decide(openEv("/tmp/x"))
	if diff := cmp.Diff(short{"deny", 13, "open default", false, false}, shorten(d)); diff != "" || d.Seq != 2 {
		t.Errorf("no stale verdict after reload (-want +got):\n%s seq=%d", diff, d.Seq)
	}
	// A failed reload keeps policy 2 and says why.
	seq, err = s.ReloadSource("bad.policy", []byte("open default: allow\n  fileEq(\"/x\")\n"), nil)
	if err == nil || seq != 2 || !strings.Contains(err.Error(), "policy 2 stays in force") || !strings.Contains(err.Error(), "bad.policy:3:1") {
		t.Errorf("failed reload: seq %d err %v", seq, err)
	}
	if d := s.Decide(openEv("/tmp/x")); d.Verdict != Deny || d.Seq != 2 || !d.Cached {
		t.Errorf("after failed reload: %+v", d)
	}
	if st := s.Stats(); st.Reloads != 2 || st.FailedReloads != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestReloadRace reloads between two policies while many goroutines
// decide; run with -race. Every decision must match the policy whose
// sequence number it reports: odd allows, even denies.
func TestReloadRace(t *testing.T) {
	allow := compile(t, "open default: allow\n")
	deny := compile(t, "open default: deny\n")
	s := New(allow, Config{CacheSize: 64})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan string, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := s.Decide(openEv(fmt.Sprintf("/f%d", i%100)))
				if want := map[bool]Verdict{true: Allow, false: Deny}[d.Seq%2 == 1]; d.Verdict != want {
					select {
					case errs <- fmt.Sprintf("seq %d decided %v (cached %v)", d.Seq, d.Verdict, d.Cached):
					default:
					}
				}
			}
		}(g)
	}
	for i := 0; i < 200; i++ {
		if i%2 == 0 {
			s.Reload(deny, "deny")
		} else {
			s.Reload(allow, "allow")
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

const flowPolicy = `
net default: allow
file default: allow
flow creds for exeEq("/usr/bin/agent") {
  initial locked;
  locked -> unlocked on file open when fileEq("/etc/agent/creds");
  require unlocked for net connect;
}
`

// Flow decisions come from the cache only for the same flow state, and a
// transition happens only when the event is allowed.
func TestFlowNeverStale(t *testing.T) {
	s := New(compile(t, flowPolicy), Config{})
	subj := event.Subject{PID: 77, Start: 1, Exe: "/usr/bin/agent"}
	connect := &event.Event{Class: event.ClassNet, Op: "connect", Subject: subj}
	open := &event.Event{Class: event.ClassFile, Op: "open", Path: "/etc/agent/creds", Subject: subj}
	var got []short
	got = append(got, shorten(s.Decide(connect)), shorten(s.Decide(connect)), shorten(s.Decide(open)), shorten(s.Decide(connect)), shorten(s.Decide(connect)))
	want := []short{
		{"deny", 13, "flow creds", false, false},
		{"deny", 13, "flow creds", true, false},
		{"allow", 0, "file default", false, false},
		{"allow", 0, "net default", false, false},
		{"allow", 0, "net default", true, false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// Another process (same attributes, other PID) starts locked even though
	// an allow for "connect" is cached: the state is part of the key.
	other := *connect
	other.Subject.PID = 78
	if d := s.Decide(&other); d.Verdict != Deny {
		t.Errorf("other process: %+v", d)
	}
	// A process that exits and whose PID is reused starts over.
	s.ProcessExit(77, 1)
	if d := s.Decide(connect); d.Verdict != Deny {
		t.Errorf("after exit: %+v", d)
	}
	// A cached transition (hit on the open) still moves the state.
	s.Decide(open)
	if d := s.Decide(connect); d.Verdict != Allow {
		t.Errorf("after cached transition: %+v", d)
	}
	// A reload resets flow state to initial.
	s.Reload(compile(t, flowPolicy), "again")
	if d := s.Decide(connect); d.Verdict != Deny {
		t.Errorf("after reload: %+v", d)
	}
}

func TestCacheEviction(t *testing.T) {
	s := New(compile(t, basePolicy), Config{CacheSize: 4})
	for i := 0; i < 100; i++ {
		s.Decide(openEv(fmt.Sprintf("/f%d", i)))
	}
	st := s.Stats()
	if st.CacheEvictions == 0 || st.CacheMisses != 100 {
		t.Errorf("stats %+v", st)
	}
}

func TestAuditLogIntegration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := New(compile(t, basePolicy), Config{Audit: l})
	s.Decide(openEv("/etc/passwd"))
	l.Close()
	var got []string
	if _, err := audit.ReadFile(path, false, func(r *audit.Record) error {
		got = append(got, fmt.Sprintf("%s %s %s %d", r.Verdict, r.Rule, r.Event.Path, r.PolicySeq))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"deny passwd /etc/passwd 1"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// Writing to a closed log fails, so the server denies.
	if d := s.Decide(openEv("/etc/passwd")); d.Rule != RuleAuditFailure {
		t.Errorf("closed log: %+v", d)
	}
}
