package monitor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/monitoring"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/ramsnap"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// Snapshots and rollback.
//
// A snapshot is a directory SnapshotDir/TAG (0700) holding
//
//	ram            guest RAM, sparse: only the non-zero 4 KiB pages are written
//	devices        QEMU's device state (a migration stream with x-ignore-shared)
//	manifest.json  api.Snapshot: digests, sizes, the kernel, policy and machine
//
// taken with the VM stopped on the debugger's goroutine; the guest then
// runs on. A rollback checks the manifest against this VM (same name,
// machine, kernel image and KASLR placement: the kernel gate's traps are at
// this boot's addresses) and both digests, then does what a QEMU restart
// does (restart.go) with the snapshot's RAM written into the guest's RAM
// file first and the snapshot's device state loaded into the new QEMU. The
// monitor, its gates, the policy in force and the audit log stay; the log
// records the rollback before it is done.

// Snapshot file names.
const (
	snapRAM      = "ram"
	snapDevices  = "devices"
	snapManifest = "manifest.json"
	maxManifest  = 64 << 10
)

// snapshotDir is where the VM's snapshots live, created 0700 on first use.
func (m *Monitor) snapshotDir() (string, error) {
	if m.cfg.SnapshotDir == "" {
		return "", apiErr(api.CodeConflict, "this VM has no snapshot directory (the monitor was started without one)")
	}
	if err := safefile.Dir(m.cfg.SnapshotDir, 0o700); err != nil {
		return "", fmt.Errorf("snapshot directory: %w", err)
	}
	return m.cfg.SnapshotDir, nil
}

