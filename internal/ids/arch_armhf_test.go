package ids

import (
	"errors"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// On an armhf guest the 64-bit walks are refused by name, and every check
// but the two that run there reports itself not applicable with a reason.
func TestARMHFNotApplicable(t *testing.T) {
	in := &Inspector{K: &linux.Kernel{Profile: &linux.Profile{Arch: linux.ArchARMHF}}}
	for _, q := range []string{"threads", "args", "env", "files", "sockets", "hooks"} {
		if _, err := Query(in, q); !errors.Is(err, ErrNotOnArch) {
			t.Errorf("Query(%s) = %v, want ErrNotOnArch", q, err)
		}
	}
	for _, c := range CheckNames() {
		why := in.notCheckedHere(c)
		if runs := c == CheckSyscallTable || c == CheckHiddenModule; runs != (why == "") {
			t.Errorf("check %s on armhf: not applicable %q", c, why)
		}
	}
	if (&Inspector{K: &linux.Kernel{Profile: &linux.Profile{}}}).notOnThisArch("threads") != nil {
		t.Error("threads refused on x86-64")
	}
}
