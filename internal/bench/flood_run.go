package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// FloodRound is one scenario's measurement in one round.
type FloodRound struct {
	// WindowSeconds is the span the deltas below cover, by the host's
	// clock: from just before the flood started to the first status
	// sample after it ended (for a baseline, after the bystander ended).
	WindowSeconds float64 `json:"window_seconds"`
	// HostPerGuest is host seconds per guest second over the flood (the
	// bystander for a baseline): the guest's clock stands still while a
	// trap holds the VM, so its own timings (the flood's rate, the
	// bystander's latencies) leave that time out. FloodWallRate is the
	// flood's attempts per second by the host's clock.
	HostPerGuest  float64      `json:"host_s_per_guest_s"`
	FloodWallRate float64      `json:"flood_wall_rate_per_s,omitempty"`
	Flood         *FloodOutput `json:"flood,omitempty"`
	Bystander     FloodOutput  `json:"bystander"`
	// The bystander's successful attempts: percentiles (nearest rank
	// below) and the slowest, in µs; Failed counts the rest.
	BystanderP50 float64 `json:"bystander_p50_us"`
	BystanderP99 float64 `json:"bystander_p99_us"`
	BystanderMax float64 `json:"bystander_max_us"`
	Failed       int64   `json:"bystander_failed"`
	// Wget is the network bystander's 'timeout 20 wget -qO-
	// http://10.0.2.2/', run in a third process beside the timed connects.
	Wget  *WgetResult   `json:"wget,omitempty"`
	Net   *FloodNet     `json:"net,omitempty"`
	Gate  FloodKernel   `json:"kernel_gate"`
	CPU   FloodCPU      `json:"host_cpu"`
	Logs  FloodLogs     `json:"logs"`
	RSS   FloodMemory   `json:"monitor_memory"`
	Socks *FloodSockets `json:"guest_sockets,omitempty"`
}

// WgetResult is one wget's outcome, timed by the guest's /proc/uptime.
type WgetResult struct {
	Exit    int     `json:"exit"`
	Seconds float64 `json:"seconds"`
	// InFlood says whether it ended before the flood did (a wget that
	// outlived the flood says little about the gate under it).
	InFlood   bool `json:"in_flood"`
	endUptime float64
}

// FloodNet is the network gate over a round's window: its counters'
// deltas, what they and the logs say about decisions, and the flow table.
type FloodNet struct {
	NewFlows uint64 `json:"new_flows"`
	Allowed  uint64 `json:"allowed"`
	Denied   uint64 `json:"denied"`
	Resets   uint64 `json:"resets"`
	Dropped  uint64 `json:"dropped"`
	// Unattributed counts decisions made without finding the flow's
	// process (its socket was gone, or never found).
	Unattributed uint64            `json:"unattributed"`
	DropReasons  map[string]uint64 `json:"drop_reasons,omitempty"`
	// Decisions are the policy's verdicts (allowed, and denies audited
	// by a policy rule); Undecided the denies no policy rule made: those
	// without an audit record (gate-overload before issue 21) and those
	// audited by a rule of the gate's own. UndecidedShare is Undecided
	// over both.
	Decisions       uint64  `json:"decisions"`
	DecisionsPerSec float64 `json:"decisions_per_s"`
	Undecided       uint64  `json:"undecided"`
	UndecidedShare  float64 `json:"undecided_share"`
	// DenyRules counts the window's denies by rule, from the event log.
	DenyRules map[string]uint64 `json:"deny_rules,omitempty"`
	// Attribution time of the window's policy decisions (attribute_us of
	// their events), median and p90, and how many needed more than one
	// walk of the guest.
	AttributeN       int     `json:"attribute_samples"`
	AttributeP50     float64 `json:"attribute_p50_us"`
	AttributeP90     float64 `json:"attribute_p90_us"`
	AttributeRetried int     `json:"attribute_retried"`
	// The flow table: largest and last size sampled in the window, the
	// sampled time at flowTableCapacity or more, every sample.
	FlowsMax    int           `json:"flows_max"`
	FlowsEnd    int           `json:"flows_end"`
	FullSeconds float64       `json:"flows_full_seconds"`
	Flows       []FlowsSample `json:"flows"`
	// Backlog is the decisions made after the window until the gate was
	// quiet again, DrainSeconds how long that took.
	Backlog      uint64  `json:"backlog_decisions"`
	DrainSeconds float64 `json:"drain_seconds"`
}

