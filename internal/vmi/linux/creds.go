package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// Creds are a task's credentials in full, for the credential checks: the
// struct cred pointers (a cred shared with an unrelated task, or the
// kernel's own init_cred, is a rootkit's shortcut to root), every uid, the
// capability sets, and whether the task's executable is setuid root.
type Creds struct {
	Cred, RealCred          uint64
	UID, EUID, SUID, FSUID  uint32
	GID, EGID               uint32
	CapEffective, CapPermit uint64
	// ExeKnown says the executable's inode was read; ExeSetUIDRoot that it
	// has S_ISUID and belongs to uid 0.
	ExeKnown, ExeSetUIDRoot bool
}

// credLayout holds the offsets Creds reads.
type credLayout struct {
	cred, realCred, mm, exeFile, fInode, iMode, iUID   uint64
	uid, euid, suid, fsuid, gid, egid, capEff, capPerm uint64
}

func newCredLayout(p *Profile) (credLayout, error) {
	f := &fields{p: p}
	l := credLayout{cred: f.off("task_struct.cred"), realCred: f.off("task_struct.real_cred"), mm: f.off("task_struct.mm"),
		exeFile: f.off("mm_struct.exe_file"), fInode: f.off("file.f_inode"), iMode: f.off("inode.i_mode"), iUID: f.off("inode.i_uid"),
		uid: f.off("cred.uid"), euid: f.off("cred.euid"), suid: f.off("cred.suid"), fsuid: f.off("cred.fsuid"),
		gid: f.off("cred.gid"), egid: f.off("cred.egid"), capEff: f.off("cred.cap_effective"), capPerm: f.off("cred.cap_permitted")}
	return l, f.err
}

// InitCred is the address of the kernel's own credentials (init_cred),
// which kernel threads share and no process that ran exec has.
func (k *Kernel) InitCred() uint64 {
	a, _ := k.Addr("init_cred")
	return a
}

// CredReader reads tasks' credentials with one layout, resolved once from
// BTF: a check reads every process's.
type CredReader struct {
	k *Kernel
	l credLayout
}

// CredReader returns a reader of k's tasks' credentials.
func (k *Kernel) CredReader() (*CredReader, error) {
	l, err := newCredLayout(k.Profile)
	if err != nil {
		return nil, err
	}
	return &CredReader{k: k, l: l}, nil
}

// Creds reads task t's credentials (see CredReader.Creds).
func (k *Kernel) Creds(t Task) (Creds, error) {
	r, err := k.CredReader()
	if err != nil {
		return Creds{}, err
	}
	return r.Creds(t)
}

// Creds reads task t's credentials (not ExeKnown/ExeSetUIDRoot: see
// ExeSetUIDRoot). The ids and capability sets are read in one block. A
// field that cannot be read fails the whole: half a credential is no
// basis for a finding.
func (r *CredReader) Creds(t Task) (Creds, error) {
	k, l := r.k, r.l
	var err error
	var c Creds
	var ptrs [8]byte
	if _, err := k.AS.ReadVirtual(t.Addr+l.cred, ptrs[:]); err != nil {
		return c, fmt.Errorf("linux: task %d cred: %w", t.PID, err)
	}
	c.Cred = le.Uint64(ptrs[:])
	if c.RealCred, err = vmi.ReadU64(k.AS, t.Addr+l.realCred); err != nil {
		return c, fmt.Errorf("linux: task %d real_cred: %w", t.PID, err)
	}
	lo := min(l.uid, l.euid, l.suid, l.fsuid, l.gid, l.egid, l.capEff, l.capPerm)
	hi := max(l.uid, l.euid, l.suid, l.fsuid, l.gid, l.egid) + 4
	hi = max(hi, l.capEff+8, l.capPerm+8)
	if hi-lo > 256 {
		return c, fmt.Errorf("linux: struct cred's ids and capabilities span %d bytes", hi-lo)
	}
	b := make([]byte, hi-lo)
	if _, err := k.AS.ReadVirtual(c.Cred+lo, b); err != nil {
		return c, fmt.Errorf("linux: task %d cred at %#x: %w", t.PID, c.Cred, err)
	}
	u32 := func(off uint64) uint32 { return le.Uint32(b[off-lo:]) }
	c.UID, c.EUID, c.SUID, c.FSUID, c.GID, c.EGID = u32(l.uid), u32(l.euid), u32(l.suid), u32(l.fsuid), u32(l.gid), u32(l.egid)
	c.CapEffective, c.CapPermit = le.Uint64(b[l.capEff-lo:]), le.Uint64(b[l.capPerm-lo:])
	return c, nil
}

// ExeSetUIDRoot reads whether task t's executable is setuid root
// (task->mm->exe_file->f_inode: S_ISUID and uid 0); known is false when
// the chain cannot be read (a kernel thread has none).
func (r *CredReader) ExeSetUIDRoot(t Task) (known, setuidRoot bool) {
	return r.k.exeSetUIDRoot(r.l, t)
}

// exeSetUIDRoot reads task->mm->exe_file->f_inode's mode and owner.
func (k *Kernel) exeSetUIDRoot(l credLayout, t Task) (known, setuidRoot bool) {
	const sISUID = 0o4000
	mm, err := vmi.ReadU64(k.AS, t.Addr+l.mm)
	if err != nil || mm == 0 || t.KernelThread {
		return false, false
	}
	file, err := vmi.ReadU64(k.AS, mm+l.exeFile)
	if err != nil || file == 0 {
		return false, false
	}
	inode, err := vmi.ReadU64(k.AS, file+l.fInode)
	if err != nil || inode == 0 {
		return false, false
	}
	var mode [2]byte
	if _, err := k.AS.ReadVirtual(inode+l.iMode, mode[:]); err != nil {
		return false, false
	}
	uid, err := vmi.ReadU32(k.AS, inode+l.iUID)
	if err != nil {
		return false, false
	}
	return true, le.Uint16(mode[:])&sISUID != 0 && uid == 0
}
