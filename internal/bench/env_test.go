package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// fakeVMs is an Env whose VM is "running" once Client has been asked
// for it found times; its API socket does not exist, so a stop request
// fails, as it does when the VM quits under it.
type fakeVMs struct {
	t       *testing.T
	found   int // Client calls before the VM is found
	calls   int
	gone    error // WaitGone's answer
	waited  []string
	logsDir string
}

func (f *fakeVMs) env() Env {
	return Env{
		Client: func(name string) (*apiclient.Client, error) {
			f.calls++
			if f.calls <= f.found {
				return nil, errors.New("not running")
			}
			return apiclient.New(filepath.Join(f.t.TempDir(), "no-api.sock")), nil
		},
		WaitGone: func(_ context.Context, name string) error {
			f.waited = append(f.waited, name)
			return f.gone
		},
		StateDir: func(name string) (string, error) { return f.logsDir, nil },
	}
}

func newFakeVMs(t *testing.T) *fakeVMs {
	dir := filepath.Join(t.TempDir(), "logs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return &fakeVMs{t: t, logsDir: dir}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// TestStopVM: a benchmark VM's logs go once it is gone, and stay if it
// may still be running.
func TestStopVM(t *testing.T) {
	f := newFakeVMs(t)
	e := f.env()
	c, _ := e.Client("vm")
	e.stopVM(c, "vm")
	if len(f.waited) != 1 || exists(f.logsDir) {
		t.Errorf("gone: waited for %v, logs left: %v; want one wait and no logs", f.waited, exists(f.logsDir))
	}

	f = newFakeVMs(t)
	f.gone = context.DeadlineExceeded
	e = f.env()
	e.stopVM(c, "vm")
	if !exists(f.logsDir) {
		t.Error("a VM not known to be gone lost its logs")
	}
}

// TestStopByName: a VM whose boot did not return is looked for until it
// shows up, then stopped and waited for; its logs stay, for the failure.
func TestStopByName(t *testing.T) {
	f := newFakeVMs(t)
	f.found = 2
	f.env().stopByName("vm")
	if f.calls != 3 || len(f.waited) != 1 || f.waited[0] != "vm" {
		t.Errorf("%d lookups, waited for %v; want 3 lookups and a wait for vm", f.calls, f.waited)
	}
	if !exists(f.logsDir) {
		t.Error("the logs of a VM that failed to boot were removed")
	}
}
