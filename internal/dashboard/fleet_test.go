package dashboard

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/fleet"
)

// TestFleetPage: the fleet page shows every VM's state and the latest
// events, escaped; only the daemon's own user and root may see it; a
// daemon without a fleet says so.
func TestFleetPage(t *testing.T) {
	r := newRig(t, true)
	self := Identity{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	c, _ := r.login(t, self)
	if rec := r.do(t, "GET", "/fleet", c, nil); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "serves no fleet") {
		t.Errorf("no fleet: %d %s", rec.Code, rec.Body.String())
	}
	evil := `<script>alert(1)</script>`
	audit, _ := json.Marshal(map[string]any{"n": 7, "time": time.Now(), "verdict": "deny", "rule": "no_tmp_exec",
		"event": map[string]any{"class": "exec", "path": "/tmp/" + evil, "subject": map[string]any{"pid": 42, "comm": evil}}})
	r.d.SetFleet(func(context.Context) (FleetView, error) {
		return FleetView{Source: "nats://127.0.0.1:4222",
			States: []fleet.State{{Host: "h1", VM: "cam.1", Time: time.Now(), Status: api.Status{State: "running", Policy: &api.PolicyStatus{Seq: 3, Digest: "sha256:abcdef"}}},
				{Host: evil, VM: "old", Time: time.Now().Add(-time.Minute), Status: api.Status{State: "running"}}},
			Events: []fleet.Event{{Where: fleet.Where{Host: "h1", VM: "cam.1", Kind: "audit"}, Seq: 1, Data: audit}}}, nil
	})
	rec := r.do(t, "GET", "/fleet", c, nil)
	body := rec.Body.String()
	if rec.Code != http.StatusOK {
		t.Fatalf("fleet page: %d %s", rec.Code, body)
	}
	for _, want := range []string{"cam.1", "#3", "no word for", "no_tmp_exec", "42 (&lt;script&gt;", "deny"} {
		if !strings.Contains(body, want) {
			t.Errorf("the fleet page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<script>alert") {
		t.Errorf("a guest-chosen name reached the page as markup:\n%s", body)
	}
	other, _ := r.login(t, Identity{UID: 4242, GID: 4242})
	if rec := r.do(t, "GET", "/fleet", other, nil); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "fleet&#39;s credentials") {
		t.Errorf("another user on the fleet page: %d %s", rec.Code, rec.Body.String())
	}
}
