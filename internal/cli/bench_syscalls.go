//go:build !gatevisor_monitor

package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
	"github.com/gatevisor/gatevisor/internal/policy"
)

func newBenchSyscallsCmd() *cobra.Command {
	var o bench.SyscallsOptions
	cmd := &cobra.Command{
		Use:   "syscalls",
		Short: "Cost of the syscall gate: in-guest open loops with the gate off, not matched, denied, and not trapped",
		Long: `Boot the default kit in the background and time in-guest loops, switching
policies with a hot reload (the same guest throughout) and alternating the
configurations in every round:

  off      a policy that names no syscall: no breakpoint
  open     traps the open family (open/openat/creat/openat2), denies /etc/passwd
  execve   traps only execve: open is a syscall the policy does not name
  cold     traps 12 syscalls no loop makes (24 breakpoints): the cost of
           breakpoints to code that never reaches them
  iot      the shipped default policy (--policy): file, exec and module
           hooks, open and ptrace, from boot

Syscalls a policy does not trap are timed by sysloop
(internal/bench/benchdata/sysloop.c, built static with the host's gcc and
added to the guest), which makes one syscall --calls times and reads the
guest's monotonic clock around the loop: getpid, a 1-byte read of
/dev/zero, stat, kill(self, 0), and open+close (trapped only by the open
policy, so measured under execve).
Each run follows a warm-up run of a twentieth of the calls.

Trapped calls are timed in the guest's ash by its /proc/uptime:
'true </etc/hostname' opens without forking (one openat per iteration);
'cat /etc/hostname' forks and execs busybox (one openat in the child);
'kill -0 $$' is one kill syscall per iteration, untrapped here.
Under iot, a file-write loop (': > f; rm f': create, open for writing,
truncate, unlink) and an exec loop ('/bin/busybox true': the exec's hooks).
It also times 'policy load' of a generated 1,000-rule policy (compile,
coverage check, trap plan and apply, through the API) and its compile alone.
Reports medians, the difference from the gate-off loop (of the medians,
and paired: per round, against the gate-off run of the same round), the
breakpoint stops per iteration as the monitor counted them, and the cost
per stop (difference / stops per iteration) with the monitor's share.

--kit boots another built kit (the arm64 one: qemu-system-aarch64, the
kernel gate's breakpoints at __arm64_sys_* and the LSM hooks) and runs the
shell loops only (open, kill -0, cat under off, execve and open).`,
	}
	cmd.Flags().IntVar(&o.Rounds, "rounds", 5, "rounds; each runs every case once")
	cmd.Flags().IntVar(&o.Iters, "iters", 1000, "iterations of the loops that trap")
	cmd.Flags().IntVar(&o.UntrappedIters, "untrapped-iters", 20000, "iterations of the loops that do not trap")
	cmd.Flags().IntVar(&o.Calls, "calls", 200000, "syscalls per run of the in-guest sysloop program")
	cmd.Flags().IntVar(&o.CPUs, "cpus", 1, "the VM's vCPUs (on more than one the kernel gate traps with breakpoints, not watchpoints)")
	cmd.Flags().StringVar(&o.Kit, "kit", "", "boot this built kit (a name of 'gatevisor kit ls', such as the arm64 kit) and run the shell loops only (open, kill -0, cat)")
	cmd.Flags().StringVar(&o.IoTPolicy, "policy", "policies/iot-default.policy", "the device policy measured as \"iot\" (the VM has a network for it)")
	check := func() error {
		if o.CPUs < 1 || o.CPUs > 8 {
			return fmt.Errorf("--cpus 1..8")
		}
		if o.Rounds < 1 || o.Rounds > 50 || o.Iters < 10 || o.Iters > 1000000 || o.UntrappedIters < 10 || o.UntrappedIters > 10000000 || o.Calls < 100 || o.Calls > 100000000 {
			return fmt.Errorf("--rounds 1..50, --iters 10..1000000, --untrapped-iters 10..10000000, --calls 100..100000000")
		}
		var err error
		if o.IoTSource, err = readCapped(o.IoTPolicy, policy.MaxFileSize); err != nil {
			return benchPolicyError(err)
		}
		return nil
	}
	return benchFront(cmd, check, func(ctx context.Context, env bench.Env) (*bench.SyscallsReport, error) {
		return bench.Syscalls(ctx, env, o)
	})
}

// benchPolicyError is the error of a benchmark's --policy that cannot be
// read; the default names a file of the source tree, relative to its root.
func benchPolicyError(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("--policy: %w (the default, policies/iot-default.policy, is in gatevisor's source tree: run from its root, or give --policy PATH)", err)
	}
	return fmt.Errorf("--policy: %w", err)
}
