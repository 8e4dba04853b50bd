package linux

import (
	"errors"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// What the guest kernel's own page allocator says of a physical page
// (struct page in the vmemmap, the buddy free lists' marks and the
// per-CPU free lists), so that the file gate's purge can tell a page it
// may scrub (free: no one in the guest owns it) from one it must report
// by owner. x86-64 only (the vmemmap's base is vmemmap_base).

// Page kinds, as ClassifyPages reports them.
const (
	PageFreeBuddy  = "free (buddy allocator)"
	PageFreePCP    = "free (per-CPU free list)"
	PageSlab       = "slab (kernel object cache)"
	PageCache      = "page cache"
	PageAnon       = "anonymous memory"
	PageReserved   = "reserved"
	PageKernel     = "kernel page in use"
	PageUnreadable = "unreadable"
)

// PageState is one physical page as the guest kernel's structures say.
type PageState struct {
	PFN  uint64 `json:"pfn"`
	Kind string `json:"kind"`
	// Free: the page is on the allocator's free lists (Order: the block's).
	Free  bool `json:"free"`
	Order int  `json:"order,omitempty"`
	// Owners name who holds it, when the structures say (anonymous
	// memory: the processes whose mappings reach it).
	Owners []PageOwner `json:"owners,omitempty"`
	// Detail is the rest: the page cache's inode, why nothing more is known.
	Detail string `json:"detail,omitempty"`
}

// PageOwner is a process that maps a page.
type PageOwner struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
}

// PageLayout is what ClassifyPages needs, computed once per profile.
type PageLayout struct {
	pageSize, flags, mapping, private, pageType, refcount, lru uint64
	pgSlab, pgReserved                                         int // flag bits, -1 if none
	slabType, buddyType                                        uint32
	topByteTypes                                               bool // 6.9+: page_type's top byte is the type
	maxOrder                                                   int
	// pcp: zones and their per-CPU free lists.
	zones, zoneSize, nZones, zonePCP, pcpLists, nLists, listSize, pcpCount uint64
	pcpTypes                                                               uint64
	// owners of anonymous pages.
	avRoot, avcRB, avcVMA, vmaMM, mmOwner uint64
	hasOwner                              bool
	// page cache: the mapping's inode.
	asHost, inodeIno, inodeSB, sbType, fstName uint64
	// slab: its cache's name (0: struct slab unknown).
	slabCache, cacheName uint64
	hasSlab              bool
}

// NewPageLayout reads struct page's layout and the allocator's constants.
func NewPageLayout(p *Profile) (*PageLayout, error) {
	if p.IsARM64() {
		return nil, errors.New("linux: page states are read on x86-64 guests only")
	}
	src, err := p.layouts()
	if err != nil {
		return nil, err
	}
	f := &fields{p: p}
	l := &PageLayout{flags: f.off("page.flags"), mapping: f.off("page.mapping"), private: f.off("page.private"),
		refcount: f.off("page._refcount"), lru: f.off("page.lru"),
		avRoot: f.off("anon_vma.rb_root"), avcRB: f.off("anon_vma_chain.rb"), avcVMA: f.off("anon_vma_chain.vma"),
		vmaMM: f.off("vm_area_struct.vm_mm"), asHost: f.off("address_space.host"), inodeIno: f.off("inode.i_ino"),
		inodeSB: f.off("inode.i_sb"), sbType: f.off("super_block.s_type"), fstName: f.off("file_system_type.name"),
		zonePCP: f.off("zone.per_cpu_pageset"), pcpLists: f.off("per_cpu_pages.lists"), pcpCount: f.off("per_cpu_pages.count")}
	if f.has("page.page_type") {
		l.pageType = f.off("page.page_type")
	} else {
		l.pageType = f.off("page._mapcount")
	}
	l.pageSize, _ = p.StructSize("page")
	l.nZones, l.zoneSize = f.arrayLen("pglist_data.node_zones")
	l.zones = f.off("pglist_data.node_zones")
	l.nLists, l.listSize = f.arrayLen("per_cpu_pages.lists")
	if l.mmOwner, err = p.FieldOffset("mm_struct.owner"); err == nil {
		l.hasOwner = true
	}
	if f.has("slab.slab_cache") && f.has("kmem_cache.name") {
		l.slabCache, l.cacheName, l.hasSlab = f.off("slab.slab_cache"), f.off("kmem_cache.name"), true
	}
	if f.err != nil {
		return nil, fmt.Errorf("linux: page layout: %w", f.err)
	}
	if l.pageSize < 40 || l.pageSize > 256 || l.nLists == 0 || l.nLists > 64 || l.nZones == 0 || l.nZones > 8 {
		return nil, fmt.Errorf("%w: struct page of %d bytes, %d per-CPU lists, %d zones", ErrInconsistent, l.pageSize, l.nLists, l.nZones)
	}
	bit := func(name string) int {
		if v, ok := src.enumValue(name); ok && v < 64 {
			return int(v)
		}
		return -1
	}
	l.pgSlab, l.pgReserved = bit("PG_slab"), bit("PG_reserved")
	// page_type: 6.9 and later name the types in enum pagetype (the top
	// byte); earlier kernels (6.1) clear a bit below PAGE_TYPE_BASE.
	if v, ok := src.enumValue("PGTY_buddy"); ok {
		l.topByteTypes, l.buddyType = true, uint32(v)
		if v, ok := src.enumValue("PGTY_slab"); ok {
			l.slabType = uint32(v)
		}
	} else {
		l.buddyType = 0x80 // PG_buddy, include/linux/page-flags.h
	}
	l.maxOrder = 10 // MAX_ORDER - 1 (6.1) and MAX_PAGE_ORDER (6.12)
	l.pcpTypes = 3  // MIGRATE_PCPTYPES
	if v, ok := src.enumValue("MIGRATE_PCPTYPES"); ok && v > 0 && v < 8 {
		l.pcpTypes = v
	}
	return l, nil
}

