package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// vmRow is one VM on the index.
type vmRow struct {
	VM     VM
	Status *api.Status
	Err    string // why its status could not be had (a refusal names the rule)
}

// index lists every VM with its state, policy and gates.
func (d *Dashboard) index(w http.ResponseWriter, r *http.Request, s *session) {
	vms, err := d.list()
	if err != nil {
		d.renderError(w, r, s, http.StatusInternalServerError, "the VMs cannot be listed: "+err.Error())
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	rows := make([]vmRow, len(vms))
	var wg sync.WaitGroup
	for i, v := range vms {
		rows[i].VM = v
		switch {
		case v.Private:
			rows[i].Err = fmt.Sprintf("belongs to uid %d; its API is closed to this daemon", v.Owner)
			continue
		case !v.Live:
			rows[i].Err = "not running"
			continue
		}
		wg.Add(1)
		go func(row *vmRow) {
			defer wg.Done()
			st, err := d.client(row.VM, s).Status(ctx)
			if err != nil {
				row.Err = err.Error()
				return
			}
			row.Status = &st
		}(&rows[i])
	}
	wg.Wait()
	d.render(w, http.StatusOK, "index", page{Title: "VMs", Session: d.view(s), Flash: d.takeFlash(s), Body: rows})
}

// procRow is one process of the tree.
type procRow struct {
	Prefix string // the tree's drawing before the name
	Task   linux.Task
	Frozen bool
}

// Bounds on what a page draws of the guest's (hostile) process list,
// and of the network gate's flows (the newest).
const (
	maxTreeDepth = 64
	maxProcRows  = 5000
	maxFlowRows  = 200
)

// processTree orders ts as a tree by parent (children by pid), drawn with
// pstree's lines. The guest chose the pids: a parent loop, a task that is
// its own parent, or a parent that is not listed make roots, and nothing
// is visited twice or deeper than maxTreeDepth.
func processTree(ts []linux.Task, frozen []int) []procRow {
	if len(ts) > maxProcRows {
		ts = ts[:maxProcRows]
	}
	byPID := map[int]int{}
	for i, t := range ts {
		if _, dup := byPID[t.PID]; !dup {
			byPID[t.PID] = i
		}
	}
	children := map[int][]int{}
	var roots []int
	for i, t := range ts {
		if _, ok := byPID[t.PPID]; ok && t.PPID != t.PID && byPID[t.PID] == i {
			children[t.PPID] = append(children[t.PPID], i)
		} else {
			roots = append(roots, i)
		}
	}
	byPIDOrder := func(s []int) { sort.Slice(s, func(a, b int) bool { return ts[s[a]].PID < ts[s[b]].PID }) }
	byPIDOrder(roots)
	for _, c := range children {
		byPIDOrder(c)
	}
	fz := map[int]bool{}
	for _, p := range frozen {
		fz[p] = true
	}
	seen := make([]bool, len(ts))
	var out []procRow
	var walk func(i int, lead string, last bool, depth int)
	walk = func(i int, lead string, last bool, depth int) {
		if seen[i] {
			return
		}
		seen[i] = true
		prefix := ""
		next := ""
		if depth > 0 {
			if last {
				prefix, next = lead+"└─ ", lead+"   "
			} else {
				prefix, next = lead+"├─ ", lead+"│  "
			}
		}
		out = append(out, procRow{Prefix: prefix, Task: ts[i], Frozen: fz[ts[i].PID]})
		if depth >= maxTreeDepth {
			return
		}
		kids := children[ts[i].PID]
		for k, c := range kids {
			walk(c, next, k == len(kids)-1, depth+1)
		}
	}
	for _, i := range roots {
		walk(i, "", true, 0)
	}
	// What a loop of parents kept from every root, or the depth bound cut.
	for i := range ts {
		if !seen[i] {
			walk(i, "", true, 0)
		}
	}
	return out
}

// vmPage is the VM page's body.
type vmPage struct {
	VM        VM
	Status    *api.Status
	StatusErr string

	Procs       []procRow
	ProcsErr    string
	Incomplete  string // what the process listing could not read
	KThreads    bool   // kernel threads shown
	HiddenKern  int    // kernel threads not shown
	ProcActions []string

	Sockets      []linux.Socket
	SocketsErr   string
	OtherSockets int // unix, netlink, ... not shown

	// Flows are the network gate's newest flows (net.flows), FlowsTotal
	// how many its table holds; FlowsErr why they could not be had (a
	// refusal names the rule). NoNet: the VM has no gated network.
	Flows      []api.NetFlow
	FlowsTotal int
	FlowsErr   string
	NoNet      bool

	// Snapshots is the VM's list (vm.snapshots), SnapshotsErr why it
	// could not be had (a refusal names the rule); SnapshotsNA why the VM
	// has none to take (its monitor keeps no snapshot directory).
	Snapshots    *api.Snapshots
	SnapshotsErr string
	SnapshotsNA  string

	Filter    filter
	Events    []eventView
	EventsErr string
	StreamURL string
	Verdicts  []string
	Classes   []string
}

// vmPage shows one VM: status, snapshots, processes, network, events and
// actions.
func (d *Dashboard) vmPage(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	f, err := parseFilter(r.URL.Query())
	if err != nil {
		d.renderError(w, r, s, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	c := d.client(vm, s)
	p := vmPage{VM: vm, Filter: f, KThreads: r.URL.Query().Get("kthreads") == "1", ProcActions: api.ProcActions,
		Verdicts: verdicts, Classes: classes}
	var wg sync.WaitGroup
	wg.Add(6)
	go func() {
		defer wg.Done()
		sn, err := c.Snapshots(ctx)
		switch {
		case api.IsCode(err, api.CodeConflict):
			p.SnapshotsNA = err.Error()
		case err != nil:
			p.SnapshotsErr = err.Error()
		default:
			p.Snapshots = &sn
		}
	}()
	go func() {
		defer wg.Done()
		fl, err := c.NetFlows(ctx, maxFlowRows)
		switch {
		case api.IsCode(err, api.CodeConflict):
			p.NoNet = true
		case err != nil:
			p.FlowsErr = err.Error()
		default:
			p.Flows, p.FlowsTotal = fl.Flows, fl.Total
		}
	}()
	go func() {
		defer wg.Done()
		st, err := c.Status(ctx)
		if err != nil {
			p.StatusErr = err.Error()
			return
		}
		p.Status = &st
	}()
	go func() {
		defer wg.Done()
		p.procs(ctx, c)
	}()
	go func() {
		defer wg.Done()
		res, err := c.IDS(ctx, "sockets", "")
		if err != nil {
			p.SocketsErr = err.Error()
			return
		}
		var all []linux.Socket
		if err := json.Unmarshal(res.Result, &all); err != nil {
			p.SocketsErr = "the sockets answer does not decode: " + err.Error()
			return
		}
		for _, so := range all {
			if so.Family == "inet" || so.Family == "inet6" {
				p.Sockets = append(p.Sockets, so)
			} else {
				p.OtherSockets++
			}
		}
	}()
	var last uint64
	go func() {
		defer wg.Done()
		p.Events, last, p.EventsErr = backlog(ctx, c, f)
	}()
	wg.Wait()
	if last == 0 && p.Status != nil && p.Status.Events != nil {
		last = p.Status.Events.Seq
	}
	q := f.values()
	q.Set("after", strconv.FormatUint(last, 10))
	p.StreamURL = "/vm/" + vm.Name + "/stream?" + q.Encode()
	d.render(w, http.StatusOK, "vm", page{Title: vm.Name, Session: d.view(s), Flash: d.takeFlash(s), Body: p})
}

// procs fills the process tree from the ids ps query.
func (p *vmPage) procs(ctx context.Context, c *apiclient.Client) {
	res, err := c.IDS(ctx, "ps", "")
	if err != nil {
		p.ProcsErr = err.Error()
		return
	}
	var ts []linux.Task
	if err := json.Unmarshal(res.Result, &ts); err != nil {
		p.ProcsErr = "the process listing does not decode: " + err.Error()
		return
	}
	p.Incomplete = res.Incomplete
	if !p.KThreads {
		user := ts[:0:0]
		for _, t := range ts {
			if t.KernelThread {
				p.HiddenKern++
				continue
			}
			user = append(user, t)
		}
		ts = user
	}
	p.Procs = processTree(ts, res.Frozen)
}

// checkPage runs the IDS's checks now and shows the report.
func (d *Dashboard) checkPage(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	type body struct {
		VM     VM
		Report *ids.Report
		Err    string
		Micros int64
	}
	b := body{VM: vm}
	res, err := d.client(vm, s).IDS(ctx, "check", "")
	if err == nil {
		var rep ids.Report
		if err = json.Unmarshal(res.Result, &rep); err == nil {
			b.Report, b.Micros = &rep, res.ElapsedMicros
		}
	}
	if err != nil {
		b.Err = err.Error()
	}
	d.render(w, http.StatusOK, "check", page{Title: vm.Name + ": IDS checks", Session: d.view(s), Body: b})
}
