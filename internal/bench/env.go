package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// Env is what a harness needs from its caller: the CLI's own lookups, so
// that the harness finds its VMs where the commands do.
type Env struct {
	// Client returns an API client for the running VM name; an error
	// while it is not (yet) running.
	Client func(name string) (*apiclient.Client, error)
	// WaitGone waits until VM name's monitor has exited.
	WaitGone func(ctx context.Context, name string) error
	// StateDir returns the directory that holds VM name's logs.
	StateDir func(name string) (string, error)
	// Progress receives the kit's progress and a line per timed run; nil
	// discards them.
	Progress io.Writer
}

func (e Env) progress() io.Writer {
	if e.Progress == nil {
		return io.Discard
	}
	return e.Progress
}

func (e Env) logf(format string, args ...any) { fmt.Fprintf(e.progress(), format, args...) }

// stopTimeout bounds stopping one benchmark VM.
const stopTimeout = time.Minute

// bootVM starts `gatevisor run --detach --name name args...` with this
// binary and returns its API client and a function that stops it and
// removes its logs. If the boot fails or ctx ends while it waits, the VM
// is stopped before bootVM returns.
func (e Env) bootVM(ctx context.Context, name string, args ...string) (*apiclient.Client, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	run := exec.CommandContext(ctx, self, append([]string{"run", "--detach", "--name", name}, args...)...)
	run.Stderr = e.progress()
	if err := run.Run(); err != nil {
		e.stopByName(name)
		return nil, nil, fmt.Errorf("boot the benchmark VM: %w", err)
	}
	c, err := e.Client(name)
	if err != nil {
		e.stopByName(name)
		return nil, nil, err
	}
	return c, func() { e.stopVM(c, name) }, nil
}

// stopVM stops VM name at once and, once it is gone, removes its logs
// (console, audit, events): they are of no use once its numbers are out.
func (e Env) stopVM(c *apiclient.Client, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	_, _ = c.Stop(ctx, api.StopRequest{Force: true})
	if e.WaitGone(ctx, name) != nil {
		return
	}
	if dir, err := e.StateDir(name); err == nil {
		_ = os.RemoveAll(dir)
	}
}

// stopByName stops a benchmark VM whose boot did not return (an error, or
// Ctrl-C while `run --detach` waited): its background monitor may be
// starting still, so it looks for it for a few seconds. Its logs stay, for
// the failure.
func (e Env) stopByName(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := e.Client(name); err == nil {
			_, _ = c.Stop(ctx, api.StopRequest{Force: true})
			_ = e.WaitGone(ctx, name)
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
