package ids

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// The lsm-hook check's decisions over LSM hook lists as linux.LSMHooks
// returns them: the kernel's own entries pass, the kernel gate's pass
// only on its page and only calling bpf_lsm_<hook>, anything else is
// critical, and so is a list that could not be walked.
func TestLSMFindings(t *testing.T) {
	const (
		list     = 0xffffffff82400010
		other    = 0xffffffff82400018
		gatePage = 0xffff888003a5f000
		noop     = 0xffffffff8125cf50 // bpf_lsm_file_open
	)
	syms := map[string]uint64{"bpf_lsm_file_open": noop, "bpf_lsm_mmap_file": noop + 0x10}
	addr := func(name string) (uint64, error) {
		if a, ok := syms[name]; ok {
			return a, nil
		}
		return 0, fmt.Errorf("%w: %s", linux.ErrNoSymbol, name)
	}
	owner := func(va uint64) string {
		switch {
		case va == noop:
			return "bpf_lsm_file_open"
		case va >= 0xffffffffc0000000:
			return fmt.Sprintf("rk_lsm+%#x", va-0xffffffffc0000000)
		}
		return fmt.Sprintf("sym@%#x", va)
	}
	core := func(at uint64, hook, lsm string, fn uint64) linux.LSMHook {
		return linux.LSMHook{Addr: at, Hook: hook, List: list, Head: list, Func: fn, LSM: lsm, InCoreData: true, InCoreText: true}
	}
	gate := func(at uint64, hook string, fn uint64) linux.LSMHook {
		h := core(at, hook, "gatevisor", fn)
		h.InCoreData = false
		return h
	}
	for _, tc := range []struct {
		name     string
		entry    linux.LSMHook
		gatePage uint64
		want     string // "" when accepted; else fragments of the summary, "|"-separated
	}{
		{name: "the kernel's own", entry: core(0xffffffff8242e4c0, "file_open", "capability", 0xffffffff81300000)},
		{name: "bpf's no-op, in core data", entry: core(0xffffffff824320c0, "file_open", "bpf", noop)},
		{name: "an entry in a module", want: "LSM hook file_open: the entry at 0xffffffffc0000100 (lsm \"rk\") runs rk_lsm+0x10|outside the kernel's own LSM arrays (at rk_lsm+0x100)|calls code that is not the kernel's",
			entry: linux.LSMHook{Addr: 0xffffffffc0000100, Hook: "file_open", List: list, Head: list, Func: 0xffffffffc0000010, LSM: "rk"}},
		{name: "a core entry calling a module", want: "runs rk_lsm+0x20: it calls code that is not the kernel's",
			entry: func() linux.LSMHook {
				h := core(0xffffffff8242e4c0, "file_open", "capability", 0xffffffffc0000020)
				h.InCoreText = false
				return h
			}()},
		{name: "a heap entry calling core text", want: "outside the kernel's own LSM arrays (at sym@0xffff888003a60000)",
			entry: func() linux.LSMHook {
				h := core(0xffff888003a60000, "file_open", "x", 0xffffffff81300000)
				h.InCoreData = false
				return h
			}()},
		{name: "a wrong head back-pointer", want: "its head back-pointer is 0xffffffff82400018, not the list it is on (0xffffffff82400010)",
			entry: func() linux.LSMHook {
				h := core(0xffffffff8242e4c0, "file_open", "capability", 0xffffffff81300000)
				h.Head = other
				return h
			}()},
		{name: "the gate's entry", gatePage: gatePage, entry: gate(gatePage+0x28, "file_open", noop)},
		{name: "a gate entry without a page set", want: "outside the kernel's own LSM arrays", entry: gate(gatePage+0x28, "file_open", noop)},
		{name: "the gate's page calling another function", gatePage: gatePage, want: "on the kernel gate's page but calls sym@0xffffffff81300000, not bpf_lsm_file_open",
			entry: gate(gatePage+0x28, "file_open", 0xffffffff81300000)},
		{name: "the gate's page on a hook with no no-op", gatePage: gatePage, want: "the kernel has no bpf_lsm_task_kill",
			entry: gate(gatePage, "task_kill", noop)},
		{name: "the gate's page, another hook's no-op", gatePage: gatePage, want: "calls bpf_lsm_file_open, not bpf_lsm_mmap_file",
			entry: gate(gatePage+0xfd8, "mmap_file", noop)},
		{name: "the gate's page, a wrong head", gatePage: gatePage, want: "its head back-pointer",
			entry: func() linux.LSMHook { h := gate(gatePage, "file_open", noop); h.Head = other; return h }()},
		{name: "just past the gate's page", gatePage: gatePage, want: "outside the kernel's own LSM arrays",
			entry: gate(gatePage+gatePageSize, "file_open", noop)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pages []uint64
			if tc.gatePage != 0 {
				pages = []uint64{tc.gatePage}
			}
			got := lsmFindings(&linux.LSMHookLists{Entries: []linux.LSMHook{tc.entry}}, pages, addr, owner)
			if tc.want == "" {
				if len(got) != 0 {
					t.Errorf("findings %+v, want none", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("findings %+v, want one", got)
			}
			f := got[0]
			for _, frag := range strings.Split(tc.want, "|") {
				if !strings.Contains(f.Summary, frag) {
					t.Errorf("summary %q, want %q in it", f.Summary, frag)
				}
			}
			want := Finding{Check: CheckLSM, Severity: SeverityCritical, Name: tc.entry.Hook, Addr: tc.entry.Addr, Target: tc.entry.Func,
				TargetName: owner(tc.entry.Func), Summary: f.Summary}
			if diff := cmp.Diff(want, f); diff != "" {
				t.Errorf("finding (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLSMFindingsBrokenList(t *testing.T) {
	r := &linux.LSMHookLists{Broken: []linux.LSMBrokenList{{Hook: "task_kill", List: 0xffffffff82400040, At: 0x10, Reason: "entry 0's link 0x10 is not a kernel address"}}}
	got := lsmFindings(r, nil, nil, nil)
	want := []Finding{{Check: CheckLSM, Severity: SeverityCritical, Name: "task_kill", Addr: 0xffffffff82400040,
		Summary: "the list of LSM hook task_kill at 0xffffffff82400040 cannot be walked: entry 0's link 0x10 is not a kernel address; what follows is not checked"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

// A kernel without the lists is not applicable, never clean; the check's
// gate page comes from the option, asked at each check.
func TestLSMNotApplicable(t *testing.T) {
	in := &Inspector{K: &linux.Kernel{Profile: &linux.Profile{Symbols: &linux.Kallsyms{}}}}
	_, err := in.checkLSM()
	if !errors.Is(err, ErrNotApplicable) || !errors.Is(err, linux.ErrLSMNotAvailable) {
		t.Fatalf("checkLSM on a kernel with no security_hook_heads: %v", err)
	}
	r := &Report{}
	r.add(CheckLSM, nil, err, 0)
	if r.Checks[0].NotApplicable == "" || r.Checks[0].Ran {
		t.Errorf("status %+v: want not applicable", r.Checks[0])
	}
	var h HooksReport
	if err := in.lsmListing(&h); err != nil || !strings.Contains(h.LSMNote, "not available") {
		t.Errorf("ids hooks: %v, note %q", err, h.LSMNote)
	}
	page := uint64(0)
	in.Opts.GatePage = func() uint64 { return page }
	named := &linux.LSMHookLists{Entries: []linux.LSMHook{{Addr: 0xffff888004000028, LSM: "gatevisor", LSMAddr: 0xffff888004000000}}}
	if got := in.gatePages(named); got != nil {
		t.Errorf("gate pages before the monitor's exists: %#x, want none (the option rules out recognising pages)", got)
	}
	page = 0xffff888003a5f000
	if got := in.gatePages(named); !slices.Equal(got, []uint64{page}) {
		t.Errorf("gate pages once the monitor's is set: %#x, want only it", got)
	}
}

// Without the option (a dump), the pages that name themselves the gate's
// are its pages: an entry on the page with the gate's LSM name at the
// page's start. Their entries are then held to the gate's rule: a forged
// page calling anything but the no-op is reported.
func TestSelfNamedGatePages(t *testing.T) {
	const (
		page  = 0xffff888003a5f000
		page2 = 0xffff888005000000
		list  = 0xffffffff82400010
		noop  = 0xffffffff8125cf50
	)
	entry := func(at uint64, lsm string, lsmAt, fn uint64) linux.LSMHook {
		return linux.LSMHook{Addr: at, Hook: "file_open", List: list, Head: list, Func: fn, LSM: lsm, LSMAddr: lsmAt}
	}
	r := &linux.LSMHookLists{Entries: []linux.LSMHook{
		entry(page+0x28, "gatevisor", page, noop),
		entry(page+0x60, "gatevisor", page, noop),                                      // the same page again
		entry(page2+0x28, "gatevisor", page2+8, noop),                                  // the name not at a page's start
		entry(page2+gatePageSize, "gatevisor", page2, noop),                            // not on the named page
		entry(page2+0x28, "selinux", page2, noop),                                      // another name
		entry(0xffff888007000028, "gatevisor", 0xffff888007000000, 0xffffffffc0000010), // a forged page calling a module
	}}
	want := []uint64{page, 0xffff888007000000}
	if got := (&Inspector{}).gatePages(r); !slices.Equal(got, want) {
		t.Fatalf("gate pages %#x, want %#x", got, want)
	}
	addr := func(name string) (uint64, error) {
		if name == "bpf_lsm_file_open" {
			return noop, nil
		}
		return 0, linux.ErrNoSymbol
	}
	owner := func(va uint64) string { return fmt.Sprintf("sym@%#x", va) }
	got := lsmFindings(r, want, addr, owner)
	var at []uint64
	for _, f := range got {
		at = append(at, f.Addr)
	}
	// Reported: the three not on a recognised page (outside the kernel's
	// arrays) and the forged page's entry calling a module.
	if wantAt := []uint64{page2 + 0x28, page2 + gatePageSize, page2 + 0x28, 0xffff888007000028}; !slices.Equal(at, wantAt) {
		t.Errorf("findings at %#x, want %#x: %+v", at, wantAt, got)
	}
	if s := got[len(got)-1].Summary; !strings.Contains(s, "on the kernel gate's page but calls sym@0xffffffffc0000010") {
		t.Errorf("the forged page's entry: %q", s)
	}
}
