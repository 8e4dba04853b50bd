package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// The VM's one policy. A policy file is read and compiled once into a
// policy.Snapshot, checked against what this VM's gates can observe
// (coverage: a rule no gate enforces is an error, before QEMU starts), and
// handed whole to every consumer: the security server decides from it, the
// kernel gate arms the traps it needs, the network and API gates ask the
// security server. A change of policy is a transaction (commitLocked):
// every gate takes the new snapshot, or none does and the old stays in
// force everywhere.

// policyState is the policy in force and what decides and records by it.
type policyState struct {
	mu   sync.Mutex // serializes changes of policy (boot arming, reloads)
	snap atomic.Pointer[policy.Snapshot]
	// path is the file the snapshot in force came from ("" when loaded
	// from source over the API without a path).
	path atomic.Pointer[string]
	sec  *secserver.Server
	log  *audit.Log
	// cov is what this VM's gates observe: set once, at start (with a
	// policy) or at the first policy load.
	cov atomic.Pointer[policy.Coverage]
	// advisory are the problems of the policy in force that its advisory
	// classes excuse: statements accepted but not enforced.
	advisory atomic.Pointer[[]string]
	// Each gate's decisions by verdict.
	kernelVerdicts, netVerdicts, apiVerdicts verdictCounts
	// Policy loads that took effect and that were refused.
	reloads, failedReloads atomic.Uint64
}

// testFailApply names a gate whose apply step fails, for the tests of the
// transaction (docs/design.md): GATEVISOR_TEST_FAIL_APPLY=kernel|net makes
// every policy change fail at that gate's step. Read once at start.
const testFailApplyEnv = "GATEVISOR_TEST_FAIL_APPLY"

// Gate names in the transaction and in status.
const (
	gateKernel = "kernel"
	gateNet    = "net"
	gateAPI    = "api"
)

// prepareStartPolicy reads, compiles and checks the start policy: called
// before anything is created, so that a policy that does not parse or
// states a rule no gate of this VM enforces starts nothing.
func (m *Monitor) prepareStartPolicy() (*policy.Snapshot, error) {
	if m.cfg.PolicyFile == "" {
		return nil, nil
	}
	snap, err := policy.LoadFile(m.cfg.PolicyFile)
	if err != nil {
		return nil, fmt.Errorf("--policy: %w", err)
	}
	prof, err := m.kernelProfile()
	if err != nil {
		return nil, fmt.Errorf("--policy: the gates need a profile of the guest kernel %s: %w", m.cfg.Kernel, err)
	}
	cov := m.coverage(prof)
	m.pol.cov.Store(&cov)
	if err := m.checkCoverage(snap); err != nil {
		return nil, fmt.Errorf("--policy %s: %w", m.cfg.PolicyFile, err)
	}
	return snap, nil
}

// CheckStartPolicy reads and compiles cfg's policy and checks it against
// the gates of a VM started with cfg (its kernel, network, files, scan and
// snapshots), as Start does: the CLI calls it before it forks a background
// monitor, so that a policy that would not start says why at once.
func CheckStartPolicy(cfg Config) error {
	m := &Monitor{cfg: cfg}
	_, err := m.prepareStartPolicy()
	return err
}

// CheckPolicy reads and compiles the policy at path and checks it against
// the gates a VM with the given kernel and network would have, as Start
// does: the CLI calls it before it forks a background monitor, so that a
// policy that would not start says why at once.
func CheckPolicy(path, kernel string, netOpts NetOptions, idsInterval time.Duration) error {
	m := &Monitor{cfg: Config{PolicyFile: path, Kernel: kernel, Net: netOpts, IDSInterval: idsInterval}}
	_, err := m.prepareStartPolicy()
	return err
}

// noKernelGate is why a guest of an architecture the kernel gate does not
// know (x86-64 and arm64 only: gate/syscall/isa.go) has none.
func noKernelGate(arch string) string {
	if arch == linux.ArchARMHF {
		return ARMHFNoKernelGate
	}
	return fmt.Sprintf("the kernel gate is not implemented for %s guests: it knows the registers, syscall handlers and numbers of x86-64 and arm64 only", arch)
}

// ARMHFNoKernelGate is why a 32-bit ARM guest has no kernel gate
// (docs/design.md, "32-bit ARM guests").
const ARMHFNoKernelGate = "the kernel gate is not implemented for armhf guests: 32-bit ARM enters system calls in assembly (vector_swi: the number in r7, the arguments in r0-r5, the handler called straight from sys_call_table, the result stored back from r0 in ret_fast_syscall), with no C entry point such as x86-64's do_syscall_64 or arm64's invoke_syscall for the gate's breakpoints, and the gate's instruction-set table (gate/syscall/isa.go) describes x86-64 and arm64 only"

