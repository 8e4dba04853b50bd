package dashboard

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/gatevisor/gatevisor/internal/fleet"
)

// FleetView is what the fleet page shows: every VM's last state and the
// fleet's latest events.
type FleetView struct {
	Source string        // the NATS the daemon reads ("nats://...")
	States []fleet.State // by host and VM
	Events []fleet.Event // oldest first
}

// fleetEventRow is one event of the fleet page, its essentials decoded.
type fleetEventRow struct {
	fleet.Event
	Time                       time.Time
	Verdict, Class, Path, Rule string
	Comm                       string
	PID                        int32
	Summary                    string
}

// fleetPage shows the fleet. The fleet's data is not decided by any VM's
// policy (it comes from NATS, under the daemon's fleet credentials), so
// only those who hold them may see it: the daemon's own user and root.
func (d *Dashboard) fleetPage(w http.ResponseWriter, r *http.Request, s *session) {
	if d.cfg.Fleet == nil {
		d.renderError(w, r, s, http.StatusNotFound, "this daemon serves no fleet (gatevisor serve --no-fleet, or its NATS address was taken: see its log)")
		return
	}
	if s.user.UID != 0 && s.user.UID != d.cfg.Self.UID {
		d.renderError(w, r, s, http.StatusForbidden, "the fleet view is for the daemon's own user and root, who hold the fleet's credentials; your VMs' pages are on the index")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	v, err := d.cfg.Fleet(ctx)
	if err != nil {
		d.renderError(w, r, s, http.StatusBadGateway, "the fleet cannot be read: "+err.Error())
		return
	}
	rows := make([]fleetEventRow, 0, len(v.Events))
	for i := len(v.Events) - 1; i >= 0; i-- { // newest first
		rows = append(rows, decodeFleetEvent(v.Events[i]))
	}
	d.render(w, http.StatusOK, "fleet", page{Title: "Fleet", Session: d.view(s), Flash: d.takeFlash(s), Body: struct {
		FleetView
		Rows []fleetEventRow
	}{v, rows}})
}

// decodeFleetEvent reads the fields the page shows from an audit record or
// an event-stream point (kept as text: the template escapes them).
func decodeFleetEvent(e fleet.Event) fleetEventRow {
	var f struct {
		Time    time.Time `json:"time"`
		Verdict string    `json:"verdict"`
		Rule    string    `json:"rule"`
		Class   string    `json:"class"`
		PID     int32     `json:"pid"`
		Comm    string    `json:"comm"`
		Path    string    `json:"path"`
		Event   struct {
			Class   string `json:"class"`
			Path    string `json:"path"`
			Subject struct {
				PID  int32  `json:"pid"`
				Comm string `json:"comm"`
			} `json:"subject"`
		} `json:"event"`
		Finding *struct {
			Severity, Check, Summary string
		} `json:"finding"`
		Detail string `json:"detail"`
		Kind   string `json:"kind"`   // an audit chain record's
		Policy string `json:"policy"` // its policy digest
		VM     string `json:"vm"`
	}
	_ = json.Unmarshal(e.Data, &f)
	row := fleetEventRow{Event: e, Time: f.Time, Verdict: f.Verdict, Rule: f.Rule, Class: f.Class, PID: f.PID, Comm: f.Comm, Path: f.Path, Summary: f.Detail}
	if row.Class == "" {
		row.Class, row.Path, row.PID, row.Comm = f.Event.Class, f.Event.Path, f.Event.Subject.PID, f.Event.Subject.Comm
	}
	if e.Kind == fleet.KindAudit && f.Kind != "" {
		// The chain's own records: the log opened (a monitor started), a
		// policy took effect, files pruned, the log closed.
		row.Summary = "audit log: " + f.Kind
		if f.Policy != "" {
			row.Summary += " " + f.Policy
		}
	}
	if f.Finding != nil {
		row.Verdict, row.Summary = f.Finding.Severity, f.Finding.Check+": "+f.Finding.Summary
	}
	return row
}
