package ids

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// CheckGuestView compares the kernel's objects with the guest's own account
// of them, asked through its userland: the view a rootkit lies to.
const CheckGuestView = "guest-view"

// CheckHiddenSocket is the finding of a socket the kernel holds that the
// guest's /proc/net listing leaves out.
const CheckHiddenSocket = "hidden-socket"

// ViewGuestProc names the guest's own /proc listing in hidden-process
// findings.
const ViewGuestProc = "guest-proc"

// GuestRunner runs a shell script inside the guest and returns its
// standard output. Only a live VM has one; it returns an error wrapping
// ErrNoGuest when the guest has no agent to run it (not booted from a kit,
// or not ready yet).
type GuestRunner func(ctx context.Context, script string) ([]byte, error)

// ErrNotApplicable means a check does not apply to the target: it is
// reported as such (CheckStatus.NotApplicable), not as a failure.
var ErrNotApplicable = errors.New("not applicable")

// ErrNoGuest means there is no guest userland to ask: the guest-view check
// does not apply.
var ErrNoGuest = fmt.Errorf("%w: no guest agent to ask", ErrNotApplicable)

// guestViewScript lists /proc's process directories and the kernel's TCP
// and UDP tables as the guest's own tools see them.
const guestViewScript = `cd /proc && for d in [0-9]*; do echo "$d"; done; echo --net--; cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null; exit 0`

// Bounds of what the guest may answer.
const (
	maxGuestView      = 8 << 20
	maxGuestViewLines = 200000
	guestViewTimeout  = 20 * time.Second
)

// guestView is the guest's answer: the pids /proc lists and the inodes of
// the sockets /proc/net lists.
type guestView struct {
	pids   map[int]bool
	inodes map[uint64]bool
}

// parseGuestView parses guestViewScript's output. Lines it does not
// understand are errors: the guest's tools answer in a known format, and
// an answer that is not in it is not a view to compare with.
func parseGuestView(out []byte) (guestView, error) {
	v := guestView{pids: map[int]bool{}, inodes: map[uint64]bool{}}
	if len(out) > maxGuestView {
		return v, fmt.Errorf("the guest's answer is %d bytes, over %d", len(out), maxGuestView)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 4096), 4096)
	net, lines, marker := false, 0, false
	for sc.Scan() {
		if lines++; lines > maxGuestViewLines {
			return v, fmt.Errorf("the guest's answer has more than %d lines", maxGuestViewLines)
		}
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "--net--":
			net, marker = true, true
		case !net:
			pid, err := strconv.Atoi(line)
			if err != nil || pid <= 0 || pid > 1<<22 {
				return v, fmt.Errorf("the guest's /proc listing has %q, not a pid", line)
			}
			v.pids[pid] = true
		default:
			if err := v.addNetLine(line); err != nil {
				return v, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return v, fmt.Errorf("the guest's answer: %w", err)
	}
	if !marker {
		return v, fmt.Errorf("the guest's answer is cut short (no /proc/net part)")
	}
	return v, nil
}

// addNetLine takes one line of /proc/net/{tcp,udp}[6]: "sl local remote st
// tx:rx tr:when retrnsmt uid timeout inode ...", or a header.
func (v *guestView) addNetLine(line string) error {
	f := strings.Fields(line)
	if len(f) > 0 && f[0] == "sl" {
		return nil
	}
	if len(f) < 10 || !strings.HasSuffix(f[0], ":") {
		return fmt.Errorf("the guest's /proc/net has %q, not a socket line", line)
	}
	ino, err := strconv.ParseUint(f[9], 10, 64)
	if err != nil {
		return fmt.Errorf("the guest's /proc/net line %q: inode %q", line, f[9])
	}
	v.inodes[ino] = true
	return nil
}

// checkGuestView asks the guest for its /proc and /proc/net listings
// between two reads of the kernel's tasks and sockets, and reports the
// processes and sockets present in both kernel reads that the guest's
// listing leaves out: a rootkit that filters getdents or the seq_show of
// /proc/net hides them there and nowhere else.
func (i *Inspector) checkGuestView() ([]Finding, error) {
	before, err := i.guestKernelView()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), guestViewTimeout)
	defer cancel()
	out, err := i.Guest(ctx, guestViewScript)
	if err != nil {
		return nil, fmt.Errorf("ask the guest: %w", err)
	}
	gv, err := parseGuestView(out)
	if err != nil {
		return nil, err
	}
	after, err := i.guestKernelView()
	if err != nil {
		return nil, err
	}
	return guestViewFindings(before, after, gv), nil
}