// FlowsSample is the flow table's size at a time in a window.
type FlowsSample struct {
	Seconds float64 `json:"s"` // since the window's start
	Flows   int     `json:"flows"`
}

// FloodKernel is the kernel gate over a round's window.
type FloodKernel struct {
	Stops        uint64  `json:"stops"`
	Decided      uint64  `json:"decided"`
	StopsPerSec  float64 `json:"stops_per_s"`
	HandleMicros float64 `json:"monitor_us_per_stop"` // the monitor's time per stop
}

// FloodLogs are the monitor's logs over a round's window.
type FloodLogs struct {
	// AuditRecords is the records the audit chain grew by (its head);
	// AuditDecisions the decisions the window's records stand for (an
	// aggregated record stands for several), by class.
	AuditRecords   uint64            `json:"audit_records"`
	AuditDecisions map[string]uint64 `json:"audit_decisions,omitempty"`
	AuditBytes     int64             `json:"audit_bytes"`
	EventsBytes    int64             `json:"events_bytes"`
}

// FloodCPU is the host CPU time the monitor (gates, network, logs) and
// QEMU (the vCPUs, the NIC) took over a round's window, in per cent of
// one CPU, from their threads' schedstat.
type FloodCPU struct {
	MonitorPercent float64 `json:"monitor_percent"`
	QEMUPercent    float64 `json:"qemu_percent"`
}

// FloodMemory is the monitor's resident memory over a round's window.
type FloodMemory struct {
	StartKiB int64 `json:"start_kib"`
	PeakKiB  int64 `json:"peak_kib"` // the largest VmRSS sampled
	HWMKiB   int64 `json:"hwm_kib"`  // VmHWM at the window's end (since boot)
}

// FloodSockets is one walk of the guest's sockets in the middle of a
// flood (ids sockets): how many there were and how long the walk took,
// what attributing a flow costs with that many.
type FloodSockets struct {
	Count         int   `json:"count"`
	ElapsedMicros int64 `json:"walk_us"`
}

// brief is a round's progress line.
func (r FloodRound) brief() string {
	s := fmt.Sprintf("bystander p50 %.0f µs, p99 %.0f µs, %d of %d failed", r.BystanderP50, r.BystanderP99, r.Failed, r.Bystander.Attempts)
	if r.Flood != nil {
		s = fmt.Sprintf("flood %.0f/s, %.2f host s per guest s; ", r.FloodWallRate, r.HostPerGuest) + s
	}
	if n := r.Net; n != nil {
		s += fmt.Sprintf("; %.1f decisions/s, %.0f%% denied by the gate's own limits, flows max %d", n.DecisionsPerSec, n.UndecidedShare*100, n.FlowsMax)
	}
	if r.Wget != nil {
		s += fmt.Sprintf("; wget exit %d in %.2fs", r.Wget.Exit, r.Wget.Seconds)
	}
	return s + fmt.Sprintf("; kernel stops %d", r.Gate.Stops)
}

// floodVM is one of the flood benchmark's guests.
type floodVM struct {
	env         Env
	c           *apiclient.Client
	name, accel string
	cpus        int
	monPID      int
	qemuPID     int
	eventsLog   string
	auditLog    string
	net         bool
}

func newFloodVM(ctx context.Context, env Env, c *apiclient.Client, name string) (*floodVM, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	if st.Net == nil || st.Net.Gate == nil {
		return nil, errors.New("the flood VM has no network gate in its status")
	}
	if st.Audit == nil {
		return nil, errors.New("the flood VM has no audit log in its status")
	}
	dir, err := env.StateDir(name)
	if err != nil {
		return nil, err
	}
	return &floodVM{env: env, c: c, name: name, accel: st.Accel, cpus: st.CPUs, monPID: st.MonitorPID, qemuPID: st.QEMUPID,
		eventsLog: filepath.Join(dir, "events.jsonl"), auditLog: st.Audit.Log, net: true}, nil
}

