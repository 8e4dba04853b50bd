package testvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// pollInterval is how often Poll and Eventually look at their condition.
const pollInterval = 50 * time.Millisecond

// Poll calls cond until it returns nil or limit passes, and returns cond's
// last error then. It is for conditions that no event announces.
func Poll(limit time.Duration, cond func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(pollInterval)
	}
}

// Eventually waits until cond returns nil, polling, and fails the test with
// what and cond's last error if it does not within limit.
func Eventually(t testing.TB, limit time.Duration, what string, cond func() error) {
	t.Helper()
	if err := Poll(limit, cond); err != nil {
		t.Fatalf("%s: not within %v: %v", what, limit, err)
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// QEMUProcesses lists the QEMU processes whose command line contains
// substr (a directory of the test run, say), whoever started them.
func QEMUProcesses(substr string) []int { return processes("qemu-system", substr) }

// processes lists the processes whose command line contains both prog
// and substr.
func processes(prog, substr string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(prog)) {
			continue
		}
		if bytes.Contains(cmdline, []byte(substr)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// NoQEMU waits until no QEMU whose command line contains substr runs.
func NoQEMU(t testing.TB, substr string, limit time.Duration) {
	t.Helper()
	Eventually(t, limit, fmt.Sprintf("QEMU of %s gone", substr), func() error {
		if pids := QEMUProcesses(substr); len(pids) > 0 {
			return fmt.Errorf("still running: pids %v", pids)
		}
		return nil
	})
}
