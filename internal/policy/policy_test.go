package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
)

func mustCompile(t testing.TB, src string) *Policy {
	t.Helper()
	s, err := Parse("t.policy", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	p, err := Compile(s)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

// The source documents' examples parse and compile as written.
func TestSeedForms(t *testing.T) {
	seed002 := "open default: allow\n  fileEq(\"/etc/passwd\")\n  or filePrefixEq(\"/etc/cron.d\")\n  deny(EPERM)\n"
	s, err := Parse("seed002", []byte(seed002))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Blocks) != 1 || s.Blocks[0].Op.Name != "open" || len(s.Blocks[0].Rules) != 1 || s.Blocks[0].Rules[0].Action.Errno != "EPERM" {
		t.Fatalf("seed 002 block parsed as %+v", s.Blocks)
	}
	kss := "call in ext.ext2.open(mode) = neq {0} (mode), neq {-1} (mode);\n"
	s, err = Parse("kss", []byte(kss))
	if err != nil {
		t.Fatal(err)
	}
	want := []CallStmt{{Kind: "call", Dir: "in", Method: &QualName{Name: "ext.ext2.open", Pos: Pos{"kss", 1, 9}},
		Params: []Ident{{"mode", Pos{"kss", 1, 23}}},
		Policies: []PolicyApp{
			{Name: Ident{"neq", Pos{"kss", 1, 31}}, Values: []Value{{Kind: ValInt, I: 0, Pos: Pos{"kss", 1, 36}}}, Args: []Ident{{"mode", Pos{"kss", 1, 40}}}},
			{Name: Ident{"neq", Pos{"kss", 1, 47}}, Values: []Value{{Kind: ValInt, I: -1, Pos: Pos{"kss", 1, 52}}}, Args: []Ident{{"mode", Pos{"kss", 1, 57}}}},
		},
		Pos: Pos{"kss", 1, 1}}}
	if diff := cmp.Diff(want, s.Calls); diff != "" {
		t.Errorf("KSS call statement (-want +got):\n%s", diff)
	}
	for _, f := range []string{"iot-default.policy", "seed-000-kss.policy", "seed-001-ids.policy", "seed-002-syscall.policy", "seed-003-vmm.policy"} {
		t.Run(f, func(t *testing.T) {
			name := filepath.Join("..", "..", "policies", f)
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			s, err := Load(name, b, FSResolver(os.DirFS(filepath.Dir(name))))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Compile(s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func ev(class event.Class, op, path string) *event.Event {
	return &event.Event{Class: class, Op: op, Path: path, Subject: event.Subject{PID: 42, Exe: "/bin/app", Comm: "app"}}
}

type verdictCase struct {
	name  string
	ev    *event.Event
	want  Verdict
	errno int32
	rule  string
}

func runCases(t *testing.T, p *Policy, cases []verdictCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := p.Evaluate(c.ev, nil)
			type got struct {
				Verdict string
				Errno   int32
				Rule    string
			}
			w := got{c.want.String(), c.errno, c.rule}
			g := got{r.Verdict.String(), r.Errno, r.Rule}
			if c.rule == "" {
				g.Rule = ""
			}
			if c.errno == 0 && !c.want.Allows() {
				g.Errno = 0
			}
			if diff := cmp.Diff(w, g); diff != "" {
				t.Errorf("(-want +got):\n%s\nreason: %s", diff, r.Reason)
			}
		})
	}
}

func TestSeed002Semantics(t *testing.T) {
	p := mustCompile(t, "open default: allow\n  fileEq(\"/etc/passwd\")\n  or filePrefixEq(\"/etc/cron.d\")\n  deny(EPERM)\n")
	runCases(t, p, []verdictCase{
		{"passwd", ev(event.ClassSyscall, "open", "/etc/passwd"), VerdictDeny, 1, "t.policy:2"},
		{"cron.d", ev(event.ClassSyscall, "open", "/etc/cron.d/job"), VerdictDeny, 1, ""},
		{"cron.daily is a string prefix too", ev(event.ClassSyscall, "open", "/etc/cron.daily"), VerdictDeny, 1, ""},
		{"hosts", ev(event.ClassSyscall, "open", "/etc/hosts"), VerdictAllow, 0, "open default"},
		{"other syscall: global default deny", ev(event.ClassSyscall, "read", ""), VerdictDeny, 13, "default"},
		{"invalid event", &event.Event{}, VerdictDeny, 13, "invalid-event"},
	})
}

func TestRuleOrder(t *testing.T) {
	p := mustCompile(t, `
default: allow;
syscall default: deny
  catchall: exePrefixEq("/tmp/") kill
open default: allow
  first: fileEq("/a") alert
  second: filePrefixEq("/") deny
  third: fileEq("/b") allow
`)
	e := func(op, path, exe string) *event.Event {
		x := ev(event.ClassSyscall, op, path)
		x.Subject.Exe = exe
		return x
	}
	runCases(t, p, []verdictCase{
		{"first match wins over later exact", e("open", "/a", "/bin/x"), VerdictAlert, 0, "first"},
		{"prefix before later exact", e("open", "/b", "/bin/x"), VerdictDeny, 13, "second"},
		{"op rules before class rules", e("open", "/b", "/tmp/x"), VerdictDeny, 13, "second"},
		{"class rules before op default", e("open", "rel", "/tmp/x"), VerdictKill, 1, "catchall"},
		{"op default before class default", e("open", "rel", "/bin/x"), VerdictAllow, 0, "open default"},
		{"class default", e("read", "", "/bin/x"), VerdictDeny, 13, "syscall default"},
		{"global default", &event.Event{Class: event.ClassNet, Op: "connect"}, VerdictAllow, 0, "default"},
	})
}

// Indexed lookups must agree with a plain scan in order.
func TestIndexAgreesWithScan(t *testing.T) {
	src := `file default: deny
  r0: fileEq("/x/y") allow
  r1: filePrefixEq("/x") alert
  r2: uidEq(5) kill
  r3: fileEq("/x/z", "/q") allow
  r4: filePrefixEq("/q/", "/x/") deny(EPERM)
  r5: exeEq("/bin/a") or exeEq("/bin/b") allow
  r6: commEq("c") alert
  r7: exeEq("/bin/a") and uidEq(5) kill
  r8: (exeEq("/bin/z") or exeEq("/bin/a")) and fileEq("/y") deny
  r9: uidEq(0) and commEq("d") alert
`
	p := mustCompile(t, src)
	blk := p.classBlock[event.ClassFile]
	if len(blk.scan) != 1 {
		t.Fatalf("scan list %v, want only r2", blk.scan)
	}
	if len(blk.guards[fExe]["/bin/a"]) != 2 || len(blk.guards[fComm]["d"]) != 1 {
		t.Fatalf("guards %v", blk.guards)
	}
	paths := []string{"", "/x", "/x/y", "/x/z", "/q", "/q/1", "/xx", "/y"}
	for _, path := range paths {
		for _, uid := range []uint32{0, 5} {
			for _, exe := range []string{"/bin/a", "/bin/z"} {
				for _, comm := range []string{"c", "d"} {
					x := &evalCtx{p: p, ev: &event.Event{Class: event.ClassFile, Op: "read", Path: path, Subject: event.Subject{UID: uid, Exe: exe, Comm: comm}}}
					want := int32(-1)
					for i := range blk.rules {
						if blk.rules[i].cond(x) {
							want = int32(i)
							break
						}
					}
					if got := blk.first(x); got != want {
						t.Errorf("path %q uid %d exe %s comm %s: first = %d, scan = %d", path, uid, exe, comm, got, want)
					}
				}
			}
		}
	}
}

func TestTypeEnforcement(t *testing.T) {
	p := mustCompile(t, `
type etc_t, log_t;
domain web_t, db_t;
subject domain web_t when exeEq("/usr/bin/httpd");
subject domain db_t when commEq("sqlite");
object type etc_t when filePrefixEq("/etc/");
object type log_t when filePrefixEq("/var/log/");
file default: allow
allow web_t etc_t : file { read open };
allow web_t log_t : file { write append };
allow db_t etc_t : file *;
`)
	f := func(exe, comm, op, path string) *event.Event {
		return &event.Event{Class: event.ClassFile, Op: op, Path: path, Subject: event.Subject{PID: 1, Exe: exe, Comm: comm}}
	}
	runCases(t, p, []verdictCase{
		{"web reads etc", f("/usr/bin/httpd", "httpd", "read", "/etc/httpd.conf"), VerdictAllow, 0, ""},
		{"web writes log", f("/usr/bin/httpd", "httpd", "append", "/var/log/httpd"), VerdictAllow, 0, ""},
		{"web writes etc: no allow rule", f("/usr/bin/httpd", "httpd", "write", "/etc/passwd"), VerdictDeny, 13, "te web_t"},
		{"web reads unlabeled", f("/usr/bin/httpd", "httpd", "read", "/home/x"), VerdictDeny, 13, "te web_t"},
		{"db anything on etc", f("/usr/bin/sqlite", "sqlite", "unlink", "/etc/x"), VerdictAllow, 0, ""},
		{"db on log: confined, no rule", f("/usr/bin/sqlite", "sqlite", "read", "/var/log/x"), VerdictDeny, 13, "te db_t"},
		{"unconfined subject", f("/bin/sh", "sh", "write", "/etc/passwd"), VerdictAllow, 0, "file default"},
		{"TE does not confine other classes", &event.Event{Class: event.ClassFile + 1, Op: "connect", Subject: event.Subject{Exe: "/usr/bin/httpd"}}, VerdictDeny, 13, "default"},
	})
}

func TestMLS(t *testing.T) {
	p := mustCompile(t, `
sensitivity low < mid < high;
category a, b;
subject level mid:a when exeEq("/bin/mid-a");
subject level high:a,b when exeEq("/bin/high");
object level mid:a when filePrefixEq("/mid-a/");
object level mid when filePrefixEq("/mid/");
object level high:a,b when filePrefixEq("/high/");
file default: allow
exec default: allow
`)
	f := func(exe, op, path string, args ...int64) *event.Event {
		return &event.Event{Class: event.ClassFile, Op: op, Path: path, Args: args, Subject: event.Subject{PID: 1, Exe: exe}}
	}
	runCases(t, p, []verdictCase{
		{"read same level", f("/bin/mid-a", "read", "/mid-a/x"), VerdictAllow, 0, ""},
		{"read down", f("/bin/mid-a", "read", "/mid/x"), VerdictAllow, 0, ""},
		{"no read up", f("/bin/mid-a", "read", "/high/x"), VerdictDeny, 13, "mls read"},
		{"no read across categories", f("/bin/unlabeled", "read", "/mid-a/x"), VerdictDeny, 13, "mls read"},
		{"write up", f("/bin/mid-a", "write", "/high/x"), VerdictAllow, 0, ""},
		{"no write down", f("/bin/high", "write", "/mid/x"), VerdictDeny, 13, "mls write"},
		{"open read-only counts as read", f("/bin/high", "open", "/mid/x", 0), VerdictAllow, 0, ""},
		{"open O_WRONLY counts as write", f("/bin/high", "open", "/mid/x", 1), VerdictDeny, 13, "mls write"},
		{"metadata is not MLS's", f("/bin/high", "getattr", "/mid/x"), VerdictAllow, 0, ""},
		{"symlink is a write", f("/bin/high", "symlink", "/mid/x"), VerdictDeny, 13, "mls write"},
		{"unlevelled object", f("/bin/high", "write", "/tmp/x"), VerdictAllow, 0, ""},
		{"exec is a read", &event.Event{Class: event.ClassExec, Path: "/high/tool", Subject: event.Subject{Exe: "/bin/mid-a"}}, VerdictDeny, 13, "mls read"},
	})
}

func TestRBAC(t *testing.T) {
	p := mustCompile(t, `
role viewer: vm.status, ids.*;
role operator inherits viewer: vm.restart;
role admin inherits operator: *;
subject roles admin when uidEq(0);
subject roles operator when gidEq(10);
subject roles viewer when uidIn(1000, 1999);
`)
	api := func(op string, uid, gid uint32) *event.Event {
		return &event.Event{Class: event.ClassAPI, Op: op, Subject: event.Subject{UID: uid, GID: gid}}
	}
	runCases(t, p, []verdictCase{
		{"viewer status", api("vm.status", 1000, 100), VerdictAllow, 0, "role viewer"},
		{"viewer ids wildcard", api("ids.plist", 1000, 100), VerdictAllow, 0, "role viewer"},
		{"viewer restart", api("vm.restart", 1000, 100), VerdictDeny, 13, "rbac"},
		{"operator inherits viewer", api("ids.banner", 5000, 10), VerdictAllow, 0, "role operator"},
		{"operator restart", api("vm.restart", 5000, 10), VerdictAllow, 0, "role operator"},
		{"operator stop", api("vm.stop", 5000, 10), VerdictDeny, 13, "rbac"},
		{"admin anything", api("policy.load", 0, 0), VerdictAllow, 0, "role admin"},
		{"no role", api("vm.status", 65534, 65534), VerdictDeny, 13, "rbac"},
	})
	if _, err := Compile(mustParse(t, "role a inherits b: x; role b inherits a: y;")); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("inheritance cycle: err = %v", err)
	}
}

func mustParse(t *testing.T, src string) *Spec {
	t.Helper()
	s, err := Parse("t.policy", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFlow(t *testing.T) {
	p := mustCompile(t, `
net default: allow
file default: allow
flow creds for exeEq("/usr/bin/agent") {
  initial locked;
  locked -> unlocked on file open when fileEq("/etc/agent/creds");
  unlocked -> done on net close;
  require unlocked for net connect;
  require locked, unlocked for file write else kill;
}
`)
	agent := event.Subject{PID: 7, Exe: "/usr/bin/agent"}
	connect := &event.Event{Class: event.ClassNet, Op: "connect", Dir: event.DirOut, Subject: agent}
	open := &event.Event{Class: event.ClassFile, Op: "open", Path: "/etc/agent/creds", Subject: agent}
	closeEv := &event.Event{Class: event.ClassNet, Op: "close", Subject: agent}
	write := &event.Event{Class: event.ClassFile, Op: "write", Path: "/x", Subject: agent}
	steps := []struct {
		name string
		ev   *event.Event
		want Verdict
	}{
		{"connect before creds", connect, VerdictDeny},
		{"write while locked", write, VerdictAllow},
		{"open creds", open, VerdictAllow},
		{"connect after creds", connect, VerdictAllow},
		{"close", closeEv, VerdictAllow},
		{"connect after done", connect, VerdictDeny},
		{"write after done", write, VerdictKill},
	}
	var states []uint8
	var got, want []string
	for _, s := range steps {
		r := p.Evaluate(s.ev, states)
		if r.Verdict.Allows() && r.Next != nil {
			states = r.Next
		}
		got = append(got, s.name+": "+r.Verdict.String())
		want = append(want, s.name+": "+s.want.String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("flow (-want +got):\n%s", diff)
	}
	// Other programs are not subject to the flow.
	other := *connect
	other.Subject.Exe = "/bin/curl"
	if r := p.Evaluate(&other, nil); r.Verdict != VerdictAllow {
		t.Errorf("other program: %v (%s)", r.Verdict, r.Reason)
	}
	if !p.FlowRelevant(event.ClassNet, "connect") || !p.FlowRelevant(event.ClassFile, "open") || p.FlowRelevant(event.ClassExec, "") {
		t.Errorf("FlowRelevant wrong")
	}
}

func TestKSSEntity(t *testing.T) {
	b, err := os.ReadFile("../../policies/seed-000-kss.policy")
	if err != nil {
		t.Fatal(err)
	}
	p := mustCompile(t, string(b))
	fs := event.Subject{PID: 3, Exe: "/bin/fs"}
	call := func(op string, dir event.Dir, subj event.Subject, args ...int64) *event.Event {
		return &event.Event{Class: event.ClassCall, Op: op, Dir: dir, Args: args, Subject: subj}
	}
	runCases(t, p, []verdictCase{
		{"open mode 4", call("ext.ext2.open", event.DirIn, fs, 0, 4), VerdictAllow, 0, ""},
		{"open mode 0", call("ext.ext2.open", event.DirIn, fs, 0, 0), VerdictDeny, 13, ""},
		{"open mode -1", call("ext.ext2.open", event.DirIn, fs, 0, -1), VerdictDeny, 13, ""},
		{"open without mode arg", call("ext.ext2.open", event.DirIn, fs, 0), VerdictDeny, 13, ""},
		{"read: call in = allow", call("ext.ext2.read", event.DirIn, fs), VerdictAllow, 0, ""},
		{"call out = allow", call("x.y", event.DirOut, fs), VerdictAllow, 0, ""},
		{"other entity", call("ext.ext2.read", event.DirIn, event.Subject{Exe: "/bin/other"}), VerdictDeny, 13, "default"},
		{"entity by gate label", call("ext.ext2.read", event.DirIn, event.Subject{Labels: []string{"FS"}}), VerdictAllow, 0, ""},
		{"execute FS", &event.Event{Class: event.ClassExec, Path: "/bin/fs", Subject: event.Subject{Exe: "/sbin/init"}}, VerdictAllow, 0, ""},
		{"execute other", &event.Event{Class: event.ClassExec, Path: "/bin/x", Subject: event.Subject{Exe: "/sbin/init"}}, VerdictDeny, 13, "default"},
		{"security read", &event.Event{Class: event.ClassAPI, Op: "read", Subject: fs}, VerdictAllow, 0, ""},
		{"security write", &event.Event{Class: event.ClassAPI, Op: "write", Subject: fs}, VerdictDeny, 13, "default"},
	})
}

func TestNetPredicates(t *testing.T) {
	p := mustCompile(t, `net default: deny
  a: addrIn("10.0.0.0/8", "2001:db8::/32") and portIn(1000, 2000) allow
  b: addrEq("192.0.2.1") and protoEq("udp") and dirIs(out) alert
`)
	n := func(addr string, port uint16, proto string) *event.Event {
		return &event.Event{Class: event.ClassNet, Op: "connect", Dir: event.DirOut, Proto: proto, Addr: netip.MustParseAddr(addr), Port: port}
	}
	runCases(t, p, []verdictCase{
		{"v4 in range", n("10.1.2.3", 1500, "tcp"), VerdictAllow, 0, "a"},
		{"v4-mapped", n("::ffff:10.1.2.3", 1500, "tcp"), VerdictAllow, 0, "a"},
		{"v6", n("2001:db8::1", 1000, "tcp"), VerdictAllow, 0, "a"},
		{"port out of range", n("10.1.2.3", 2001, "tcp"), VerdictDeny, 13, "net default"},
		{"exact addr", n("192.0.2.1", 53, "udp"), VerdictAlert, 0, "b"},
		{"exact addr tcp", n("192.0.2.1", 53, "tcp"), VerdictDeny, 13, ""},
	})
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, src string
		want      string // substring of the error
		kind      error
	}{
		{"missing action", "open default: allow\n  fileEq(\"/x\")\n", `t.policy:3:1: unexpected end of file, expected an action`, ErrSyntax},
		{"bad token", "open default: allow $", `t.policy:1:21: unexpected character '$'`, ErrSyntax},
		{"unterminated string", "open default: allow fileEq(\"/x) deny", `t.policy:1:28: unterminated string`, ErrSyntax},
		{"missing colon", "open default allow", `t.policy:1:14: unexpected "allow", expected ":" (hint: write`, ErrSyntax},
		{"include needs a string", "include common;", `t.policy:1:9: unexpected "common", expected a quoted file name (hint: include "common.policy";)`, ErrSyntax},
		{"keyword as op", "open default: allow\nkill default: deny", `t.policy:2:1: unexpected "kill", expected a statement`, ErrSyntax},
		{"bad class", "allow a b : disk read;", `t.policy:1:13: unknown event class "disk"`, ErrSyntax},
		{"no when", "subject domain a exeEq(\"/x\");", `expected "when"`, ErrSyntax},
		{"call dir", "call sideways = allow;", `t.policy:1:1`, ErrSyntax},
		{"deep nesting", "open default: allow " + strings.Repeat("(", 200) + "true" + strings.Repeat(")", 200) + " deny", `nested too deeply`, ErrLimit},
		{"long string", "open default: allow fileEq(\"" + strings.Repeat("a", 5000) + "\") deny", `string too long`, ErrLimit},
		{"huge file", strings.Repeat("#", MaxFileSize+1), `t.policy:1:1: file is`, ErrLimit},
		{"two defaults", "default: deny; default: allow;", `second global default`, ErrSemantic},
		{"flow without initial", "flow f { a -> b on file open; }", `has no initial state`, ErrSemantic},
		{"big number", "open default: allow uidEq(99999999999999999999) deny", `bad number`, ErrSyntax},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("t.policy", []byte(c.src))
			if err == nil {
				t.Fatalf("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
			if !errors.Is(err, c.kind) {
				t.Errorf("error %v is not %v", err, c.kind)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"unknown predicate", "open default: allow fileEquals(\"/x\") deny", `t.policy:1:21: unknown predicate "fileEquals" (hint: did you mean fileEq?`},
		{"unknown domain", "subject domain web_t when exeEq(\"/x\");", `t.policy:1:16: unknown domain "web_t" (hint: declare it with`},
		{"unknown arg", "connect default: allow neq {0} (flags) deny", `unknown argument "flags" for syscall connect`},
		{"arg without op", "syscall default: allow neq {0} (mode) deny", `unknown argument "mode" for this block`},
		{"string to number", "open default: allow uidEq(\"root\") deny", `not a number`},
		{"bad errno", "open default: allow true deny(EWHAT)", `unknown errno "EWHAT"`},
		{"duplicate block", "open default: allow\nopen default: deny", `t.policy:2:1: second block for open (hint: the first is at t.policy:1:1`},
		{"typeIs in object", "type t; object type t when typeIs(t);", `typeIs cannot be used in a object statement`},
		{"domainIs in subject", "domain d; subject domain d when domainIs(d);", `domainIs cannot be used in a subject statement`},
		{"level without sensitivity", "subject level s0 when true;", `no sensitivity declared`},
		{"unknown use target", "use call policy p = Foo.bar; call in = p;", `unknown security server policy "Foo.bar"`},
		{"bad glob", "file default: allow fileGlob(\"[\") deny", `bad glob`},
		{"bad cidr", "net default: allow addrIn(\"10.0.0.0/99\") deny", `bad address`},
		{"unknown flow state", "flow f { initial a; require b for net connect; }", `flow f has no state "b"`},
		{"string constraint", "open default: allow lt {\"x\"} (path) deny", `lt compares numbers`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse("t.policy", []byte(c.src))
			if err == nil {
				_, err = Compile(s)
			}
			if err == nil {
				t.Fatalf("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestIncludes(t *testing.T) {
	fsys := fstest.MapFS{
		"root.policy":      {Data: []byte("include \"sub/a.policy\";\ndefault: deny;\n")},
		"sub/a.policy":     {Data: []byte("include \"b.policy\";\nopen default: allow\n")},
		"sub/b.policy":     {Data: []byte("file default: allow\n")},
		"cycle.policy":     {Data: []byte("include \"cycle2.policy\";")},
		"cycle2.policy":    {Data: []byte("include \"cycle.policy\";")},
		"escape.policy":    {Data: []byte("include \"../etc/passwd\";")},
		"self.policy":      {Data: []byte("include \"self.policy\";")},
		"missing.policy":   {Data: []byte("\n\ninclude \"nope.policy\";")},
		"deep0.policy":     {Data: []byte("include \"deep0.policy\";")},
		"twodefault.pol":   {Data: []byte("include \"sub/def.policy\"; default: allow;")},
		"sub/def.policy":   {Data: []byte("default: deny;")},
		"syntaxinc.policy": {Data: []byte("include \"sub/bad.policy\";")},
		"sub/bad.policy":   {Data: []byte("open default:")},
	}
	load := func(name string) (*Spec, error) {
		return Load(name, fsys[name].Data, FSResolver(fsys))
	}
	s, err := load("root.policy")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range s.Blocks {
		got = append(got, b.Pos.String())
	}
	if diff := cmp.Diff([]string{"sub/b.policy:1:1", "sub/a.policy:2:1"}, got); diff != "" {
		t.Errorf("blocks (-want +got):\n%s", diff)
	}
	for name, want := range map[string]string{
		"cycle.policy":     "include cycle",
		"self.policy":      "include cycle",
		"escape.policy":    "outside the policy directory",
		"missing.policy":   "missing.policy:3:1: include \"nope.policy\"",
		"twodefault.pol":   "second global default",
		"syntaxinc.policy": "sub/bad.policy:1:14: unexpected end of file",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := load(name)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v, want %q", err, want)
			}
		})
	}
	// Depth limit: a chain of distinct files.
	chain := fstest.MapFS{}
	for i := 0; i <= MaxIncludeDepth+1; i++ {
		chain[name(i)] = &fstest.MapFile{Data: []byte("include \"" + name(i+1) + "\";")}
	}
	chain[name(MaxIncludeDepth+2)] = &fstest.MapFile{Data: []byte("")}
	if _, err := Load(name(0), chain[name(0)].Data, FSResolver(chain)); !errors.Is(err, ErrLimit) {
		t.Errorf("deep includes: err = %v, want ErrLimit", err)
	}
	if _, err := Load("x", []byte(`include "a";`), nil); !errors.Is(err, ErrInclude) {
		t.Errorf("nil resolver: %v", err)
	}
}

func name(i int) string { return "f" + strings.Repeat("x", i) + ".policy" }

func TestRuleLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("type ")
	for i := 0; i <= MaxRules; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("t")
	}
	b.WriteString(";")
	if _, err := Parse("t", []byte(b.String())); !errors.Is(err, ErrLimit) {
		t.Errorf("err = %v, want ErrLimit", err)
	}
}

func TestExplain(t *testing.T) {
	p := mustCompile(t, `
domain d;
type secret_t;
subject domain d when exeEq("/bin/app");
object type secret_t when fileEq("/s");
file default: allow
  r1: filePrefixEq("/") alert
  r2: fileEq("/s") deny
allow d secret_t : file { write };
`)
	r := p.Explain(&event.Event{Class: event.ClassFile, Op: "read", Path: "/s", Subject: event.Subject{Exe: "/bin/app"}}, nil)
	var got []string
	for _, v := range r.Votes {
		got = append(got, v.Model+" "+v.Verdict.String()+" "+v.Rule)
	}
	want := []string{"match alert r1", "match deny r2", "rule alert r1", "te deny te d"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("votes (-want +got):\n%s", diff)
	}
	if r.Verdict != VerdictDeny || r.Rule != "te d" {
		t.Errorf("verdict %v by %s", r.Verdict, r.Rule)
	}
}