// isBuddy reports whether a page_type value marks a free buddy block's head.
func (l *PageLayout) isBuddy(pt uint32) bool {
	if l.topByteTypes {
		return pt>>24 == l.buddyType
	}
	const pageTypeBase = 0xf0000000
	return pt&(pageTypeBase|l.buddyType) == pageTypeBase
}

func (l *PageLayout) isSlabType(pt uint32) bool {
	return l.topByteTypes && l.slabType != 0 && pt>>24 == l.slabType
}

// Bounds of the page walks.
const (
	maxPCPPages     = 1 << 16 // pages on one per-CPU list
	maxAnonVMAs     = 4096    // anon_vma_chain nodes of one anon_vma
	maxPagesClassed = 4096
)

// pageTables is what one classification reads once.
type pageTables struct {
	vmemmap uint64
	pcp     map[uint64]int // first pfn of a block on a per-CPU list -> order
	pcpErr  error
}

// ClassifyPages says, for each pfn, what the guest kernel's structures
// make of it. Free pages are those the allocator holds: a buddy block's
// head marked as such (the pfn in its span) or a block on a per-CPU free
// list. Read with the guest stopped for an answer that holds while it
// stays stopped.
func (k *Kernel) ClassifyPages(l *PageLayout, pfns []uint64) ([]PageState, error) {
	if len(pfns) > maxPagesClassed {
		return nil, fmt.Errorf("linux: %d pages to classify, at most %d", len(pfns), maxPagesClassed)
	}
	vm, ok := k.readVar("vmemmap_base")
	if !ok || !isKernelPtr(vm) {
		vm = 0xffffea0000000000 // the default without memory randomization
	}
	t := &pageTables{vmemmap: vm}
	t.pcp, t.pcpErr = k.pcpFree(l, vm)
	out := make([]PageState, 0, len(pfns))
	for _, pfn := range pfns {
		out = append(out, k.classify(l, t, pfn))
	}
	return out, nil
}

