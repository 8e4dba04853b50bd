package monitor

import (
	"context"

	"github.com/gatevisor/gatevisor/internal/api"
	gatenet "github.com/gatevisor/gatevisor/internal/gate/net"
)

// NetFlows returns the network gate's newest limit flows, each with the
// process it was attributed to and its decision (api.VM).
func (m *Monitor) NetFlows(_ context.Context, limit int) (api.NetFlows, error) {
	switch {
	case m.net == nil:
		return api.NetFlows{}, apiErr(api.CodeConflict, "the VM has no network: it was started without --net, so the network gate holds no flows")
	case m.net.gate == nil:
		return api.NetFlows{}, apiErr(api.CodeConflict, "the VM's network has no gate (--net-no-gate, for benchmarks): no flows are tracked")
	case limit < 1 || limit > api.MaxNetFlowsLimit:
		return api.NetFlows{}, apiErr(api.CodeBadRequest, "limit %d: ask for 1 to %d flows", limit, api.MaxNetFlowsLimit)
	}
	fs, total := m.net.gate.Flows(limit)
	out := api.NetFlows{Flows: make([]api.NetFlow, 0, len(fs)), Total: total, Limit: limit, Isolated: m.netIso.reason()}
	for i := range fs {
		out.Flows = append(out.Flows, netFlow(&fs[i]))
	}
	return out, nil
}

// netFlow is the API's form of one flow of the gate's table.
func netFlow(f *gatenet.FlowInfo) api.NetFlow {
	d := &f.Decision
	n := api.NetFlow{Proto: f.Key.ProtoName(), Local: f.Key.Local.String(), Remote: f.Key.Remote.String(), Dir: f.Dir.String(),
		State: f.State, Closed: f.Closed, Answered: f.Answered, Verdict: d.Verdict, Action: d.Action, Rule: d.Rule, Reason: d.Reason,
		PolicySeq: d.Seq, Revoked: d.Revoked, Permissive: d.Permissive, NoProcess: f.NoSubject,
		Created: f.Created.UTC(), Last: f.Last.UTC(), FramesOut: f.FramesOut, FramesIn: f.FramesIn, BytesOut: f.BytesOut, BytesIn: f.BytesIn}
	if !f.Decided.IsZero() {
		t := f.Decided.UTC()
		n.Decided = &t
	}
	if f.Attributed {
		s := f.Subject
		n.Process = &api.NetFlowProcess{PID: s.PID, Start: s.Start, PPID: s.PPID, Comm: s.Comm, Exe: s.Exe, UID: s.UID, GID: s.GID}
	}
	return n
}
