package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/gatevisor/gatevisor/internal/vnet"
)

// The flood benchmark (issue 21, gates under attack): one guest process
// floods a gate, another (the bystander) does what the policy allows, and
// the benchmark measures what the gate decided, what it refused without a
// decision, what the bystander waited, and what the flood cost the
// monitor (memory, event and audit logs).

// Where the floods and bystanders go. The isolated network's services
// answer at floodHost; the flood's ports are all denied (and audited) by
// FloodPolicy, the bystander's port is allowed. The pinning pattern's
// addresses are outside the guest's subnet, so it sends them to its
// default route, the services' address, and the gate sees each as a flow.
var floodHost = vnet.GatewayAddr.String()

const (
	floodPortLo, floodPortHi = 1024, 65535
	pinPrefix                = "198.18.0.0/15" // RFC 2544's benchmarking range
	pinDestinations          = 120000
	// FloodDeniedPath is the file whose open FloodPolicy denies; the
	// bystander opens floodAllowedPath, which the policy traps and allows.
	FloodDeniedPath  = "/etc/flood-denied"
	floodAllowedPath = "/etc/hostname"
	// flowTableCapacity is the network gate's flow table size
	// (gate/net.MaxFlows when this benchmark was written): the report
	// counts the time the table was at least this full.
	flowTableCapacity = 65536
	// floodSettle is how long a flood runs before the bystander starts.
	floodSettleSeconds = 1
)

var bystanderPort = vnet.HTTPPort

// FloodPolicy is the guests' policy, here and in the integration tests:
// policies/net-gate.policy's rules, and an open of FloodDeniedPath denied
// and audited. Every open in the guest is trapped by the kernel gate (the
// file open hook); every flow the floods make is denied by egress_default,
// which audits.
const FloodPolicy = `# gatevisor bench flood: the guests' policy (policies/net-gate.policy's
# rules, and one file whose open is denied and audited).
default: deny;

syscall default: allow
file default: allow
exec default: allow
module default: allow
role admin: *;
subject roles admin when uidEq(0);

file open default: allow
  flood_denied_open: fileEq("` + FloodDeniedPath + `") deny(EACCES) audit

net default: deny(ECONNREFUSED)
  dhcp: protoEq("udp") and (portEq(67) or localPortEq(68)) allow
  no_telnet_out: dirIs(out) and protoEq("tcp") and portEq(23, 2323) deny(ECONNREFUSED) audit
  no_telnet_in: dirIs(in) and localPortEq(23, 2323) deny(ECONNREFUSED) audit
  updates_only_updater: addrEq("10.0.2.3") and not exeEq("/usr/bin/updater") deny(ECONNREFUSED) audit
  updater: addrEq("10.0.2.3") and exeEq("/usr/bin/updater") and protoEq("tcp") and portEq(80) allow audit
  dns: dirIs(out) and protoEq("udp") and addrEq("10.0.2.2") and portEq(53) allow
  gateway_services: dirIs(out) and addrEq("10.0.2.2") and (protoEq("icmp") or portEq(7, 9, 80)) allow
  web_in: dirIs(in) and protoEq("tcp") and localPortEq(80) and exeEq("/bin/busybox") allow
  egress_default: dirIs(out) deny(ECONNREFUSED) audit
`

// floodPolicyRules are FloodPolicy's rule names: a deny by any other rule
// (gate-overload, an audit failure) is the gate's or the server's own
// refusal, not the policy's decision. Block defaults ("net default") and
// the global default are the policy's too.
var floodPolicyRules = []string{"flood_denied_open", "dhcp", "no_telnet_out", "no_telnet_in", "updates_only_updater", "updater",
	"dns", "gateway_services", "web_in", "egress_default"}

// isPolicyRule reports whether rule is a decision of FloodPolicy.
func isPolicyRule(rule string) bool {
	return slices.Contains(floodPolicyRules, rule) || rule == "default" || strings.HasSuffix(rule, " default")
}

// Bystander kinds.
const (
	bystanderConnect = "connect" // connect-latency to the allowed port, and a wget
	bystanderOpen    = "open"    // open-latency of the trapped, allowed file
)

// floodScenario is one measurement: a flood (none for a baseline) in one
// guest process and a bystander in another, on a VM of cpus vCPUs.
type floodScenario struct {
	key, name string
	cpus      int
	flood     func(secs int) []string // the program's arguments; nil: no flood
	bystander string
}

