package qmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Migration capabilities gatevisor sets.
const (
	// CapIgnoreShared leaves RAM blocks backed by a shared file out of
	// the migration stream (QEMU 4.0 and later): guest RAM stays in its
	// file, and only device state (and the few private RAM blocks, such
	// as the firmware's) is saved.
	CapIgnoreShared = "x-ignore-shared"
)

// SetMigrationCapability turns one migration capability on or off; on a
// destination QEMU (-incoming defer) it must be set before
// MigrateIncomingFD.
func (c *Client) SetMigrationCapability(ctx context.Context, name string, on bool) error {
	type capability struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	args := struct {
		Capabilities []capability `json:"capabilities"`
	}{[]capability{{name, on}}}
	if err := c.Execute(ctx, "migrate-set-capabilities", args, nil); err != nil {
		return fmt.Errorf("qmp: migration capability %s=%v: %w", name, on, err)
	}
	return nil
}

// UnlimitedBandwidth is the max-bandwidth gatevisor migrates at: QEMU's
// default (32 MiB/s in 7.2) paces a live migration over a network; a
// migration into a local file with the guest stopped should go as fast
// as QEMU can write.
const UnlimitedBandwidth = 1 << 40

// SetMaxBandwidth sets the migration's max-bandwidth in bytes per second.
func (c *Client) SetMaxBandwidth(ctx context.Context, bytesPerSecond int64) error {
	if err := c.Execute(ctx, "migrate-set-parameters", struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}{bytesPerSecond}, nil); err != nil {
		return fmt.Errorf("qmp: migration max-bandwidth %d: %w", bytesPerSecond, err)
	}
	return nil
}

// passFD hands f to QEMU under a fresh name (getfd) and returns the name.
func (c *Client) passFD(ctx context.Context, f *os.File, what string) (string, error) {
	name := "gv-" + what + "-" + strconv.FormatUint(c.nextID.Add(1), 10)
	if err := c.ExecuteWithFD(ctx, "getfd", struct {
		FDName string `json:"fdname"`
	}{name}, nil, int(f.Fd())); err != nil {
		return "", fmt.Errorf("qmp: pass the %s file: %w", what, err)
	}
	return name, nil
}

// MigrateToFD starts an outgoing migration into f (QEMU writes through the
// descriptor; it never opens a path). It returns once the migration has
// started; WaitMigration says how it ended.
func (c *Client) MigrateToFD(ctx context.Context, f *os.File) error {
	name, err := c.passFD(ctx, f, "migrate-out")
	if err != nil {
		return err
	}
	if err := c.Execute(ctx, "migrate", struct {
		URI string `json:"uri"`
	}{"fd:" + name}, nil); err != nil {
		return fmt.Errorf("qmp: migrate: %w", err)
	}
	return nil
}

// MigrateIncomingFD makes a QEMU started with -incoming defer load its
// state from f. It returns once loading has started; WaitMigration says
// how it ended.
func (c *Client) MigrateIncomingFD(ctx context.Context, f *os.File) error {
	name, err := c.passFD(ctx, f, "migrate-in")
	if err != nil {
		return err
	}
	if err := c.Execute(ctx, "migrate-incoming", struct {
		URI string `json:"uri"`
	}{"fd:" + name}, nil); err != nil {
		return fmt.Errorf("qmp: migrate-incoming: %w", err)
	}
	return nil
}

// MigrationInfo is the part of query-migrate's reply gatevisor reads.
type MigrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc,omitempty"`
	// TotalTime and Downtime are in milliseconds (source side, once
	// completed).
	TotalTime int64 `json:"total-time,omitempty"`
	Downtime  int64 `json:"downtime,omitempty"`
}

// QueryMigration returns the state of the migration in progress or last
// finished, on either side.
func (c *Client) QueryMigration(ctx context.Context) (MigrationInfo, error) {
	var mi MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// ErrMigrationFailed means QEMU reported the migration failed or was
// cancelled.
var ErrMigrationFailed = errors.New("migration failed")

// WaitMigration polls query-migrate until the migration completed (nil),
// failed (ErrMigrationFailed with QEMU's reason) or ctx ends. It polls
// every 0.5 to 2 ms for the first half second (a device-state migration
// takes tens of milliseconds, and the guest waits for it), then backs off
// to 50 ms (a full migration takes seconds).
func (c *Client) WaitMigration(ctx context.Context) (MigrationInfo, error) {
	start := time.Now()
	delay := 500 * time.Microsecond
	for {
		mi, err := c.QueryMigration(ctx)
		if err != nil {
			return mi, fmt.Errorf("qmp: query-migrate: %w", err)
		}
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed", "cancelled":
			if mi.ErrorDesc == "" {
				mi.ErrorDesc = mi.Status
			}
			return mi, fmt.Errorf("%w: %s", ErrMigrationFailed, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return mi, fmt.Errorf("qmp: wait for the migration (status %q): %w", mi.Status, ctx.Err())
		case <-time.After(delay):
		}
		switch {
		case time.Since(start) > 500*time.Millisecond && delay < 50*time.Millisecond:
			delay *= 2
		case delay < 2*time.Millisecond:
			delay *= 2
		}
	}
}
