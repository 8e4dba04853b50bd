package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newStatusCmd) }

func newStatusCmd() *cobra.Command {
	var (
		asJSON    bool
		waitReady time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a VM's status",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			st, err := waitStatus(cmd.Context(), c, waitReady)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(os.Stdout, &st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&waitReady, "wait-ready", 0, "wait up to this long for the guest to be ready")
	return cmd
}

// printStatus writes the text form of a VM's status: every field of
// api.Status, grouped (the VM, the guest, a stop, the policy, each gate,
// the network, the event stream, the audit log), so that --json shows
// nothing the text hides; TestStatusTextShowsEveryField fails on a field
// added to api.Status and not rendered here. Empty optional fields are
// left out.
//
// Every value is escaped (termtext.Escape) as it is written (statusRows):
// names and paths are the user's, but the command line, QEMU's status and
// whatever the guest reports may hold anything, and none of it may forge a
// line or reach the terminal as a control sequence. The --json output is
// not escaped.
func printStatus(w io.Writer, st *api.Status) {
	r := statusRows{w: w}
	r.top("name", st.Name)
	r.top("state", st.State+parens("qemu: ", st.QEMUStatus))
	guest := "booting"
	if st.GuestReady {
		guest = "ready"
		if st.ReadyAt != nil {
			guest += " at " + st.ReadyAt.Format(time.RFC3339)
		}
		guest += fmt.Sprintf(" (booted in %.2fs)", st.BootSeconds)
	}
	r.top("guest", guest)
	r.top("accel", st.Accel+prefixed(" — ", st.AccelReason))
	r.top("machine", fmt.Sprintf("%s, %dM, %d vCPU", st.Machine, st.MemMiB, st.CPUs))
	r.top("kernel", st.Kernel)
	r.topOpt("initrd", st.Initrd)
	r.topOpt("append", st.Append)
	monitor := strconv.Itoa(st.MonitorPID)
	if st.MonitorUpgrades > 0 {
		monitor += fmt.Sprintf(" (upgraded in place %d times; the last stopped the guest %s ms)", st.MonitorUpgrades, strconv.FormatFloat(st.UpgradePauseMs, 'f', -1, 64))
	}
	r.top("monitor pid", monitor)
	r.top("qemu pid", strconv.Itoa(st.QEMUPID))
	r.top("started", st.StartedAt.Format(time.RFC3339))
	if st.StopIntervals > 0 {
		r.top("stopped", fmt.Sprintf("%.6f s over %d stops (QEMU's STOP to RESUME; the guest's clocks stand still meanwhile under TCG)",
			float64(st.StoppedMicros)/1e6, st.StopIntervals))
	}
	r.top("runtime dir", st.RuntimeDir)
	r.topOpt("console log", st.ConsoleLog)
	if s := st.Stop; s != nil {
		how := "in progress"
		if s.Done {
			how = "done"
		}
		if s.Forced {
			how += ", forced"
		} else {
			how += ", not forced"
		}
		r.top("stop", how+prefixed(": ", s.Outcome))
	}

	if p := st.Policy; p != nil {
		r.top("policy", joinNonEmpty(" ", p.Path, fmt.Sprintf("(seq %d, %s)", p.Seq, p.Digest)))
		r.list("files", p.Files)
		advisory := make([]string, len(p.NotEnforced))
		for i, n := range p.NotEnforced {
			advisory[i] = n + " (advisory)"
		}
		r.list("not enforced", advisory)
		r.sub("reloads", fmt.Sprintf("%d taken, %d refused (the policy in force stayed)", p.Reloads, p.FailedReloads))
	} else {
		r.top("policy", "none (every gated event is denied; the API is the owner's and root's)")
	}

	shown := map[string]bool{}
	for _, g := range st.Gates {
		printGate(&r, &g, st)
		shown[g.Name] = true
	}
	if g := st.SyscallGate; g != nil && !shown[gateKernelName] {
		r.top("kernel gate", "")
		printSyscallGate(&r, g)
	}

	if n := st.Net; n != nil {
		r.top("network", n.Mode+prefixed(":", n.Network)+prefixed(":", n.Tap))
		if n.Isolated != "" {
			r.sub("ISOLATED", n.Isolated+" (every flow denied; 'gatevisor net restore' ends it)")
		}
		r.sub("oversized", fmt.Sprintf("%d frames from the guest too long for the frame codec, skipped before the gate", n.OversizedFrames))
		if g := n.Gate; g != nil {
			if !shown[gateNetName] {
				printNetDecisions(&r, g)
			}
			r.sub("frames", fmt.Sprintf("%d through the gate: %d forwarded, %d dropped (%d malformed)", g.Frames, g.Forwarded, g.Dropped, g.Refused))
			r.subOpt("drop reasons", counts(g.DropReasons))
			r.sub("resets", strconv.FormatUint(g.Resets, 10)+parens("", counts(g.ResetReasons)))
			r.sub("flows", fmt.Sprintf("%d in the table, %d waiting for a decision, %d evicted to make room; %d processes with a budget", g.Flows, g.Pending, g.Evicted, g.Subjects))
			r.sub("gate refusals", fmt.Sprintf("%d over a process's rate, %d over its share of the table; dropped undecided: %d (decision queue full), %d (table full)",
				g.RateLimited, g.FlowLimited, g.Overload, g.TableFull))
			r.sub("attribution", fmt.Sprintf("%d passes, %d walks of the guest's sockets and tasks, %d µs walking", g.Passes, g.Walks, g.WalkMicros))
		} else {
			r.sub("gate", "none (--net-no-gate, benchmarks only)")
		}
		r.subOpt("nat", counts(n.NAT))
	}

	if e := st.Events; e != nil {
		r.top("events", cmp.Or(e.Log, "no file (followers and the history only)"))
		r.sub("retention", fmt.Sprintf("rotates before %d bytes, keeps %d rotated files (at most %d × %d bytes); %d rotations",
			e.MaxSize, e.Keep, e.Keep+1, e.MaxSize, e.Rotations))
		r.sub("seq", strconv.FormatUint(e.Seq, 10)+" (the last event's number)")
		r.sub("floods", fmt.Sprintf("%d decisions folded into %d aggregate events", e.Aggregated, e.Aggregates))
		r.sub("not written", fmt.Sprintf("%d events the file did not take%s, %d written without their payload (too long)",
			e.WriteErrors, parens("last: ", e.LastError), e.Oversized))
		r.sub("followers", fmt.Sprintf("%d `events -f` streams ended for falling behind", e.DroppedFollowers))
	}

	if d := st.IDS; d != nil {
		printScanStatus(&r, d)
	}

	if rs := st.Responses; rs != nil {
		r.top("responses", fmt.Sprintf("%d dropped (the queue was full)", rs.Dropped))
		for _, x := range rs.Responses {
			r.sub(x.Name, fmt.Sprintf("%s: %d taken, %d failed, %d over its limit a minute", x.Action, x.Taken, x.Failed, x.Limited))
		}
	}

	if a := st.Audit; a != nil {
		r.top("audit log", a.Log+parens("head ", a.Head))
		last := "none written by this monitor yet"
		if a.LastRecordAt != nil {
			last = "last written " + a.LastRecordAt.Format(time.RFC3339)
		}
		r.sub("records", fmt.Sprintf("%d in the chain (%s); %d bytes in %d files", a.Records, last, a.Bytes, a.Files))
	}
}

// printScanStatus writes the periodic IDS scan: what it last saw, and what it
// could not look at (a scan that could not look is not a clean one).
func printScanStatus(r *statusRows, d *api.IDSStatus) {
	if d.IntervalSeconds <= 0 {
		r.top("ids", "no periodic scan (run --ids-interval 5s scans and reports to 'gatevisor events'; 'gatevisor ids check' scans once)")
	} else {
		r.top("ids", fmt.Sprintf("a scan every %gs", d.IntervalSeconds))
	}
	if d.Scans == 0 && d.ScanErrors == 0 && d.LastScanAt == nil {
		return
	}
	r.sub("scans", fmt.Sprintf("%d done, %d failed", d.Scans, d.ScanErrors))
	if d.LastScanAt != nil {
		r.sub("last scan", fmt.Sprintf("%s, took %g ms", d.LastScanAt.Format(time.RFC3339), d.LastScanMillis))
	}
	r.subOpt("last error", d.LastError)
	found := "none"
	if len(d.Findings) > 0 {
		var n int
		for _, c := range d.Findings {
			n += c
		}
		found = fmt.Sprintf("%d (%s)", n, counts(d.Findings))
	}
	if len(d.NotChecked) > 0 || len(d.Unread) > 0 {
		found += " — incomplete: the scan could not look everywhere"
	}
	r.sub("findings", found)
	r.list("not checked", d.NotChecked)
	unread := make([]string, 0, len(d.Unread))
	for _, v := range slices.Sorted(maps.Keys(d.Unread)) {
		unread = append(unread, v+": "+d.Unread[v])
	}
	r.list("not read", unread)
}

// The gates' names in api.GateStatus that have counters elsewhere in
// api.Status.
const (
	gateKernelName = "kernel"
	gateNetName    = "net"
)

// printGate writes one gate: armed or not, with what, and its counters
// (the kernel gate's from st.SyscallGate, the network gate's decisions
// from st.Net).
func printGate(r *statusRows, g *api.GateStatus, st *api.Status) {
	line := "not armed"
	if g.Armed {
		line = "armed"
	}
	if g.Traps > 0 || g.Watchpoints > 0 {
		// The words of `policy load` (policyLoadLine).
		line += fmt.Sprintf(", %d traps (%d watchpoints, %d breakpoints)", g.Traps, g.Watchpoints, g.Traps-g.Watchpoints)
	}
	if len(g.Classes) > 0 {
		line += " for " + strings.Join(g.Classes, ", ")
	}
	line += prefixed(" — ", g.Note)
	r.top(g.Name+" gate", line)
	switch {
	case len(g.Decisions) > 0:
		r.sub("verdicts", counts(g.Decisions))
	case g.Armed:
		r.sub("verdicts", "none yet")
	}
	switch g.Name {
	case gateKernelName:
		if sg := st.SyscallGate; sg != nil {
			printSyscallGate(r, sg)
		}
	case gateNetName:
		if n := st.Net; n != nil && n.Gate != nil {
			printNetDecisions(r, n.Gate)
		}
	}
	for _, bp := range g.Breakpoints {
		r.sub("trap", trapLine(bp))
		detail := prefixed("syscall ", bp.Syscall)
		detail = joinNonEmpty(", ", detail, prefixed("addr ", bp.Addr), prefixed("phys ", bp.PhysAddr))
		if len(bp.Classes) > 0 {
			detail = joinNonEmpty(", ", detail, "decides "+strings.Join(bp.Classes, ", "))
		}
		r.cont(detail)
	}
}

// printNetDecisions writes the network gate's decisions by verdict.
func printNetDecisions(r *statusRows, g *api.NetGateStats) {
	r.sub("decisions", fmt.Sprintf("%d new flows (%d allowed, %d denied, %d unattributed)", g.NewFlows, g.Allowed, g.Denied, g.Unattributed))
}

// printSyscallGate writes the kernel gate's counters.
func printSyscallGate(r *statusRows, g *api.SyscallGateStatus) {
	r.sub("stops", fmt.Sprintf("%d at %d traps: %d decided, %d skipped, %d fault-ins; %d handled on a sibling vCPU", g.Stops, g.Breakpoints, g.Decided, g.Skipped, g.FaultIns, g.SiblingStops))
	if g.Emulated > 0 {
		r.sub("emulated", fmt.Sprintf("%d watched loads performed for a vCPU", g.Emulated))
	}
	per := 0.0
	if g.Stops > 0 {
		per = float64(g.HandleMicros) / float64(g.Stops)
	}
	r.sub("handling", fmt.Sprintf("%d µs with the VM stopped, %.0f µs per stop", g.HandleMicros, per))
	if g.GatePage != "" {
		r.sub("own page", g.GatePage+": the gated LSM hooks' own entries (read-watched), their list heads write-watched")
	}
	if g.GatePageError != "" {
		r.sub("own page", "none ("+g.GatePageError+"): hooks on the list-head model")
	}
}

// trapLine is breakpointLine (the words of `policy load`) for a trap that
// may also be a watchpoint.
func trapLine(bp api.Breakpoint) string {
	s := breakpointLine(bp)
	if bp.Watchpoint {
		s = "watchpoint" + strings.TrimPrefix(s, "breakpoint")
	}
	return s + modelNote(bp)
}

// modelNote says how an LSM hook's watchpoint is placed (gate/syscall's
// own-entry or head model).
func modelNote(bp api.Breakpoint) string {
	switch {
	case bp.Model != "" && bp.Entry != "":
		return " [" + bp.Model + " model: entry " + bp.Entry + " read-watched, list head " + bp.Addr + " write-watched]"
	case bp.Model != "":
		return " [" + bp.Model + " model]"
	}
	return ""
}

// statusRows writes "label: value" rows, values aligned, every value escaped.
type statusRows struct{ w io.Writer }

const statusLabelWidth = 17

func (r *statusRows) row(indent, label, value string) {
	label = termtext.Escape(label) + ":"
	if value == "" {
		fmt.Fprintf(r.w, "%s%s\n", indent, label)
		return
	}
	fmt.Fprintf(r.w, "%s%-*s %s\n", indent, statusLabelWidth-len(indent)-1, label, termtext.Escape(value))
}

// top writes a group's first row, sub a row of the group.
func (r *statusRows) top(label, value string) { r.row("", label, value) }
func (r *statusRows) sub(label, value string) { r.row("  ", label, value) }

// topOpt and subOpt leave out an empty value.
func (r *statusRows) topOpt(label, value string) {
	if value != "" {
		r.top(label, value)
	}
}

func (r *statusRows) subOpt(label, value string) {
	if value != "" {
		r.sub(label, value)
	}
}

// cont continues the row above (nothing when value is empty).
func (r *statusRows) cont(value string) {
	if value != "" {
		fmt.Fprintf(r.w, "%*s%s\n", statusLabelWidth, "", termtext.Escape(value))
	}
}

// list writes one sub row per item, the label on the first.
func (r *statusRows) list(label string, items []string) {
	for i, it := range items {
		if i == 0 {
			r.sub(label, it)
		} else {
			r.cont(it)
		}
	}
}

// counts is "k1 n1, k2 n2" in key order ("" for none).
func counts[N int | uint64](m map[string]N) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

// parens is " (p+s)", or "" when s is empty.
func parens(p, s string) string {
	if s == "" {
		return ""
	}
	return " (" + p + s + ")"
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

// waitStatus returns the status, polling until the guest is ready when wait > 0.
func waitStatus(ctx context.Context, c *apiclient.Client, wait time.Duration) (api.Status, error) {
	deadline := time.Now().Add(wait)
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.Status(sctx)
		cancel()
		if err != nil || wait <= 0 || st.GuestReady {
			return st, err
		}
		if time.Now().After(deadline) {
			return st, withExitCode(3, fmt.Errorf("the guest of %s was not ready within %v", st.Name, wait))
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
