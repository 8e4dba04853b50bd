package monitor

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// Network isolation (a policy response `do isolate`, or `gatevisor net
// isolate`): the network gate denies every new flow and resets or drops
// every open one, each decision audited as the isolation's, until `gatevisor
// net restore`. No flow is kept for management: gatevisor's own channels to
// the guest (the exec channel, the console, introspection) are not on the
// guest's network, so the device stays manageable while cut off.

// RuleIsolated is the audit rule of the flows an isolation denies.
const RuleIsolated = "net-isolated"

// netIsolation holds why the network is cut ("" when it is not).
type netIsolation struct{ why atomic.Pointer[string] }

func (n *netIsolation) reason() string {
	if p := n.why.Load(); p != nil {
		return *p
	}
	return ""
}

// isolatingServer is the network gate's decider: the security server, or,
// while the VM is isolated, a deny of every flow (audited).
type isolatingServer struct {
	countingServer
	iso *netIsolation
}

// DecideBatch implements the network gate's Decider.
func (s isolatingServer) DecideBatch(reqs []secserver.Request) []secserver.Decision {
	why := s.iso.reason()
	if why == "" {
		return s.countingServer.DecideBatch(reqs)
	}
	out := make([]secserver.Decision, len(reqs))
	for i, r := range reqs {
		out[i] = s.Server.GateFailure(r.Event, RuleIsolated, "the VM's network is isolated: "+why, 1)
		s.counts.add(out[i])
	}
	return out
}

// NetIsolate cuts the VM's network (api.VM): new flows are denied and
// open ones reset, until NetRestore.
func (m *Monitor) NetIsolate(ctx context.Context, why string) (api.NetIsolation, error) {
	caller, _ := api.CallerFromContext(ctx)
	if why == "" {
		why = "no reason given"
	}
	return m.netIsolate(procRequester{subject: event.Subject{PID: caller.PID, UID: caller.UID, GID: caller.GID},
		rule: "net.isolate", why: fmt.Sprintf("requested by uid %d: %s", caller.UID, why)})
}

// netIsolate cuts the VM's network on behalf of by, audited first.
func (m *Monitor) netIsolate(by procRequester) (api.NetIsolation, error) {
	if m.net == nil || m.net.gate == nil {
		return api.NetIsolation{}, apiErr(api.CodeConflict, "the VM has no gated network to isolate (start it with --net)")
	}
	ev := event.Event{Class: event.ClassAPI, Op: "net.isolate", Subject: by.subject, Time: time.Now().UTC()}
	if err := m.pol.sec.Record(&ev, secserver.Decision{Verdict: secserver.Allow, Rule: by.rule, Reason: "network isolated " + by.why}); err != nil {
		return api.NetIsolation{}, fmt.Errorf("net isolate: not done: the audit log cannot record it: %w", err)
	}
	why := by.why
	m.netIso.why.Store(&why)
	// Every allowed flow is decided again, through the isolation: denied,
	// reset both ways (TCP) or dropped.
	m.net.gate.PolicyChanged()
	m.publishNotice(monitoring.ProcNotice, "network isolated: "+why)
	m.logf("network isolated: %s", why)
	return api.NetIsolation{Isolated: true, Reason: why}, nil
}

// NetRestore ends an isolation (api.VM).
func (m *Monitor) NetRestore(ctx context.Context) (api.NetIsolation, error) {
	if m.net == nil || m.net.gate == nil {
		return api.NetIsolation{}, apiErr(api.CodeConflict, "the VM has no gated network")
	}
	was := m.netIso.reason()
	caller, _ := api.CallerFromContext(ctx)
	ev := event.Event{Class: event.ClassAPI, Op: "net.restore", Subject: event.Subject{PID: caller.PID, UID: caller.UID, GID: caller.GID}, Time: time.Now().UTC()}
	if err := m.pol.sec.Record(&ev, secserver.Decision{Verdict: secserver.Allow, Rule: "net.restore",
		Reason: fmt.Sprintf("network restored by uid %d (it was isolated: %s)", caller.UID, was)}); err != nil {
		return api.NetIsolation{}, fmt.Errorf("net restore: not done: the audit log cannot record it: %w", err)
	}
	m.netIso.why.Store(nil)
	// The flows the isolation denied are forgotten: the policy decides
	// them afresh.
	m.net.gate.PolicyChanged()
	if was != "" {
		m.publishNotice(monitoring.ProcNotice, fmt.Sprintf("network restored (it was isolated: %s)", was))
		m.logf("network restored")
	}
	return api.NetIsolation{}, nil
}
