package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

func init() {
	addSubcommand(newRestartCmd)
	addSubcommand(newSnapshotCmd)
	addSubcommand(newSnapshotsCmd)
	addSubcommand(newRollbackCmd)
}

// lifecycleTimeout bounds a restart, snapshot or rollback: a snapshot of a
// large guest writes gigabytes.
const lifecycleTimeout = 10 * time.Minute

// withVMFor runs f with a client of VM name, bounded to timeout.
func withVMFor(cmd *cobra.Command, name string, timeout time.Duration, f func(context.Context, *apiclient.Client) error) error {
	c, err := clientFor(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	return f(ctx, c)
}

func newRestartCmd() *cobra.Command {
	var req api.RestartRequest
	cmd := &cobra.Command{
		Use:   "restart NAME --keep-guest",
		Short: "Restart the VM's QEMU (or upgrade it, --qemu) with the guest kept running in its RAM",
		Long: `Replace the VM's QEMU process under the running guest: a new QEMU starts on
the same guest-RAM file, the old one saves only the device state (migration
with x-ignore-shared: guest RAM stays where it is), the new one loads it, the
monitor sets the kernel gate's traps on it and moves the console, the exec
channel and the NIC over, and the guest runs on. The guest is paused, not
rebooted: its clock, processes and connections go on. --qemu runs another
QEMU binary (an upgrade; owner or root only). If anything fails before the
switch, the old QEMU keeps the guest.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !req.KeepGuest {
				return fmt.Errorf("restart: pass --keep-guest (the guest keeps running on a new QEMU); to reboot the guest, stop the VM and run it again")
			}
			return withVMFor(cmd, args[0], lifecycleTimeout, func(ctx context.Context, c *apiclient.Client) error {
				res, err := c.Restart(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: QEMU restarted (pid %d -> %d), guest kept in RAM: paused %.1f ms, device state %d bytes, %.2f s in all\n",
					args[0], res.OldQEMUPID, res.NewQEMUPID, res.DowntimeSeconds*1000, res.DeviceStateBytes, res.TotalSeconds)
				printPhases(cmd, res.Phases)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&req.KeepGuest, "keep-guest", false, "keep the guest running in its RAM (required)")
	cmd.Flags().StringVar(&req.QEMUBinary, "qemu", "", "absolute path of the QEMU binary the new process runs (default: the current one)")
	return cmd
}

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot NAME [TAG]",
		Short: "Save the guest's RAM and device state as a snapshot to roll back to",
		Long: `Save the guest's RAM (only its non-zero pages, in a sparse file) and QEMU's
device state under TAG (default: the time, such as 20261206-171500) in the
VM's state directory (~/.local/state/gatevisor/vms/NAME/snapshots), with the
digests, kernel, policy and machine it was taken with. The guest is paused
while its RAM is copied, then runs on. 'gatevisor rollback NAME TAG' puts it
back; 'gatevisor snapshots NAME' lists them; 'gatevisor snapshot rm NAME TAG'
removes one.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			tag := time.Now().Format("20060102-150405")
			if len(args) == 2 {
				tag = args[1]
			}
			if err := api.CheckSnapshotTag(tag); err != nil {
				return err
			}
			return withVMFor(cmd, args[0], lifecycleTimeout, func(ctx context.Context, c *apiclient.Client) error {
				s, err := c.Snapshot(ctx, tag)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: snapshot %s taken: %d RAM pages (%.1f MiB on disk of %d MiB), device state %d bytes, guest paused %.1f ms\n",
					args[0], s.Tag, s.RAMPages, float64(s.RAMStoredBytes)/(1<<20), s.MemMiB, s.DeviceStateBytes, s.PausedSeconds*1000)
				return nil
			})
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME TAG",
		Short: "Remove a snapshot",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := api.CheckSnapshotTag(args[1]); err != nil {
				return err
			}
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				if err := c.RemoveSnapshot(ctx, args[1]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: snapshot %s removed\n", args[0], args[1])
				return nil
			})
		},
	}
	cmd.AddCommand(rm)
	return cmd
}

func newSnapshotsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "snapshots NAME",
		Short: "List the VM's snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				res, err := c.Snapshots(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(res)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "TAG\tCREATED\tRAM PAGES\tON DISK\tDEVICES\tPAUSED\tPOLICY")
				for _, s := range res.Snapshots {
					pol := s.PolicyDigest
					if len(pol) > 19 {
						pol = pol[:19]
					}
					if pol == "" {
						pol = "-"
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%.1f MiB\t%d B\t%.1f ms\t%s\n", s.Tag, s.Created.Local().Format("2006-01-02 15:04:05"),
						s.RAMPages, float64(s.RAMStoredBytes)/(1<<20), s.DeviceStateBytes, s.PausedSeconds*1000, pol)
				}
				if err := w.Flush(); err != nil {
					return err
				}
				for _, u := range res.Unreadable {
					fmt.Fprintf(cmd.ErrOrStderr(), "not a usable snapshot: %s\n", u)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return cmd
}

func newRollbackCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rollback NAME TAG",
		Short: "Put the guest back to a snapshot: same monitor, gates and audit log",
		Long: `Put the running guest back to snapshot TAG: the snapshot is checked against
this VM (name, machine, kernel image, and the boot's KASLR placement, where
the kernel gate's traps are) and against its digests while the guest runs;
then the guest is stopped, its RAM replaced with the snapshot's, and a new
QEMU loads the snapshot's device state and takes the guest over. The
monitor, the gates, the policy in force and the audit log stay; the log
records the rollback before it happens. A snapshot that does not match is
refused and the VM is left as it was; a failure after the guest's RAM was
replaced ends the VM (fail closed).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := api.CheckSnapshotTag(args[1]); err != nil {
				return err
			}
			return withVMFor(cmd, args[0], lifecycleTimeout, func(ctx context.Context, c *apiclient.Client) error {
				res, err := c.Rollback(ctx, args[1])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: rolled back to snapshot %s: %d RAM pages restored, guest paused %.1f ms (snapshot verified in %.2f s, %.2f s in all)\n",
					args[0], res.Tag, res.RAMPages, res.DowntimeSeconds*1000, res.VerifySeconds, res.TotalSeconds)
				printPhases(cmd, res.Phases)
				return nil
			})
		},
	}
}

// printPhases writes where a restart's or rollback's pause went.
func printPhases(cmd *cobra.Command, phases []api.Phase) {
	if len(phases) == 0 {
		return
	}
	parts := make([]string, len(phases))
	for i, p := range phases {
		parts[i] = fmt.Sprintf("%s %.1f ms", p.Name, p.Ms)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "  the pause: %s\n", strings.Join(parts, "; "))
}
