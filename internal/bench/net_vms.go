package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// The network benchmark's two configurations.
const (
	cfgGate   = "gate"
	cfgNoGate = "no gate"
)

// netVM is one of the network benchmark's two guests.
type netVM struct {
	cfg, name       string
	args            []string // of `gatevisor run`
	c               *apiclient.Client
	stop            func()
	monPID, qemuPID int
}

// netVMs are the two guests, not yet booted: first the one behind the
// network gate, then the one without (the hidden --net-no-gate). They
// get the same policy pol and the same audit log placement under
// auditDir, so that they differ only by the network gate (the policy also
// arms the syscall gate, with no syscall to trap).
func netVMs(o NetOptions, pol, polNoGate, auditDir string) []*netVM {
	pid := os.Getpid()
	nets := map[string]string{cfgGate: fmt.Sprintf("isolated:bench-gate-%d", pid), cfgNoGate: fmt.Sprintf("isolated:bench-nogate-%d", pid)}
	if o.Net == "user" {
		nets = map[string]string{cfgGate: "user", cfgNoGate: "user"}
	}
	common := []string{"--accel", o.Accel, "--mem", o.Mem}
	return []*netVM{
		{cfg: cfgGate, name: fmt.Sprintf("bench-net-gate-%d", pid),
			args: slices.Concat(common, []string{"--net", nets[cfgGate], "--policy", pol, "--audit-log", filepath.Join(auditDir, "audit.jsonl")})},
		{cfg: cfgNoGate, name: fmt.Sprintf("bench-net-nogate-%d", pid),
			args: slices.Concat(common, []string{"--net", nets[cfgNoGate], "--net-no-gate", "--policy", polNoGate, "--audit-log", filepath.Join(auditDir, "audit-nogate.jsonl")})},
	}
}

// bootAll boots vms at once and records their PIDs. A VM that did not
// boot is stopped already (bootVM); the caller stops the others
// (stopAll), whatever bootAll returns.
func (e Env) bootAll(ctx context.Context, vms []*netVM) error {
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i, vm := range vms {
		wg.Go(func() { vm.c, vm.stop, errs[i] = e.bootVM(ctx, vm.name, vm.args...) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, vm := range vms {
		st, err := vm.c.Status(ctx)
		if err != nil {
			return err
		}
		vm.monPID, vm.qemuPID = st.MonitorPID, st.QEMUPID
	}
	return nil
}

// stopAll stops the booted ones of vms, at once.
func stopAll(vms []*netVM) {
	var wg sync.WaitGroup
	for _, vm := range vms {
		if vm.stop != nil {
			wg.Go(vm.stop)
		}
	}
	wg.Wait()
}

// gateStats returns the network gate's counters of the gated VM.
func gateStats(ctx context.Context, c *apiclient.Client) (api.NetGateStats, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return api.NetGateStats{}, err
	}
	if st.Net == nil || st.Net.Gate == nil {
		return api.NetGateStats{}, errors.New("the gated VM's status lost its network gate")
	}
	return *st.Net.Gate, nil
}

// prepare makes sure the guest has its DHCP lease and writes the bulk
// workload's file to its tmpfs.
func (vm *netVM) prepare(ctx context.Context, t netTarget, mib int) error {
	res, err := guestSh(ctx, vm.c, prepareScript(t, mib), 120)
	if err != nil {
		return fmt.Errorf("prepare the %s guest: %w", vm.cfg, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("prepare the %s guest: exit %d: %s%s", vm.cfg, res.ExitCode, res.Stdout, res.Stderr)
	}
	return nil
}
