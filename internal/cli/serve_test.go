package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/hostd"
)

// runServe runs `gatevisor serve ARGS` under a deadline and returns its
// stdout and error.
func runServe(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newServeCmd()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestServeFlags(t *testing.T) {
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	t.Setenv("GATEVISOR_RUNTIME_DIR", filepath.Join(t.TempDir(), "run"))
	out, err := runServe(t, "--token-file")
	if err != nil || strings.TrimSpace(out) != filepath.Join(state, "gatevisor", "serve.token") {
		t.Errorf("--token-file: %q %v", out, err)
	}
	if _, err := runServe(t, "--listen", "9464", "--no-login-socket"); err == nil || !strings.Contains(err.Error(), "want HOST:PORT") {
		t.Errorf("--listen without a host: %v", err)
	}
	// No daemon: login says what to do. (A system daemon's login socket on
	// this host would answer the default search: then only --socket is
	// checked.)
	if _, err := os.Stat(hostd.DefaultLoginSocket); err == nil {
		t.Logf("%s exists (a system gatevisor serve): the default search is not checked", hostd.DefaultLoginSocket)
	} else if _, err := runServe(t, "login"); err == nil || !strings.Contains(err.Error(), "no gatevisor serve found") && !strings.Contains(err.Error(), "is gatevisor serve running?") {
		t.Errorf("login without a daemon: %v", err)
	}
	if _, err := runServe(t, "login", "--socket", filepath.Join(state, "nope.sock")); err == nil || !strings.Contains(err.Error(), "is gatevisor serve running?") {
		t.Errorf("login --socket to nothing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "gatevisor", "serve.sock")); !os.IsNotExist(err) {
		t.Errorf("a socket was left: %v", err)
	}
}
