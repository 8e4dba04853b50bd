package policy

import (
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/event"
)

// testCoverage is a VM's gates as the monitor describes them: a kernel
// with a few syscalls and every hook, a network gate when net is set, the
// API gate with two actions.
func testCoverage(net bool) Coverage {
	c := Coverage{
		Observers: map[event.Class]Observer{
			event.ClassSyscall: {Gate: "the syscall gate", Ops: []string{"execve", "mkdir", "open", "ptrace"}, PartialWhy: "it traps only the system calls a policy names"},
			event.ClassFile:    {Gate: "the file gate", All: true, Ops: []string{"create", "getattr", "open", "read", "unlink", "write"}},
			event.ClassExec:    {Gate: "the exec gate", All: true},
			event.ClassModule:  {Gate: "the module gate", All: true, Ops: []string{"load", "unload"}},
			event.ClassAPI:     {Gate: "the API gate", All: true, Ops: []string{"ids.ps", "vm.status", "vm.stop"}},
		},
		Absent: map[event.Class]string{event.ClassCall: "no gate for IPC calls", event.ClassNet: "needs --net"},
	}
	if net {
		delete(c.Absent, event.ClassNet)
		c.Observers[event.ClassNet] = Observer{Gate: "the network gate", All: true, Ops: []string{"accept", "connect", "recv", "send"}}
	}
	return c
}

func compileSrc(t *testing.T, src string) *Policy {
	t.Helper()
	spec, err := Load("t.policy", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const open = "default: allow;\n"

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		net       bool
		want      []string // substrings of the problems, in order ("" none)
		advisory  bool
	}{
		{"open base", open, false, nil, false},
		{"net rule without --net", open + "net default: deny\n", false, []string{"t.policy:2:1: block `net default: deny` is not enforced: needs --net"}, false},
		{"net rule with --net", open + "net default: deny\n", true, nil, false},
		{"unknown net op", open + "net bind default: deny\n", true, []string{`observes no net op "bind"`}, false},
		{"IPC calls", open + "call default: deny\n", false, []string{"no gate for IPC calls"}, false},
		{"advisory IPC calls", open + "advisory call;\ncall default: deny\n", false, []string{"no gate for IPC calls"}, true},
		{"implicit global deny on syscalls", "file default: allow\n", false, []string{"t.policy:1:1: the global default (deny, as no `default:` is given)", "add a `syscall default: allow` block"}, false},
		{"explicit syscall default", "default: deny;\nsyscall default: allow\n", false, nil, false},
		{"a rule on every syscall", open + "syscall default: allow\n  exePrefixEq(\"/tmp/\") kill\n", false, []string{"restrict it with opEq"}, false},
		{"a syscall the kernel lacks", open + "syscall default: allow\n  opEq(\"no_such_call\") deny\n", false, []string{`finds no system call "no_such_call"`}, false},
		{"opPrefixEq matching nothing", open + "syscall default: allow\n  opPrefixEq(\"zz\") deny\n", false, []string{`no syscall op starting with "zz"`}, false},
		{"unknown file op", open + "file default: allow\n  opEq(\"readdir\") deny\n", false, []string{`observes no file op "readdir"`}, false},
		{"role granting an unknown action", open + "role r: vm.stop, proc.stop;\n", false, []string{"role r grants proc.stop"}, false},
		{"role granting a prefix", open + "role r: ids.*;\n", false, nil, false},
		{"silent allows need nothing", open + "net default: allow\n  x: portEq(1) allow\n", false, nil, false},
		{"audited allows do", open + "net default: allow\n  x: portEq(1) allow audit\n", false, []string{"rule x"}, false},
		{"flow on net", open + "flow f { initial a; require a for net connect; }\n", false, []string{"flow f"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probs := compileSrc(t, tc.src).Check(testCoverage(tc.net))
			if len(probs) != len(tc.want) && !(len(tc.want) > 0 && len(probs) >= 1) {
				t.Fatalf("problems %v, want %d", probs, len(tc.want))
			}
			all := ""
			for _, p := range probs {
				all += p.String() + "\n"
				if p.Advisory != tc.advisory {
					t.Errorf("%s: advisory %v, want %v", p, p.Advisory, tc.advisory)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("problems:\n%swant one containing %q", all, w)
				}
			}
			if len(tc.want) == 0 && len(probs) != 0 {
				t.Errorf("problems:\n%swant none", all)
			}
		})
	}
}

