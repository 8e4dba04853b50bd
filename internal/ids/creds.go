package ids

import (
	"fmt"
	"sync"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// CheckCredentials is the check of processes' credentials: root gained
// with no setuid-root exec (seen over time), credentials shared with the
// kernel or an unrelated process, every capability for a non-root uid.
const CheckCredentials = "credential-change"

// fullCaps is CAP_FULL_SET's low 41 bits (CAP_LAST_CAP 40 on 6.1): a
// non-root process holding all of them got root's powers without root's
// uid.
const fullCaps = 1<<41 - 1

// credHistory remembers each process's credentials from scan to scan, so
// that a process seen as a user and later as root, with no exec of a
// setuid-root program between, is reported (as it would not be by a
// single look, which sees only a root process).
type credHistory struct {
	mu sync.Mutex
	// seen is keyed by pid@start; at most linux.MaxTasks entries, pruned
	// to the live processes on each check.
	seen map[string]credSeen
}

type credSeen struct {
	uid, euid, suid uint32
	exe             string
	escalated       string // the finding's summary once it escalated; kept while it lives
}

// checkCredentials reads every process's credentials and reports the
// anomalies. tasks are the check's task listing.
func (i *Inspector) checkCredentials(tasks []linux.Task) ([]Finding, error) {
	rd, err := i.K.CredReader()
	if err != nil {
		return nil, err
	}
	initCred := i.K.InitCred()
	owners := map[uint64]linux.Task{} // cred address -> the first process using it
	var out []Finding
	creds := make(map[string]linux.Creds, len(tasks))
	for _, t := range tasks {
		if t.KernelThread {
			continue
		}
		c, err := rd.Creds(t)
		if err != nil {
			continue // the process exited meanwhile, or its cred is unreadable: corrupt objects are checkCorrupt's
		}
		creds[taskKey(t)] = c
		f := func(summary string) Finding {
			return Finding{Check: CheckCredentials, Severity: SeverityCritical, PID: t.PID, Name: t.Comm, Addr: c.Cred, Summary: summary}
		}
		switch {
		case initCred != 0 && (c.Cred == initCred || c.RealCred == initCred):
			out = append(out, f(fmt.Sprintf("process %d (%s) runs with the kernel's own credentials (init_cred at %#x)", t.PID, t.Comm, initCred)))
		case c.UID != 0 && c.EUID != 0 && c.CapEffective&fullCaps == fullCaps:
			out = append(out, f(fmt.Sprintf("process %d (%s, uid %d) holds every capability", t.PID, t.Comm, c.UID)))
		}
		if o, ok := owners[c.Cred]; ok && o.TGID != t.TGID {
			out = append(out, f(fmt.Sprintf("process %d (%s) shares its credentials (cred at %#x) with process %d (%s)", t.PID, t.Comm, c.Cred, o.PID, o.Comm)))
		} else if !ok {
			owners[c.Cred] = t
		}
	}
	setuid := func(t linux.Task) bool {
		_, root := rd.ExeSetUIDRoot(t)
		return root
	}
	out = append(out, i.creds.escalations(tasks, creds, setuid)...)
	return out, nil
}

// escalations updates the history with this look and returns the processes
// that became root since an earlier look in which none of their uids was
// root, running a program that is not setuid root.
func (h *credHistory) escalations(tasks []linux.Task, creds map[string]linux.Creds, setuidRoot func(linux.Task) bool) []Finding {
	h.mu.Lock()
	defer h.mu.Unlock()
	next := make(map[string]credSeen, len(creds))
	var out []Finding
	for _, t := range tasks {
		key := taskKey(t)
		c, ok := creds[key]
		if !ok || len(next) >= linux.MaxTasks {
			continue
		}
		prev, seen := h.seen[key]
		cur := credSeen{uid: c.UID, euid: c.EUID, suid: c.SUID, exe: t.Exe, escalated: prev.escalated}
		root := c.EUID == 0 || c.UID == 0 || c.FSUID == 0
		// No uid of the earlier look could give root back (a saved uid 0
		// can: seteuid(0) after dropping privileges), and the program is
		// not setuid root (an exec of one keeps pid and start time).
		if seen && cur.escalated == "" && prev.euid != 0 && prev.uid != 0 && prev.suid != 0 && root && !setuidRoot(t) {
			cur.escalated = fmt.Sprintf("process %d (%s, %s) became root (uid %d euid %d fsuid %d, was uid %d euid %d) without exec'ing a setuid-root program",
				t.PID, t.Comm, t.Exe, c.UID, c.EUID, c.FSUID, prev.uid, prev.euid)
		}
		if !root {
			cur.escalated = "" // it dropped root again
		}
		if cur.escalated != "" {
			out = append(out, Finding{Check: CheckCredentials, Severity: SeverityCritical, PID: t.PID, Name: t.Comm, Addr: t.Addr, Summary: cur.escalated})
		}
		next[key] = cur
	}
	h.seen = next
	return out
}
