package dashboard

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
)

// The actions: each is one request to the VM's API, whose policy decides;
// its outcome, or the refusal in the API's words, is shown on the VM's
// page (303 back to it).

// done records an action's outcome for the session and sends the browser
// back to the VM's page.
func (d *Dashboard) done(w http.ResponseWriter, r *http.Request, s *session, vm VM, what string, err error, ok string) {
	if err != nil {
		d.setFlash(s, false, fmt.Sprintf("%s: not done: %v", what, err))
	} else {
		d.setFlash(s, true, what+": "+ok)
	}
	http.Redirect(w, r, "/vm/"+vm.Name+"#flash", http.StatusSeeOther)
}

// proc stops, continues, kills, freezes or thaws a guest process.
func (d *Dashboard) proc(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	action := r.PathValue("action")
	if !contains(api.ProcActions, action) {
		d.renderError(w, r, s, http.StatusNotFound, fmt.Sprintf("process action %q: use one of %s", action, strings.Join(api.ProcActions, ", ")))
		return
	}
	if a := r.PostFormValue("action"); a != "" && a != action {
		d.renderError(w, r, s, http.StatusBadRequest, fmt.Sprintf("the form asks for %q at the address of %q", a, action))
		return
	}
	pid, err := strconv.Atoi(r.PostFormValue("pid"))
	if err != nil || pid < 1 || pid > api.MaxPID {
		d.renderError(w, r, s, http.StatusBadRequest, fmt.Sprintf("pid %q: give a process id from 1 to %d", r.PostFormValue("pid"), api.MaxPID))
		return
	}
	var start uint64
	if v := r.PostFormValue("start_ns"); v != "" {
		if start, err = strconv.ParseUint(v, 10, 64); err != nil {
			d.renderError(w, r, s, http.StatusBadRequest, fmt.Sprintf("start_ns %q: give the process's start time from the process list, or none", v))
			return
		}
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	res, err := d.client(vm, s).Proc(ctx, action, api.ProcRequest{PID: pid, Start: start})
	d.done(w, r, s, vm, fmt.Sprintf("%s pid %d", action, pid), err, res.Outcome)
}

// policy loads a policy (hot reload): the file the browser sends, under
// the path its includes resolve from.
func (d *Dashboard) policy(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	path := strings.TrimSpace(r.PostFormValue("path"))
	if !filepath.IsAbs(path) {
		d.renderError(w, r, s, http.StatusBadRequest, fmt.Sprintf("path %q: give the policy's absolute path on the host (its directory resolves includes)", path))
		return
	}
	f, _, err := r.FormFile("policy")
	if err != nil {
		d.renderError(w, r, s, http.StatusBadRequest, "choose the policy file to load: "+err.Error())
		return
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, api.MaxPolicySource+1))
	if err != nil || len(src) > api.MaxPolicySource {
		d.renderError(w, r, s, http.StatusBadRequest, fmt.Sprintf("the policy file: larger than %d bytes, or unreadable", api.MaxPolicySource))
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	res, err := d.client(vm, s).LoadPolicy(ctx, api.PolicyRequest{Path: path, Source: string(src)})
	d.done(w, r, s, vm, "load policy "+path, err, fmt.Sprintf("policy %d (sha256 %s) in force on every gate", res.Seq, res.Digest))
}

// net isolates the VM's network, or restores it.
func (d *Dashboard) net(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	c := d.client(vm, s)
	switch r.PathValue("action") {
	case "isolate":
		reason := strings.TrimSpace(r.PostFormValue("reason"))
		if len(reason) > 1024 {
			d.renderError(w, r, s, http.StatusBadRequest, fmt.Sprintf("reason: %d bytes, at most 1024", len(reason)))
			return
		}
		if reason == "" {
			reason = fmt.Sprintf("from the dashboard by uid %d", s.user.UID)
		}
		_, err := c.NetIsolate(ctx, reason)
		d.done(w, r, s, vm, "isolate the network", err, "every flow is denied until restored")
	case "restore":
		_, err := c.NetRestore(ctx)
		d.done(w, r, s, vm, "restore the network", err, "the policy decides flows again")
	default:
		d.renderError(w, r, s, http.StatusNotFound, fmt.Sprintf("network action %q: use isolate or restore", r.PathValue("action")))
	}
}

// lifecycleTimeout bounds a snapshot or a rollback (as the CLI's): the
// guest's RAM is written or read back, gigabytes for a large guest.
const lifecycleTimeout = 10 * time.Minute

// lifecycleContext is the context of a snapshot or a rollback: bounded,
// but not ended by the browser going away, which must not stop a rollback
// halfway (the monitor ends a VM whose rollback failed after its RAM was
// replaced).
func lifecycleContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), lifecycleTimeout)
}