func TestCoverageErrorNamesPositionAndFix(t *testing.T) {
	p := compileSrc(t, open+"net default: deny\n")
	probs := p.Check(testCoverage(false))
	if len(probs) != 1 {
		t.Fatalf("problems %v", probs)
	}
	err := probs[0].Error()
	var pe *Error
	if !asError(err, &pe) || pe.Kind != ErrCoverage || pe.Pos.Line != 2 || !strings.Contains(err.Error(), "advisory net") {
		t.Fatalf("error %v (%T): want an ErrCoverage at line 2 with the advisory hint", err, err)
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}

func TestOps(t *testing.T) {
	cov := testCoverage(true)
	for _, tc := range []struct {
		name, src string
		class     event.Class
		want      []string
		all       bool
	}{
		{"blocks and opEq", open + "open default: allow fileEq(\"/x\") deny\nsyscall default: allow\n  opEq(\"mkdir\", \"ptrace\") deny\n", event.ClassSyscall, []string{"mkdir", "open", "ptrace"}, false},
		{"prefix", open + "syscall default: allow\n  opPrefixEq(\"mk\") deny\n", event.ClassSyscall, []string{"mkdir"}, false},
		{"and narrows", open + "file default: allow\n  opEq(\"write\", \"unlink\") and opEq(\"unlink\") deny\n", event.ClassFile, []string{"unlink"}, false},
		{"or of restricted", open + "file default: allow\n  opEq(\"write\") or opEq(\"read\") deny\n", event.ClassFile, []string{"read", "write"}, false},
		{"not widens", open + "file default: allow\n  not opEq(\"read\") deny\n", event.ClassFile, []string{"create", "getattr", "open", "read", "unlink", "write"}, true},
		{"class default deny", open + "file default: deny\n", event.ClassFile, []string{"create", "getattr", "open", "read", "unlink", "write"}, true},
		{"MLS names its ops", open + "sensitivity a < b;\nobject level b when filePrefixEq(\"/s/\");\n", event.ClassFile, []string{"append", "chmod", "chown", "create", "exec", "link", "mkdir", "open", "read", "rename", "rmdir", "symlink", "truncate", "unlink", "write"}, false},
		{"a global default decides all", "default: deny;\nsyscall default: allow\n", event.ClassModule, []string{"load", "unload"}, true},
		{"silent: nothing", open + "module default: allow\n", event.ClassModule, nil, false},
		{"advisory partial class arms nothing", "advisory syscall;\ndefault: deny;\n", event.ClassSyscall, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops, all := compileSrc(t, tc.src).Ops(tc.class, cov.Observers[tc.class])
			if diff := cmp.Diff(tc.want, ops); diff != "" || all != tc.all {
				t.Errorf("Ops (-want +got):\n%s all=%v want %v", diff, all, tc.all)
			}
		})
	}
}

func TestSnapshotDigestCoversIncludes(t *testing.T) {
	fsys := fstest.MapFS{"inc.policy": {Data: []byte("file default: allow\n")}}
	root := []byte(open + "include \"inc.policy\";\n")
	a, err := NewSnapshot("root.policy", root, FSResolver(fsys))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"root.policy", "inc.policy"}, a.Files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	b, _ := NewSnapshot("root.policy", root, FSResolver(fsys))
	if a.Digest != b.Digest || !strings.HasPrefix(a.Digest, "sha256:") || len(a.Digest) != len("sha256:")+64 {
		t.Fatalf("digests %s %s: want equal sha256 digests of the same files", a.Digest, b.Digest)
	}
	fsys["inc.policy"] = &fstest.MapFile{Data: []byte("file default: allow \n")}
	c, err := NewSnapshot("root.policy", root, FSResolver(fsys))
	if err != nil {
		t.Fatal(err)
	}
	if c.Digest == a.Digest {
		t.Fatal("an edited include left the digest unchanged")
	}
}

