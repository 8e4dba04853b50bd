package ids

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// CheckLSM is the check of the kernel's LSM hook lists
// (security_hook_heads): an entry a rootkit links there runs its code at
// every file open, exec or module load, with no table or code changed.
const CheckLSM = "lsm-hook"

// gatePageSize is the size of the kernel gate's page of hook entries.
const gatePageSize = 4096

// checkLSM reports LSM hook entries that are not the kernel's own: an
// entry outside the kernel's LSM arrays or calling code outside its core
// text, an entry whose head back-pointer is not the list it is on, and a
// list that cannot be walked. The kernel gate's own entries (on its page,
// gatePages, each calling the kernel's bpf_lsm_<hook> no-op) are
// accepted, and nothing else on that page is. A kernel without the lists
// (6.9+: static calls) is reported as not applicable, never clean.
func (i *Inspector) checkLSM() ([]Finding, error) {
	r, err := i.lsmHooks()
	if err != nil {
		return nil, err
	}
	var mm *linux.ModuleMap
	owner := func(va uint64) string { return i.codeOwner(&mm, va) }
	return lsmFindings(r, i.gatePages(r), i.K.Addr, owner), nil
}

// lsmHooks reads the LSM hook lists, again (with a fresh translation
// cache, checkAttempts times in all) while a list cannot be walked: live
// memory can be caught while an entry is linked. A kernel without the
// lists is ErrNotApplicable.
func (i *Inspector) lsmHooks() (*linux.LSMHookLists, error) {
	var r *linux.LSMHookLists
	for n := range checkAttempts {
		if n > 0 && i.K.AS != nil && i.K.AS.Cache != nil {
			i.K.AS.Cache.Invalidate()
		}
		var err error
		if r, err = i.K.LSMHooks(); err != nil {
			if errors.Is(err, linux.ErrLSMNotAvailable) {
				return nil, fmt.Errorf("%w: %w", ErrNotApplicable, err)
			}
			return nil, err
		}
		if len(r.Broken) == 0 {
			break
		}
	}
	return r, nil
}

// gatePages are the kernel gate's pages of hook entries: the one
// Options.GatePage names (a monitor knows its gate's page; 0: none), and
// without that option (a dump) every page of r's entries that names
// itself the gate's (selfNamedGatePages).
func (i *Inspector) gatePages(r *linux.LSMHookLists) []uint64 {
	if i.Opts.GatePage == nil {
		return selfNamedGatePages(r)
	}
	if p := i.Opts.GatePage(); p != 0 {
		return []uint64{p}
	}
	return nil
}

// gateLSMName is the LSM name the kernel gate gives its entries, written
// at the start of its page (internal/gate/syscall: lsmName).
const gateLSMName = "gatevisor"

// selfNamedGatePages are the pages that name themselves the kernel gate's
// as the gate writes its page: an entry on the page whose LSM name is the
// gate's and lies at the page's start. A dump does not record which page
// the gate had; recognising it is safe because an entry on a gate page
// passes only when it calls its hook's bpf_lsm_<hook> no-op (judgeLSM): a
// page forged to look like the gate's can hold nothing else unreported.
func selfNamedGatePages(r *linux.LSMHookLists) []uint64 {
	var pages []uint64
	for _, h := range r.Entries {
		p := h.LSMAddr
		if h.LSM != gateLSMName || p == 0 || p%gatePageSize != 0 || !onPage(h.Addr, p) || slices.Contains(pages, p) {
			continue
		}
		pages = append(pages, p)
	}
	return pages
}

// onPage reports whether va lies on the gate page starting at page.
func onPage(va, page uint64) bool { return page != 0 && va >= page && va-page < gatePageSize }

// lsmVerdict is what the check makes of one entry: the kernel gate's own,
// or what is wrong with it (nothing: the kernel's own).
type lsmVerdict struct {
	gate    bool
	reasons []string
}

