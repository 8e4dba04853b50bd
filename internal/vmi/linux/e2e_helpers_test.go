package linux

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/qemu/qmp"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

func TestMain(m *testing.M) { os.Exit(testvm.Main(m)) }

// guest is the default kit's guest under QEMU (TCG), with the exec agent,
// that the real-kernel tests share: one boot for the package. A test that
// changes it undoes the change.
var guest testvm.Shared

// realGuest returns the shared guest, booting it on the first call, and
// the kit it runs. It skips (with the reason and the fix) when QEMU or
// apt-get is missing, unless VM tests are required.
func realGuest(t *testing.T) (*testvm.VM, *kit.Kit) {
	t.Helper()
	testvm.NeedQEMU(t)
	k := testvm.Kit(t)
	cfg := testvm.KitGuest(k)
	cfg.NoReboot = true
	guest.ReadyLimit = 5 * time.Minute
	return guest.VM(t, cfg), k
}

// dumpGuest writes v's memory to path with QMP dump-guest-memory (paging
// off); QEMU stops the guest for the dump and resumes it afterwards.
func dumpGuest(ctx context.Context, t *testing.T, v *testvm.VM, path string) {
	t.Helper()
	q, err := qmp.Dial(ctx, v.QMP)
	if err != nil {
		t.Fatalf("QMP: %v", err)
	}
	defer q.Close()
	t0 := time.Now()
	if err := q.DumpGuestMemory(ctx, path); err != nil {
		t.Fatal(err)
	}
	t.Logf("dump-guest-memory took %v", time.Since(t0).Round(time.Millisecond))
}

// booted is a dump of the shared guest taken once, for the tests that only
// read one: it lives in the guest's directory, removed when the guest stops.
var booted struct {
	once sync.Once
	path string
}

// bootedDump returns the kit and a dump of the shared guest, ready, as the
// tests leave it.
func bootedDump(ctx context.Context, t *testing.T) (*kit.Kit, string) {
	t.Helper()
	v, k := realGuest(t)
	booted.once.Do(func() {
		path := filepath.Join(v.Dir, "booted.elf")
		dumpGuest(ctx, t, v, path)
		booted.path = path
	})
	if booted.path == "" {
		t.Fatal("the shared dump failed in an earlier test")
	}
	return k, booted.path
}
