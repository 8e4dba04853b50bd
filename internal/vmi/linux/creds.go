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

// Creds reads task t's credentials. A field that cannot be read fails the
// whole: half a credential is no basis for a finding.
func (k *Kernel) Creds(t Task) (Creds, error) {
	l, err := newCredLayout(k.Profile)
	if err != nil {
		return Creds{}, err
	}
	u64 := func(va uint64) (uint64, error) { return vmi.ReadU64(k.AS, va) }
	u32 := func(va uint64) (uint32, error) { return vmi.ReadU32(k.AS, va) }
	var c Creds
	if c.Cred, err = u64(t.Addr + l.cred); err != nil {
		return c, fmt.Errorf("linux: task %d cred: %w", t.PID, err)
	}
	if c.RealCred, err = u64(t.Addr + l.realCred); err != nil {
		return c, fmt.Errorf("linux: task %d real_cred: %w", t.PID, err)
	}
	for _, r := range []struct {
		off uint64
		v   *uint32
	}{{l.uid, &c.UID}, {l.euid, &c.EUID}, {l.suid, &c.SUID}, {l.fsuid, &c.FSUID}, {l.gid, &c.GID}, {l.egid, &c.EGID}} {
		if *r.v, err = u32(c.Cred + r.off); err != nil {
			return c, fmt.Errorf("linux: task %d cred at %#x: %w", t.PID, c.Cred, err)
		}
	}
	if c.CapEffective, err = u64(c.Cred + l.capEff); err != nil {
		return c, fmt.Errorf("linux: task %d cred at %#x: %w", t.PID, c.Cred, err)
	}
	if c.CapPermit, err = u64(c.Cred + l.capPerm); err != nil {
		return c, fmt.Errorf("linux: task %d cred at %#x: %w", t.PID, c.Cred, err)
	}
	c.ExeKnown, c.ExeSetUIDRoot = k.exeSetUIDRoot(l, t)
	return c, nil
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
