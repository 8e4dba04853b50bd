package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/fleet"
)

// FleetOptions configure Fleet.
type FleetOptions struct {
	Events int   // audit records published per configuration, split over its VMs
	VMs    []int // fleet sizes (synthetic monitors: no QEMU)
	Rounds int
}

// FleetRun is one configuration's measurements, one value per round.
type FleetRun struct {
	VMs         int       `json:"vms"`
	Side        string    `json:"side"` // "agents" (fleet.Agent from the audit logs) or "raw" (JetStream async publish of the same lines from memory)
	EventsPerS  []float64 `json:"events_per_s"`
	CPUUsPerEv  []float64 `json:"cpu_us_per_event"` // the process's user+system CPU (publishers and the embedded server) per event
	Subjects    int       `json:"subjects"`         // subjects in the events stream after the run
	StoredBytes uint64    `json:"stored_bytes"`
}

// FleetReport is what Fleet measured.
type FleetReport struct {
	Events int        `json:"events"`
	Rounds int        `json:"rounds"`
	Runs   []FleetRun `json:"runs"`
}

// Fleet measures how fast monitors publish to the fleet with JetStream
// acknowledgements: for each fleet size, that many synthetic monitors
// (fleet.Agent reading real audit logs of Events/size records each, no
// QEMU) publish into an embedded NATS server with JetStream on disk, in
// this process; the peer, in the same round, is a bare JetStream
// publisher sending the same lines from memory with the same window and
// message ids, the floor any publisher built on NATS has.
func Fleet(ctx context.Context, o FleetOptions) (*FleetReport, error) {
	rep := &FleetReport{Events: o.Events, Rounds: o.Rounds}
	for _, n := range o.VMs {
		agents := FleetRun{VMs: n, Side: "agents"}
		raw := FleetRun{VMs: n, Side: "raw"}
		for r := 0; r < o.Rounds; r++ {
			// Alternate which side goes first.
			sides := []*FleetRun{&agents, &raw}
			if r%2 == 1 {
				sides[0], sides[1] = sides[1], sides[0]
			}
			for _, s := range sides {
				if err := fleetRound(ctx, s, o.Events/n); err != nil {
					return nil, err
				}
			}
		}
		rep.Runs = append(rep.Runs, agents, raw)
	}
	return rep, nil
}

const benchToken = "bench-token-0123456789abcdef0123"

// fleetRound runs one side once: n VMs of per records each.
func fleetRound(ctx context.Context, run *FleetRun, per int) error {
	dir, err := os.MkdirTemp("", "gatevisor-bench-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logs := make([]string, run.VMs)
	for i := range logs {
		logs[i] = filepath.Join(dir, fmt.Sprintf("vm%d", i), "audit.jsonl")
		if err := writeBenchAudit(logs[i], fmt.Sprintf("vm%d", i), per); err != nil {
			return err
		}
	}
	srv, err := fleet.StartServer(fleet.ServerOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats"), Token: benchToken})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	nc, err := fleet.Conn{URL: srv.ClientURL(), Token: benchToken}.Connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(256))
	if err != nil {
		return err
	}
	if err := fleet.EnsureStreams(ctx, js, fleet.StreamOptions{}); err != nil {
		return err
	}
	total := per * run.VMs
	var lines [][][]byte
	if run.Side == "raw" {
		for _, l := range logs {
			ls, err := readLines(l)
			if err != nil {
				return err
			}
			lines = append(lines, ls)
		}
	}
	cpu0 := cpuTime()
	t0 := time.Now()
	if run.Side == "raw" {
		err = rawPublish(ctx, js, lines)
	} else {
		err = agentsPublish(ctx, nc, logs)
	}
	if err != nil {
		return err
	}
	el, cpu := time.Since(t0), cpuTime()-cpu0
	st, err := js.Stream(ctx, fleet.EventsStream)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(">"))
	if err != nil {
		return err
	}
	if info.State.Msgs < uint64(total) {
		return fmt.Errorf("bench fleet: %d messages stored, %d published", info.State.Msgs, total)
	}
	run.EventsPerS = append(run.EventsPerS, float64(total)/el.Seconds())
	run.CPUUsPerEv = append(run.CPUUsPerEv, float64(cpu.Microseconds())/float64(total))
	run.Subjects, run.StoredBytes = len(info.State.Subjects), info.State.Bytes
	return nil
}

// writeBenchAudit writes per deny records, as a gate would, to a new log.
func writeBenchAudit(path, vm string, per int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	l, err := audit.Open(path, audit.Options{VM: vm, Sync: audit.SyncNone, MaxSize: -1})
	if err != nil {
		return err
	}
	for i := 0; i < per-2; i++ { // the open and close records make per
		ev := event.Event{Class: event.ClassExec, Op: "exec", Path: fmt.Sprintf("/tmp/x%d", i),
			Subject: event.Subject{PID: int32(100 + i%1000), Comm: "sh", Exe: "/bin/busybox"}}
		if err := l.Append(&audit.Record{Time: time.Now(), Verdict: "deny", Errno: 13, Rule: "no_tmp_exec", Reason: "deny: the condition of rule no_tmp_exec matched", Event: ev}); err != nil {
			l.Close()
			return err
		}
	}
	return l.Close()
}

func readLines(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != '\n' {
			i++
		}
		out = append(out, b[:i])
		if i < len(b) {
			i++
		}
		b = b[i:]
	}
	return out, nil
}