func (k *Kernel) classify(l *PageLayout, t *pageTables, pfn uint64) PageState {
	s := PageState{PFN: pfn}
	pageAt := func(pfn uint64) uint64 { return t.vmemmap + pfn*l.pageSize }
	page := pageAt(pfn)
	flags, err := vmi.ReadU64(k.AS, page+l.flags)
	if err != nil {
		s.Kind, s.Detail = PageUnreadable, fmt.Sprintf("struct page at %#x: %v", page, err)
		return s
	}
	// A free buddy block: its head (the pfn aligned down to the order)
	// has the buddy type and its order in private.
	for o := 0; o <= l.maxOrder; o++ {
		head := pfn &^ (1<<o - 1)
		pt, err1 := vmi.ReadU32(k.AS, pageAt(head)+l.pageType)
		ord, err2 := vmi.ReadU64(k.AS, pageAt(head)+l.private)
		if err1 != nil || err2 != nil {
			break
		}
		if l.isBuddy(pt) && ord <= uint64(l.maxOrder) && pfn < head+1<<ord {
			s.Kind, s.Free, s.Order = PageFreeBuddy, true, int(ord)
			return s
		}
	}
	for o := 0; o <= l.maxOrder; o++ {
		head := pfn &^ (1<<o - 1)
		if ord, ok := t.pcp[head]; ok && pfn < head+1<<ord {
			s.Kind, s.Free, s.Order = PageFreePCP, true, ord
			return s
		}
	}
	// A compound page's tail points at its head (lru.next | 1): the head
	// has the flags and the mapping.
	if ch, err := vmi.ReadU64(k.AS, page+l.lru); err == nil && ch&1 == 1 && isKernelPtr(ch-1) {
		page = ch - 1
		if flags, err = vmi.ReadU64(k.AS, page+l.flags); err != nil {
			s.Kind, s.Detail = PageUnreadable, fmt.Sprintf("compound head at %#x: %v", page, err)
			return s
		}
	}
	pt, _ := vmi.ReadU32(k.AS, page+l.pageType)
	switch {
	case l.pgSlab >= 0 && flags&(1<<l.pgSlab) != 0, l.isSlabType(pt):
		s.Kind = PageSlab
		if l.hasSlab { // struct slab overlays the page
			if c, err := vmi.ReadU64(k.AS, page+l.slabCache); err == nil && isKernelPtr(c) {
				if np, err := vmi.ReadU64(k.AS, c+l.cacheName); err == nil && isKernelPtr(np) {
					if name, err := vmi.ReadCString(k.AS, np, 64); err == nil {
						s.Detail = "cache " + name
					}
				}
			}
		}
		return s
	case l.pgReserved >= 0 && flags&(1<<l.pgReserved) != 0:
		s.Kind = PageReserved
		return s
	}
	mapping, err := vmi.ReadU64(k.AS, page+l.mapping)
	if err != nil {
		s.Kind, s.Detail = PageUnreadable, err.Error()
		return s
	}
	switch {
	case mapping&1 == 1: // PAGE_MAPPING_ANON: an anon_vma
		s.Kind = PageAnon
		if mapping&2 == 0 {
			s.Owners, err = k.anonOwners(l, mapping&^3)
			if err != nil {
				s.Detail = "owners: " + err.Error()
			}
		} else {
			s.Detail = "KSM or movable page"
		}
	case mapping != 0 && isKernelPtr(mapping):
		s.Kind = PageCache
		s.Detail = k.mappingName(l, mapping)
	default:
		s.Kind = PageKernel
		ref, _ := vmi.ReadU32(k.AS, page+l.refcount)
		s.Detail = fmt.Sprintf("refcount %d, no owner in struct page (a pipe or socket buffer, a page table, vmalloc or a driver's page)", int32(ref))
		if t.pcpErr != nil {
			s.Detail += "; the per-CPU free lists could not be read: " + t.pcpErr.Error()
		}
	}
	return s
}

// pcpFree returns the blocks on every zone's per-CPU free lists, by
// first pfn and order.
func (k *Kernel) pcpFree(l *PageLayout, vmemmap uint64) (map[uint64]int, error) {
	nodes, err := k.nodes()
	if err != nil {
		return nil, err
	}
	offs, err := k.cpuOffsets()
	if err != nil {
		return nil, err
	}
	out := map[uint64]int{}
	for _, node := range nodes {
		for z := uint64(0); z < l.nZones; z++ {
			zone := node + l.zones + z*l.zoneSize
			pcp, err := vmi.ReadU64(k.AS, zone+l.zonePCP)
			if err != nil || pcp == 0 {
				continue
			}
			for _, off := range offs {
				base := pcp + off
				for i := uint64(0); i < l.nLists; i++ {
					order := int(i / l.pcpTypes)
					if i >= l.pcpTypes*4 { // past PAGE_ALLOC_COSTLY_ORDER: THP lists
						order = 9
					}
					head := base + l.pcpLists + i*l.listSize
					err := walkList(k.AS, head, maxPCPPages, func(node uint64) error {
						pg := node - l.lru
						if pg < vmemmap || (pg-vmemmap)%l.pageSize != 0 {
							return fmt.Errorf("%w: per-CPU list entry %#x outside the vmemmap", ErrInconsistent, node)
						}
						out[(pg-vmemmap)/l.pageSize] = order
						return nil
					})
					if err != nil {
						return out, fmt.Errorf("linux: per-CPU free list %d of zone %d: %w", i, z, err)
					}
				}
			}
		}
	}
	return out, nil
}