// floodScenarios are every scenario, in the order they run (those of the
// 1-vCPU VM first).
var floodScenarios = []floodScenario{
	{"net-idle", "no flood (network bystander)", 1, nil, bystanderConnect},
	{"tcp", "TCP connect flood", 1, func(s int) []string {
		return []string{"tcp", floodHost, strconv.Itoa(floodPortLo), strconv.Itoa(floodPortHi), strconv.Itoa(s), "256", "20"}
	}, bystanderConnect},
	{"tcp-held", "TCP connect flood, sockets held", 1, func(s int) []string {
		return []string{"tcp", floodHost, strconv.Itoa(floodPortLo), strconv.Itoa(floodPortHi), strconv.Itoa(s), "256", "1000"}
	}, bystanderConnect},
	{"udp", "UDP flood", 1, func(s int) []string {
		return []string{"udp", floodHost, strconv.Itoa(floodPortLo), strconv.Itoa(floodPortHi), strconv.Itoa(s)}
	}, bystanderConnect},
	{"pin", "UDP flow-table pinning", 1, func(s int) []string {
		return []string{"pin", pinPrefix, strconv.Itoa(s), strconv.Itoa(pinDestinations)}
	}, bystanderConnect},
	{"open-idle", "no flood (syscall bystander)", 1, nil, bystanderOpen},
	{"open", "denied-open loop", 1, func(s int) []string { return []string{"open", FloodDeniedPath, strconv.Itoa(s)} }, bystanderOpen},
	{"open-idle-2cpu", "no flood (syscall bystander)", 2, nil, bystanderOpen},
	{"open-2cpu", "denied-open loop", 2, func(s int) []string { return []string{"open", FloodDeniedPath, strconv.Itoa(s)} }, bystanderOpen},
}

// FloodScenarioNames are the scenarios' keys, in the order they run.
func FloodScenarioNames() []string {
	var names []string
	for _, s := range floodScenarios {
		names = append(names, s.key)
	}
	return names
}

// FloodOptions are Flood's parameters.
type FloodOptions struct {
	Rounds int // each runs every scenario once
	// Seconds is each flood's duration (the program's SECONDS); the
	// bystander runs within it.
	Seconds int
	// IntervalMillis is the time between a bystander's attempts.
	IntervalMillis int
	// Scenarios are the keys of the scenarios to run (FloodScenarioNames);
	// empty runs all.
	Scenarios []string
	Accel     string // the guests' accelerator: auto, kvm or tcg
	Mem       string // each guest's memory
	// Command is the command line, recorded in the report.
	Command string
}

// FloodReport is what Flood measured.
type FloodReport struct {
	Command        string    `json:"command"`
	Accel          string    `json:"accel"`
	HostCPUs       int       `json:"host_cpus"`
	Rounds         int       `json:"rounds"`
	Seconds        int       `json:"flood_seconds"`
	IntervalMillis int       `json:"bystander_interval_ms"`
	LoadAvg        [2]string `json:"load_average_before_after"`
	// OtherQEMUs counts QEMU processes at the start that are not the
	// benchmark's (they share the CPUs).
	OtherQEMUs int                   `json:"other_qemu_processes"`
	Scenarios  []FloodScenarioResult `json:"scenarios"`
}

// FloodScenarioResult is one scenario over all rounds.
type FloodScenarioResult struct {
	Key       string `json:"key"`
	Name      string `json:"name"`
	CPUs      int    `json:"vcpus"`
	Flood     string `json:"flood,omitempty"` // the program's command line in the guest
	Bystander string `json:"bystander"`       // its command line
	// Medians over the rounds.
	Median FloodMedians `json:"median"`
	Rounds []FloodRound `json:"rounds"`
}

