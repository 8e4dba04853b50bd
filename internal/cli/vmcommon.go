package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

// defaultVMName is the name `run` uses without --name.
const defaultVMName = "gatevisor"

// parseMem parses a memory size such as 256, 256M, 1G or 1024MiB into MiB.
func parseMem(s string) (int, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := 1
	switch {
	case strings.HasSuffix(t, "GIB"), strings.HasSuffix(t, "G"):
		mult = 1024
		t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "G")
	case strings.HasSuffix(t, "MIB"), strings.HasSuffix(t, "M"):
		t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "M")
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 || n > 1<<30/mult {
		return 0, fmt.Errorf("--mem %q: give a size such as 256M or 1G", s)
	}
	return n * mult, nil
}

// stateDir is where logs of VM name go: $XDG_STATE_HOME/gatevisor/vms/name or
// ~/.local/state/gatevisor/vms/name.
func stateDir(name string) (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" || !filepath.IsAbs(base) {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no state directory: set XDG_STATE_HOME or HOME: %w", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	dir := filepath.Join(base, "gatevisor", "vms", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	return dir, nil
}

// clientFor returns an API client for the running VM name.
func clientFor(name string) (*api.Client, error) {
	root, err := vmdir.Root()
	if err != nil {
		return nil, err
	}
	e, err := vmdir.Lookup(root, name)
	if err != nil {
		return nil, err
	}
	if !e.Live {
		return nil, fmt.Errorf("VM %q is not running (its monitor died; the next 'gatevisor run --name %s' cleans up what it left)", name, name)
	}
	return api.NewClient(filepath.Join(e.Path, vmdir.APISocket)), nil
}

// waitGone waits until VM name's monitor has released its lock.
func waitGone(ctx context.Context, name string) error {
	root, err := vmdir.Root()
	if err != nil {
		return err
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		e, err := vmdir.Lookup(root, name)
		if errors.Is(err, vmdir.ErrNotFound) || (err == nil && !e.Live) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("VM %q is still running: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}