// nodes returns the pglist_data of each memory node.
func (k *Kernel) nodes() ([]uint64, error) {
	if va, err := k.Addr("node_data"); err == nil {
		var out []uint64
		for i := uint64(0); i < 64; i++ {
			n, err := vmi.ReadU64(k.AS, va+8*i)
			if err != nil {
				break
			}
			if n != 0 && isKernelPtr(n) {
				out = append(out, n)
			}
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	va, err := k.Addr("contig_page_data")
	if err != nil {
		return nil, errors.New("linux: neither node_data nor contig_page_data")
	}
	return []uint64{va}, nil
}

// cpuOffsets returns __per_cpu_offset of each possible CPU (nr_cpu_ids).
func (k *Kernel) cpuOffsets() ([]uint64, error) {
	offs, err := k.Addr("__per_cpu_offset")
	if err != nil {
		return nil, err
	}
	ncpuVA, err := k.Addr("nr_cpu_ids")
	if err != nil {
		return nil, err
	}
	ncpu, err := vmi.ReadU32(k.AS, ncpuVA)
	if err != nil || ncpu == 0 || ncpu > maxCPUs {
		return nil, fmt.Errorf("%w: nr_cpu_ids %d (%v)", ErrInconsistent, ncpu, err)
	}
	out := make([]uint64, 0, ncpu)
	for cpu := uint64(0); cpu < uint64(ncpu); cpu++ {
		off, err := vmi.ReadU64(k.AS, offs+8*cpu)
		if err != nil {
			return nil, fmt.Errorf("linux: __per_cpu_offset[%d]: %w", cpu, err)
		}
		out = append(out, off)
	}
	return out, nil
}

// anonOwners walks an anon_vma's interval tree of anon_vma_chain nodes
// to the processes (mm->owner) whose mappings may reach its pages.
func (k *Kernel) anonOwners(l *PageLayout, av uint64) ([]PageOwner, error) {
	if !isKernelPtr(av) {
		return nil, fmt.Errorf("%w: anon_vma %#x", ErrInconsistent, av)
	}
	if !l.hasOwner {
		return nil, errors.New("the kernel has no mm_struct.owner (CONFIG_MEMCG)")
	}
	root, err := vmi.ReadU64(k.AS, av+l.avRoot) // rb_root_cached.rb_root.rb_node
	if err != nil {
		return nil, err
	}
	var owners []PageOwner
	seen := map[uint64]bool{}
	pids := map[int]bool{}
	stack := []uint64{root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n == 0 {
			continue
		}
		if !isKernelPtr(n) || seen[n] {
			return owners, fmt.Errorf("anon_vma tree at %#x: %w", av, vmi.ErrListCycle)
		}
		if len(seen) >= maxAnonVMAs {
			return owners, fmt.Errorf("anon_vma tree at %#x: %w", av, vmi.ErrListTooLong)
		}
		seen[n] = true
		avc := n - l.avcRB
		// rb_node: __rb_parent_color, rb_right, rb_left.
		right, err1 := vmi.ReadU64(k.AS, n+8)
		left, err2 := vmi.ReadU64(k.AS, n+16)
		vma, err3 := vmi.ReadU64(k.AS, avc+l.avcVMA)
		if err := errors.Join(err1, err2, err3); err != nil {
			return owners, err
		}
		stack = append(stack, right, left)
		mm, err := vmi.ReadU64(k.AS, vma+l.vmaMM)
		if err != nil || !isKernelPtr(mm) {
			continue
		}
		owner, err := vmi.ReadU64(k.AS, mm+l.mmOwner)
		if err != nil || !isKernelPtr(owner) {
			continue
		}
		t, err := k.TaskAt(owner)
		if err != nil || pids[t.TGID] {
			continue
		}
		pids[t.TGID] = true
		owners = append(owners, PageOwner{PID: t.TGID, Comm: t.Comm})
	}
	return owners, nil
}

// mappingName names a page-cache mapping: its inode and filesystem.
func (k *Kernel) mappingName(l *PageLayout, mapping uint64) string {
	inode, err := vmi.ReadU64(k.AS, mapping+l.asHost)
	if err != nil || !isKernelPtr(inode) {
		return fmt.Sprintf("mapping %#x", mapping)
	}
	ino, _ := vmi.ReadU64(k.AS, inode+l.inodeIno)
	fs := "?"
	if sb, err := vmi.ReadU64(k.AS, inode+l.inodeSB); err == nil && isKernelPtr(sb) {
		if st, err := vmi.ReadU64(k.AS, sb+l.sbType); err == nil && isKernelPtr(st) {
			if np, err := vmi.ReadU64(k.AS, st+l.fstName); err == nil {
				if s, err := vmi.ReadCString(k.AS, np, 32); err == nil {
					fs = s
				}
			}
		}
	}
	return fmt.Sprintf("inode %d on %s", ino, fs)
}
