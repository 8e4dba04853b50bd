package qmp

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Status is the reply of query-status.
type Status struct {
	// Status is QEMU's run state, e.g. "running", "paused", "prelaunch",
	// "shutdown", "debug".
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// QueryStatus returns the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Cont resumes the VM's vCPUs.
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Stop pauses the VM's vCPUs.
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// SystemPowerdown asks the guest to power off (ACPI power button). The guest
// may ignore it; watch for the SHUTDOWN event or Done.
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit makes QEMU exit at once. QEMU may close the connection before its
// reply arrives; that counts as success.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// HumanMonitorCommand runs an HMP command line (e.g. "info registers") and
// returns its output.
func (c *Client) HumanMonitorCommand(ctx context.Context, cmdline string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": cmdline}, &out)
	return out, err
}

// DumpGuestMemory writes an ELF core dump of guest memory to path (a file
// QEMU can create). Paging is off, so the dump holds guest-physical memory.
// The command runs with detach=false: it returns when the dump is complete
// (QEMU also emits DUMP_COMPLETED), and the VM is paused meanwhile.
// DumpGuestMemoryToFile dumps guest memory as an ELF core into f, which the
// caller opened (QEMU writes through the descriptor passed with getfd, so
// it never opens a path itself).
func (c *Client) DumpGuestMemoryToFile(ctx context.Context, f *os.File) error {
	name, err := c.passFD(ctx, f, "dump")
	if err != nil {
		return err
	}
	args := struct {
		Paging   bool   `json:"paging"`
		Protocol string `json:"protocol"`
		Detach   bool   `json:"detach"`
	}{false, "fd:" + name, false}
	if err := c.Execute(ctx, "dump-guest-memory", args, nil); err != nil {
		// The descriptor may still be QEMU's: released, best effort.
		_ = c.Execute(context.Background(), "closefd", struct {
			FDName string `json:"fdname"`
		}{name}, nil)
		return fmt.Errorf("qmp: dump guest memory to %s: %w", f.Name(), err)
	}
	return nil
}

func (c *Client) DumpGuestMemory(ctx context.Context, path string) error {
	args := struct {
		Paging   bool   `json:"paging"`
		Protocol string `json:"protocol"`
		Detach   bool   `json:"detach"`
	}{false, "file:" + path, false}
	if err := c.Execute(ctx, "dump-guest-memory", args, nil); err != nil {
		return fmt.Errorf("qmp: dump guest memory to %s: %w", path, err)
	}
	return nil
}
