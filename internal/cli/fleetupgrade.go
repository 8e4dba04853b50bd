package cli

import (
	"encoding/json"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/monitor"
)

// A monitor in a fleet (run --fleet) keeps its place across a monitor
// upgrade: the old process stops its agent (which saves its position in
// the logs) before the hand-off and carries how it reached the fleet in
// the handover; the new process joins again with the same settings and
// publishes from the saved position on. A line published twice (after an
// agent that could not save its last position) is dropped by JetStream as
// a copy (same message id), as after any restart of the agent.

// callerHandover is the CLI's part of a monitor's handover
// (monitor.Handover.Caller).
type callerHandover struct {
	Fleet *fleetHandover `json:"fleet,omitempty"`
}

// fleetHandover is run --fleet's settings.
type fleetHandover struct {
	URL          string `json:"url,omitempty"`
	TokenFile    string `json:"token_file,omitempty"`
	Creds        string `json:"creds,omitempty"`
	CA           string `json:"ca,omitempty"`
	Cert         string `json:"cert,omitempty"`
	Key          string `json:"key,omitempty"`
	AcceptPolicy bool   `json:"accept_policy,omitempty"`
}

// fleetUpgrade returns what waitOrUpgrade runs before the hand-off of a
// monitor in the fleet: stop the agent (leave) and put its settings into
// the handover.
func fleetUpgrade(o *runOptions, leave func()) func(*monitor.Handover) error {
	return func(h *monitor.Handover) error {
		leave()
		n := o.nats
		b, err := json.Marshal(callerHandover{Fleet: &fleetHandover{URL: n.url, TokenFile: n.tokenFile, Creds: n.creds, CA: n.ca, Cert: n.cert, Key: n.key,
			AcceptPolicy: o.fleetPolicy}})
		if err != nil {
			return err
		}
		h.Caller = b
		return nil
	}
}

// rejoinFleet joins the fleet again in a monitor that took over from one
// in the fleet; it returns how to leave it and what to run before a next
// upgrade (both nil when the handover has no fleet).
func rejoinFleet(h *monitor.Handover, m *monitor.Monitor, cfg monitor.Config) (leave func(), before func(*monitor.Handover) error, err error) {
	if len(h.Caller) == 0 {
		return nil, nil, nil
	}
	var c callerHandover
	if err := json.Unmarshal(h.Caller, &c); err != nil {
		return nil, nil, fmt.Errorf("upgrade: the handover's fleet settings: %w", err)
	}
	if c.Fleet == nil {
		return nil, nil, nil
	}
	f := c.Fleet
	o := &runOptions{name: cfg.Name, fleet: true, fleetPolicy: f.AcceptPolicy,
		nats: natsFlags{url: f.URL, tokenFile: f.TokenFile, creds: f.Creds, ca: f.CA, cert: f.Cert, key: f.Key}}
	if leave, err = joinFleet(o, m, cfg); err != nil {
		return nil, nil, fmt.Errorf("upgrade: the new monitor could not join the fleet again: %w", err)
	}
	return leave, fleetUpgrade(o, leave), nil
}
