package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// CachedPages counts, through the kernel's own structures (super_blocks,
// each superblock's s_inodes, each inode's i_data.nrpages), what the page
// cache holds of every mounted filesystem of type fsType (such as
// "virtiofs"): the mounts, their inodes and the pages of those inodes'
// mappings. Every list walked is bounded and cycle-checked.
func (k *Kernel) CachedPages(fsType string) (mounts, inodes int, pages uint64, err error) {
	f := &fields{p: k.Profile}
	sbList, sbType, fstName := f.off("super_block.s_list"), f.off("super_block.s_type"), f.off("file_system_type.name")
	sbInodes, inodeSBList := f.off("super_block.s_inodes"), f.off("inode.i_sb_list")
	nrPages := f.off("inode.i_data") + f.off("address_space.nrpages")
	if f.err != nil {
		return 0, 0, 0, fmt.Errorf("linux: page cache layout: %w", f.err)
	}
	head, err := k.Addr("super_blocks")
	if err != nil {
		return 0, 0, 0, err
	}
	as := k.AS
	err = walkList(as, head, maxSuperBlocks, func(node uint64) error {
		sb := node - sbList
		typ, err := vmi.ReadU64(as, sb+sbType)
		if err != nil || !isKernelPtr(typ) {
			return nil
		}
		np, err := vmi.ReadU64(as, typ+fstName)
		if err != nil || !isKernelPtr(np) {
			return nil
		}
		if name, err := vmi.ReadCString(as, np, 32); err != nil || name != fsType {
			return nil
		}
		mounts++
		return walkList(as, sb+sbInodes, maxInodes, func(n uint64) error {
			inodes++
			c, err := vmi.ReadU64(as, n-inodeSBList+nrPages)
			if err != nil {
				return fmt.Errorf("linux: inode %#x: %w", n-inodeSBList, err)
			}
			pages += c
			return nil
		})
	})
	return mounts, inodes, pages, err
}
