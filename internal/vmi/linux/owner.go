package linux

import (
	"errors"
	"fmt"
	"sort"
)

// ModuleSpan is one module's memory as the IDS knows it: where it is,
// and which views of the kernel list it (ViewModules, ViewSysfs,
// ViewScan). A module missing from ViewModules is hidden.
type ModuleSpan struct {
	Module
	Views []string `json:"views"`
}

// Hidden reports whether the module is missing from the kernel's module
// list while another view shows it.
func (s ModuleSpan) Hidden() bool {
	for _, v := range s.Views {
		if v == ViewModules {
			return false
		}
	}
	return true
}

// ModuleMap is every module the three views show, by address: it names
// the module that holds a code address, visible or hidden.
type ModuleMap struct {
	spans []ModuleSpan // sorted by Base
	// Errs are the views that could not be read whole.
	Errs []error
}

// ModuleMap reads the module list, sysfs and a scan of the module area and
// merges them by struct module address. A view that cannot be read is
// left out and its error kept in Errs; the map is never nil.
func (k *Kernel) ModuleMap() *ModuleMap {
	mm := &ModuleMap{}
	byAddr := map[uint64]*ModuleSpan{}
	var order []uint64
	add := func(view string, ms []Module, err error) {
		if err != nil {
			mm.Errs = append(mm.Errs, fmt.Errorf("%s: %w", view, err))
			if !errors.Is(err, ErrIncomplete) {
				return
			}
		}
		for _, m := range ms {
			s := byAddr[m.Addr]
			if s == nil {
				s = &ModuleSpan{Module: m}
				byAddr[m.Addr] = s
				order = append(order, m.Addr)
			}
			s.Views = append(s.Views, view)
		}
	}
	ms, err := k.Modules()
	add(ViewModules, ms, err)
	ms, err = k.ModulesFromSysfs()
	add(ViewSysfs, ms, err)
	ms, err = k.ScanModules()
	add(ViewScan, ms, err)
	for _, a := range order {
		mm.spans = append(mm.spans, *byAddr[a])
	}
	sort.Slice(mm.spans, func(i, j int) bool { return mm.spans[i].Base < mm.spans[j].Base })
	return mm
}

// Spans returns the modules, by base address.
func (mm *ModuleMap) Spans() []ModuleSpan { return mm.spans }

// Owner returns the module whose core memory holds va, and va's offset in
// it.
func (mm *ModuleMap) Owner(va uint64) (ModuleSpan, uint64, bool) {
	i := sort.Search(len(mm.spans), func(i int) bool { return mm.spans[i].Base > va }) - 1
	// Layouts do not overlap, but a forged struct module could claim
	// anything: look back over a few candidates, not only the nearest.
	for j := i; j >= 0 && j > i-4; j-- {
		s := mm.spans[j]
		if va >= s.Base && va-s.Base < s.Size {
			return s, va - s.Base, true
		}
	}
	return ModuleSpan{}, 0, false
}

// Name names va as "module+0xoff", with " (hidden: seen in V, missing
// from the module list)" for a module the module list lacks; "" when no
// module holds va.
func (mm *ModuleMap) Name(va uint64) string {
	s, off, ok := mm.Owner(va)
	if !ok {
		return ""
	}
	name := fmt.Sprintf("%s+%#x", s.Name, off)
	if s.Hidden() {
		name += fmt.Sprintf(" (hidden: seen in %s, missing from the module list)", joinViews(s.Views))
	}
	return name
}

func joinViews(v []string) string {
	out := ""
	for i, s := range v {
		if i > 0 {
			out += ", "
		}
		out += s
	}
	return out
}

// owner names the module holding a run-time address outside the kernel
// image, reading the module map once per call site (mm caches it): ""
// when va is in the image or no module holds it.
func (k *Kernel) owner(mm **ModuleMap, va uint64) string {
	if k.symbolName(va) != "" {
		return ""
	}
	if *mm == nil {
		*mm = k.ModuleMap()
	}
	return (*mm).Name(va)
}
