package ids

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
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

// guestQuestion is the guest-view check in flight: the kernel's view read
// before the question, and the guest's answer arriving meanwhile.
type guestQuestion struct {
	i         *Inspector
	before    kernelView
	beforeErr error
	start     time.Time
	done      chan struct{}
	out       []byte
	err       error
	took      time.Duration
}

// askGuestView reads the kernel's processes (tasks, already read) and
// sockets, then asks the guest for its /proc and /proc/net listings in the
// background; finish compares them. The memory checks run meanwhile: the
// question only waits on the guest.
func (i *Inspector) askGuestView(tasks []linux.Task, socks []linux.Socket) *guestQuestion {
	q := &guestQuestion{i: i, start: time.Now(), done: make(chan struct{})}
	q.before, q.beforeErr = i.kernelViewOf(tasks, socks)
	if q.beforeErr != nil {
		close(q.done)
		return q
	}
	go func() {
		defer close(q.done)
		ctx, cancel := context.WithTimeout(context.Background(), guestViewTimeout)
		defer cancel()
		q.out, q.err = i.Guest(ctx, guestViewScript)
	}()
	return q
}

// finish waits for the guest's answer and reports the processes and
// sockets it leaves out that the kernel held before the question and still
// holds after it (read again only when there is a candidate): a rootkit
// that filters getdents or /proc/net's seq_show hides them there and
// nowhere else.
func (q *guestQuestion) finish() ([]Finding, error) {
	<-q.done
	defer func() { q.took = time.Since(q.start) }()
	if q.beforeErr != nil {
		return nil, q.beforeErr
	}
	if q.err != nil {
		if errors.Is(q.err, ErrNotApplicable) {
			return nil, q.err
		}
		return nil, fmt.Errorf("ask the guest: %w", q.err)
	}
	gv, err := parseGuestView(q.out)
	if err != nil {
		return nil, err
	}
	if len(guestViewFindings(q.before, q.before, gv)) == 0 {
		return nil, nil
	}
	tasks, err := q.i.K.Tasks()
	if err != nil && (!errors.Is(err, linux.ErrIncomplete) || linux.StoppedEarly(err)) {
		return nil, err
	}
	after, err := q.i.kernelViewOf(tasks, nil)
	if err != nil {
		return nil, err
	}
	return guestViewFindings(q.before, after, gv), nil
}

// elapsed is the check's time: from the kernel read before the question
// to the comparison's end.
func (q *guestQuestion) elapsed() time.Duration { return q.took }

// kernelView is what the kernel holds of what the guest view lists.
type kernelView struct {
	tasks   []linux.Task
	sockets []linux.Socket
}

// kernelViewOf reads, of tasks, the sockets the guest view lists: TCP and
// UDP sockets in the guest view's network namespace (init's). socks, when
// not nil, are tasks' sockets already read.
func (i *Inspector) kernelViewOf(tasks []linux.Task, socks []linux.Socket) (kernelView, error) {
	if socks == nil {
		var err error
		if socks, err = i.K.Sockets(tasks); err != nil {
			return kernelView{}, err
		}
	}
	initNet, _ := i.K.Addr("init_net")
	p := i.K.Profile
	nsOff, err1 := p.FieldOffset("task_struct.nsproxy")
	netOff, err2 := p.FieldOffset("nsproxy.net_ns")
	if err1 != nil || err2 != nil {
		return kernelView{}, fmt.Errorf("network namespaces: %w", errors.Join(err1, err2))
	}
	byPID := make(map[int]linux.Task, len(tasks))
	for _, t := range tasks {
		byPID[t.PID] = t
	}
	nsOf := map[int]uint64{}
	var listed []linux.Socket
	for _, s := range socks {
		if !listedInProcNet(s) {
			continue
		}
		ns, seen := nsOf[s.PID]
		if !seen {
			ns = i.netNamespace(byPID[s.PID], nsOff, netOff)
			nsOf[s.PID] = ns
		}
		if ns == 0 || ns != initNet {
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

// netNamespace returns the address of task t's network namespace
// (task->nsproxy->net_ns, at offsets nsOff and netOff), 0 if it cannot be
// read.
func (i *Inspector) netNamespace(t linux.Task, nsOff, netOff uint64) uint64 {
	if t.Addr == 0 {
		return 0
	}
	nsproxy, err := vmi.ReadU64(i.K.AS, t.Addr+nsOff)
	if err != nil || nsproxy == 0 {
		return 0
	}
	ns, err := vmi.ReadU64(i.K.AS, nsproxy+netOff)
	if err != nil {
		return 0
	}
	return ns
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

// GuestViewEvery is how often a continuous scan asks the guest (the
// guest-view check costs the guest a shell and a /proc walk: ~0.1 s of
// guest time under TCG with 1,000 processes); scans between reuse the
// last answer's findings. An on-demand check always asks.
const GuestViewEvery = 5 * time.Second

// guestView is the last guest-view check's outcome, for the scans between.
type guestViewState struct {
	mu       sync.Mutex
	at       time.Time
	status   CheckStatus
	findings []Finding
}

// guestViewDue reports whether a scan should ask the guest again.
func (i *Inspector) guestViewDue() bool {
	i.guestView.mu.Lock()
	defer i.guestView.mu.Unlock()
	return i.guestView.at.IsZero() || time.Since(i.guestView.at) >= GuestViewEvery
}

// keepGuestView remembers r's guest-view outcome (its status and findings).
func (i *Inspector) keepGuestView(r *Report) {
	st := r.Checks[len(r.Checks)-1]
	var found []Finding
	for _, f := range r.Findings {
		if f.Source == CheckGuestView {
			found = append(found, f)
		}
	}
	i.guestView.mu.Lock()
	defer i.guestView.mu.Unlock()
	i.guestView.at, i.guestView.status, i.guestView.findings = time.Now(), st, found
}

// lastGuestView adds the last guest-view outcome to r.
func (i *Inspector) lastGuestView(r *Report) {
	i.guestView.mu.Lock()
	defer i.guestView.mu.Unlock()
	r.Checks = append(r.Checks, i.guestView.status)
	r.Findings = append(r.Findings, i.guestView.findings...)
}
