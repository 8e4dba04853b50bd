package integration

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/testvm"
)

// builtKit builds the bookworm kit of arch (or has a valid one reused),
// checks that kit ls lists it verified with a kernel release ending in
// releaseSuffix, and returns its name. It skips where qemuBin is not
// installed or the Debian archive is not reachable.
func builtKit(t *testing.T, arch, qemuBin, releaseSuffix string) string {
	t.Helper()
	if _, err := exec.LookPath(qemuBin); err != nil {
		testvm.Skip(t, "%s is not installed: %s guests need it: sudo apt-get install -y qemu-system-arm (scripts/install-deps installs it)", qemuBin, arch)
	}
	start := time.Now()
	r := gv(t, 20*time.Minute, "kit", "build", "--arch", arch)
	if r.code != 0 {
		for _, u := range unreachable {
			if strings.Contains(r.stderr, u) {
				testvm.Skip(t, "the %s kit cannot be built here: the Debian archive is not reachable through apt (%s): allow access to deb.debian.org\n%s", arch, u, r.stderr)
			}
		}
		t.Fatalf("kit build --arch %s: exit %d\n%s%s", arch, r.code, r.stdout, r.stderr)
	}
	t.Logf("kit build --arch %s: %v", arch, time.Since(start).Round(100*time.Millisecond))
	var kits []struct {
		Name, Arch, Suite string
		KernelRelease     string `json:"kernel_release"`
		Verified          bool
	}
	ls := gv(t, time.Minute, "kit", "ls", "--json")
	if err := json.Unmarshal([]byte(ls.stdout), &kits); err != nil {
		t.Fatalf("kit ls --json: %v\n%s", err, ls.stdout)
	}
	name := ""
	for _, k := range kits {
		if k.Arch == arch && k.Suite == "bookworm" && k.Verified && strings.HasSuffix(k.KernelRelease, releaseSuffix) {
			name = k.Name
		}
	}
	if name == "" {
		t.Fatalf("kit ls lists no verified %s kit:\n%s", arch, ls.stdout)
	}
	return name
}
