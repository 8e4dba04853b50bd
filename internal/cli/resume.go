package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/monitor"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

func init() {
	addSubcommand(newUpgradeCmd)
	addSubcommand(newMonitorResumeCmd)
}

func newUpgradeCmd() *cobra.Command {
	var req api.UpgradeRequest
	cmd := &cobra.Command{
		Use:   "upgrade NAME [--binary PATH]",
		Short: "Replace the VM's monitor (a new gatevisor binary) with the guest kept running",
		Long: `Replace the monitor process of VM NAME with the gatevisor binary at --binary
(default: the one the monitor runs, e.g. after 'go build' over it), the guest
kept running: the guest is stopped, QEMU saves its device state, the monitor
execs the new binary in place (same process id, runtime directory and lock),
which starts a new QEMU on the guest's RAM, reads the policy in force again
(refusing one that no longer reads the same), sets the kernel gate's traps
and lets the guest run. While no monitor runs, the guest is stopped.

An isolated network or a tap is kept: the network gate's open flows and
the guest's address cross over, and the network's switch and services run
in a process of their own. Not yet for VMs on the user-mode NAT (--net
user), with served files or a foreground console: refused, nothing
changed. A monitor in a fleet stays in it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVMFor(cmd, args[0], lifecycleTimeout, func(ctx context.Context, c *apiclient.Client) error {
				start := time.Now()
				res, err := c.Upgrade(ctx, req)
				if err != nil {
					return err
				}
				// The API answers again once the new monitor runs.
				var st api.Status
				for {
					select {
					case <-ctx.Done():
						return fmt.Errorf("upgrade: the new monitor did not answer: %w", ctx.Err())
					case <-time.After(20 * time.Millisecond):
					}
					if syscall.Kill(res.MonitorPID, 0) == syscall.ESRCH {
						cleanDeadVM(args[0])
						return fmt.Errorf("upgrade: the new monitor (pid %d) ended without taking the VM over, and the VM with it: its log says why (%s)",
							res.MonitorPID, monitorLogPath(args[0]))
					}
					nc, err := clientFor(args[0])
					if err != nil {
						continue
					}
					if st, err = nc.Status(ctx); err == nil && st.MonitorUpgrades >= res.Upgrades && st.State == api.StateRunning {
						break
					}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: monitor upgraded in place (pid %d, %s; upgrade %d), QEMU pid %d: guest stopped %.1f ms, %.0f ms in all\n",
					args[0], st.MonitorPID, res.Binary, st.MonitorUpgrades, st.QEMUPID, st.UpgradePauseMs, float64(time.Since(start).Microseconds())/1000)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&req.Binary, "binary", "", "absolute path of the gatevisor binary the new monitor runs (default: the running one)")
	return cmd
}

func newMonitorResumeCmd() *cobra.Command {
	var fd int
	cmd := &cobra.Command{
		Use:    "monitor-resume --handover-fd N",
		Short:  "internal: the monitor's second half of gatevisor upgrade",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return resumeMonitor(cmd.Context(), fd)
		},
	}
	cmd.Flags().IntVar(&fd, "handover-fd", -1, "the handover's descriptor")
	return cmd
}

// resumeMonitor runs a monitor handed over by the process this one
// replaced (exec in place): the guest waits, stopped, until the kernel
// gate is armed on the new QEMU.
func resumeMonitor(ctx context.Context, fd int) error {
	if fd < 3 {
		return fmt.Errorf("monitor-resume: --handover-fd: this command is run by gatevisor upgrade, not by hand")
	}
	tuneMonitorGC()
	h, err := monitor.ReadHandover(fd)
	if err != nil {
		return err
	}
	cfg := h.Config
	cfg.Log = os.Stderr
	tuneMonitorProcs(cfg.CPUs)
	cfg.NetHost = netHostSpawner()
	if h.SymbolsFD >= 3 {
		cfg.Symbols = os.NewFile(uintptr(h.SymbolsFD), "symbols")
		if cfg.Profile, err = symbolsFromFD(cfg.Symbols); err != nil {
			return fmt.Errorf("upgrade: the new monitor could not read the symbol table the VM's profile came from: %w", err)
		}
	} else if cfg.Profile, err = profileOptions(""); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	m, err := monitor.Resume(ctx, cfg, h)
	if err != nil {
		return fmt.Errorf("upgrade: the new monitor could not take the VM over, which ended: %w", err)
	}
	shutdown, err := serveAPI(m)
	if err != nil {
		m.Close()
		return err
	}
	defer shutdown()
	if err := m.ResumeGuest(ctx, h.Stopped, h.Frozen); err != nil {
		return err
	}
	timeout := h.StopTimeout
	if timeout <= 0 {
		timeout = monitor.DefaultStopTimeout
	}
	leave, beforeHandOff, err := rejoinFleet(h, m, cfg)
	if err != nil {
		m.Close()
		return err
	}
	if leave != nil {
		defer leave()
	}
	go stopOnSignals(m, sigs, timeout, os.Stderr)
	return waitOrUpgrade(m, shutdown, timeout, beforeHandOff)
}

// monitorLogPath is where a detached monitor of VM name logs.
func monitorLogPath(name string) string {
	dir, err := stateDir(name)
	if err != nil {
		return "the VM's monitor.log"
	}
	return filepath.Join(dir, "monitor.log")
}

// cleanDeadVM removes what a monitor that died left of VM name (its QEMU,
// if alive, and its runtime directory), as the next run of the name would.
func cleanDeadVM(name string) {
	root, err := vmdir.Root()
	if err != nil {
		return
	}
	if d, err := vmdir.Acquire(root, name); err == nil {
		d.Release()
	}
}
