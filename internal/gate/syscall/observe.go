package gate

import (
	"sort"
	"strings"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Gate names, as messages show them.
const (
	SyscallGateName = "the syscall gate"
	FileGateName    = "the file gate"
	ExecGateName    = "the exec gate"
	ModuleGateName  = "the module gate"
)

// Observers returns what the gate can observe on the kernel of profile p,
// per class: the syscalls it has handlers (or hooks) for, and the file
// ops, execs and module operations whose LSM hooks it has. It needs only
// the kernel image (kallsyms and BTF), so the monitor checks a policy
// against it before the guest boots. A class the kernel gives no hook
// for is missing from the map.
func Observers(p *linux.Profile) map[event.Class]policy.Observer {
	out := map[event.Class]policy.Observer{}
	has := map[Hook]bool{}
	for h := AtFileOpen; h < numHooks; h++ {
		has[h] = hasHook(p, h)
	}
	if !has[AtFileOpen] {
		has[AtPathMknod] = false
	}
	var calls []string
	prefix := isaOf(p).handlerPrefix
	for name := range p.Symbols.NamesWithPrefix(prefix) {
		if n := strings.TrimPrefix(name, prefix); n != "" && n != "ni_syscall" {
			calls = append(calls, n)
		}
	}
	if len(calls) > 0 {
		sort.Strings(calls)
		calls = compactStrings(calls)
		out[event.ClassSyscall] = policy.Observer{Gate: SyscallGateName, Ops: calls,
			PartialWhy: "it traps only the system calls a policy names"}
	}
	classOps := func(gate string, ops map[string][]Hook) (policy.Observer, bool) {
		o := policy.Observer{Gate: gate, All: true}
		for op, hs := range ops {
			ok := true
			for _, h := range hs {
				ok = ok && has[h]
			}
			if ok {
				o.Ops = append(o.Ops, op)
			} else {
				o.All = false
			}
		}
		sort.Strings(o.Ops)
		if !o.All {
			o.PartialWhy = "this kernel lacks the LSM hooks of the other ops"
		}
		return o, len(o.Ops) > 0
	}
	if o, ok := classOps(FileGateName, fileOpHooks); ok {
		out[event.ClassFile] = o
	}
	if o, ok := classOps(ModuleGateName, moduleOpHooks); ok {
		out[event.ClassModule] = o
	}
	if has[AtExec] {
		out[event.ClassExec] = policy.Observer{Gate: ExecGateName, All: true}
	}
	return out
}

// GenericObservers is Observers for a kernel that is not known (policy
// check without a kernel): every hook assumed present, and any syscall
// name taken on trust (Observer.AnyOp).
func GenericObservers() map[event.Class]policy.Observer {
	out := map[event.Class]policy.Observer{
		event.ClassSyscall: {Gate: SyscallGateName, AnyOp: true, PartialWhy: "it traps only the system calls a policy names"},
		event.ClassFile:    {Gate: FileGateName, All: true, Ops: FileOps()},
		event.ClassExec:    {Gate: ExecGateName, All: true},
	}
	m := policy.Observer{Gate: ModuleGateName, All: true}
	for op := range moduleOpHooks {
		m.Ops = append(m.Ops, op)
	}
	sort.Strings(m.Ops)
	out[event.ClassModule] = m
	return out
}

// FileOps returns the file class's vocabulary: every op the file gate can
// decide on a kernel with all its hooks.
func FileOps() []string {
	var out []string
	for op := range fileOpHooks {
		out = append(out, op)
	}
	sort.Strings(out)
	return out
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
