package dashboard

import (
	"context"
	"net/http"

	"github.com/gatevisor/gatevisor/internal/fleet"
)

// FleetView is what the fleet page shows: every VM's last state and the
// fleet's latest events.
type FleetView struct {
	Source string        // the NATS the daemon reads ("nats://...")
	States []fleet.State // by host and VM
	Events []fleet.Event // oldest first
}

// fleetEventRow is one event of the fleet page.
type fleetEventRow struct {
	fleet.Event
	fleet.Summary
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
		rows = append(rows, fleetEventRow{v.Events[i], v.Events[i].Summary()})
	}
	d.render(w, http.StatusOK, "fleet", page{Title: "Fleet", Session: d.view(s), Flash: d.takeFlash(s), Body: struct {
		FleetView
		Rows []fleetEventRow
	}{v, rows}})
}
