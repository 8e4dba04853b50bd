package testvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/qemu"
)

// RequireEnv is the environment variable that turns every skip of a VM
// test into a failure when it is "1" (scripts/test sets it).
const RequireEnv = "GATEVISOR_REQUIRE_VM"

// Required reports whether VM tests must run (RequireEnv=1).
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Skip skips a VM test whose prerequisite is missing, or fails it when VM
// tests are required. The reason must name the missing thing and how to
// get it.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (%s=1: VM tests must run, not skip)", reason, RequireEnv)
		return
	}
	t.Skip(reason)
}

// QEMUBinary is the QEMU system emulator every suite uses: the one on
// $PATH, or the file qemu.EnvBinary (GATEVISOR_QEMU) names.
const QEMUBinary = qemu.Binary

var qemuLookup struct {
	once  sync.Once
	path  string
	accel string // tcg, or kvm when this QEMU has no TCG
	err   error
}

// FindQEMU returns QEMU's path, or an error that names what is missing and
// how to get it: the binary, or an accelerator (TCG, or KVM with a usable
// /dev/kvm). The binary is the one gatevisor runs (qemu.FindBinary): the
// file GATEVISOR_QEMU names when it is set (a bad one is an error, never a
// fall back to $PATH), and QEMUBinary on $PATH otherwise. It looks once per test binary.
func FindQEMU() (string, error) {
	qemuLookup.once.Do(func() {
		qemuLookup.path, qemuLookup.accel, qemuLookup.err = findQEMU()
	})
	return qemuLookup.path, qemuLookup.err
}

func findQEMU() (path, accel string, err error) {
	if path, err = qemu.FindBinary(); err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "-accel", "help").Output()
	if err != nil {
		return "", "", fmt.Errorf("%s -accel help: %v: reinstall QEMU ('sudo apt-get install --reinstall qemu-system-x86')", path, err)
	}
	accels := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		accels[f] = true
	}
	if accels["tcg"] {
		return path, "tcg", nil
	}
	if accels["kvm"] {
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err == nil {
			f.Close()
			return path, "kvm", nil
		}
		return "", "", fmt.Errorf("%s has no TCG and /dev/kvm is unusable (%v): install a QEMU with TCG ('sudo apt-get install -y qemu-system-x86') or give this user access to /dev/kvm", path, err)
	}
	return "", "", fmt.Errorf("%s offers neither TCG nor KVM (-accel help: %q): install Debian's build ('sudo apt-get install -y qemu-system-x86')", path, strings.TrimSpace(string(out)))
}

// NeedQEMU returns QEMU's path, or skips the test (fails it when VM tests
// are required) when QEMU or an accelerator is missing, or under -short.
func NeedQEMU(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		Skip(t, "boots a guest under QEMU: run without -short")
	}
	path, err := FindQEMU()
	if err != nil {
		Skip(t, "%v", err)
	}
	return path
}

var defaultKit struct {
	once sync.Once
	kit  *kit.Kit
	err  error
}

// EnsureKit builds the default guest kit, or checks the one in the cache,
// once per test binary: kit.EnsureDefault holds the kit cache's lock, so
// test binaries running in parallel build it once between them. The first
// build downloads about 70 MB with apt-get; progress goes to progress.
func EnsureKit(progress io.Writer) (*kit.Kit, error) {
	defaultKit.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		defaultKit.kit, defaultKit.err = kit.EnsureDefault(ctx, kit.Options{Progress: progress})
	})
	return defaultKit.kit, defaultKit.err
}

// KitUnavailable reports whether err from EnsureKit means that the kit
// cannot be built on this machine (a missing prerequisite, which may skip)
// rather than a failure, and says how to get it.
func KitUnavailable(err error) (reason string, ok bool) {
	if errors.Is(err, kit.ErrNoApt) {
		return "apt-get not found: the default kit is built from Debian packages fetched with 'apt-get download': run on Debian or Ubuntu after 'sudo apt-get update'", true
	}
	return "", false
}

// Kit returns the default guest kit (see EnsureKit), skipping the test
// when it cannot be built here and failing it when building fails.
func Kit(t testing.TB) *kit.Kit {
	t.Helper()
	k, err := EnsureKit(logWriter{t})
	if reason, ok := KitUnavailable(err); ok {
		Skip(t, "%s", reason)
	}
	if err != nil {
		t.Fatalf("build the default kit: %v", err)
	}
	return k
}

// logWriter writes to a test's log, a line at a time.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
