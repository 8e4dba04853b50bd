package linux

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// P9Modules names the module images P9Layout reads its structures from,
// as Linux 6.1 splits them: the 9p filesystem, the 9P client and its fd
// transport.
var P9Modules = []string{"9p", "9pnet", "9pnet_fd"}

// P9Layout is where the guest kernel's 9P client keeps a request and
// who waits for it: the offsets of the structures of the 9p, 9pnet and
// 9pnet_fd modules (from the modules' own BTF) and of the kernel's
// super_block and wait queues (from the kernel's).
type P9Layout struct {
	sbList, sbType, sbFSInfo, fstName          uint64
	wqHead, wqeEntry, wqePrivate               uint64
	sessClnt, sessAname                        uint64
	clntTrans, clntTransMod, transModName      uint64
	fdConn, connReqList                        uint64
	reqWQ, reqTag, reqSize, reqSdata, reqList_ uint64
	sbInodes, inodeSBList, inodeNrPages        uint64
}

// NewP9Layout computes the layout from the kernel's profile and the
// modules' BTF (keyed by the names in P9Modules).
func NewP9Layout(p *Profile, mods map[string]*ModuleBTF) (*P9Layout, error) {
	f := &fields{p: p}
	l := &P9Layout{sbList: f.off("super_block.s_list"), sbType: f.off("super_block.s_type"), sbFSInfo: f.off("super_block.s_fs_info"),
		fstName: f.off("file_system_type.name"), wqHead: f.off("wait_queue_head.head"), wqeEntry: f.off("wait_queue_entry.entry"),
		wqePrivate: f.off("wait_queue_entry.private"), sbInodes: f.off("super_block.s_inodes"), inodeSBList: f.off("inode.i_sb_list"),
		inodeNrPages: f.off("inode.i_data") + f.off("address_space.nrpages")}
	if f.err != nil {
		return nil, f.err
	}
	var err error
	off := func(mod, path string) uint64 {
		if err != nil {
			return 0
		}
		m := mods[mod]
		if m == nil {
			err = fmt.Errorf("linux: 9P layout: no BTF of module %s", mod)
			return 0
		}
		var o uint64
		o, err = m.FieldOffset(path)
		return o
	}
	l.sessClnt, l.sessAname = off("9p", "v9fs_session_info.clnt"), off("9p", "v9fs_session_info.aname")
	l.clntTrans, l.clntTransMod = off("9pnet", "p9_client.trans"), off("9pnet", "p9_client.trans_mod")
	l.transModName = off("9pnet", "p9_trans_module.name")
	l.reqWQ, l.reqTag = off("9pnet", "p9_req_t.wq"), off("9pnet", "p9_req_t.tc.tag")
	l.reqSize, l.reqSdata = off("9pnet", "p9_req_t.tc.size"), off("9pnet", "p9_req_t.tc.sdata")
	l.reqList_ = off("9pnet", "p9_req_t.req_list")
	l.fdConn, l.connReqList = off("9pnet_fd", "p9_trans_fd.conn"), off("9pnet_fd", "p9_conn.req_list")
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Bounds of the walk: a guest has few 9P mounts, few requests in flight
// and one waiter per request.
const (
	maxSuperBlocks = 4096
	max9PRequests  = 1024
	max9PWaiters   = 16
)

// ErrNoRequester means no task waits for the request (yet).
var ErrNoRequester = errors.New("linux: no task waits for the 9P request")

// P9Requesters finds the tasks waiting for the 9P request the monitor
// received: on a mount of the fd transport whose attach name is aname, the
// request in flight (the client's req_list, where its writer put it before
// writing it) with tag and whose first bytes are msg, and the tasks on its
// wait queue (p9_client_rpc sleeps there, in the caller's context, until
// the reply). Every list is bounded and cycle-checked.
//
// The caller of p9_client_rpc puts itself on the queue right after it
// hands the request to the transport, whose worker may write it first:
// ErrNoRequester then means "not yet", and the caller retries.
func (k *Kernel) P9Requesters(l *P9Layout, aname string, tag uint16, msg []byte) ([]uint64, error) {
	conns, err := k.P9Conns(l, aname)
	if err != nil {
		return nil, err
	}
	return k.P9RequestersAt(l, conns, tag, msg)
}

// P9Conns returns the fd transports (struct p9_conn) of the mounts with
// attach name aname. They live as long as their mounts: a caller may keep
// them, and find them again when P9RequestersAt finds nothing.
func (k *Kernel) P9Conns(l *P9Layout, aname string) ([]uint64, error) {
	as := k.AS
	var conns []uint64
	err := k.p9Sessions(l, aname, func(_, sess uint64) error {
		clnt, err := vmi.ReadU64(as, sess+l.sessClnt)
		if err != nil || !isKernelPtr(clnt) {
			return fmt.Errorf("linux: 9P session %#x: bad client", sess)
		}
		tm, err := vmi.ReadU64(as, clnt+l.clntTransMod)
		if err != nil || !isKernelPtr(tm) {
			return fmt.Errorf("linux: 9P client %#x: bad transport", clnt)
		}
		tmn, err := vmi.ReadU64(as, tm+l.transModName)
		if err != nil || !isKernelPtr(tmn) {
			return fmt.Errorf("linux: 9P client %#x: bad transport name", clnt)
		}
		if n, err := vmi.ReadCString(as, tmn, 16); err != nil || n != "fd" {
			return nil
		}
		trans, err := vmi.ReadU64(as, clnt+l.clntTrans)
		if err != nil || !isKernelPtr(trans) {
			return fmt.Errorf("linux: 9P client %#x: bad transport state", clnt)
		}
		if len(conns) >= 64 {
			return fmt.Errorf("linux: over 64 9P mounts of %q", aname)
		}
		conns = append(conns, trans+l.fdConn)
		return nil
	})
	return conns, err
}

// P9RequestersAt is P9Requesters on the transports conns (P9Conns).
func (k *Kernel) P9RequestersAt(l *P9Layout, conns []uint64, tag uint16, msg []byte) ([]uint64, error) {
	as := k.AS
	var tasks []uint64
	matched := 0
	for _, conn := range conns {
		err := walkList(as, conn+l.connReqList, max9PRequests, func(rn uint64) error {
			req := rn - l.reqList_
			var tb [2]byte
			if _, err := as.ReadVirtual(req+l.reqTag, tb[:]); err != nil || uint16(tb[0])|uint16(tb[1])<<8 != tag {
				return nil
			}
			sz, err := vmi.ReadU32(as, req+l.reqSize)
			if err != nil {
				return nil
			}
			sd, err := vmi.ReadU64(as, req+l.reqSdata)
			if err != nil || !isKernelPtr(sd) {
				return nil
			}
			n := min(len(msg), int(sz), 64)
			buf := make([]byte, n)
			if _, err := as.ReadVirtual(sd, buf); err != nil || n == 0 || !bytes.Equal(buf, msg[:n]) {
				return nil
			}
			matched++
			return walkList(as, req+l.reqWQ+l.wqHead, max9PWaiters, func(wn uint64) error {
				t, err := vmi.ReadU64(as, wn-l.wqeEntry+l.wqePrivate)
				if err != nil || !isKernelPtr(t) {
					return fmt.Errorf("linux: 9P request %#x: bad waiter", req)
				}
				tasks = append(tasks, t)
				return nil
			})
		})
		if err != nil {
			return nil, err
		}
	}
	if matched == 0 || len(tasks) == 0 {
		return nil, ErrNoRequester
	}
	if matched > 1 {
		return nil, fmt.Errorf("%w: %d requests in flight match tag %d", ErrInconsistent, matched, tag)
	}
	return tasks, nil
}

// p9Sessions calls fn for each mounted 9p superblock whose session's
// attach name is aname, with the superblock and its v9fs session.
func (k *Kernel) p9Sessions(l *P9Layout, aname string, fn func(sb, sess uint64) error) error {
	head, err := k.Addr("super_blocks")
	if err != nil {
		return err
	}
	as := k.AS
	return walkList(as, head, maxSuperBlocks, func(node uint64) error {
		sb := node - l.sbList
		typ, err := vmi.ReadU64(as, sb+l.sbType)
		if err != nil || !isKernelPtr(typ) {
			return nil
		}
		np, err := vmi.ReadU64(as, typ+l.fstName)
		if err != nil || !isKernelPtr(np) {
			return nil
		}
		if name, err := vmi.ReadCString(as, np, 16); err != nil || name != "9p" {
			return nil
		}
		sess, err := vmi.ReadU64(as, sb+l.sbFSInfo)
		if err != nil || !isKernelPtr(sess) {
			return nil
		}
		ap, err := vmi.ReadU64(as, sess+l.sessAname)
		if err != nil || !isKernelPtr(ap) {
			return nil
		}
		if a, err := vmi.ReadCString(as, ap, 256); err != nil || a != aname {
			return nil
		}
		return fn(sb, sess)
	})
}

// maxInodes bounds the inodes of one superblock walked.
const maxInodes = 1 << 20

// P9CachedPages counts, through the kernel's own structures, what the
// page cache holds of the 9p mounts with attach name aname: the mounts,
// their inodes and the pages of those inodes' mappings (nrpages).
func (k *Kernel) P9CachedPages(l *P9Layout, aname string) (mounts, inodes int, pages uint64, err error) {
	as := k.AS
	err = k.p9Sessions(l, aname, func(sb, _ uint64) error {
		mounts++
		return walkList(as, sb+l.sbInodes, maxInodes, func(node uint64) error {
			inodes++
			n, err := vmi.ReadU64(as, node-l.inodeSBList+l.inodeNrPages)
			if err != nil {
				return fmt.Errorf("linux: inode %#x: %w", node-l.inodeSBList, err)
			}
			pages += n
			return nil
		})
	})
	return mounts, inodes, pages, err
}

// walkList calls fn for each node of the circular list at head (not the
// head itself), at most max nodes, refusing a cycle that does not return
// to the head.
func walkList(as vmi.VirtualReader, head uint64, max int, fn func(node uint64) error) error {
	seen := map[uint64]bool{}
	cur, err := vmi.ReadU64(as, head)
	if err != nil {
		return fmt.Errorf("linux: list at %#x: %w", head, err)
	}
	for n := 0; cur != head; n++ {
		if n >= max {
			return fmt.Errorf("list at %#x: %w", head, vmi.ErrListTooLong)
		}
		if !isKernelPtr(cur) || seen[cur] {
			return fmt.Errorf("list at %#x: %w", head, vmi.ErrListCycle)
		}
		seen[cur] = true
		if err := fn(cur); err != nil {
			return err
		}
		if cur, err = vmi.ReadU64(as, cur); err != nil {
			return fmt.Errorf("linux: list at %#x: %w", head, err)
		}
	}
	return nil
}
