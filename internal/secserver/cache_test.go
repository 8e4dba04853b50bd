package secserver

import (
	"github.com/gatevisor/gatevisor/internal/audit"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
)

// keyFields classifies every field of event.Event (Subject's prefixed
// "Subject."): "key" if the cache key compares it, "pid" if it does only
// for policies that use PIDs, "ignored" if no policy can look at it.
var keyFields = map[string]string{
	"Class": "key", "Op": "key", "Path": "key", "Args": "key", "Dir": "key", "Proto": "key",
	"Addr": "key", "Port": "key", "LocalPort": "key", "Module": "key", "Hash": "key", "Labels": "key", "Time": "ignored",
	"Subject.PID": "pid", "Subject.PPID": "pid", "Subject.Start": "ignored",
	"Subject.Comm": "key", "Subject.Exe": "key", "Subject.UID": "key", "Subject.GID": "key",
	"Subject.ParentComm": "key", "Subject.ParentExe": "key", "Subject.Labels": "key",
	"Subject.Authenticated": "key", "Subject.SetUID": "key",
}

// fullEvent is a valid event with every field set.
func fullEvent() *event.Event {
	return &event.Event{Class: event.ClassNet, Op: "connect", Path: "/srv/sock", Args: []int64{3, 4},
		Dir: event.DirOut, Proto: "tcp", Addr: netip.MustParseAddr("192.0.2.1"), Port: 80, LocalPort: 40000,
		Module: "nf_conntrack", Hash: "3d3fdbe9", Labels: []string{"kit"}, Time: time.Unix(1700000000, 0),
		Subject: event.Subject{PID: 10, PPID: 1, Start: 5, Comm: "curl", Exe: "/usr/bin/curl", UID: 1000, GID: 1000,
			ParentComm: "sh", ParentExe: "/bin/sh", Labels: []string{"web"}, Authenticated: []string{"alice"}}}
}

func cloneEvent(ev *event.Event) *event.Event {
	c := *ev
	c.Args = slices.Clone(ev.Args)
	c.Subject.Labels = slices.Clone(ev.Subject.Labels)
	c.Labels = slices.Clone(ev.Labels)
	c.Subject.Authenticated = slices.Clone(ev.Subject.Authenticated)
	return &c
}

// variant is a copy of a base event that differs from it in one field.
type variant struct {
	field string // as in keyFields
	how   string
	ev    *event.Event
}

// variants returns copies of base that differ from it in one field each,
// in every way the cache must notice: another length, and for strings and
// slices the same length with other contents. It fails on a field type it
// does not know, so that a field added to event.Event is classified here
// (and, if policies can see it, added to sameKey and hashEvent).
func variants(t *testing.T, base *event.Event) []variant {
	t.Helper()
	var out []variant
	var walk func(prefix string, idx []int, typ reflect.Type)
	walk = func(prefix string, idx []int, typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, fidx := prefix+f.Name, append(slices.Clone(idx), i)
			if f.Type == reflect.TypeFor[event.Subject]() {
				walk(name+".", fidx, f.Type)
				continue
			}
			if _, ok := keyFields[name]; !ok {
				t.Fatalf("event field %s is not classified in keyFields: add it to the cache key (sameKey, hashEvent) if a policy can see it", name)
			}
			add := func(how string, change func(v reflect.Value)) {
				c := cloneEvent(base)
				change(reflect.ValueOf(c).Elem().FieldByIndex(fidx))
				out = append(out, variant{name, how, c})
			}
			switch k := f.Type.Kind(); {
			case f.Type == reflect.TypeFor[netip.Addr]():
				add("other", func(v reflect.Value) { v.Set(reflect.ValueOf(netip.MustParseAddr("192.0.2.2"))) })
				add("v6", func(v reflect.Value) { v.Set(reflect.ValueOf(netip.MustParseAddr("::ffff:192.0.2.1"))) })
			case f.Type == reflect.TypeFor[time.Time]():
				add("later", func(v reflect.Value) { v.Set(reflect.ValueOf(base.Time.Add(time.Hour))) })
			case k == reflect.String:
				add("longer", func(v reflect.Value) { v.SetString(v.String() + "x") })
				add("same length", func(v reflect.Value) { s := v.String(); v.SetString(s[:len(s)-1] + "#") })
			case k == reflect.Bool:
				add("flipped", func(v reflect.Value) { v.SetBool(!v.Bool()) })
			case k >= reflect.Int && k <= reflect.Int64:
				add("+1", func(v reflect.Value) { v.SetInt(v.Int() + 1) })
			case k >= reflect.Uint && k <= reflect.Uint64:
				// Down, not up: Class and Dir stay valid.
				add("-1", func(v reflect.Value) { v.SetUint(v.Uint() - 1) })
			case k == reflect.Slice && (f.Type.Elem().Kind() == reflect.String || f.Type.Elem().Kind() == reflect.Int64):
				add("longer", func(v reflect.Value) { v.Set(reflect.Append(v, v.Index(0))) })
				add("other element", func(v reflect.Value) {
					if e := v.Index(0); e.Kind() == reflect.String {
						e.SetString(e.String() + "x")
					} else {
						e.SetInt(e.Int() + 1)
					}
				})
				add("nil", func(v reflect.Value) { v.Set(reflect.Zero(v.Type())) })
			default:
				t.Fatalf("event field %s has type %s, which this test cannot vary: teach it", name, f.Type)
			}
		}
	}
	walk("", nil, reflect.TypeFor[event.Event]())
	return out
}