// Flood boots the default kit on an isolated network with FloodPolicy
// (one vCPU, then, for the 2-vCPU scenarios, two) and runs every chosen
// scenario once a round: a flood from one guest process for o.Seconds
// with a bystander in another process, sampling the monitor's status
// meanwhile. Each VM is stopped before Flood returns, whatever happens.
func Flood(ctx context.Context, env Env, o FloodOptions) (*FloodReport, error) {
	scens, err := chooseScenarios(o.Scenarios)
	if err != nil {
		return nil, err
	}
	rep := &FloodReport{Command: o.Command, HostCPUs: runtime.NumCPU(), Rounds: o.Rounds, Seconds: o.Seconds,
		IntervalMillis: o.IntervalMillis, OtherQEMUs: countQEMUs()}
	rep.LoadAvg[0] = loadAvg()
	tmp, err := os.MkdirTemp("", "gatevisor-bench-flood-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	prog, err := BuildFlood(ctx, tmp)
	if err != nil {
		return nil, err
	}
	pol, denied := filepath.Join(tmp, "flood.policy"), filepath.Join(tmp, "flood-denied")
	if err := os.WriteFile(pol, []byte(FloodPolicy), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(denied, []byte("the flood benchmark's denied file\n"), 0o644); err != nil {
		return nil, err
	}
	args := []string{"--accel", o.Accel, "--mem", o.Mem, "--net", fmt.Sprintf("isolated:bench-flood-%d", os.Getpid()), "--policy", pol,
		"--add", prog + ":" + FloodGuestPath, "--add", denied + ":" + FloodDeniedPath}
	results := make([]FloodScenarioResult, len(scens))
	for i, s := range scens {
		results[i] = FloodScenarioResult{Key: s.key, Name: s.name, CPUs: s.cpus, Bystander: strings.Join(bystanderArgv(s, o), " ")}
		if s.flood != nil {
			results[i].Flood = strings.Join(append([]string{FloodGuestPath}, s.flood(o.Seconds)...), " ")
		}
	}
	for _, cpus := range []int{1, 2} {
		if err := runFloodVM(ctx, env, o, cpus, args, scens, results, rep); err != nil {
			return nil, err
		}
	}
	for i, s := range scens {
		results[i].Median = floodMedians(results[i].Rounds, s.flood != nil)
	}
	rep.Scenarios = results
	rep.LoadAvg[1] = loadAvg()
	return rep, nil
}

// runFloodVM boots the VM of cpus vCPUs if a scenario needs it, runs its
// scenarios every round into results (by the index in scens), and stops it.
func runFloodVM(ctx context.Context, env Env, o FloodOptions, cpus int, args []string, scens []floodScenario, results []FloodScenarioResult, rep *FloodReport) error {
	var mine []int
	for i, s := range scens {
		if s.cpus == cpus {
			mine = append(mine, i)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	name := fmt.Sprintf("bench-flood-%d-%dcpu", os.Getpid(), cpus)
	c, stop, err := env.bootVM(ctx, name, slices.Concat(args, []string{"--cpus", strconv.Itoa(cpus)})...)
	if err != nil {
		return err
	}
	defer stop()
	vm, err := newFloodVM(ctx, env, c, name)
	if err != nil {
		return err
	}
	rep.Accel = vm.accel
	if err := vm.prepare(ctx); err != nil {
		return err
	}
	for r := range o.Rounds {
		for _, i := range mine {
			round, err := vm.measure(ctx, scens[i], o)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, scens[i].key, err)
			}
			results[i].Rounds = append(results[i].Rounds, round)
			env.logf("round %d: %-16s %s\n", r+1, scens[i].key, round.brief())
		}
	}
	return nil
}

// chooseScenarios returns the scenarios named by keys, in their order;
// all for none.
func chooseScenarios(keys []string) ([]floodScenario, error) {
	if len(keys) == 0 {
		return floodScenarios, nil
	}
	for _, k := range keys {
		if !slices.Contains(FloodScenarioNames(), k) {
			return nil, fmt.Errorf("unknown scenario %q (want some of %s)", k, strings.Join(FloodScenarioNames(), ", "))
		}
	}
	var out []floodScenario
	for _, s := range floodScenarios {
		if slices.Contains(keys, s.key) {
			out = append(out, s)
		}
	}
	return out, nil
}

// bystanderArgv is the bystander's command line for scenario s: attempts
// every o.IntervalMillis for the flood's duration less the settling time
// and a second's margin (for a baseline the same span, from the start).
func bystanderArgv(s floodScenario, o FloodOptions) []string {
	secs := bystanderSeconds(o.Seconds)
	n := strconv.Itoa(min(100000, secs*1000/max(o.IntervalMillis, 1)+1))
	iv, ss := strconv.Itoa(o.IntervalMillis), strconv.Itoa(secs)
	if s.bystander == bystanderConnect {
		return []string{FloodGuestPath, "connect-latency", floodHost, strconv.Itoa(bystanderPort), n, iv, ss}
	}
	return []string{FloodGuestPath, "open-latency", floodAllowedPath, n, iv, ss}
}

// bystanderSeconds is how long a bystander runs within a flood of secs.
func bystanderSeconds(secs int) int { return max(1, secs-floodSettleSeconds-1) }