// rawPublish sends every VM's lines, VM after VM's in turn, 256 in flight.
func rawPublish(ctx context.Context, js jetstream.JetStream, vms [][][]byte) error {
	for i, lines := range vms {
		subj, err := fleet.Subject("bench", fmt.Sprintf("vm%d", i), fleet.KindAudit)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if _, err := js.PublishAsync(subj, l, jetstream.WithMsgID(fleet.LineID(l))); err != nil {
				return err
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Minute):
		return errors.New("bench fleet: the raw publisher's acks did not come within 5 minutes")
	}
}

// agentsPublish runs one agent per log until each has every record acked.
func agentsPublish(ctx context.Context, nc *nats.Conn, logs []string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	agents := make([]*fleet.Agent, len(logs))
	done := make(chan error, len(logs))
	for i, l := range logs {
		head, err := lastAuditN(l)
		if err != nil {
			return err
		}
		a := &fleet.Agent{Host: "bench", VM: fmt.Sprintf("vm%d", i), AuditLog: l, Member: benchMember{}, Poll: 10 * time.Millisecond, StateInterval: time.Hour, Logf: func(string, ...any) {}}
		agents[i] = a
		go func() { done <- a.Run(ctx, nc) }()
		go func(a *fleet.Agent, head uint64) {
			for a.Stats().AuditN < head {
				select {
				case <-ctx.Done():
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
			done <- nil
		}(a, head)
	}
	deadline := time.After(5 * time.Minute)
	for range logs {
		select {
		case err := <-done:
			if err != nil {
				return err
			}
		case <-deadline:
			return errors.New("bench fleet: the agents did not publish everything within 5 minutes")
		}
	}
	return nil
}

func lastAuditN(path string) (uint64, error) {
	var n uint64
	_, err := audit.Walk(path, audit.WalkOptions{}, func(r *audit.Record, _ []byte) error { n = r.N; return nil })
	return n, err
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// WriteText renders the report.
func (rep *FleetReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("fleet publishing with JetStream acks: %d audit records per configuration, %d rounds (medians; embedded NATS server in this process, file storage)\n", rep.Events, rep.Rounds)
	t.printf("%-5s %-7s %12s %14s %9s %10s\n", "VMs", "side", "events/s", "CPU µs/event", "subjects", "stored")
	var base float64
	for _, r := range rep.Runs {
		eps := Median(r.EventsPerS)
		t.printf("%-5d %-7s %12.0f %14.1f %9d %9.1fM\n", r.VMs, r.Side, eps, Median(r.CPUUsPerEv), r.Subjects, float64(r.StoredBytes)/1e6)
		if r.VMs == rep.Runs[0].VMs && r.Side == "raw" {
			base = eps
		}
	}
	if base > 0 && len(rep.Runs) > 0 {
		t.printf("agents / raw publisher (%d VM): %.2f of the events/s\n", rep.Runs[0].VMs, Median(rep.Runs[0].EventsPerS)/base)
	}
	return t.err
}

// benchMember is a monitor without a VM, for the synthetic fleet.
type benchMember struct{}

func (benchMember) Status(context.Context) api.Status { return api.Status{State: "running"} }

func (benchMember) LoadPolicy(context.Context, api.PolicyRequest) (api.PolicyResult, error) {
	return api.PolicyResult{}, errors.New("a synthetic monitor takes no policy")
}
