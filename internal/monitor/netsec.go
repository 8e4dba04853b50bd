package monitor

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/secserver"
)

// netSec is the network gate's security server until the monitor holds one
// for every gate (the syscall gate's, see syscallgate.go); then
// netSecServer returns that one instead and this file goes away.
type netSec struct {
	mu  sync.Mutex
	srv *secserver.Server
	log *audit.Log
}

var netSecs sync.Map // *Monitor -> *netSec

// netSecServer returns the VM's security server with cfg.PolicyFile in
// force (none: every flow is denied) and cfg.AuditLog as its audit log.
func (m *Monitor) netSecServer() (*secserver.Server, error) {
	v, _ := netSecs.LoadOrStore(m, &netSec{})
	ns := v.(*netSec)
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.srv != nil {
		return ns.srv, nil
	}
	var sink secserver.Sink
	if m.cfg.AuditLog != "" {
		if err := os.MkdirAll(filepath.Dir(m.cfg.AuditLog), 0o700); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		l, err := audit.Open(m.cfg.AuditLog, audit.Options{})
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		ns.log, sink = l, l
	}
	srv := secserver.New(nil, secserver.Config{Audit: sink})
	if m.cfg.PolicyFile == "" {
		m.logf("no --policy: the network gate denies every flow")
	} else {
		src, err := os.ReadFile(m.cfg.PolicyFile)
		if err != nil {
			return nil, fmt.Errorf("--policy: %w", err)
		}
		dir, base := filepath.Split(m.cfg.PolicyFile)
		if _, err := srv.ReloadSource(base, src, policy.FSResolver(os.DirFS(dir))); err != nil {
			return nil, fmt.Errorf("--policy: %w", err)
		}
	}
	ns.srv = srv
	return srv, nil
}

func (m *Monitor) closeNetSecServer() {
	if v, ok := netSecs.LoadAndDelete(m); ok {
		if ns := v.(*netSec); ns.log != nil {
			ns.log.Close()
		}
	}
}