// machineDigest identifies the machine a snapshot restores into: QEMU's
// command line without the parts that change from one QEMU process to the
// next (its socket directory, -incoming, where it reads the kernel and
// initramfs from: the kernel's own digest is recorded beside it).
func machineDigest(c *qemu.Config) string {
	cfg := *c
	cfg.Dir, cfg.Incoming, cfg.Binary, cfg.Kernel, cfg.Initrd, cfg.ExtraFiles = "", "", "", "-", "", nil
	h := sha256.New()
	for _, a := range cfg.Args() {
		io.WriteString(h, a)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// kernelDigest is the SHA-256 of the guest kernel image.
// It is read once, from the descriptor the VM booted from (the path may
// hold another build by now).
func (m *Monitor) kernelDigest() (string, error) {
	b := &m.bootFiles
	b.digestOnce.Do(func() {
		if b.kernel == nil {
			b.digestErr = errors.New("kernel image: not open (it could not be opened when the VM started)")
			return
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(b.kernel, 0, 1<<62)); err != nil {
			b.digestErr = fmt.Errorf("kernel image: %w", err)
			return
		}
		b.digest = hex.EncodeToString(h.Sum(nil))
	})
	return b.digest, b.digestErr
}

// snapshotIdentity fills what identifies the VM, its machine and its
// kernel in a snapshot's manifest.
func (m *Monitor) snapshotIdentity(ctx context.Context, s *api.Snapshot) error {
	insp, err := m.privateInspector(ctx)
	if err != nil {
		return fmt.Errorf("locate the guest kernel: %w", err)
	}
	kd, err := m.kernelDigest()
	if err != nil {
		return err
	}
	q := m.q()
	s.VM, s.MemMiB, s.CPUs = m.cfg.Name, m.cfg.MemMiB, m.cfg.CPUs
	s.Kernel, s.KernelSlide, s.KernelPhys = kd, insp.K.Slide, insp.K.PhysBase
	s.MachineDigest = machineDigest(q.cfg)
	s.QEMUVersion = q.qmp.Version().String()
	s.BootID = m.bootID
	if snap := m.pol.snap.Load(); snap != nil {
		s.PolicyDigest = snap.Digest
	}
	return nil
}

// Snapshot implements api.VM.
func (m *Monitor) Snapshot(ctx context.Context, tag string) (api.Snapshot, error) {
	if err := api.CheckSnapshotTag(tag); err != nil {
		return api.Snapshot{}, apiErr(api.CodeBadRequest, "%v", err)
	}
	if err := m.lifecycleReady(); err != nil {
		return api.Snapshot{}, err
	}
	for _, sh := range m.cfg.Files {
		if sh.Transport == TransportVirtioFS {
			return api.Snapshot{}, apiErr(api.CodeConflict, "snapshot: not taken: the VM serves %s over virtio-fs (--files), a vhost-user device whose state QEMU cannot save (a share given as NAME=HOSTDIR,9p can be)", sh.Name)
		}
	}
	dir, err := m.snapshotDir()
	if err != nil {
		return api.Snapshot{}, err
	}
	final := filepath.Join(dir, tag)
	if _, err := os.Lstat(final); err == nil {
		return api.Snapshot{}, apiErr(api.CodeConflict, "snapshot %q exists: remove it first (gatevisor snapshot rm %s %s)", tag, m.cfg.Name, tag)
	}
	s := api.Snapshot{Tag: tag}
	if err := m.snapshotIdentity(ctx, &s); err != nil {
		return api.Snapshot{}, err
	}
	if err := m.recordLifecycle(ctx, "vm.snapshot", "snapshot "+tag+" requested"); err != nil {
		return api.Snapshot{}, err
	}
	m.rs.mu.Lock()
	defer m.rs.mu.Unlock()
	tmp, err := os.MkdirTemp(dir, ".tmp-"+tag+"-")
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	ram, err := safefile.OpenFile(filepath.Join(tmp, snapRAM), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	defer ram.Close()
	devs, err := safefile.OpenFile(filepath.Join(tmp, snapDevices), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	defer devs.Close()
	size := int64(m.cfg.MemMiB) << 20
	// A first copy while the guest runs (not consistent: the guest writes
	// meanwhile), then, with it stopped, only the pages that changed:
	// the guest is paused for a read and a compare of what it uses
	// rather than for a write of all of it.
	if _, err := ramsnap.Copy(ram, m.ramFile, size); err != nil {
		return api.Snapshot{}, fmt.Errorf("snapshot %s: %w", tag, err)
	}
	var copied ramsnap.Result
	err = m.dbg.DoPaused(ctx, func(ctx context.Context, _ *gdbrsp.Client) error {
		start := time.Now()
		defer func() { s.PausedSeconds = time.Since(start).Seconds() }()
		if copied, err = ramsnap.Sync(ram, m.ramFile, size); err != nil {
			return err
		}
		// 0 while the gate has none; one taken before the gate linked
		// its entries there is not taken over by a rollback (adoptSnapshotPageLocked).
		s.GatePage = m.kg.page.Load()
		if _, err := saveDevices(ctx, m.q(), devs, true); err != nil {
			return fmt.Errorf("QEMU did not save the device state: %w", err)
		}
		return nil
	})
	if err != nil {
		m.recordLifecycleOutcome(ctx, "vm.snapshot", fmt.Sprintf("snapshot %s failed: %v", tag, err))
		return api.Snapshot{}, fmt.Errorf("snapshot %s: %w", tag, err)
	}
	s.Created = time.Now().UTC()
	s.RAMPages, s.RAMDigest = copied.Pages, copied.Digest
	if s.DeviceStateBytes, s.DeviceStateDigest, err = fileDigest(devs); err != nil {
		return api.Snapshot{}, err
	}
	for _, f := range []*os.File{ram, devs} {
		if err := f.Sync(); err != nil {
			return api.Snapshot{}, fmt.Errorf("snapshot: %w", err)
		}
	}
	s.RAMStoredBytes = storedBytes(ram)
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return api.Snapshot{}, err
	}
	if err := safefile.WriteFile(filepath.Join(tmp, snapManifest), append(b, '\n'), 0o600); err != nil {
		return api.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return api.Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	done = true
	msg := fmt.Sprintf("snapshot %s taken: %d RAM pages (%d MiB stored), device state %d bytes, guest paused %.1f ms",
		tag, s.RAMPages, s.RAMStoredBytes>>20, s.DeviceStateBytes, s.PausedSeconds*1000)
	m.recordLifecycleOutcome(ctx, "vm.snapshot", msg)
	m.publishNotice(monitoring.LifecycleNotice, msg)
	m.logf("%s", msg)
	return s, nil
}

// storedBytes is the space f takes on its filesystem.
func storedBytes(f *os.File) int64 {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// fileDigest returns f's size and SHA-256, read from its start.
func fileDigest(f *os.File) (int64, string, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", fmt.Errorf("digest %s: %w", f.Name(), err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// Snapshots implements api.VM.
func (m *Monitor) Snapshots(ctx context.Context) (api.Snapshots, error) {
	dir, err := m.snapshotDir()
	if err != nil {
		return api.Snapshots{}, err
	}
	res := api.Snapshots{Dir: dir, Snapshots: []api.Snapshot{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return res, fmt.Errorf("snapshots: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		s, err := readManifest(dir, e.Name())
		if err != nil {
			res.Unreadable = append(res.Unreadable, err.Error())
			continue
		}
		res.Snapshots = append(res.Snapshots, s)
	}
	sort.Slice(res.Snapshots, func(i, j int) bool { return res.Snapshots[i].Created.Before(res.Snapshots[j].Created) })
	return res, nil
}

// readManifest reads snapshot tag's manifest: a file of ours, bounded,
// naming the tag it is stored under.
func readManifest(dir, tag string) (api.Snapshot, error) {
	var s api.Snapshot
	if err := api.CheckSnapshotTag(tag); err != nil {
		return s, err
	}
	f, err := safefile.OpenFile(filepath.Join(dir, tag, snapManifest), os.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return s, apiErr(api.CodeNotFound, "snapshot %q: no such snapshot (gatevisor snapshots lists them)", tag)
		}
		return s, fmt.Errorf("snapshot %q: %w", tag, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifest+1))
	if err != nil {
		return s, fmt.Errorf("snapshot %q: %w", tag, err)
	}
	if len(b) > maxManifest {
		return s, fmt.Errorf("snapshot %q: manifest larger than %d bytes: not a gatevisor snapshot", tag, maxManifest)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("snapshot %q: manifest: %v: the snapshot is damaged; remove it", tag, err)
	}
	if s.Tag != tag {
		return s, fmt.Errorf("snapshot %q: its manifest names tag %q: the snapshot was moved or damaged; remove it", tag, s.Tag)
	}
	return s, nil
}

// RemoveSnapshot implements api.VM.
func (m *Monitor) RemoveSnapshot(ctx context.Context, tag string) error {
	if err := api.CheckSnapshotTag(tag); err != nil {
		return apiErr(api.CodeBadRequest, "%v", err)
	}
	dir, err := m.snapshotDir()
	if err != nil {
		return err
	}
	p := filepath.Join(dir, tag)
	fi, err := os.Lstat(p)
	if err != nil || !fi.IsDir() {
		return apiErr(api.CodeNotFound, "snapshot %q: no such snapshot", tag)
	}
	if err := m.recordLifecycle(ctx, "vm.snapshot.remove", "snapshot "+tag+" removed"); err != nil {
		return err
	}
	m.rs.mu.Lock()
	defer m.rs.mu.Unlock()
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", tag, err)
	}
	return nil
}

// verifySnapshot checks snapshot s against this VM and its files against
// their digests, and returns them open.
func (m *Monitor) verifySnapshot(ctx context.Context, dir string, s api.Snapshot) (ram, devs *os.File, err error) {
	var cur api.Snapshot
	if err := m.snapshotIdentity(ctx, &cur); err != nil {
		return nil, nil, err
	}
	foreign := func(what string, was, now any) error {
		return apiErr(api.CodeConflict, "snapshot %q is of another %s (%v, this VM has %v): it cannot be restored here", s.Tag, what, was, now)
	}
	switch {
	case s.VM != cur.VM:
		return nil, nil, foreign("VM", s.VM, cur.VM)
	case s.MemMiB != cur.MemMiB || s.CPUs != cur.CPUs:
		return nil, nil, foreign("size", fmt.Sprintf("%d MiB, %d vCPUs", s.MemMiB, s.CPUs), fmt.Sprintf("%d MiB, %d vCPUs", cur.MemMiB, cur.CPUs))
	case s.MachineDigest != cur.MachineDigest:
		return nil, nil, foreign("machine (QEMU devices or options differ)", short(s.MachineDigest), short(cur.MachineDigest))
	case s.Kernel != cur.Kernel:
		return nil, nil, foreign("kernel image", short(s.Kernel), short(cur.Kernel))
	case s.KernelSlide != cur.KernelSlide || s.KernelPhys != cur.KernelPhys:
		return nil, nil, apiErr(api.CodeConflict, "snapshot %q was taken of a boot whose kernel KASLR placed at %#x (physical %#x); this boot's is at %#x (%#x): the kernel gate's traps are armed at this boot's addresses, so it cannot be restored into this boot", s.Tag, s.KernelSlide, s.KernelPhys, cur.KernelSlide, cur.KernelPhys)
	}
	size := int64(m.cfg.MemMiB) << 20
	open := func(name string) (*os.File, error) {
		f, err := safefile.OpenFile(filepath.Join(dir, s.Tag, name), os.O_RDONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("snapshot %q: %w", s.Tag, err)
		}
		return f, nil
	}
	if ram, err = open(snapRAM); err != nil {
		return nil, nil, err
	}
	if devs, err = open(snapDevices); err != nil {
		ram.Close()
		return nil, nil, err
	}
	fail := func(err error) (*os.File, *os.File, error) {
		ram.Close()
		devs.Close()
		return nil, nil, err
	}
	got, err := ramsnap.Check(ram, size)
	if err != nil {
		return fail(apiErr(api.CodeConflict, "snapshot %q: its RAM file is damaged (%v): remove it", s.Tag, err))
	}
	if got.Digest != s.RAMDigest || got.Pages != s.RAMPages {
		return fail(apiErr(api.CodeConflict, "snapshot %q: its RAM does not match its digest (%d pages, sha256 %s; the manifest says %d, %s): the snapshot is damaged or was altered; remove it", s.Tag, got.Pages, short(got.Digest), s.RAMPages, short(s.RAMDigest)))
	}
	n, d, err := fileDigest(devs)
	if err != nil {
		return fail(err)
	}
	if n != s.DeviceStateBytes || d != s.DeviceStateDigest {
		return fail(apiErr(api.CodeConflict, "snapshot %q: its device state does not match its digest (%d bytes, sha256 %s; the manifest says %d, %s): the snapshot is damaged or was altered; remove it", s.Tag, n, short(d), s.DeviceStateBytes, short(s.DeviceStateDigest)))
	}
	return ram, devs, nil
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// Rollback implements api.VM.
func (m *Monitor) Rollback(ctx context.Context, tag string) (api.RollbackResult, error) {
	res := api.RollbackResult{Tag: tag}
	if err := api.CheckSnapshotTag(tag); err != nil {
		return res, apiErr(api.CodeBadRequest, "%v", err)
	}
	if err := m.lifecycleReady(); err != nil {
		return res, err
	}
	if len(m.cfg.Files) > 0 {
		return res, apiErr(api.CodeConflict, "rollback: not done: the VM serves files (--files), whose sessions (9P or virtio-fs) would not match the snapshot's: the guest's mounts would fail")
	}
	dir, err := m.snapshotDir()
	if err != nil {
		return res, err
	}
	start := time.Now()
	s, err := readManifest(dir, tag)
	if err != nil {
		return res, err
	}
	ram, devs, err := m.verifySnapshot(ctx, dir, s)
	if err != nil {
		return res, err
	}
	defer ram.Close()
	defer devs.Close()
	res.VerifySeconds = time.Since(start).Seconds()
	if err := m.recordLifecycle(ctx, "vm.rollback", fmt.Sprintf("rollback to snapshot %s (taken %s) requested", tag, s.Created.Format(time.RFC3339))); err != nil {
		return res, err
	}
	m.rs.mu.Lock()
	defer m.rs.mu.Unlock()
	old := m.q()
	res.OldQEMUPID = old.proc.Pid()
	next, nic, err := m.nextQEMU(ctx, "", true)
	if err != nil {
		return res, err
	}
	size := int64(m.cfg.MemMiB) << 20
	switched, clobbered := false, false
	var stopped time.Time
	var pt *phases
	err = m.dbg.Do(ctx, func(ctx context.Context, _ *gdbrsp.Client) error {
		stopped = time.Now()
		pt = newPhases()
		// From the first page written on, the old QEMU's guest is gone:
		// any failure after it keeps the VM stopped and ends it.
		clobbered = true
		m.setRAMSwap(true)
		defer m.setRAMSwap(false)
		r, err := ramsnap.Restore(m.ramFile, ram, size)
		if err != nil {
			return fmt.Errorf("%w: write the snapshot's RAM: %w", errKeepStopped, err)
		}
		if r.Digest != s.RAMDigest {
			return fmt.Errorf("%w: the snapshot's RAM changed while it was restored", errKeepStopped)
		}
		res.RAMPages = r.Pages
		pt.mark("write the snapshot's RAM")
		// The gate's page and the entries linked on it are this RAM's
		// no more: the traps set on the new QEMU are planned on the
		// snapshot's page, which this RAM holds, or without a page
		// (rearm), and then a new page is allocated once the guest runs.
		m.kg.snapPage.Store(s.GatePage)
		m.kg.dropPage.Store(true)
		if err := loadDevices(ctx, next, devs); err != nil {
			return fmt.Errorf("%w: %w", errKeepStopped, err)
		}
		pt.mark("load the device state (new QEMU)")
		if err := m.switchTo(ctx, old, next, nic, pt); err != nil {
			return fmt.Errorf("%w: %w", errKeepStopped, err)
		}
		switched = true
		return nil
	})
	res.DowntimeSeconds = time.Since(stopped).Seconds()
	res.TotalSeconds = time.Since(start).Seconds()
	if pt != nil {
		pt.mark("resume the guest")
		res.Phases = pt.list
	}
	if !switched {
		next.discard(nic)
	}
	if err != nil {
		if clobbered {
			m.recordLifecycleOutcome(ctx, "vm.rollback", fmt.Sprintf("rollback to %s failed after the guest's RAM was replaced; the VM is stopped and ended: %v", tag, err))
			m.failClosed(fmt.Errorf("rollback to snapshot %s: %w", tag, err))
			return res, fmt.Errorf("rollback to snapshot %s failed after the guest's RAM was replaced, so the VM was ended (fail closed): %w", tag, err)
		}
		m.recordLifecycleOutcome(ctx, "vm.rollback", fmt.Sprintf("rollback to %s failed before anything changed: %v", tag, err))
		return res, fmt.Errorf("rollback to snapshot %s: %w (the guest runs on unchanged)", tag, err)
	}
	res.NewQEMUPID = next.proc.Pid()
	if m.kg.dropPage.Swap(false) {
		m.kg.pageTried.Store(false)
		m.wantGatePage()
	}
	m.rs.restarts++
	m.rs.last = time.Now()
	// What the monitor knows of the guest stays valid: the kernel is where
	// it was (checked), introspection reads guest memory afresh, and a
	// process the operator froze is stopped again by the freezer's watch
	// if the snapshot has it running.
	msg := fmt.Sprintf("rolled back to snapshot %s (taken %s): %d RAM pages restored, guest paused %.1f ms", tag, s.Created.Format(time.RFC3339), res.RAMPages, res.DowntimeSeconds*1000)
	m.recordLifecycleOutcome(ctx, "vm.rollback", msg)
	m.publishNotice(monitoring.LifecycleNotice, msg)
	m.logf("%s", msg)
	return res, nil
}

// ReadySnapshot is the tag of the snapshot run --snapshot-ready takes.
const ReadySnapshot = "ready"

// snapshotWhenReady takes snapshot ReadySnapshot once the guest is ready
// and its gates are armed, replacing one of an earlier run.
func (m *Monitor) snapshotWhenReady() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-m.stopping():
		case <-m.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	if err := m.WaitReady(ctx); err != nil {
		return
	}
	for m.kg.booting.Load() {
		if !waitFor(m, time.After(20*time.Millisecond)) {
			return
		}
	}
	if dir, err := m.snapshotDir(); err == nil {
		if _, err := os.Lstat(filepath.Join(dir, ReadySnapshot)); err == nil {
			if err := m.RemoveSnapshot(ctx, ReadySnapshot); err != nil {
				m.logf("--snapshot-ready: remove the older snapshot: %v", err)
				return
			}
		}
	}
	if _, err := m.Snapshot(ctx, ReadySnapshot); err != nil {
		m.logf("--snapshot-ready: %v", err)
		m.publishNotice(monitoring.LifecycleNotice, "snapshot ready not taken: "+err.Error())
		// A policy that rolls back to it states a response nothing could
		// carry out: fail closed rather than run on without it.
		if snap := m.pol.snap.Load(); snap != nil && ctx.Err() == nil {
			for _, r := range snap.Policy.Responses() {
				if r.Action == policy.RespRollback {
					m.failClosed(fmt.Errorf("--snapshot-ready: response %s rolls back to snapshot %q, which could not be taken: %w", r.Name, ReadySnapshot, err))
					return
				}
			}
		}
	}
}

// newBootID names this run of the VM (snapshots record it).
func newBootID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
