package secserver

import (
	"fmt"
	"strings"
	"testing"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/interpreter"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
)

// genRules returns n rules in gatevisor syntax and the same rules as CEL
// expressions, in the same first-match order: 40% exact paths, 30% path
// prefixes, 30% conjunctions of program and user (which must be scanned).
func genRules(n int) (pol string, cels []string, verdicts []policy.Verdict) {
	var b strings.Builder
	b.WriteString("file read default: allow\n")
	for i := 0; i < n; i++ {
		switch {
		case i < n*4/10:
			fmt.Fprintf(&b, "  r%d: fileEq(\"/data/f%d\") deny\n", i, i)
			cels = append(cels, fmt.Sprintf(`path == "/data/f%d"`, i))
			verdicts = append(verdicts, policy.VerdictDeny)
		case i < n*7/10:
			fmt.Fprintf(&b, "  r%d: filePrefixEq(\"/srv/p%d/\") alert\n", i, i)
			cels = append(cels, fmt.Sprintf(`path.startsWith("/srv/p%d/")`, i))
			verdicts = append(verdicts, policy.VerdictAlert)
		default:
			fmt.Fprintf(&b, "  r%d: exeEq(\"/usr/bin/app%d\") and uidEq(%d) deny\n", i, i, i)
			cels = append(cels, fmt.Sprintf(`exe == "/usr/bin/app%d" && uid == %d`, i, i))
			verdicts = append(verdicts, policy.VerdictDeny)
		}
	}
	return b.String(), cels, verdicts
}

// genUnindexed returns n rules that no index applies to (a uid range and a
// negated prefix), so every one is scanned, and the same rules in CEL.
func genUnindexed(n int) (pol string, cels []string, verdicts []policy.Verdict) {
	var b strings.Builder
	b.WriteString("file read default: allow\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  u%d: uidIn(%d, %d) and not filePrefixEq(\"/g%d/\") deny\n", i, 10000+i*10, 10000+i*10+5, i)
		cels = append(cels, fmt.Sprintf(`uid >= %d && uid <= %d && !path.startsWith("/g%d/")`, 10000+i*10, 10000+i*10+5, i))
		verdicts = append(verdicts, policy.VerdictDeny)
	}
	return b.String(), cels, verdicts
}

// celEngine evaluates the same rules with cel-go, first match wins.
type celEngine struct {
	env      *cel.Env
	prgs     []cel.Program
	verdicts []policy.Verdict
}

func newCEL(tb testing.TB, exprs []string, verdicts []policy.Verdict) *celEngine {
	env, err := cel.NewEnv(cel.Variable("path", cel.StringType), cel.Variable("exe", cel.StringType), cel.Variable("uid", cel.IntType))
	if err != nil {
		tb.Fatal(err)
	}
	e := &celEngine{env: env, verdicts: verdicts}
	for _, x := range exprs {
		ast, iss := env.Compile(x)
		if iss.Err() != nil {
			tb.Fatal(iss.Err())
		}
		prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			tb.Fatal(err)
		}
		e.prgs = append(e.prgs, prg)
	}
	return e
}

func (e *celEngine) decide(ev *event.Event) policy.Verdict {
	act, err := interpreter.NewActivation(map[string]any{"path": ev.Path, "exe": ev.Subject.Exe, "uid": int64(ev.Subject.UID)})
	if err != nil {
		return policy.VerdictDeny
	}
	for i, p := range e.prgs {
		out, _, err := p.Eval(act)
		if err != nil {
			return policy.VerdictDeny
		}
		if out.Value() == true {
			return e.verdicts[i]
		}
	}
	return policy.VerdictAllow
}

func fileEv(path, exe string, uid uint32) *event.Event {
	return &event.Event{Class: event.ClassFile, Op: "read", Path: path,
		Subject: event.Subject{PID: 1234, PPID: 1, Comm: "app", Exe: exe, UID: uid, GID: uid, ParentExe: "/sbin/init", ParentComm: "init"}}
}