// judgeLSM judges entry h. gatePages are the kernel gate's pages, addr
// looks a kernel symbol up (bpf_lsm_<hook>), owner names an address.
func judgeLSM(h linux.LSMHook, gatePages []uint64, addr func(string) (uint64, error), owner func(uint64) string) lsmVerdict {
	var v lsmVerdict
	if slices.ContainsFunc(gatePages, func(p uint64) bool { return onPage(h.Addr, p) }) {
		noop := "bpf_lsm_" + h.Hook
		switch want, err := addr(noop); {
		case err != nil:
			v.reasons = append(v.reasons, fmt.Sprintf("it is on the kernel gate's page, but the kernel has no %s for a gate entry to call", noop))
		case h.Func != want:
			v.reasons = append(v.reasons, fmt.Sprintf("it is on the kernel gate's page but calls %s, not %s", owner(h.Func), noop))
		default:
			v.gate = true
		}
	} else {
		if !h.InCoreData {
			v.reasons = append(v.reasons, fmt.Sprintf("it lies outside the kernel's own LSM arrays (at %s)", owner(h.Addr)))
		}
		if !h.InCoreText {
			v.reasons = append(v.reasons, "it calls code that is not the kernel's")
		}
	}
	if !h.HeadOK() {
		v.reasons = append(v.reasons, fmt.Sprintf("its head back-pointer is %#x, not the list it is on (%#x)", h.Head, h.List))
		v.gate = false
	}
	return v
}

// lsmFindings are the findings of the LSM hook lists r.
func lsmFindings(r *linux.LSMHookLists, gatePages []uint64, addr func(string) (uint64, error), owner func(uint64) string) []Finding {
	var out []Finding
	for _, h := range r.Entries {
		v := judgeLSM(h, gatePages, addr, owner)
		if len(v.reasons) == 0 {
			continue
		}
		runs := owner(h.Func)
		out = append(out, Finding{Check: CheckLSM, Severity: SeverityCritical, Name: h.Hook, Addr: h.Addr, Target: h.Func, TargetName: runs,
			Summary: fmt.Sprintf("LSM hook %s: the entry at %#x (lsm %q) runs %s: %s", h.Hook, h.Addr, h.LSM, runs, strings.Join(v.reasons, "; "))})
	}
	for _, b := range r.Broken {
		out = append(out, Finding{Check: CheckLSM, Severity: SeverityCritical, Name: b.Hook, Addr: b.List,
			Summary: fmt.Sprintf("the list of LSM hook %s at %#x cannot be walked: %s; what follows is not checked", b.Hook, b.List, b.Reason)})
	}
	return out
}

// LSMEntry is one LSM hook entry in `ids hooks`.
type LSMEntry struct {
	Addr uint64 `json:"addr"`
	Hook string `json:"hook"`
	LSM  string `json:"lsm"`
	Func uint64 `json:"func"`
	// Runs names Func (its symbol, else its module, else its region).
	Runs string `json:"runs"`
	// Gate is set for the kernel gate's own entries; Foreign for an entry
	// the lsm-hook check reports, Problem saying why.
	Gate    bool   `json:"gate,omitempty"`
	Foreign bool   `json:"foreign"`
	Problem string `json:"problem,omitempty"`
}

// lsmListing fills r's LSM part: every entry, the lists that could not be
// walked, or why there are no lists to walk.
func (i *Inspector) lsmListing(r *HooksReport) error {
	lists, err := i.lsmHooks()
	if errors.Is(err, ErrNotApplicable) {
		r.LSMNote = err.Error()
		return nil
	}
	if err != nil {
		return err
	}
	var mm *linux.ModuleMap
	owner := func(va uint64) string { return i.codeOwner(&mm, va) }
	gp := i.gatePages(lists)
	for _, h := range lists.Entries {
		v := judgeLSM(h, gp, i.K.Addr, owner)
		r.LSM = append(r.LSM, LSMEntry{Addr: h.Addr, Hook: h.Hook, LSM: h.LSM, Func: h.Func, Runs: owner(h.Func), Gate: v.gate,
			Foreign: len(v.reasons) > 0, Problem: strings.Join(v.reasons, "; ")})
	}
	r.LSMBroken = lists.Broken
	return nil
}