// floodPrepareScript makes sure the guest has its DHCP lease and a
// default route (the pinning pattern's addresses take it).
const floodPrepareScript = `ip -4 addr show eth0 | grep -q 'inet 10.0.2.' || udhcpc -i eth0 -n -q -t 5 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1
ip -4 addr show eth0 | grep -q 'inet 10.0.2.' || { echo "no DHCP lease"; exit 1; }
ip route | grep -q '^default' || ip route add default via 10.0.2.2 || { echo "no default route"; exit 1; }
[ -x ` + FloodGuestPath + ` ] || { echo "no ` + FloodGuestPath + `"; exit 1; }`

// prepare readies the guest and warms the bystanders up.
func (vm *floodVM) prepare(ctx context.Context) error {
	res, err := guestSh(ctx, vm.c, floodPrepareScript, 120)
	if err != nil {
		return fmt.Errorf("prepare the guest: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("prepare the guest: exit %d: %s%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	for _, argv := range [][]string{
		{FloodGuestPath, "connect-latency", floodHost, strconv.Itoa(bystanderPort), "3", "10", "30"},
		{FloodGuestPath, "open-latency", floodAllowedPath, "3", "10", "30"},
	} {
		res, err := vm.c.Exec(ctx, api.ExecRequest{Argv: argv, TimeoutSeconds: 60})
		if err != nil {
			return fmt.Errorf("warm-up %s: %w", argv[1], err)
		}
		if o, err := ParseFloodOutput(res.Stdout); err != nil || res.ExitCode != 0 || o.OK != o.Attempts {
			return fmt.Errorf("warm-up %s: exit %d, %v, stdout %q, stderr %q", argv[1], res.ExitCode, err, res.Stdout, res.Stderr)
		}
	}
	return nil
}

// floodSample is the monitor's state at one time.
type floodSample struct {
	at                    time.Time
	st                    api.Status
	rssKiB, hwmKiB        int64
	eventsSize, auditSize int64
	monCPU, qemuCPU       int64 // ns
}

// sample reads the VM's status, the monitor's memory and the logs' sizes.
func (vm *floodVM) sample(ctx context.Context) (floodSample, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := vm.c.Status(sctx)
	if err != nil {
		return floodSample{}, err
	}
	return floodSample{at: time.Now(), st: st, rssKiB: procStatusKiB(vm.monPID, "VmRSS:"), hwmKiB: procStatusKiB(vm.monPID, "VmHWM:"),
		eventsSize: fileSize(vm.eventsLog), auditSize: fileSize(vm.auditLog), monCPU: cpuNanos(vm.monPID), qemuCPU: cpuNanos(vm.qemuPID)}, nil
}

// sampler samples the VM every interval until stop is called, which
// returns the samples; one failed sample is skipped.
func (vm *floodVM) sampler(ctx context.Context, every time.Duration) (stop func() []floodSample) {
	var (
		mu      sync.Mutex
		samples []floodSample
		wg      sync.WaitGroup
	)
	done := make(chan struct{})
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if s, err := vm.sample(ctx); err == nil {
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
			}
		}
	})
	return func() []floodSample {
		close(done)
		wg.Wait()
		return samples
	}
}

// The guest's files of a flood started in the background.
const (
	floodOut = "/tmp/flood.out"
	floodErr = "/tmp/flood.err"
	floodRC  = "/tmp/flood.rc"
	wgetOut  = "/tmp/flood-wget.out"
)