// TestCacheKey checks sameKey and hashEvent against the definition of
// event.Event: every field a policy can see tells events apart, and events
// that differ only in fields it cannot see hash alike. It also checks what
// lets Decide answer quiet hits without Validate: Validate accepts any
// value of the fields outside the key.
func TestCacheKey(t *testing.T) {
	base := fullEvent()
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, v := range variants(t, base) {
		seen[v.field] = true
		for _, usePID := range []bool{false, true} {
			class := keyFields[v.field]
			want := class == "key" || class == "pid" && usePID
			if got := !sameKey(base, v.ev, usePID); got != want {
				t.Errorf("%s (%s), usePID %v: sameKey says different=%v, want %v", v.field, v.how, usePID, got, want)
			}
			if !want && hashEvent(base, usePID, "") != hashEvent(v.ev, usePID, "") {
				t.Errorf("%s (%s), usePID %v: equal keys hash differently", v.field, v.how, usePID)
			}
		}
	}
	var missing []string
	for f := range keyFields {
		if !seen[f] {
			missing = append(missing, f)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("keyFields names fields that event.Event does not have: %v", missing)
	}

	for _, set := range []func(*event.Event){
		func(e *event.Event) { e.Subject.PID, e.Subject.PPID, e.Subject.Start = math.MinInt32, math.MinInt32, 0 },
		func(e *event.Event) {
			e.Subject.PID, e.Subject.PPID, e.Subject.Start = math.MaxInt32, -1, math.MaxUint64
		},
		func(e *event.Event) { e.Time = time.Time{} },
		func(e *event.Event) { e.Time = time.Unix(math.MaxInt32, 0).Add(100 * 365 * 24 * time.Hour) },
		func(e *event.Event) { e.Time = time.Unix(-1, 0) },
	} {
		ev := cloneEvent(base)
		set(ev)
		if err := ev.Validate(); err != nil {
			t.Errorf("Validate rejects a value of a field outside the cache key (Decide's hit path relies on it accepting them): %v", err)
		}
	}
}

const allowAllPolicy = `
net default: allow
file default: allow
`

// TestHashCollision makes every key hash alike, so that all events share
// one slot and one hash: events that differ in any key field still never
// share a decision, and the counters stay right.
func TestHashCollision(t *testing.T) {
	t.Run("verdicts", func(t *testing.T) {
		s := New(compile(t, basePolicy), Config{CacheSize: 64})
		s.cache.hashMask = 0
		passwd, tmp := openEv("/etc/passwd"), openEv("/tmp/x")
		var got []short
		for _, ev := range []*event.Event{tmp, tmp, passwd, passwd, tmp} {
			got = append(got, shorten(s.Decide(ev)))
		}
		want := []short{
			{"allow", 0, "open default", false, false},
			{"allow", 0, "open default", true, false},
			{"deny", 1, "passwd", false, false}, // same hash as the cached allow
			{"deny", 1, "passwd", true, false},
			{"allow", 0, "open default", false, false},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		st := s.Stats()
		if st.Decisions != 5 || st.CacheHits != 2 || st.CacheMisses != 3 || st.CacheEvictions != 2 {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("fields", func(t *testing.T) {
		for _, pol := range []string{allowAllPolicy, allowAllPolicy + "  pids: pidEq(99999) deny\n"} {
			s := New(compile(t, pol), Config{CacheSize: 64})
			s.cache.hashMask = 0
			usePID := s.cur.Load().usesPID
			base := fullEvent()
			for _, v := range variants(t, base) {
				if c := keyFields[v.field]; c == "ignored" || c == "pid" && !usePID {
					continue
				}
				s.Decide(base)
				if d := s.Decide(base); !d.Cached {
					t.Fatalf("base event not cached: %+v", d)
				}
				if d := s.Decide(v.ev); d.Cached {
					t.Errorf("usePID %v: %s (%s) answered from the entry of an event with another %s: %+v", usePID, v.field, v.how, v.field, d)
				}
			}
		}
	})
}

// TestFlowCollision repeats TestFlowNeverStale with every key colliding:
// entries that differ only in the flow states never share a decision.
func TestFlowCollision(t *testing.T) {
	s := New(compile(t, flowPolicy), Config{})
	s.cache.hashMask = 0
	subj := event.Subject{PID: 77, Start: 1, Exe: "/usr/bin/agent"}
	connect := &event.Event{Class: event.ClassNet, Op: "connect", Subject: subj}
	open := &event.Event{Class: event.ClassFile, Op: "open", Path: "/etc/agent/creds", Subject: subj}
	var got []string
	for _, ev := range []*event.Event{connect, connect, open, connect, connect} {
		got = append(got, s.Decide(ev).Verdict.String())
	}
	other := *connect
	other.Subject.PID = 78
	got = append(got, s.Decide(&other).Verdict.String(), s.Decide(connect).Verdict.String())
	if diff := cmp.Diff([]string{"deny", "deny", "allow", "allow", "allow", "deny", "allow"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// An entry matches only the flow states it was decided in, including
// states of the same length (which a one-flow policy cannot produce in
// one slot: TestFlowCollision covers the rest).
func TestLookupStates(t *testing.T) {
	c := newCache(8)
	ev := fullEvent()
	c.put(&entry{hash: 1, seq: 1, flow: true, states: "\x01\x02"}, ev, false)
	for _, st := range []string{"", "\x01", "\x01\x03", "\x00\x02", "\x01\x02\x00"} {
		if c.lookup(1, ev, 1, false, st) != nil {
			t.Errorf("states %q: found the entry of states \"\\x01\\x02\"", st)
		}
	}
	if c.lookup(1, ev, 1, false, "\x01\x02") == nil || c.lookup(1, ev, 2, false, "\x01\x02") != nil {
		t.Errorf("lookup by seq and states wrong")
	}
}

// Invalid events are denied even when an otherwise equal valid event is
// cached: Decide's hit path does not validate.
func TestInvalidNeverHits(t *testing.T) {
	s := New(compile(t, allowAllPolicy), Config{})
	for _, change := range []func(*event.Event){
		func(e *event.Event) { e.Class = 99 },
		func(e *event.Event) { e.Dir = 3 },
		func(e *event.Event) { e.Path = strings.Repeat("x", event.MaxPath+1) },
		func(e *event.Event) { e.Subject.Comm = strings.Repeat("x", event.MaxName+1) },
		func(e *event.Event) { e.Args = make([]int64, event.MaxArgs+1) },
		func(e *event.Event) { e.Subject.Labels = make([]string, event.MaxLabels+1) },
		func(e *event.Event) { e.Subject.Labels = []string{strings.Repeat("x", event.MaxName+1)} },
	} {
		ev := fullEvent()
		change(ev)
		// The valid event, equal but for the changed field, is cached.
		s.Decide(fullEvent())
		if d := s.Decide(fullEvent()); !d.Cached {
			t.Fatalf("valid event not cached: %+v", d)
		}
		if d := s.Decide(ev); d.Verdict != Deny || d.Rule != RuleInvalidEvent || d.Cached {
			t.Errorf("invalid %s: %+v", ev, d)
		}
	}
}

// Hits that need an audit record are audited every time, and counted.
func TestHitsAudited(t *testing.T) {
	sink := &memSink{}
	s := New(compile(t, basePolicy), Config{Audit: sink})
	for range 2 {
		for _, p := range []string{"/etc/hosts", "/etc/motd", "/tmp/x"} {
			s.Decide(openEv(p))
		}
	}
	if diff := cmp.Diff([]string{"alert watch", "allow logged", "alert watch", "allow logged"}, sink.rules()); diff != "" {
		t.Errorf("audit (-want +got):\n%s", diff)
	}
	if st := s.Stats(); st.Decisions != 6 || st.CacheHits != 3 || st.CacheMisses != 3 {
		t.Errorf("stats %+v", st)
	}

	sink = &memSink{}
	s = New(compile(t, basePolicy), Config{Audit: sink, AuditAllow: true})
	for range 3 {
		if d := s.Decide(openEv("/tmp/x")); !d.Audited {
			t.Errorf("AuditAllow: allow not audited: %+v", d)
		}
	}
	if n := len(sink.rules()); n != 3 {
		t.Errorf("AuditAllow: %d records, want 3", n)
	}
}

// A panic inside the guarded path (here: a nil policy) is a deny, and the
// hit path answers nothing for such a policy.
func TestPanicDenies(t *testing.T) {
	s := New(compile(t, allowAllPolicy), Config{})
	ev := fullEvent()
	s.Decide(ev)
	s.Reload(nil, "broken")
	for range 2 {
		if d := s.Decide(ev); d.Verdict != Deny || d.Rule != RuleInternal || d.Seq != 2 {
			t.Errorf("%+v", d)
		}
	}
	if st := s.Stats(); st.InternalErrors != 2 || st.Decisions != 3 {
		t.Errorf("stats %+v", st)
	}
}

// A quiet hit allocates nothing.
func TestHitAllocs(t *testing.T) {
	s := New(compile(t, allowAllPolicy), Config{})
	ev := fullEvent()
	s.Decide(ev)
	if n := testing.AllocsPerRun(100, func() {
		if d := s.Decide(ev); !d.Cached {
			t.Fatal("not cached")
		}
	}); n != 0 {
		t.Errorf("%v allocations per hit", n)
	}
}

// hashString reads every byte: strings that differ in one byte anywhere
// hash differently (for these lengths, around each boundary of its reads).
func TestHashStringBytes(t *testing.T) {
	for n := 1; n <= 70; n++ {
		s := strings.Repeat("a", n)
		h := hashString(1, s)
		if hashString(1, s+"a") == h {
			t.Errorf("len %d and %d hash alike", n, n+1)
		}
		for i := range n {
			b := []byte(s)
			b[i] = 'b'
			if hashString(1, string(b)) == h {
				t.Errorf("len %d: byte %d does not change the hash", n, i)
			}
		}
	}
}

type panicSink struct{}

func (panicSink) Append(*audit.Record) error { panic("disk on fire") }

// A sink that panics is an audit failure: Decide still returns a deny and
// does not panic, though the panic happens again inside the fail-closed
// path.
func TestPanickingSinkDenies(t *testing.T) {
	s := New(compile(t, allowAllPolicy), Config{Audit: panicSink{}, AuditAllow: true})
	d := s.Decide(fullEvent())
	if d.Verdict != Deny || d.Audited {
		t.Fatalf("%+v; want an unaudited deny", d)
	}
	if st := s.Stats(); st.AuditErrors == 0 || st.InternalErrors == 0 {
		t.Errorf("stats %+v", st)
	}
}