// rollbackConfirm is the value of the rollback form's checkbox "confirm",
// without which the dashboard refuses a rollback.
const rollbackConfirm = "state-lost"

// formTag returns the form's snapshot tag, checked as the API checks it,
// or renders why not and returns false.
func (d *Dashboard) formTag(w http.ResponseWriter, r *http.Request, s *session) (string, bool) {
	tag := r.PostFormValue("tag")
	if err := api.CheckSnapshotTag(tag); err != nil {
		d.renderError(w, r, s, http.StatusBadRequest, err.Error())
		return "", false
	}
	return tag, true
}

// snapshot takes a snapshot: under the form's tag, else the time's (as
// gatevisor snapshot does).
func (d *Dashboard) snapshot(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	tag := strings.TrimSpace(r.PostFormValue("tag"))
	if tag == "" {
		tag = d.now().Format("20060102-150405")
	}
	if err := api.CheckSnapshotTag(tag); err != nil {
		d.renderError(w, r, s, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := lifecycleContext(r)
	defer cancel()
	res, err := d.client(vm, s).Snapshot(ctx, tag)
	d.done(w, r, s, vm, "take snapshot "+tag, err, fmt.Sprintf("taken: %d RAM pages (%s MiB on disk of %d MiB), device state %d bytes, guest paused %s ms",
		res.RAMPages, mib(res.RAMStoredBytes), res.MemMiB, res.DeviceStateBytes, ms(res.PausedSeconds)))
}

// rollback puts the guest back to a snapshot, once the form confirms that
// the guest's state since then is to be lost.
func (d *Dashboard) rollback(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	tag, ok := d.formTag(w, r, s)
	if !ok {
		return
	}
	if r.PostFormValue("confirm") != rollbackConfirm {
		d.renderError(w, r, s, http.StatusBadRequest, fmt.Sprintf("roll back to snapshot %s: not done: tick %q first: everything the guest did since the snapshot is lost", tag, "I understand the guest's state since then is lost"))
		return
	}
	ctx, cancel := lifecycleContext(r)
	defer cancel()
	res, err := d.client(vm, s).Rollback(ctx, tag)
	d.done(w, r, s, vm, "roll back to snapshot "+tag, err, fmt.Sprintf("rolled back: %d RAM pages restored, guest paused %s ms (snapshot verified in %.2f s, %.2f s in all)",
		res.RAMPages, ms(res.DowntimeSeconds), res.VerifySeconds, res.TotalSeconds))
}

// removeSnapshot deletes a snapshot.
func (d *Dashboard) removeSnapshot(w http.ResponseWriter, r *http.Request, s *session) {
	vm, ok := d.pageVM(w, r, s)
	if !ok {
		return
	}
	tag, ok := d.formTag(w, r, s)
	if !ok {
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	d.done(w, r, s, vm, "remove snapshot "+tag, d.client(vm, s).RemoveSnapshot(ctx, tag), "removed")
}

// mib writes bytes in MiB, one decimal.
func mib(bytes int64) string { return strconv.FormatFloat(float64(bytes)/(1<<20), 'f', 1, 64) }

// ms writes seconds in milliseconds, one decimal.
func ms(seconds float64) string { return strconv.FormatFloat(seconds*1000, 'f', 1, 64) }