// measure runs scenario s once: the flood in the background, the
// bystander (and, for the network, a wget) in the foreground, status
// samples every 500 ms; then the flood's summary and, on the network VM,
// the gate's backlog until it is quiet. The window ends when the flood
// has ended (the guest's clock stops while a trap holds the VM, so a
// flood of N guest seconds may take longer on the host's).
func (vm *floodVM) measure(ctx context.Context, s floodScenario, o FloodOptions) (FloodRound, error) {
	var r FloodRound
	if _, err := vm.quiet(ctx); err != nil {
		return r, err
	}
	pre, err := vm.sample(ctx)
	if err != nil {
		return r, err
	}
	stopSampling := vm.sampler(ctx, 500*time.Millisecond)
	defer func() {
		if stopSampling != nil {
			stopSampling()
		}
	}()
	var c0, c1 guestClock
	if s.flood != nil {
		if c0, err = vm.startFlood(ctx, s.flood(o.Seconds)); err != nil {
			return r, err
		}
		if err := sleepCtx(ctx, floodSettleSeconds*time.Second); err != nil {
			return r, err
		}
	} else if c0, err = vm.clock(ctx); err != nil {
		return r, err
	}
	var socks chan *FloodSockets
	if s.flood != nil && s.bystander == bystanderConnect {
		socks = make(chan *FloodSockets, 1)
		go func() { socks <- vm.socketsAt(ctx, c0.host.Add(time.Duration(o.Seconds)*time.Second/2)) }()
	}
	if err := vm.runBystander(ctx, s, o, &r); err != nil {
		return r, err
	}
	if s.flood != nil {
		out, c, err := vm.waitFlood(ctx, o.Seconds)
		if err != nil {
			return r, err
		}
		r.Flood, c1 = &out, c
		if r.Wget != nil {
			r.Wget.InFlood = r.Wget.endUptime <= out.End
		}
	} else if c1, err = vm.clock(ctx); err != nil {
		return r, err
	}
	r.clocks(c0, c1)
	// One sample after the window's end closes it.
	if err := sleepCtx(ctx, 700*time.Millisecond); err != nil {
		return r, err
	}
	samples := stopSampling()
	stopSampling = nil
	if socks != nil {
		r.Socks = <-socks
	}
	end := closingSample(samples, c1.host)
	if end == nil {
		return r, errors.New("no status sample after the window's end")
	}
	var quietAt floodSample
	if vm.net {
		if quietAt, err = vm.quiet(ctx); err != nil {
			return r, err
		}
	}
	r.summarize(pre, *end, samples, quietAt, vm.net && s.bystander == bystanderConnect)
	r.Logs.AuditBytes = logGrowth(vm.auditLog, pre.auditSize, end.auditSize)
	r.Logs.EventsBytes = logGrowth(vm.eventsLog, pre.eventsSize, end.eventsSize)
	logs, err := readFloodLogs(vm.eventsLog, vm.auditLog, pre, *end)
	if err != nil {
		return r, err
	}
	r.addLogs(logs)
	return r, nil
}

// guestClock pairs the guest's /proc/uptime with the host's clock, read
// when the exec that printed it returned.
type guestClock struct {
	host  time.Time
	guest float64
}

// clocks fills in how the guest's clock kept pace with the host's
// between c0 and c1, and the flood's rate by the host's clock.
func (r *FloodRound) clocks(c0, c1 guestClock) {
	g := c1.guest - c0.guest
	if g <= 0 {
		return
	}
	r.HostPerGuest = c1.host.Sub(c0.host).Seconds() / g
	if f := r.Flood; f != nil && r.HostPerGuest > 0 && f.End > f.Start {
		r.FloodWallRate = float64(f.Attempts) / ((f.End - f.Start) * r.HostPerGuest)
	}
}

// uptimeLine prints the guest's uptime on a line of its own.
const uptimeLine = `read u x </proc/uptime; echo "uptime $u"`

// clock reads the guest's uptime.
func (vm *floodVM) clock(ctx context.Context) (guestClock, error) {
	res, err := guestSh(ctx, vm.c, uptimeLine, 60)
	if err != nil {
		return guestClock{}, fmt.Errorf("the guest's clock: %w", err)
	}
	return parseUptime(res, time.Now())
}

