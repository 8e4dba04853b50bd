package monitor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// scrubCanary is the verified purge's scrub: with the guest stopped, the
// pages holding the canary are found by a raw scan of guest RAM and
// classified by the guest kernel's own structures (struct page, the buddy
// allocator's marks, the per-CPU free lists); those the allocator holds
// free are zeroed from outside (nothing in the guest owns them, and no
// vCPU runs), the RAM is scanned again, and every page still holding the
// canary is reported with what the kernel says of it (a process's
// anonymous memory and its pids, a slab, a kernel buffer). A page that is
// not provably free is never written.
func (m *Monitor) scrubCanary(ctx context.Context, canary []byte, p *api.Purge) error {
	if m.dbg == nil {
		return errors.New("no debugger connection to stop the guest")
	}
	insp, err := m.privateInspector(ctx)
	if err != nil {
		return err
	}
	k := insp.K
	l, err := m.files.pageLayout(k.Profile)
	if err != nil {
		return err
	}
	fill := byte(0)
	if pagePoisoned(m.cfg.Append) {
		fill = 0xaa // PAGE_POISON: what the allocator checks free pages for
	}
	page := make([]byte, 4096)
	for i := range page {
		page[i] = fill
	}
	return m.dbg.Do(ctx, func(context.Context, *gdbrsp.Client) error {
		k.AS.Cache.Invalidate()
		pfns, err := m.canaryPFNs(canary)
		if err != nil {
			return err
		}
		states, err := k.ClassifyPages(l, pfns)
		if err != nil {
			return err
		}
		for _, s := range states {
			if !s.Free {
				continue
			}
			if _, err := m.ram.WriteAt(page, int64(s.PFN<<12)); err != nil {
				return fmt.Errorf("scrub page %#x: %w", s.PFN, err)
			}
			p.Scrubbed++
		}
		left, err := m.canaryPFNs(canary)
		if err != nil {
			return err
		}
		held, err := k.ClassifyPages(l, left)
		if err != nil {
			return err
		}
		for _, s := range held {
			pp := api.PurgePage{PFN: s.PFN, Kind: s.Kind, Detail: s.Detail}
			for _, o := range s.Owners {
				pp.Owners = append(pp.Owners, api.PurgeOwner{PID: o.PID, Comm: o.Comm})
			}
			p.Held = append(p.Held, pp)
		}
		return nil
	})
}

// pagePoisoned reports whether the guest's command line turns on page
// poisoning (free pages filled with 0xaa and checked on allocation).
func pagePoisoned(cmdline string) bool {
	for _, a := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(a, "page_poison="); ok && slices.Contains([]string{"1", "on", "y"}, v) {
			return true
		}
	}
	return false
}

// pageLayout computes struct page's layout once.
func (fst *fileState) pageLayout(p *linux.Profile) (*linux.PageLayout, error) {
	fst.mu.Lock()
	defer fst.mu.Unlock()
	if fst.pages != nil {
		return fst.pages, nil
	}
	l, err := linux.NewPageLayout(p)
	if err != nil {
		return nil, err
	}
	fst.pages = l
	return l, nil
}

// heldText says, for a person, who holds the pages left.
func heldText(held []api.PurgePage) string {
	var parts []string
	for _, h := range held {
		s := fmt.Sprintf("pfn %#x: %s", h.PFN, h.Kind)
		for _, o := range h.Owners {
			s += fmt.Sprintf(", pid %d (%s)", o.PID, o.Comm)
		}
		if h.Detail != "" {
			s += " [" + h.Detail + "]"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}
