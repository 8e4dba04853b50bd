package monitor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// grantTable holds the users the monitor authenticated (gatevisor auth):
// authenticated("alice") holds for a subject while alice's grant is in
// force and covers it. Grants live in the monitor only; a restarted
// monitor has none.
type grantTable struct {
	mu     sync.Mutex // guards grants
	grants map[string]*grant
}

type grant struct {
	api.AuthGrant
	canary string
	timer  *time.Timer
}

// maxGrants bounds the grants in force (and so a subject's Authenticated).
const maxGrants = event.MaxLabels

// covering returns the users whose grant covers s at now, sorted.
func (t *grantTable) covering(s *event.Subject, now time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for u, g := range t.grants {
		if !now.Before(g.Expires) {
			continue
		}
		if len(g.UIDs) > 0 && !slices.Contains(g.UIDs, s.UID) {
			continue
		}
		if len(g.Programs) > 0 && !slices.Contains(g.Programs, s.Exe) {
			continue
		}
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

// AuthGrant implements api.FilesVM.
func (m *Monitor) AuthGrant(_ context.Context, c api.Caller, req api.AuthGrantRequest) (api.AuthGrant, error) {
	if err := api.ValidateAuthGrant(&req); err != nil {
		return api.AuthGrant{}, apiErr(api.CodeBadRequest, "%v", err)
	}
	now := time.Now()
	g := &grant{AuthGrant: api.AuthGrant{User: req.User, UIDs: req.UIDs, Programs: req.Programs, Granted: now,
		Expires: now.Add(time.Duration(req.Seconds) * time.Second), By: c.UID, Factor: req.Factor}, canary: req.Canary}
	t := &m.grants
	t.mu.Lock()
	if t.grants == nil {
		t.grants = map[string]*grant{}
	}
	if old := t.grants[req.User]; old != nil {
		old.timer.Stop()
	} else if len(t.grants) >= maxGrants {
		t.mu.Unlock()
		return api.AuthGrant{}, apiErr(api.CodeConflict, "%d grants are in force: revoke one first", maxGrants)
	}
	t.grants[req.User] = g
	g.timer = time.AfterFunc(time.Until(g.Expires), func() { m.endGrant(g, "expired", "") })
	t.mu.Unlock()
	m.recordGrant("auth.grant", g, c.UID, fmt.Sprintf("user %s authenticated on the host (%s) until %s", g.User, g.Factor, g.Expires.UTC().Format(time.RFC3339)))
	m.logf("auth: %s authenticated (%s) for %s, uids %v, programs %q", g.User, g.Factor, time.Duration(req.Seconds)*time.Second, g.UIDs, g.Programs)
	return g.AuthGrant, nil
}

// AuthList implements api.FilesVM.
func (m *Monitor) AuthList(context.Context) (api.AuthGrants, error) {
	t := &m.grants
	t.mu.Lock()
	defer t.mu.Unlock()
	out := api.AuthGrants{Grants: []api.AuthGrant{}}
	now := time.Now()
	for _, g := range t.grants {
		if now.Before(g.Expires) {
			out.Grants = append(out.Grants, g.AuthGrant)
		}
	}
	sort.Slice(out.Grants, func(i, j int) bool { return out.Grants[i].User < out.Grants[j].User })
	return out, nil
}

// AuthRevoke implements api.FilesVM.
func (m *Monitor) AuthRevoke(_ context.Context, c api.Caller, req api.AuthRevokeRequest) (api.AuthRevokeResult, error) {
	if err := api.ValidUser(req.User); err != nil {
		return api.AuthRevokeResult{}, apiErr(api.CodeBadRequest, "%v", err)
	}
	if req.Canary != "" && (len(req.Canary) < 8 || len(req.Canary) > 4096) {
		return api.AuthRevokeResult{}, apiErr(api.CodeBadRequest, "canary of %d bytes: give 8 to 4096", len(req.Canary))
	}
	t := &m.grants
	t.mu.Lock()
	g := t.grants[req.User]
	t.mu.Unlock()
	if g == nil {
		return api.AuthRevokeResult{}, apiErr(api.CodeNotFound, "no grant for user %s", req.User)
	}
	p := m.endGrant(g, fmt.Sprintf("revoked by uid %d", c.UID), req.Canary)
	return api.AuthRevokeResult{Grant: g.AuthGrant, Purge: p}, nil
}

// endGrant ends g (at expiry or revocation): from now on authenticated()
// no longer holds for it, so every later open, read or write of a file
// whose rule needs it is denied, open handles included (with cache=none
// each read and write is a request the gate decides). Then it purges and
// verifies from outside: the served mounts' page-cache pages, through the
// guest kernel's structures, and the pages holding the canary, by a raw
// scan of guest RAM. The result is audited.
func (m *Monitor) endGrant(g *grant, why, canary string) api.Purge {
	t := &m.grants
	t.mu.Lock()
	if t.grants[g.User] != g {
		t.mu.Unlock()
		return api.Purge{Errors: []string{"the grant had already ended"}}
	}
	delete(t.grants, g.User)
	g.timer.Stop()
	t.mu.Unlock()
	if canary == "" {
		canary = g.canary
	}
	p := m.purge(canary)
	reason := fmt.Sprintf("grant of %s %s; page cache of the served mounts: %d pages before, %d after (%d mounts, %d inodes); pages holding the canary (raw scan): %d before, %d free ones scrubbed, %d after",
		g.User, why, p.CachedPagesBefore, p.CachedPagesAfter, p.Mounts, p.Inodes, p.CanaryPagesBefore, p.Scrubbed, p.CanaryPagesAfter)
	if len(p.Held) > 0 {
		reason += "; held after the scrub: " + heldText(p.Held)
	}
	if len(p.Errors) > 0 {
		reason += "; not verified: " + strings.Join(p.Errors, "; ")
	}
	m.recordGrant("auth.end", g, g.By, reason)
	m.logf("auth: grant of %s %s: page cache %d -> %d pages, canary %d -> %d pages (%d free scrubbed)", g.User, why, p.CachedPagesBefore, p.CachedPagesAfter, p.CanaryPagesBefore, p.CanaryPagesAfter, p.Scrubbed)
	return p
}

// purge measures what the guest holds of the served files. With
// cache=none (9P) or direct I/O (virtio-fs) the guest keeps no page cache
// of them (the walk shows 0 pages, unless a served file was mapped),
// so there is nothing to drop; were there pages, the purge would fail
// closed by reporting them (CachedPagesAfter > 0), never by hiding them.
func (m *Monitor) purge(canary string) api.Purge {
	p := api.Purge{CanaryPagesBefore: -1, CanaryPagesAfter: -1}
	count := func() (uint64, error) {
		if m.files == nil {
			return 0, errors.New("the VM serves no files (--files)")
		}
		insp, err := m.privateInspector(context.Background())
		if err != nil {
			return 0, err
		}
		var total uint64
		p.Mounts, p.Inodes = 0, 0
		virtioFS := false
		for _, sh := range m.files.shares {
			if sh.cfg.Transport != Transport9P {
				virtioFS = true
				continue
			}
			l, err := m.files.p9Layout(insp.K.Profile)
			if err != nil {
				return 0, err
			}
			mounts, inodes, pages, err := insp.K.P9CachedPages(l, sh.cfg.Name)
			if err != nil {
				return 0, err
			}
			p.Mounts += mounts
			p.Inodes += inodes
			total += pages
		}
		if virtioFS {
			// Every virtio-fs device of the VM is a share's: all its
			// mounts are counted together.
			mounts, inodes, pages, err := insp.K.CachedPages("virtiofs")
			if err != nil {
				return 0, err
			}
			p.Mounts += mounts
			p.Inodes += inodes
			total += pages
		}
		return total, nil
	}
	scan := func() int {
		if canary == "" {
			return -1
		}
		n, err := m.canaryPages([]byte(canary))
		if err != nil {
			p.Errors = append(p.Errors, "canary scan: "+err.Error())
			return -1
		}
		return n
	}
	var err error
	if p.CachedPagesBefore, err = count(); err != nil {
		p.Errors = append(p.Errors, "page cache walk: "+err.Error())
	}
	p.CanaryPagesBefore = scan()
	if canary != "" && p.CanaryPagesBefore > 0 {
		if err := m.scrubCanary(context.Background(), []byte(canary), &p); err != nil {
			p.Errors = append(p.Errors, "scrub of the free pages holding the canary: "+err.Error())
		}
	}
	if p.CachedPagesAfter, err = count(); err != nil {
		p.Errors = append(p.Errors, "page cache walk: "+err.Error())
	}
	p.CanaryPagesAfter = scan()
	return p
}

// recordGrant audits a grant's start or end as an api event of the
// operator who asked (or the grant's, at expiry).
func (m *Monitor) recordGrant(action string, g *grant, uid uint32, reason string) {
	if m.pol.sec == nil {
		return
	}
	ev := &event.Event{Class: event.ClassAPI, Op: action, Subject: event.Subject{UID: uid, Authenticated: []string{g.User}}, Time: time.Now()}
	d := secserver.Decision{Verdict: policy.VerdictAllow, Rule: action, Reason: reason}
	if err := m.pol.sec.Record(ev, d); err != nil {
		m.logf("auth: audit: %v", err)
	}
}

// ServedFiles implements api.FilesVM: the guest processes whose fd
// tables hold files below a served mount.
func (m *Monitor) ServedFiles(ctx context.Context) (api.ServedFiles, error) {
	if m.files == nil {
		return api.ServedFiles{}, apiErr(api.CodeConflict, "the VM serves no files: start it with --files NAME=HOSTDIR")
	}
	out := api.ServedFiles{Shares: []api.ServedShare{}, Open: []api.ServedOpen{}}
	for _, sh := range m.files.shares {
		s := sh.gate.Stats()
		out.Shares = append(out.Shares, api.ServedShare{Name: sh.cfg.Name, HostDir: sh.cfg.HostDir, GuestPath: sh.cfg.GuestPath, ReadOnly: sh.cfg.ReadOnly,
			Requests: s.Requests, Decided: s.Decided, Denied: s.Denied, DecideCPUNs: s.DecideCPUNs})
	}
	insp, err := m.privateInspector(ctx)
	if err != nil {
		return out, err
	}
	tasks, err := insp.Processes()
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return out, err
	}
	byPID := map[int]linux.Task{}
	for _, t := range tasks {
		byPID[t.PID] = t
	}
	fds, err := insp.K.Files(tasks)
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return out, err
	}
	for _, fd := range fds {
		for _, sh := range m.files.shares {
			gp := sh.cfg.GuestPath
			if fd.Target != gp && !strings.HasPrefix(fd.Target, gp+"/") {
				continue
			}
			t := byPID[fd.PID]
			out.Open = append(out.Open, api.ServedOpen{Share: sh.cfg.Name, PID: fd.PID, Comm: fd.Comm, Exe: t.Exe, UID: t.UID, FD: fd.FD, Path: fd.Target, Mode: fd.Mode})
		}
	}
	return out, nil
}
