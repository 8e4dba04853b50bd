package bench

import (
	"fmt"
	"strings"

	"github.com/gatevisor/gatevisor/internal/api"
)

// The syscall-gate benchmark's policies. "off" names no syscall (no
// breakpoint); "open" traps the open family and denies only /etc/passwd;
// "execve" traps only execve, so open is a syscall the policy does not name.
// Each leaves every other class open, explicitly: the global default
// applies to every class a gate observes. "iot" is the shipped default
// policy (SyscallsOptions.IoTPolicy), read when the benchmark starts.
var syscallPolicies = map[string]string{
	"off":  openPolicy,
	"open": openPolicy + "open default: allow\n  bench_deny: fileEq(\"/etc/passwd\") deny(EPERM)\n",
	"execve": openPolicy + "syscall default: allow\n" +
		"  bench_exec: opEq(\"execve\") and filePrefixEq(\"/nonexistent/\") deny(EPERM)\n",
	// cold traps syscalls none of the loops makes, at 24 handlers (x86-64
	// and i386 entries): what breakpoints cost code that never reaches them.
	"cold": openPolicy + "syscall default: allow\n" +
		"  bench_cold: opEq(" + coldSyscalls + ") deny(EPERM)\n",
}

// openPolicy leaves every class open and the API to root.
const openPolicy = "default: allow;\nrole admin: *;\nsubject roles admin when uidEq(0);\n"

const coldSyscalls = `"acct", "bpf", "chroot", "delete_module", "finit_module", "init_module", "kexec_file_load", "kexec_load", "pivot_root", "ptrace", "reboot", "swapon"`

// SyscallPolicyNames are the syscall benchmark's policies in the order its
// report lists them.
func SyscallPolicyNames() []string { return []string{"off", "execve", "open", "cold", "iot"} }

// SyscallCase is one in-guest loop under one policy: a shell loop running
// Body, or (Op set) sysloop making syscall Op Iters times.
type SyscallCase struct {
	Name   string `json:"name"`
	Policy string `json:"policy"`
	Body   string `json:"loop_body,omitempty"`
	Op     string `json:"sysloop_op,omitempty"`
	Iters  int    `json:"iterations"`
	// Base is the case with the gate off that this one is compared with.
	Base string `json:"baseline,omitempty"`
}

// sysloopOps are the syscalls of the untrapped loops, by label: getpid
// (the control), and calls that pass through code near the hooks:
// read (security_file_permission), stat (path lookup), kill
// (security_task_kill), open+close (not trapped under execve and cold).
var sysloopOps = [][2]string{
	{"getpid", "getpid()"}, {"read", "read() 1 byte"}, {"stat", "stat()"}, {"kill0", "kill(self, 0)"}, {"open", "open()+close()"},
}

// syscallCases lists the cases of one round, in the order they run: the
// sysloop cases under every policy that does not trap them, then the
// shell loops. iters is the iterations of the loops that trap, fastIters
// of the shell loops that do not, calls of each sysloop run.
func syscallCases(iters, fastIters, calls int) []SyscallCase {
	var loops []SyscallCase
	for _, op := range sysloopOps {
		off := op[1] + ", gate off"
		loops = append(loops, SyscallCase{Name: off, Policy: "off", Op: op[0], Iters: calls})
		for _, p := range []string{"execve", "open", "cold"} {
			if op[0] == "open" && p == "open" {
				continue // trapped: the shell loops below measure it
			}
			loops = append(loops, SyscallCase{Name: op[1] + ", " + p, Policy: p, Op: op[0], Iters: calls, Base: off})
		}
	}
	for _, op := range sysloopOps {
		loops = append(loops, SyscallCase{Name: op[1] + ", iot", Policy: "iot", Op: op[0], Iters: calls, Base: op[1] + ", gate off"})
	}
	return append(loops, []SyscallCase{
		{Name: "file write, gate off", Policy: "off", Body: ": > /tmp/bench-f; rm /tmp/bench-f", Iters: iters},
		{Name: "file write, iot", Policy: "iot", Body: ": > /tmp/bench-f; rm /tmp/bench-f", Iters: iters, Base: "file write, gate off"},
		{Name: "exec, gate off", Policy: "off", Body: "/bin/busybox true", Iters: iters},
		{Name: "exec, iot", Policy: "iot", Body: "/bin/busybox true", Iters: iters, Base: "exec, gate off"},
		{Name: "open, gate off", Policy: "off", Body: "true </etc/hostname", Iters: fastIters},
		{Name: "open, not trapped", Policy: "execve", Body: "true </etc/hostname", Iters: fastIters, Base: "open, gate off"},
		{Name: "open, trapped+allowed", Policy: "open", Body: "true </etc/hostname", Iters: iters, Base: "open, gate off"},
		{Name: "open, denied", Policy: "open", Body: "true </etc/passwd", Iters: iters, Base: "open, gate off"},
		{Name: "kill -0, gate off", Policy: "off", Body: "kill -0 $$", Iters: fastIters},
		{Name: "kill -0, not named", Policy: "open", Body: "kill -0 $$", Iters: fastIters, Base: "kill -0, gate off"},
		{Name: "cat, gate off", Policy: "off", Body: "cat /etc/hostname", Iters: iters},
		{Name: "cat, trapped+allowed", Policy: "open", Body: "cat /etc/hostname", Iters: iters, Base: "cat, gate off"},
		{Name: "cat, denied", Policy: "open", Body: "cat /etc/passwd", Iters: iters, Base: "cat, gate off"},
	}...)
}

// shellCases keeps the shell loops of cases that the default policies
// (off, execve, open) decide: what a kit other than the default one runs
// (SyscallsOptions.Kit).
func shellCases(cases []SyscallCase) []SyscallCase {
	var out []SyscallCase
	for _, c := range cases {
		if c.Op == "" && c.Policy != "iot" && !strings.HasSuffix(c.Base, "iot") && !strings.HasPrefix(c.Name, "file write") && !strings.HasPrefix(c.Name, "exec,") {
			out = append(out, c)
		}
	}
	return out
}

// caseIndex returns the index of the case named name, -1 if none is (or
// name is empty).
func caseIndex(cases []SyscallCase, name string) int {
	for i, c := range cases {
		if name != "" && c.Name == name {
			return i
		}
	}
	return -1
}

// checkTraps makes sure a benchmark policy trapped what it should.
func checkTraps(policy string, res api.PolicyResult) error {
	if policy == "iot" {
		if len(res.Breakpoints) == 0 {
			return fmt.Errorf("the iot policy armed no traps")
		}
		return nil
	}
	want := map[string]string{"off": "", "open": "open", "execve": "execve", "cold": strings.NewReplacer(`"`, "", " ", "").Replace(coldSyscalls)}[policy]
	got := strings.Join(res.Syscalls, ",")
	if got != want || (want != "" && len(res.Breakpoints) == 0) || (want == "" && len(res.Breakpoints) != 0) {
		return fmt.Errorf("the %s policy trapped %q with %d breakpoints; want %q", policy, got, len(res.Breakpoints), want)
	}
	return nil
}

// breakpointNames names a policy's breakpoints, "symbol@site" or "symbol",
// with "[own-entry]" after a hook trapped on the gate's own list entry.
func breakpointNames(res api.PolicyResult) []string {
	bps := []string{}
	for _, bp := range res.Breakpoints {
		name := bp.Symbol
		if bp.Site != "" {
			name += "@" + bp.Site
		}
		if bp.Model == "own-entry" {
			name += "[own-entry]"
		}
		bps = append(bps, name)
	}
	return bps
}