// parseUptime reads the "uptime U" line of an exec's output that
// returned at host time at.
func parseUptime(res api.ExecResult, at time.Time) (guestClock, error) {
	for l := range strings.Lines(string(res.Stdout)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "uptime "); ok {
			u, err := strconv.ParseFloat(v, 64)
			if err != nil || !(u > 0 && u < 1e9) {
				break
			}
			return guestClock{host: at, guest: u}, nil
		}
	}
	return guestClock{}, fmt.Errorf("no uptime: exit %d, stdout %.300q, stderr %.300q", res.ExitCode, res.Stdout, res.Stderr)
}

// startFlood starts the flood program with args in the background (it
// writes its summary to floodOut and its exit status to floodRC) and
// returns the guest's clock right after.
func (vm *floodVM) startFlood(ctx context.Context, args []string) (guestClock, error) {
	script := fmt.Sprintf("rm -f %[1]s %[2]s %[3]s\n( %[4]s %[5]s >%[1]s 2>%[2]s; echo $? >%[3]s ) </dev/null >/dev/null 2>&1 &\n%[6]s",
		floodOut, floodErr, floodRC, FloodGuestPath, strings.Join(args, " "), uptimeLine)
	res, err := guestSh(ctx, vm.c, script, 60)
	if err != nil {
		return guestClock{}, fmt.Errorf("start the flood: %w", err)
	}
	c, err := parseUptime(res, time.Now())
	if err != nil || res.ExitCode != 0 {
		return guestClock{}, fmt.Errorf("start the flood: exit %d, %v", res.ExitCode, err)
	}
	return c, nil
}

// waitFlood waits (in the guest, polling every 0.1 s, at most secs + 60
// guest seconds) for the flood to end, and returns its summary and the
// guest's clock when it found it ended.
func (vm *floodVM) waitFlood(ctx context.Context, secs int) (FloodOutput, guestClock, error) {
	limit := (secs + 60) * 10
	script := fmt.Sprintf("i=0; while [ ! -s %[1]s ] && [ $i -lt %[4]d ]; do sleep 0.1; i=$((i+1)); done\n%[5]s\necho \"flood-exit $(cat %[1]s 2>/dev/null)\"; cat %[2]s; cat %[3]s >&2",
		floodRC, floodOut, floodErr, limit, uptimeLine)
	res, err := guestSh(ctx, vm.c, script, secs+120)
	if err != nil {
		return FloodOutput{}, guestClock{}, fmt.Errorf("wait for the flood: %w", err)
	}
	at := time.Now()
	out, err := ParseFloodOutput(res.Stdout)
	if err != nil || !strings.Contains(string(res.Stdout), "\nflood-exit 0\n") {
		return FloodOutput{}, guestClock{}, fmt.Errorf("the flood: %v; stdout %.300q, stderr %.300q", err, res.Stdout, res.Stderr)
	}
	c, err := parseUptime(res, at)
	return out, c, err
}

// runBystander runs the scenario's bystander and fills in its results.
// The network bystander's script also runs the wget, in the background.
func (vm *floodVM) runBystander(ctx context.Context, s floodScenario, o FloodOptions, r *FloodRound) error {
	argv := strings.Join(bystanderArgv(s, o), " ")
	script := argv
	if s.bystander == bystanderConnect {
		script = fmt.Sprintf("rm -f %[1]s\n( read a x </proc/uptime; timeout 20 wget -qO- http://%[2]s/ >/dev/null 2>&1; rc=$?; read b x </proc/uptime; echo \"wget $rc $a $b\" >%[1]s ) </dev/null >/dev/null 2>&1 &\n%[3]s\nrc=$?\nwait\ncat %[1]s\nexit $rc",
			wgetOut, floodHost, argv)
	}
	res, err := guestSh(ctx, vm.c, script, bystanderSeconds(o.Seconds)+120)
	if err != nil {
		return fmt.Errorf("bystander: %w", err)
	}
	out, err := ParseFloodOutput(res.Stdout)
	if err != nil || res.ExitCode != 0 {
		return fmt.Errorf("bystander: exit %d, %v; stdout %.300q, stderr %.300q", res.ExitCode, err, res.Stdout, res.Stderr)
	}
	r.Bystander = out
	lat := make([]float64, len(out.Latencies))
	for i, v := range out.Latencies {
		lat[i] = float64(v)
	}
	r.BystanderP50, r.BystanderP99 = percentile(lat, 50), percentile(lat, 99)
	_, r.BystanderMax = minMax(lat)
	r.Failed = int64(len(out.Failures))
	if s.bystander == bystanderConnect {
		w, err := parseWget(res.Stdout)
		if err != nil {
			return err
		}
		r.Wget = w
	}
	return nil
}

