package api

import (
	"fmt"
	"time"
)

// RestartRequest asks for QEMU to be restarted (POST /v1/restart).
type RestartRequest struct {
	// KeepGuest keeps the guest running in its RAM across the restart
	// (the only kind there is: the guest is not rebooted).
	KeepGuest bool `json:"keep_guest"`
	// QEMUBinary, when set, is the absolute path of the QEMU the new
	// process runs (an upgraded QEMU); only the VM's owner or root may
	// set it.
	QEMUBinary string `json:"qemu_binary,omitempty"`
	// CopyRAM moves guest RAM through the migration stream too (a full
	// migration to a file and back): only for comparison (gatevisor bench
	// rejuvenate); the guest's RAM file is shared, so it need not move.
	CopyRAM bool `json:"copy_ram,omitempty"`
}

// RestartResult says how a QEMU restart went.
type RestartResult struct {
	// Mode is how the device state moved: "x-ignore-shared" (the
	// migration leaves shared guest RAM where it is) or "full" (CopyRAM).
	Mode       string `json:"mode"`
	OldQEMUPID int    `json:"old_qemu_pid"`
	NewQEMUPID int    `json:"new_qemu_pid,omitempty"`
	// PrepareSeconds is starting the new QEMU, while the guest ran on;
	// DowntimeSeconds the guest stopped (from the stop to the new QEMU's
	// resume being sent); TotalSeconds all of it.
	PrepareSeconds   float64 `json:"prepare_seconds"`
	DowntimeSeconds  float64 `json:"downtime_seconds"`
	TotalSeconds     float64 `json:"total_seconds"`
	DeviceStateBytes int64   `json:"device_state_bytes"`
	// Phases is where the downtime went, in order.
	Phases []Phase `json:"phases,omitempty"`
}

// Phase is one step of a restart or rollback with the guest stopped.
type Phase struct {
	Name string  `json:"name"`
	Ms   float64 `json:"ms"`
}

// UpgradeRequest asks for the monitor to be replaced by Binary (""
// the running executable) with the guest kept running (POST /v1/upgrade).
type UpgradeRequest struct {
	Binary string `json:"binary,omitempty"`
}

// UpgradeResult says the upgrade is under way: the guest is stopped and
// the monitor about to exec Binary; its API answers again once the new
// monitor runs (Status.MonitorUpgrades is Upgrades then).
type UpgradeResult struct {
	Binary     string `json:"binary"`
	MonitorPID int    `json:"monitor_pid"`
	Upgrades   int    `json:"upgrades"`
}

// SnapshotRequest names a snapshot to take (POST /v1/snapshot), roll back
// to (POST /v1/rollback) or remove (POST /v1/snapshot/remove).
type SnapshotRequest struct {
	Tag string `json:"tag"`
}

// Snapshot describes one snapshot of a VM: its guest RAM and device state,
// and what they were taken with.
type Snapshot struct {
	Tag     string    `json:"tag"`
	Created time.Time `json:"created"`
	VM      string    `json:"vm"`
	MemMiB  int       `json:"mem_mib"`
	CPUs    int       `json:"cpus"`
	// RAMPages is how many 4 KiB pages of guest RAM were not zero: only
	// those are stored (a sparse file). RAMStoredBytes is the space the
	// RAM file takes on disk.
	RAMPages         int64 `json:"ram_pages"`
	RAMStoredBytes   int64 `json:"ram_stored_bytes"`
	DeviceStateBytes int64 `json:"device_state_bytes"`
	// RAMDigest and DeviceStateDigest are SHA-256s, checked before a
	// rollback uses the snapshot.
	RAMDigest         string `json:"ram_sha256"`
	DeviceStateDigest string `json:"device_state_sha256"`
	// Kernel is the SHA-256 of the guest kernel image; KernelSlide and
	// KernelPhys where this boot's KASLR placed it (the kernel gate's
	// traps depend on them).
	Kernel      string `json:"kernel_sha256"`
	KernelSlide uint64 `json:"kernel_slide"`
	KernelPhys  uint64 `json:"kernel_phys"`
	// PolicyDigest is the policy in force when it was taken ("" none).
	PolicyDigest string `json:"policy_digest,omitempty"`
	QEMUVersion  string `json:"qemu_version"`
	// MachineDigest identifies the machine (QEMU's devices and options):
	// a snapshot only restores into the same machine.
	MachineDigest string `json:"machine_sha256"`
	// GatePage is the kernel gate's own guest page when it was taken (0:
	// none): the snapshot's RAM holds it, with the gate's entries linked
	// on it, and a rollback makes it the gate's page again.
	GatePage uint64 `json:"gate_page,omitempty"`
	// PausedSeconds is how long the guest was stopped to take it.
	PausedSeconds float64 `json:"paused_seconds"`
	// BootID tells snapshots of this boot of the VM from older ones.
	BootID string `json:"boot_id"`
}

// Snapshots lists a VM's snapshots (GET /v1/snapshots), oldest first.
type Snapshots struct {
	Dir       string     `json:"dir"`
	Snapshots []Snapshot `json:"snapshots"`
	// Unreadable names entries of Dir that are not valid snapshots, and why.
	Unreadable []string `json:"unreadable,omitempty"`
}

// RollbackResult says how a rollback went.
type RollbackResult struct {
	Tag string `json:"tag"`
	// VerifySeconds is checking the snapshot's digests (the guest runs);
	// DowntimeSeconds the guest stopped; TotalSeconds all of it.
	VerifySeconds   float64 `json:"verify_seconds"`
	DowntimeSeconds float64 `json:"downtime_seconds"`
	TotalSeconds    float64 `json:"total_seconds"`
	OldQEMUPID      int     `json:"old_qemu_pid"`
	NewQEMUPID      int     `json:"new_qemu_pid"`
	RAMPages        int64   `json:"ram_pages"`
	Phases          []Phase `json:"phases,omitempty"`
}

// MaxSnapshotTag is the longest snapshot tag.
const MaxSnapshotTag = 64

// CheckSnapshotTag checks a snapshot's tag: 1 to 64 letters, digits, '.',
// '_' or '-', not starting with '.' or '-' (it names a directory).
func CheckSnapshotTag(tag string) error {
	if tag == "" || len(tag) > MaxSnapshotTag {
		return fmt.Errorf("snapshot tag %q: give 1 to %d characters", tag, MaxSnapshotTag)
	}
	if tag[0] == '.' || tag[0] == '-' {
		return fmt.Errorf("snapshot tag %q: it may not start with %q", tag, tag[0])
	}
	for _, r := range tag {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("snapshot tag %q: use letters, digits, '.', '_' and '-' only", tag)
		}
	}
	return nil
}
