package monitor

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/qemu"
)

// handoverFD writes b to a memfd, as HandOff does, and returns it.
func handoverFD(t *testing.T, b []byte) int {
	t.Helper()
	fd, err := unix.MemfdCreate("handover-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(fd, b); err != nil {
		t.Fatal(err)
	}
	return fd
}

func TestHandoverRoundTrip(t *testing.T) {
	h := Handover{Config: Config{Name: "vm1", MemMiB: 256, CPUs: 1, Console: os.Stdout, Log: os.Stderr, IDSInterval: 2 * time.Second},
		QEMU: qemu.Config{Name: "vm1", MemMiB: 256, CPUs: 1, ExtraFiles: []*os.File{os.Stdin}}, Gen: 2, Upgrades: 1,
		PolicyPath: "/p/x.policy", PolicyDigest: "sha256:00", LockFD: 7, RAMFD: 8, DevicesFD: 9, KernelFD: 10, InitrdFD: -1,
		StopTimeout: 30 * time.Second, OldQEMUPID: 42}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatalf("a handover with the monitor's writers and QEMU's descriptors does not marshal: %v", err)
	}
	got, err := ReadHandover(handoverFD(t, b))
	if err != nil {
		t.Fatal(err)
	}
	if got.Config.Name != "vm1" || got.Config.IDSInterval != 2*time.Second || got.Config.Console != nil || got.QEMU.ExtraFiles != nil ||
		got.Gen != 2 || got.PolicyDigest != "sha256:00" || got.InitrdFD != -1 || got.OldQEMUPID != 42 || got.StopTimeout != 30*time.Second {
		t.Errorf("round trip: %+v", got)
	}
}

func TestReadHandoverRefuses(t *testing.T) {
	for name, b := range map[string][]byte{
		"not JSON":    []byte("{"),
		"incomplete":  []byte(`{"config":{"Name":"vm1"},"gen":1,"LockFD":1,"RAMFD":8,"DevicesFD":9}`),
		"no VM":       []byte(`{"gen":1,"LockFD":7,"RAMFD":8,"DevicesFD":9}`),
		"too large":   []byte(`{"binary":"` + strings.Repeat("x", maxHandover) + `"}`),
		"no gen":      []byte(`{"config":{"Name":"vm1"},"LockFD":7,"RAMFD":8,"DevicesFD":9}`),
		"empty":       nil,
		"whitespaces": []byte("   "),
	} {
		if _, err := ReadHandover(handoverFD(t, b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
