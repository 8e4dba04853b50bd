package kit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockFile takes an exclusive flock(2) on path, waiting until ctx ends. The
// lock is released by the returned function, or by the kernel if the process
// dies, so a killed builder never leaves a stale lock.
func lockFile(ctx context.Context, path string, opts *Options) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kit: open lock: %w", err)
	}
	told := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("kit: lock %s: %w", path, err)
		}
		if !told {
			opts.progressf("kit: waiting for another gatevisor using the kit cache (%s)", path)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("kit: waiting for the kit lock: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
