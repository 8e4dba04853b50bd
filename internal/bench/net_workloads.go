package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// netPolicy is the guests' policy: DHCP, and the three workloads'
// destinations (address, HTTP port, discard and echo ports). The HTTP
// requests are alerts, so that each of their decisions reaches the event
// stream with its attribution time (attribute_us); the audit log they also
// go to is on tmpfs when /dev/shm exists. Every other class is allowed
// (no syscall is trapped); the guest without the gate gets it with
// "advisory net;" first (netNoGatePolicy).
const netPolicy = `# gatevisor bench net: the guests' policy.
default: allow;
net default: deny(ECONNREFUSED)
  dhcp: protoEq("udp") and (portEq(67) or localPortEq(68)) allow
  bench_http: dirIs(out) and protoEq("tcp") and addrEq("%[1]s") and portEq(%[2]d) alert
  bench_tcp: dirIs(out) and protoEq("tcp") and addrEq("%[1]s") and portEq(%[3]d, %[4]d) allow
`

// netPolicyFor is netPolicy for target t.
func netPolicyFor(t netTarget) string {
	return fmt.Sprintf(netPolicy, t.addr, t.http, t.discard, t.echoPort)
}

// netNoGatePolicy is policy for the guest whose NIC bypasses the gate
// (--net-no-gate): the same rules, marked advisory, since a VM refuses a
// policy whose rules no gate of it enforces.
func netNoGatePolicy(policy string) string {
	return "advisory net; # --net-no-gate: nothing enforces the net rules\n" + policy
}

// The workloads, each printing its start and end by the guest's clock
// (clockA, clockB). An exit status other than 0 fails the benchmark.
const (
	bulkScript = clockA + `; nc %s %d </tmp/blob || exit 1; ` + clockB + "; " + spanEcho
	httpScript = clockA + `; i=0; while [ $i -lt %d ]; do wget -qO /dev/null http://%s:%d/ || exit 1; i=$((i+1)); done; ` + clockB + "; " + spanEcho
	// One connection to the echo service; the shell writes a line into a
	// FIFO that nc reads and waits for the echo on another, so each round
	// trip is one request and one answer (after a first, untimed one).
	echoScript = `cd /tmp && rm -f pin pout && mkfifo pin pout || exit 1
nc %s %d <pin >pout &
exec 3>pin 4<pout
echo x >&3; read l <&4 || exit 1
` + clockA + `
i=0; while [ $i -lt %d ]; do echo x >&3; read l <&4 || exit 1; i=$((i+1)); done
` + clockB + `
exec 3>&- 4<&-; wait; rm -f pin pout
` + spanEcho
)

// netWorkload is one of the network benchmark's workloads.
type netWorkload struct {
	name, unit string
	script     string
	ops        float64 // requests or round trips per run; 0 for bulk
}

// netWorkloads are the three workloads, in the order of the report:
// bulk, HTTP requests and echo round trips (the fast path).
func netWorkloads(t netTarget, mib, requests, echoes int) []netWorkload {
	return []netWorkload{
		{fmt.Sprintf("bulk TCP, %d MiB to discard", mib), "MiB/s", fmt.Sprintf(bulkScript, t.addr, t.discard), 0},
		{fmt.Sprintf("HTTP GET x%d, a new flow each", requests), "ms/request", fmt.Sprintf(httpScript, requests, t.addr, t.http), float64(requests)},
		{fmt.Sprintf("echo x%d, one connection", echoes), "µs/round trip", fmt.Sprintf(echoScript, t.addr, t.echoPort, echoes), float64(echoes)},
	}
}

// Indices of the workloads in netWorkloads and the report's cases.
const (
	netBulk = 0
	netEcho = 2
)

// netWarmUps are short runs of the workloads, not counted.
func netWarmUps(t netTarget) []string {
	return []string{fmt.Sprintf(httpScript, 3, t.addr, t.http), fmt.Sprintf(echoScript, t.addr, t.echoPort, 10)}
}

// prepareScript makes sure the guest has its DHCP lease and writes the
// bulk workload's file to its tmpfs.
func prepareScript(t netTarget, mib int) string {
	return fmt.Sprintf(`ip -4 addr show eth0 | grep -q 'inet %[1]s' || udhcpc -i eth0 -n -q -t 5 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1
ip -4 addr show eth0 | grep -q 'inet %[1]s' || { echo "no DHCP lease"; exit 1; }
dd if=/dev/zero of=/tmp/blob bs=1M count=%[2]d 2>/dev/null`, t.leasePrefix, mib)
}

// guestTimed runs a workload script and returns its duration by the
// guest's clock.
func guestTimed(ctx context.Context, c *apiclient.Client, script string) (float64, error) {
	return guestSpan(ctx, c, script, 900)
}

// attrSample is the attribution of one HTTP flow: its time and the walks
// of the guest it took.
type attrSample struct {
	micros   int64
	attempts int
}

// collectAttribution adds the attribution times of the HTTP flows' alerts
// decided since the time since in the VM's event history to into, keyed by
// time and flow.
func collectAttribution(ctx context.Context, c *apiclient.Client, since time.Time, into map[string]attrSample) error {
	rc, err := c.Events(ctx, false)
	if err != nil {
		return err
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev struct {
			Type string `json:"type"`
			Net  struct {
				Time            time.Time `json:"time"`
				Local           string    `json:"local"`
				Rule            string    `json:"rule"`
				AttributeMicros int64     `json:"attribute_us"`
				Attempts        int       `json:"attempts"`
			} `json:"net"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Type != "net-alert" || ev.Net.Rule != "bench_http" || ev.Net.Time.Before(since) {
			continue
		}
		into[ev.Net.Time.String()+" "+ev.Net.Local] = attrSample{ev.Net.AttributeMicros, ev.Net.Attempts}
	}
	return sc.Err()
}