// parseWget reads the "wget RC A B" line of the network bystander.
func parseWget(out []byte) (*WgetResult, error) {
	for l := range strings.Lines(string(out)) {
		f := strings.Fields(l)
		if len(f) != 4 || f[0] != "wget" {
			continue
		}
		rc, err1 := strconv.Atoi(f[1])
		a, err2 := strconv.ParseFloat(f[2], 64)
		b, err3 := strconv.ParseFloat(f[3], 64)
		if err1 != nil || err2 != nil || err3 != nil || b < a || rc < 0 || rc > 255 {
			return nil, fmt.Errorf("bad wget line %.100q", l)
		}
		return &WgetResult{Exit: rc, Seconds: b - a, endUptime: b}, nil
	}
	return nil, fmt.Errorf("no wget line in %.300q", out)
}

// socketsAt walks the guest's sockets once at time at (ids sockets) and
// returns how many it found and how long the walk took; nil if it failed.
func (vm *floodVM) socketsAt(ctx context.Context, at time.Time) *FloodSockets {
	if sleepCtx(ctx, time.Until(at)) != nil {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := vm.c.IDS(qctx, "sockets", "ram")
	if err != nil {
		return nil
	}
	var socks []json.RawMessage
	if json.Unmarshal(res.Result, &socks) != nil {
		return nil
	}
	return &FloodSockets{Count: len(socks), ElapsedMicros: res.ElapsedMicros}
}

// Quiet: the network gate has decided its backlog and forgotten the
// flood's flows.
const (
	quietFlows = 512
	quietLimit = 3 * time.Minute
)

// quiet waits until the network gate made no decision for a second and
// holds at most quietFlows flows (at most quietLimit), and returns the
// sample that found it so.
func (vm *floodVM) quiet(ctx context.Context) (floodSample, error) {
	prev, err := vm.sample(ctx)
	if err != nil {
		return prev, err
	}
	for deadline := time.Now().Add(quietLimit); ; {
		if err := sleepCtx(ctx, time.Second); err != nil {
			return prev, err
		}
		cur, err := vm.sample(ctx)
		if err != nil {
			return prev, err
		}
		g0, g1 := prev.st.Net.Gate, cur.st.Net.Gate
		if g1 == nil || g0 == nil {
			return cur, errors.New("the VM's status lost its network gate")
		}
		if g1.Allowed+g1.Denied == g0.Allowed+g0.Denied && g1.Flows <= quietFlows {
			return cur, nil
		}
		if time.Now().After(deadline) {
			return cur, fmt.Errorf("the network gate did not settle in %v (%d flows, %d decisions in the last second)",
				quietLimit, g1.Flows, g1.Allowed+g1.Denied-g0.Allowed-g0.Denied)
		}
		prev = cur
	}
}

// closingSample is the first sample at or after t, nil if none is.
func closingSample(samples []floodSample, t time.Time) *floodSample {
	for i := range samples {
		if !samples[i].at.Before(t) {
			return &samples[i]
		}
	}
	return nil
}

// sleepCtx sleeps for d (nothing if d <= 0) or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// logGrowth is how much log grew from size pre to size end: if it is
// shorter, it rotated (FILE became FILE.1) in between, and the growth is
// what FILE.1 got after pre and all of FILE.
func logGrowth(log string, pre, end int64) int64 {
	if end >= pre {
		return end - pre
	}
	return max(0, fileSize(log+".1")-pre) + end
}

// fileSize is the size of path, 0 if it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// procStatusKiB is field (e.g. "VmRSS:") of /proc/pid/status in KiB, 0
// if it cannot be read.
func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