// coverage is what this VM's gates observe (Coverage).
func (m *Monitor) coverage(prof *linux.Profile) policy.Coverage {
	cov := Coverage(prof, filepath.Base(m.cfg.Kernel), m.cfg.Net.Mode != NetNone && !m.cfg.Net.NoGate, m.cfg.IDSInterval > 0)
	if len(m.cfg.Files) > 0 {
		cov = FileGateCoverage(cov)
	}
	cov.ReadySnapshot = m.cfg.SnapshotReady
	return cov
}

// NetOps are the network gate's ops: it decides each new flow, as a TCP
// connect (out) or accept (in), or the first datagram sent (out) or
// received (in) of a UDP or ICMP flow.
var NetOps = []string{"accept", "connect", "recv", "send"}

// Coverage is what the gates of a VM observe: the kernel gate's classes on
// the kernel of prof (gate.Observers; nil prof: a kernel not known, whose
// syscalls are taken on trust), the network gate's when the VM has a
// gated network, the API gate's always. IPC calls have no gate.
//
// With scan (a continuous IDS scan) the responses of a policy may answer
// every IDS check's findings.
func Coverage(prof *linux.Profile, kernel string, gatedNet, scan bool) policy.Coverage {
	cov := policy.Coverage{Observers: map[event.Class]policy.Observer{}, Absent: map[event.Class]string{
		event.ClassCall: "gatevisor has no gate for IPC calls (KasperskyOS `call in/out`, `entity`): no event of this class is ever observed",
	}}
	known := prof == nil || prof.Arch == "" || prof.Arch == linux.ArchAMD64 || prof.IsARM64()
	switch {
	case !known:
		// Fail closed: no kernel gate for this architecture, so no rule
		// of its classes is accepted (unless marked advisory).
	case prof != nil:
		cov.Observers = gate.Observers(prof)
	default:
		cov.Observers = gate.GenericObservers()
	}
	for _, c := range []event.Class{event.ClassSyscall, event.ClassFile, event.ClassExec, event.ClassModule} {
		if !known {
			cov.Absent[c] = noKernelGate(prof.Arch)
			continue
		}
		if _, ok := cov.Observers[c]; !ok {
			cov.Absent[c] = fmt.Sprintf("the guest kernel %s has no kallsyms or LSM hooks (with BTF) for %s events", kernel, c)
		}
	}
	if gatedNet {
		cov.Observers[event.ClassNet] = policy.Observer{Gate: "the network gate", All: true, Ops: NetOps}
	} else {
		cov.Absent[event.ClassNet] = "the network gate needs a network: start the VM with --net isolated (or user, or tap:IF)"
	}
	if scan {
		cov.Findings = map[string]bool{}
		for _, c := range ids.CheckNames() {
			if ids.RunsOn(prof, c) {
				cov.Findings[c] = true
			}
		}
	}
	actions := api.Actions()
	sort.Strings(actions)
	cov.Observers[event.ClassAPI] = policy.Observer{Gate: "the API gate", All: true, Ops: actions}
	if prof != nil {
		cov.NoProcActions = noProcActions(prof.Arch)
	}
	return cov
}

// checkCoverage refuses a snapshot with a statement no gate of this VM
// enforces, naming every one (file:line:col, the rule, what is missing).
// Advisory ones are recorded for status and logged.
func (m *Monitor) checkCoverage(snap *policy.Snapshot) error {
	var errs []error
	var notes []string
	for _, p := range snap.Policy.Check(*m.pol.cov.Load()) {
		if p.Advisory {
			notes = append(notes, p.String())
			continue
		}
		errs = append(errs, p.Error())
	}
	errs = append(errs, snap.Policy.CheckResponses(*m.pol.cov.Load())...)
	if len(errs) > 0 {
		return fmt.Errorf("%d statement(s) no gate of this VM can enforce:\n%w", len(errs), errors.Join(errs...))
	}
	m.pol.advisory.Store(&notes)
	for _, n := range notes {
		m.logf("policy: %s", n)
	}
	return nil
}