// kernelView is what the kernel holds of what the guest view lists.
type kernelView struct {
	tasks   []linux.Task
	sockets []linux.Socket
}

// guestKernelView reads the processes and, of those in the guest view's
// network namespace (init's), the listed TCP and UDP sockets.
func (i *Inspector) guestKernelView() (kernelView, error) {
	tasks, err := i.K.Tasks()
	if err != nil && (!errors.Is(err, linux.ErrIncomplete) || linux.StoppedEarly(err)) {
		return kernelView{}, err
	}
	socks, err := i.K.Sockets(tasks)
	if err != nil {
		return kernelView{}, err
	}
	initNet, _ := i.K.Addr("init_net")
	var listed []linux.Socket
	for _, s := range socks {
		if !listedInProcNet(s) {
			continue
		}
		if ns, ok := i.netNamespace(s.PID, tasks); !ok || ns != initNet {
			continue // another namespace's /proc/net lists it, not init's
		}
		listed = append(listed, s)
	}
	return kernelView{tasks: tasks, sockets: listed}, nil
}

// listedInProcNet reports whether /proc/net/{tcp,udp}[6] lists s: TCP
// sockets in any state but CLOSE (created, or only bound), UDP sockets
// bound to a port.
func listedInProcNet(s linux.Socket) bool {
	if s.Family != "inet" && s.Family != "inet6" {
		return false
	}
	switch s.Proto {
	case "tcp":
		return s.State != "" && s.State != "CLOSE"
	case "udp":
		return s.LocalPort != 0
	}
	return false
}

// netNamespace returns the address of the network namespace of the
// process pid (task->nsproxy->net_ns).
func (i *Inspector) netNamespace(pid int, tasks []linux.Task) (uint64, bool) {
	idx := slices.IndexFunc(tasks, func(t linux.Task) bool { return t.PID == pid })
	if idx < 0 {
		return 0, false
	}
	p := i.K.Profile
	nsOff, err1 := p.FieldOffset("task_struct.nsproxy")
	netOff, err2 := p.FieldOffset("nsproxy.net_ns")
	if err1 != nil || err2 != nil {
		return 0, false
	}
	nsproxy, err := vmi.ReadU64(i.K.AS, tasks[idx].Addr+nsOff)
	if err != nil || nsproxy == 0 {
		return 0, false
	}
	ns, err := vmi.ReadU64(i.K.AS, nsproxy+netOff)
	return ns, err == nil
}

// guestViewFindings are the processes and sockets in both kernel views
// that the guest's listing lacks.
func guestViewFindings(before, after kernelView, gv guestView) []Finding {
	var out []Finding
	inBefore := map[string]bool{}
	for _, t := range before.tasks {
		inBefore[taskKey(t)] = true
	}
	for _, t := range after.tasks {
		if !inBefore[taskKey(t)] || gv.pids[t.PID] {
			continue
		}
		out = append(out, Finding{Check: CheckHiddenProcess, Severity: SeverityCritical, PID: t.PID, Name: t.Comm, Addr: t.Addr,
			Summary: fmt.Sprintf("process %d (%s) is hidden from the guest: seen in %s, missing from %s (the guest's own /proc listing)",
				t.PID, t.Comm, linux.ViewTasks, ViewGuestProc)})
	}
	sockBefore := map[uint64]bool{}
	for _, s := range before.sockets {
		sockBefore[s.Inode] = true
	}
	for _, s := range after.sockets {
		if !sockBefore[s.Inode] || gv.inodes[s.Inode] {
			continue
		}
		out = append(out, Finding{Check: CheckHiddenSocket, Severity: SeverityCritical, PID: s.PID, Name: s.Comm, Addr: s.Inode,
			Summary: fmt.Sprintf("%s socket %s:%d (%s, inode %d) of process %d (%s) is hidden from the guest's /proc/net listing",
				s.Proto, s.LocalAddr, s.LocalPort, s.State, s.Inode, s.PID, s.Comm)})
	}
	return out
}