func TestHashEqAndObjectLabels(t *testing.T) {
	const sum = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"
	p := compileSrc(t, open+"module default: deny\n  h: hashEq(\""+sum+"\") allow\n  k: labelIs(\"kit\") allow\n")
	for _, tc := range []struct {
		ev   event.Event
		want Verdict
	}{
		{event.Event{Class: event.ClassModule, Op: "load", Hash: sum}, VerdictAllow},
		{event.Event{Class: event.ClassModule, Op: "load", Labels: []string{"kit"}}, VerdictAllow},
		{event.Event{Class: event.ClassModule, Op: "load", Hash: strings.Repeat("0", 64)}, VerdictDeny},
	} {
		if got := p.Evaluate(&tc.ev, nil).Verdict; got != tc.want {
			t.Errorf("%s: %s, want %s", tc.ev.String(), got, tc.want)
		}
	}
	if _, err := Compile(mustLoad(t, open+"module default: deny\n  hashEq(\"abc\") allow\n")); err == nil || !strings.Contains(err.Error(), "bad SHA-256") {
		t.Errorf("a bad hash: %v", err)
	}
}

func mustLoad(t *testing.T, src string) *Spec {
	t.Helper()
	s, err := Load("t.policy", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestArgValues(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []int64
		bounded   bool
	}{
		{"eq", "ptrace default: allow\n  eq {PTRACE_ATTACH, PTRACE_SEIZE} (request) deny(EPERM)\n", []int64{16, 0x4206}, true},
		{"and narrows", "ptrace default: allow\n  eq {16, 0} (request) and uidEq(0) deny\n  eq {0} (request) and eq {0, 4} (request) alert\n", []int64{0, 16}, true},
		{"or of eq", "ptrace default: allow\n  eq {16} (request) or eq {0} (request) deny\n", []int64{0, 16}, true},
		{"silent rules need nothing", "ptrace default: allow\n  eq {16} (request) deny\n  uidEq(0) allow\n", []int64{16}, true},
		{"another argument", "ptrace default: allow\n  eq {1} (pid) deny\n", nil, false},
		{"not", "ptrace default: allow\n  not eq {16} (request) deny\n", nil, false},
		{"or with a non-constraint", "ptrace default: allow\n  eq {16} (request) or uidEq(0) deny\n", nil, false},
		{"a block default that decides", "ptrace default: deny\n  eq {16} (request) allow\n", nil, false},
		{"a class rule naming it", "syscall default: allow\n  opEq(\"ptrace\") deny\n", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals, bounded := compileSrc(t, tc.src).ArgValues(event.ClassSyscall, "ptrace", 0)
			if diff := cmp.Diff(tc.want, vals); diff != "" || bounded != tc.bounded {
				t.Errorf("ArgValues (-want +got):\n%s bounded=%v want %v", diff, bounded, tc.bounded)
			}
		})
	}
}

func TestDenyErrnos(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []int32
	}{
		{"class default with errno", "module default: deny(EPERM)\n  labelIs(\"kit\") allow\n", []int32{1}},
		{"default errno is EACCES", "module default: deny\n", []int32{13}},
		{"op block and class block", "module default: deny(EPERM)\nmodule unload default: allow\n  moduleEq(\"x\") deny(EBUSY)\n  moduleEq(\"y\") kill\n", []int32{1, 16}},
		{"global default only", "default: deny;\n", []int32{13}},
		{"allow only", "module default: allow\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := compileSrc(t, tc.src).DenyErrnos(event.ClassModule, "unload")
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("DenyErrnos (-want +got):\n%s", diff)
			}
		})
	}
}
