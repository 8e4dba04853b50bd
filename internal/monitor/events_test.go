package monitor

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/eventbus"
	"github.com/gatevisor/gatevisor/internal/monitoring"
)

// TestEventsBoundsAgree: the API promises the bus's paging bounds.
func TestEventsBoundsAgree(t *testing.T) {
	if api.MaxEventsLimit != eventbus.MaxLimit || api.DefaultEventsLimit != eventbus.DefaultLimit {
		t.Errorf("api limits %d/%d, eventbus %d/%d", api.MaxEventsLimit, api.DefaultEventsLimit, eventbus.MaxLimit, eventbus.DefaultLimit)
	}
}

// TestEventsWiring: the monitor's stream takes its file and retention from
// the config, numbers what it publishes, pages through the API's query and
// shows in status.
func TestEventsWiring(t *testing.T) {
	m := &Monitor{cfg: Config{Name: "cam", EventsLog: filepath.Join(t.TempDir(), "events.jsonl"), EventsMaxSize: 1 << 20, EventsKeep: 2}}
	var err error
	if m.events, err = m.openEvents(); err != nil {
		t.Fatal(err)
	}
	defer m.events.close()
	for range 3 {
		m.publishNotice(monitoring.AuditNotice, "near")
	}
	var out bytes.Buffer
	if err := m.Events(context.Background(), &out, api.EventsQuery{Before: 3, Limit: 1}, func() {}); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, `"seq":2`) {
		t.Errorf("page before 3: %q", got)
	}
	st := m.events.status()
	if st.Seq != 3 || st.MaxSize != 1<<20 || st.Keep != 2 || st.Log != m.cfg.EventsLog {
		t.Errorf("status %+v", st)
	}
}