// openSecurity opens the audit log and the security server with the start
// snapshot in force (none: every gated event is denied).
func (m *Monitor) openSecurity(snap *policy.Snapshot) error {
	var sink secserver.Sink
	if m.cfg.AuditLog != "" {
		digest := ""
		if snap != nil {
			digest = snap.Digest
		}
		l, err := audit.Open(m.cfg.AuditLog, audit.Options{MaxSize: m.cfg.AuditMaxSize, Keep: m.cfg.AuditKeep,
			VM: m.cfg.Name, Policy: digest, PolicySeq: 1, OnNearLimit: m.onAuditNearLimit})
		if err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		m.pol.log, sink = l, timedLog{l, m.metrics}
	}
	// Floods of decisions are aggregated in the audit log (only where a
	// gate asks for batches: the network gate).
	m.pol.sec = secserver.New(nil, secserver.Config{Audit: sink, Aggregate: &secserver.Aggregation{}})
	if snap == nil {
		if m.cfg.Net.Mode != NetNone {
			m.logf("no --policy: the network gate denies every flow")
		}
		return nil
	}
	m.pol.sec.Reload(snap.Policy, snap.Name)
	m.pol.snap.Store(snap)
	p := m.cfg.PolicyFile
	m.pol.path.Store(&p)
	return nil
}

// onAuditNearLimit publishes that the audit log is about to lose (or has
// lost) its oldest evidence to rotation.
func (m *Monitor) onAuditNearLimit(n audit.NearLimit) {
	msg := fmt.Sprintf("%s holds %d of %d bytes its retention keeps", n.Path, n.Retained, n.Capacity)
	switch {
	case n.Err != nil:
		msg += fmt.Sprintf("; pruning old files failed (%v), they stay", n.Err)
	case n.Pruned != nil:
		msg += fmt.Sprintf("; rotation deleted records %d to %d (the chain records it)", n.Pruned.FirstN, n.Pruned.LastN)
	case n.Next != nil:
		msg += fmt.Sprintf("; the next rotation deletes records %d to %d: raise --audit-keep or --audit-max-size, or archive them", n.Next.FirstN, n.Next.LastN)
	}
	m.logf("audit log: %s", msg)
	m.publishNotice(monitoring.AuditNotice, msg)
}

// kernelNeeded reports whether a snapshot needs the kernel gate: traps for
// syscalls, file ops, execs or module operations.
func (m *Monitor) kernelNeeded(snap *policy.Snapshot) bool {
	if snap == nil {
		return false
	}
	cov := m.pol.cov.Load()
	if cov == nil {
		return false
	}
	for _, c := range []event.Class{event.ClassSyscall, event.ClassFile, event.ClassExec, event.ClassModule} {
		o, ok := cov.Observers[c]
		if !ok {
			continue
		}
		if ops, all := snap.Policy.Ops(c, o); all || len(ops) > 0 {
			return true
		}
	}
	return false
}

