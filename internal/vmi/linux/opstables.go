package linux

import (
	"bytes"
	"fmt"
)

// opsTableNames are read-only operation tables a rootkit redirects to hide
// what /proc and /proc/net list without patching code: the seq_operations
// behind /proc/net/{tcp,udp,raw,unix,packet} and /proc/modules, and the
// file and inode operations of /proc's root and pid directories. The
// kernel never writes them after boot (they are const), so their live
// words must be the image's, relocated. Missing ones are skipped.
var opsTableNames = []string{
	"tcp4_seq_ops", "tcp6_seq_ops", "udp_seq_ops", "udp6_seq_ops", "raw_seq_ops", "raw6_seq_ops",
	"unix_seq_ops", "packet_seq_ops", "modules_op",
	"proc_root_operations", "proc_root_inode_operations", "proc_tgid_base_operations", "proc_tid_base_operations",
	"proc_dir_operations", "proc_dir_inode_operations",
}

// maxOpsTable bounds one table's bytes.
const maxOpsTable = 512

// opsTables reads the tables' bytes from the image.
func opsTables(im *elfImage, prof *Profile) []ImageCode {
	var out []ImageCode
	for _, name := range opsTableNames {
		addr, ok := prof.Symbols.Lookup(name)
		if !ok {
			continue
		}
		end := prof.Symbols.next(addr, nil)
		if end <= addr {
			continue
		}
		size := min(end-addr, maxOpsTable) &^ 7
		b := im.read(addr, size)
		if b == nil || size == 0 {
			continue
		}
		out = append(out, ImageCode{Name: name, Addr: addr, Bytes: bytes.Clone(b), Size: size})
	}
	return out
}

// OpsTableFinding is a word of an operation table that differs from the
// image's.
type OpsTableFinding struct {
	Table  string `json:"table"`
	Addr   uint64 `json:"addr"` // the word's address
	Offset uint64 `json:"offset"`
	// Want is the image's value (relocated), Got the live one, GotOwner
	// where it points ("module+0xoff", or a symbol).
	Want     uint64 `json:"want"`
	Got      uint64 `json:"got"`
	GotOwner string `json:"got_owner,omitempty"`
	Reason   string `json:"reason"`
}

// CheckOpsTables compares the live operation tables with the image's: a
// word that is a kernel-image address in the image must be that address
// relocated by the KASLR slide; any other word must be equal.
func (k *Kernel) CheckOpsTables() ([]OpsTableFinding, error) {
	facts := k.Profile.Image()
	if facts == nil {
		return nil, ErrNoImage
	}
	b := boundsOf(k.Profile)
	var out []OpsTableFinding
	var mods *ModuleMap
	for _, t := range facts.Objects {
		live := make([]byte, len(t.Bytes))
		if _, err := k.AS.ReadVirtual(t.Addr+k.Slide, live); err != nil {
			out = append(out, OpsTableFinding{Table: t.Name, Addr: t.Addr + k.Slide, Reason: fmt.Sprintf("unreadable: %v", err)})
			continue
		}
		for off := 0; off+8 <= len(live); off += 8 {
			img, got := le.Uint64(t.Bytes[off:]), le.Uint64(live[off:])
			want := img
			if img >= b.imageLo && img < b.imageHi {
				want = img + k.Slide
			}
			if got == want {
				continue
			}
			f := OpsTableFinding{Table: t.Name, Addr: t.Addr + k.Slide + uint64(off), Offset: uint64(off), Want: want, Got: got}
			f.GotOwner = k.symbolName(got)
			if f.GotOwner == "" {
				f.GotOwner = k.owner(&mods, got)
			}
			wantName := k.symbolName(want)
			if wantName == "" {
				wantName = fmt.Sprintf("%#x", want)
			}
			gotName := f.GotOwner
			if gotName == "" {
				gotName = fmt.Sprintf("%#x in %s", got, k.region(got))
			}
			f.Reason = fmt.Sprintf("%s+%#x points to %s where the image has %s", t.Name, off, gotName, wantName)
			out = append(out, f)
		}
	}
	return out, nil
}
