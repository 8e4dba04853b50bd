package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/safefile"
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
// ~/.local/state/gatevisor/vms/name. It is created without following links
// and refused if it, or a directory on the way, could be another user's.
func stateDir(name string) (string, error) {
	base, err := stateBase()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(base, "gatevisor", "vms", name)
	if err := safefile.Dir(dir, 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w (or set XDG_STATE_HOME to a directory of yours)", err)
	}
	return dir, nil
}

// stateBase is $XDG_STATE_HOME, or ~/.local/state.
func stateBase() (string, error) {
	if base := os.Getenv("XDG_STATE_HOME"); base != "" && filepath.IsAbs(base) {
		return base, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no state directory: set XDG_STATE_HOME or HOME: %w", err)
	}
	return filepath.Join(home, ".local", "state"), nil
}

// clientFor returns an API client for the running VM name: this user's, or
// else root's if root shares it (see vmdir.Find).
func clientFor(name string) (*apiclient.Client, error) {
	e, err := vmdir.Find(name)
	if err != nil {
		return nil, err
	}
	switch {
	case e.Private:
		return nil, fmt.Errorf("VM %q belongs to %s and is not shared with you (%s is closed to you): run the command as %s, or start the VM with a policy that grants you API access", name, ownerName(e.Owner), e.Path, ownerName(e.Owner))
	case !e.Live && !e.Mine():
		return nil, fmt.Errorf("VM %q of %s is not running (its monitor died; the next 'gatevisor run --name %s' as %s cleans up what it left)", name, ownerName(e.Owner), name, ownerName(e.Owner))
	case !e.Live:
		return nil, fmt.Errorf("VM %q is not running (its monitor died; the next 'gatevisor run --name %s' cleans up what it left)", name, name)
	}
	return apiclient.New(filepath.Join(e.Path, vmdir.APISocket)), nil
}

// ownerName names the user uid: "root", a user name, or "uid N".
func ownerName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil && u.Username != "" {
		return u.Username
	}
	return "uid " + id
}

// waitGone waits until VM name's monitor is gone (its lock released, or,
// for root's VM seen by a user, its API socket closed).
func waitGone(ctx context.Context, name string) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		e, err := vmdir.Find(name)
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