// LoadPolicy implements api.VM: the policy is compiled and checked against
// this VM's gates, then every gate takes it in one transaction with the VM
// stopped. On any failure the policy in force stays in force everywhere.
func (m *Monitor) LoadPolicy(ctx context.Context, req api.PolicyRequest) (api.PolicyResult, error) {
	if err := m.checkRunning(); err != nil {
		return api.PolicyResult{}, err
	}
	refuse := func(err error) (api.PolicyResult, error) {
		m.pol.failedReloads.Add(1)
		_, seq := m.pol.sec.Policy()
		return api.PolicyResult{Seq: seq}, &api.Error{Code: api.CodeBadRequest,
			Message: fmt.Sprintf("policy rejected, policy %d stays in force on every gate: %v", seq, err)}
	}
	dir, base := filepath.Split(req.Path)
	if dir == "" {
		dir = "."
	}
	resolve := policy.FSResolver(os.DirFS(dir))
	if c, ok := api.CallerFromContext(ctx); ok && c.UID != 0 && int(c.UID) != os.Geteuid() {
		resolve = callersOwn(dir, c.UID)
	}
	if req.Files != nil {
		if err := req.CheckFiles(); err != nil {
			return refuse(err)
		}
		resolve = policy.MapResolver(req.Files)
	}
	snap, err := policy.NewSnapshot(base, []byte(req.Source), resolve)
	if err != nil {
		return refuse(err)
	}
	if m.kg.booting.Load() {
		return refuse(errors.New("the guest kernel is booting and the start policy is armed when it reaches SYSTEM_RUNNING: load the new policy once the guest is ready"))
	}
	if m.pol.cov.Load() == nil {
		// Started without a policy: the coverage needs the kernel's profile.
		prof, err := m.kernelProfile()
		if err != nil {
			return refuse(fmt.Errorf("profile the guest kernel: %w", err))
		}
		cov := m.coverage(prof)
		m.pol.cov.CompareAndSwap(nil, &cov)
	}
	m.pol.mu.Lock()
	defer m.pol.mu.Unlock()
	if err := m.checkCoverage(snap); err != nil {
		return refuse(err)
	}
	var res api.PolicyResult
	if (m.kernelNeeded(snap) || m.kg.armed()) && !m.kg.kernelUp.Load() {
		if !m.guestReady() {
			// Traps set before the kernel's boot-time text patching could
			// go stale (under KVM an int3 could be overwritten).
			return refuse(errors.New("the guest is still booting: load the policy once it is ready, or give it to run --policy"))
		}
		if err := m.locateForGate(ctx); err != nil {
			return refuse(err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = m.dbg.Do(ctx, func(ctx context.Context, c *gdbrsp.Client) error {
		var err error
		res, err = m.commitLocked(ctx, c, snap, req.Path)
		return err
	})
	if errors.Is(err, errKeepStopped) {
		// A step failed and could not be undone: the gates may disagree
		// with the policy in force, so the guest does not run on.
		m.failClosed(err)
	}
	if err != nil {
		return refuse(err)
	}
	m.logf("policy %d (%s, %s) in force: %d traps", res.Seq, req.Path, snap.Digest, len(res.Breakpoints))
	m.wantGatePage() // a VM booted without kernel traps gets its page now
	return res, nil
}

// commitLocked makes snap the policy of every gate, in order: the kernel
// gate's traps (planned, then set), the network gate, then the security
// server (the commit point: from here the net and API gates decide by the
// new policy). If a step fails, the steps before it are undone and the old
// snapshot stays in force everywhere.
//
// Preconditions: m.pol.mu held; the VM is stopped (on the debugger
// goroutine, with c).
func (m *Monitor) commitLocked(ctx context.Context, c *gdbrsp.Client, snap *policy.Snapshot, path string) (api.PolicyResult, error) {
	var res api.PolicyResult
	undo, res, err := m.applyKernelLocked(ctx, c, snap)
	if err == nil {
		err = m.failInjected(gateNet)
	}
	if err == nil {
		err = m.failInjected(gateAPI)
	}
	if err != nil {
		if uerr := undo(); uerr != nil {
			// The traps could not be put back: the kernel gate may now
			// differ from the policy in force. Fail closed: end the VM.
			return res, fmt.Errorf("%w; undoing the kernel gate's change failed too (%v): %w", err, uerr, errKeepStopped)
		}
		return res, err
	}
	seq := m.pol.sec.Reload(snap.Policy, snap.Name)
	m.pol.reloads.Add(1)
	m.pol.snap.Store(snap)
	m.pol.path.Store(&path)
	if m.pol.log != nil {
		if err := m.pol.log.AppendPolicy(snap.Digest, seq); err != nil {
			m.logf("audit log: record policy %d: %v", seq, err)
		}
	}
	res.Seq, res.Path, res.Digest = seq, path, snap.Digest
	return res, nil
}

// failInjected returns the injected failure of gate's apply step, if the
// environment asks for one (testFailApplyEnv).
func (m *Monitor) failInjected(gateName string) error {
	if m.failApply != "" && m.failApply == gateName {
		return fmt.Errorf("the %s gate failed to apply the policy (injected by %s)", gateName, testFailApplyEnv)
	}
	return nil
}

// authorize is the API gate: with a policy in force every request is an
// api event decided by the security server (audited as the policy says),
// the caller taken from the socket's peer credentials; without one, only
// the VM's owner and root may call.
func (m *Monitor) authorize(_ context.Context, c api.Caller, action string) error {
	if m.pol.snap.Load() == nil {
		if c.UID == 0 || int(c.UID) == os.Getuid() {
			return nil
		}
		return fmt.Errorf("no policy is in force: only the VM's owner (uid %d) and root may use its API", os.Getuid())
	}
	ev := event.Event{Class: event.ClassAPI, Op: action, Subject: event.Subject{PID: c.PID, UID: c.UID, GID: c.GID}, Time: time.Now().UTC()}
	d := m.pol.sec.Decide(&ev)
	m.pol.apiVerdicts.add(d)
	if d.Allows() {
		return nil
	}
	return fmt.Errorf("%s by rule %s (policy %d): %s", d.Verdict, d.Rule, d.Seq, d.Reason)
}

// callersOwn resolves includes for a caller other than the VM's owner or
// root (whom a policy granted policy.load): only regular files of uid,
// reached without a symbolic link below dir (the kernel resolves the path:
// nothing can be swapped in between), so that the caller cannot make the
// monitor read a file it could not and have its text quoted back in a
// parse error.
func callersOwn(dir string, uid uint32) policy.Resolver {
	return func(from, name string) (string, []byte, error) {
		p := path.Clean(path.Join(path.Dir(from), name))
		if !fs.ValidPath(p) {
			return "", nil, fmt.Errorf("%q is outside the policy directory", name)
		}
		dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", nil, fmt.Errorf("%s: %w", dir, err)
		}
		defer unix.Close(dfd)
		fd, err := unix.Openat2(dfd, p, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			return "", nil, fmt.Errorf("include %q: %w (a policy loaded by uid %d may include only its own files, without symbolic links)", name, err, uid)
		}
		f := os.NewFile(uintptr(fd), p)
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return "", nil, err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != uid || !fi.Mode().IsRegular() {
			return "", nil, fmt.Errorf("include %q is not a regular file of uid %d: a policy loaded by uid %d may include only its own files", name, uid, uid)
		}
		b, err := io.ReadAll(io.LimitReader(f, policy.MaxFileSize+1))
		if err != nil {
			return "", nil, err
		}
		return p, b, nil
	}
}

// policyStatus is the policy part of Status.
func (m *Monitor) policyStatus() *api.PolicyStatus {
	snap := m.pol.snap.Load()
	if snap == nil {
		return nil
	}
	_, seq := m.pol.sec.Policy()
	st := &api.PolicyStatus{Digest: snap.Digest, Seq: seq, Files: snap.Files, Reloads: m.pol.reloads.Load(), FailedReloads: m.pol.failedReloads.Load()}
	if p := m.pol.path.Load(); p != nil {
		st.Path = *p
	}
	if a := m.pol.advisory.Load(); a != nil {
		st.NotEnforced = *a
	}
	return st
}

// gatesStatus says, per gate, whether it is armed and with what.
func (m *Monitor) gatesStatus() []api.GateStatus {
	snap := m.pol.snap.Load()
	var out []api.GateStatus
	k := api.GateStatus{Name: gateKernel}
	m.kg.mu.Lock()
	for _, t := range m.kg.traps {
		if !t.Shown() {
			continue // an own-entry hook's other sites and its head's guard
		}
		k.Traps++
		if t.Watch != 0 {
			k.Watchpoints++
			continue
		}
		k.Breakpoints = append(k.Breakpoints, m.trapView(t, snap))
	}
	k.Armed = k.Traps > 0
	classes := map[string]bool{}
	for _, t := range m.kg.traps {
		for _, c := range []event.Class{event.ClassSyscall, event.ClassFile, event.ClassExec, event.ClassModule} {
			if t.Classes.Has(c) {
				classes[c.String()] = true
			}
		}
	}
	m.kg.mu.Unlock()
	for c := range classes {
		k.Classes = append(k.Classes, c)
	}
	sort.Strings(k.Classes)
	switch {
	case snap == nil:
		k.Note = "no policy"
	case !k.Armed && m.kernelNeeded(snap):
		k.Note = "waiting for the guest kernel to reach SYSTEM_RUNNING"
	case !k.Armed:
		k.Note = "the policy needs no kernel traps"
	}
	k.Decisions = m.pol.kernelVerdicts.snapshot()
	out = append(out, k)
	n := api.GateStatus{Name: gateNet, Armed: m.net != nil && m.net.gate != nil, Classes: []string{"net"},
		Decisions: m.pol.netVerdicts.snapshot()}
	if !n.Armed {
		n.Note = "no --net"
		if m.net != nil {
			n.Note = "--net-no-gate (benchmarks only)"
		}
	}
	out = append(out, n)
	a := api.GateStatus{Name: gateAPI, Armed: snap != nil, Classes: []string{"api"}, Decisions: m.pol.apiVerdicts.snapshot()}
	switch {
	case snap == nil:
		a.Note = "no policy: the owner and root only"
	case m.apiPrivate != "":
		a.Note = "the socket is not reachable by other users: the policy decides for the owner and root"
	}
	return append(out, a)
}

// policyLine is a one-line summary for logs.
func policyLine(snap *policy.Snapshot) string {
	if snap == nil {
		return "none"
	}
	return fmt.Sprintf("%s (%s, %d files)", strings.Join(snap.Files, ", "), snap.Digest, len(snap.Files))
}
