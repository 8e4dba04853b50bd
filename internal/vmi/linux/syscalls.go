package linux

// SyscallEntry is one slot of the x86-64 system call table, sys_call_table.
type SyscallEntry struct {
	Nr int `json:"nr"`
	// Name is the handler the kernel image puts in this slot, e.g. "__x64_sys_read".
	Name string `json:"name"`
	// Addr is the slot's live value.
	Addr uint64 `json:"addr"`
	// SlotAddr is the slot's kernel virtual address, SlotPhys its guest-physical address.
	SlotAddr uint64 `json:"slot_addr"`
	SlotPhys uint64 `json:"slot_phys"`
	// Symbol is where the live value points, "sym" or "sym+0xoff", or "" outside every symbol.
	Symbol string `json:"symbol"`
	// InCoreText reports whether the live value lies in _stext.._etext.
	InCoreText bool `json:"in_core_text"`
	Hooked     bool `json:"hooked"`
	// Reason says why the entry is flagged.
	Reason string `json:"reason,omitempty"`
}

// SyscallTable reads sys_call_table and compares each slot with the handler
// the kernel image puts there.
func (k *Kernel) SyscallTable() ([]SyscallEntry, error) { return nil, ErrNotImplemented }

// DispatchFinding is a branch in the system call dispatch path that goes
// somewhere the kernel image's code does not.
type DispatchFinding struct {
	// Function is the dispatch function holding the branch, e.g. "x64_sys_call".
	Function string `json:"function"`
	// Addr is the branch instruction's kernel virtual address.
	Addr uint64 `json:"addr"`
	// Target is where it branches, TargetSymbol its symbol ("" if none).
	Target       uint64 `json:"target"`
	TargetSymbol string `json:"target_symbol"`
	Reason       string `json:"reason"`
}

// CheckDispatch disassembles the live code of the system call entry path
// (entry_SYSCALL_64, do_syscall_64, x64_sys_call) and reports branches that
// differ from the kernel image's. It returns nil, nil on kernels without
// x64_sys_call, whose dispatch goes through sys_call_table.
func (k *Kernel) CheckDispatch() ([]DispatchFinding, error) { return nil, ErrNotImplemented }
