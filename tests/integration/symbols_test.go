package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// TestIDSWithSymbols reads a dump of the shared VM with the kit kernel's
// BTF ignored (GATEVISOR_IGNORE_BTF=1) and its layouts from a Volatility 3
// symbol table written from that BTF (--symbols FILE.json.xz would be
// the same; plain JSON here), and checks that every answer is the one read
// with BTF; without --symbols the error names the flag.
func TestIDSWithSymbols(t *testing.T) {
	needShared(t)
	k := testvm.Kit(t)
	dir := t.TempDir()
	isf := kitISF(t, dir)
	dump := filepath.Join(dir, "guest.elf")
	if r := gv(t, 5*time.Minute, "dump", sharedVM, "-o", dump); r.code != 0 {
		t.Fatalf("dump: %d %s", r.code, r.stderr)
	}
	ignore := []string{"GATEVISOR_IGNORE_BTF=1"}
	r := gvEnv(t, 5*time.Minute, ignore, "ids", "ps", "--dump", dump, "--kernel", k.Kernel)
	if r.code == 0 || !strings.Contains(r.stderr, "this kernel has no .BTF: give --symbols FILE.json (Volatility 3 ISF, e.g. from dwarf2json)") {
		t.Errorf("BTF ignored, no --symbols: exit %d, %s", r.code, r.stderr)
	}
	if r := gv(t, time.Minute, "ids", "ps", "--vm", sharedVM, "--symbols", isf); r.code == 0 || !strings.Contains(r.stderr, "--symbols goes with --dump") {
		t.Errorf("--vm --symbols: exit %d, %s", r.code, r.stderr)
	}
	for _, q := range []string{"ps", "banner", "modules", "sockets", "syscalls", "hooks"} {
		t0 := time.Now()
		want := gv(t, 5*time.Minute, "ids", q, "--json", "--dump", dump, "--kernel", k.Kernel)
		tBTF := time.Since(t0)
		t0 = time.Now()
		got := gvEnv(t, 5*time.Minute, ignore, "ids", q, "--json", "--dump", dump, "--kernel", k.Kernel, "--symbols", isf)
		tISF := time.Since(t0)
		if got.code != want.code || got.stdout != want.stdout || len(want.stdout) < 100 {
			t.Errorf("ids %s: with ISF exit %d (%d bytes), with BTF exit %d (%d bytes)\nISF stderr: %s\nBTF stderr: %s",
				q, got.code, len(got.stdout), want.code, len(want.stdout), got.stderr, want.stderr)
		}
		t.Logf("ids %s: same answer (%d bytes); %v with BTF (cached profile), %v with the symbol table", q, len(want.stdout), tBTF.Round(time.Millisecond), tISF.Round(time.Millisecond))
	}
}

// kitISF writes a Volatility 3 symbol table of the default kit's kernel,
// made from its BTF, to dir and returns its path.
func kitISF(t *testing.T, dir string) string {
	t.Helper()
	img, err := os.ReadFile(testvm.Kit(t).Kernel)
	if err != nil {
		t.Fatal(err)
	}
	p, err := linux.NewProfile(img)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := p.BTF.Raw()
	if err != nil {
		t.Fatal(err)
	}
	syms := map[string]uint64{}
	for _, name := range []string{"_text", "linux_banner", "init_task"} {
		if a, err := p.Symbol(name); err == nil {
			syms[name] = a
		}
	}
	js, err := testvm.ISF(raw, syms, p.Banner)
	if err != nil {
		t.Fatal(err)
	}
	isf := filepath.Join(dir, "vmlinux.json")
	if err := os.WriteFile(isf, js, 0o600); err != nil {
		t.Fatal(err)
	}
	return isf
}