// The benchmark's two engines agree on the same rules.
func TestCELAgrees(t *testing.T) {
	src, exprs, verdicts := genRules(1000)
	pol := compile(t, src)
	ce := newCEL(t, exprs, verdicts)
	usrc, uexprs, uverdicts := genUnindexed(1000)
	upol, uce := compile(t, usrc), newCEL(t, uexprs, uverdicts)
	for _, uid := range []uint32{0, 10000, 10005, 10006, 19990, 20000} {
		ev := fileEv("/home/u", "/bin/x", uid)
		if got, want := upol.Evaluate(ev, nil).Verdict, uce.decide(ev); got != want {
			t.Errorf("unindexed %s: gatevisor %v, cel %v", ev, got, want)
		}
	}
	for _, ev := range []*event.Event{
		fileEv("/data/f3", "/bin/x", 1), fileEv("/data/f399", "/bin/x", 1), fileEv("/data/f400", "/bin/x", 1),
		fileEv("/srv/p500/a", "/bin/x", 1), fileEv("/srv/p500", "/bin/x", 1), fileEv("/home/u", "/usr/bin/app800", 800),
		fileEv("/home/u", "/usr/bin/app800", 801), fileEv("/home/u", "/usr/bin/zzz", 5000),
	} {
		if got, want := pol.Evaluate(ev, nil).Verdict, ce.decide(ev); got != want {
			t.Errorf("%s: gatevisor %v, cel %v", ev, got, want)
		}
	}
}

// BenchmarkDecide: gatevisor's Decide on a cache hit and on a miss, and
// cel-go evaluating the same 1,000 rules; see docs/benchmarks.md.
func BenchmarkDecide(b *testing.B) {
	src, exprs, verdicts := genRules(1000)
	pol := compile(b, src)
	// The miss case is the worst: no rule matches, so every scanned rule is
	// tried and the default decides.
	miss := fileEv("/home/user/notes.txt", "/usr/bin/editor", 5000)

	b.Run("hit", func(b *testing.B) {
		s := New(pol, Config{})
		ev := fileEv("/home/user/notes.txt", "/usr/bin/editor", 5000)
		s.Decide(ev)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if d := s.Decide(ev); !d.Cached {
				b.Fatal("not cached")
			}
		}
	})
	// A gate builds a new event for every decision: equal strings in
	// other memory, so the key comparison reads every byte.
	b.Run("hit-copy", func(b *testing.B) {
		s := New(pol, Config{})
		s.Decide(fileEv("/home/user/notes.txt", "/usr/bin/editor", 5000))
		ev := fileEv(strings.Clone("/home/user/notes.txt"), strings.Clone("/usr/bin/editor"), 5000)
		ev.Op, ev.Subject.Comm = strings.Clone(ev.Op), strings.Clone(ev.Subject.Comm)
		ev.Subject.ParentExe, ev.Subject.ParentComm = strings.Clone(ev.Subject.ParentExe), strings.Clone(ev.Subject.ParentComm)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if d := s.Decide(ev); !d.Cached {
				b.Fatal("not cached")
			}
		}
	})
	b.Run("miss-1000-rules", func(b *testing.B) {
		s := New(pol, Config{CacheSize: -1})
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if d := s.Decide(miss); d.Verdict != Allow {
				b.Fatal(d)
			}
		}
	})
	usrc, uexprs, uverdicts := genUnindexed(1000)
	upol := compile(b, usrc)
	b.Run("miss-1000-unindexed", func(b *testing.B) {
		s := New(upol, Config{CacheSize: -1})
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if d := s.Decide(miss); d.Verdict != Allow {
				b.Fatal(d)
			}
		}
	})
	b.Run("cel-go-1000-unindexed", func(b *testing.B) {
		ce := newCEL(b, uexprs, uverdicts)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if v := ce.decide(miss); v != policy.VerdictAllow {
				b.Fatal(v)
			}
		}
	})
	b.Run("cel-go-1000-rules", func(b *testing.B) {
		ce := newCEL(b, exprs, verdicts)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if v := ce.decide(miss); v != policy.VerdictAllow {
				b.Fatal(v)
			}
		}
	})
}
