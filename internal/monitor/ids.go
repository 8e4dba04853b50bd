package monitor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Memory sources for IDS queries.
const (
	SourceRAM     = "ram"     // the live shared mapping; the guest keeps running
	SourceGDBStub = "gdbstub" // physical reads through the gdbstub; the guest pauses for the query
)

// liveMemory serves guest RAM from the shared mapping as a vmi source.
type liveMemory struct{ ram *qemu.GuestRAM }

func (l liveMemory) ReadAt(p []byte, gpa int64) (int, error) { return l.ram.ReadAt(p, gpa) }

func (l liveMemory) Ranges() []vmi.Range {
	regions := l.ram.Regions()
	out := make([]vmi.Range, len(regions))
	for i, r := range regions {
		out[i] = vmi.Range{Start: r.GPA, End: r.End()}
	}
	return out
}

// gdbMemory reads guest-physical memory through the gdbstub, for guests
// whose RAM is not mapped and to compare against the mapping. The caller
// holds the VM stopped.
type gdbMemory struct {
	ctx    context.Context
	gdb    *gdbrsp.Client
	ranges []vmi.Range
}

func (g gdbMemory) ReadAt(p []byte, gpa int64) (int, error) {
	if err := g.gdb.ReadMemory(g.ctx, uint64(gpa), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (g gdbMemory) Ranges() []vmi.Range { return g.ranges }

// introspection holds the located kernel, built on first use.
type introspection struct {
	mu   sync.Mutex // serializes queries: the translation cache is not concurrent
	insp *ids.Inspector
	err  error
	once bool
	// located is insp once it exists, for views of their own that must
	// not wait for mu (the network gate's attributor).
	located atomic.Pointer[ids.Inspector]
}

// inspector profiles and locates the guest kernel on first use. Profiling
// the image takes seconds the first time; the profile is cached per kernel
// build.
//
// Preconditions: m.intro.mu held.
func (m *Monitor) inspector(ctx context.Context) (*ids.Inspector, error) {
	in := &m.intro
	if in.once {
		return in.insp, in.err
	}
	prof, err := m.kernelProfile()
	if err != nil {
		return nil, fmt.Errorf("profile the guest kernel %s: %w", m.cfg.Kernel, err)
	}
	regs, err := m.controlRegisters(ctx)
	if err != nil {
		return nil, err
	}
	// The kernel's address space must outlive any process: the CR3 a vCPU
	// happens to run with belongs to some task whose page tables are freed
	// when it exits. Locate walks the kernel's own init_top_pgt when given
	// no CR3; CR4 still says 4- or 5-level paging.
	k, err := linux.Locate(liveMemory{m.ram}, prof, linux.Registers{CR4: regs.CR4, TTBR1: regs.TTBR1, TCR: regs.TCR})
	if err != nil {
		// Not cached: the kernel may not have set up its page tables yet.
		return nil, fmt.Errorf("locate the guest kernel: %w", err)
	}
	opts := ids.DefaultOptions()
	opts.GatePage = m.idsGatePage
	in.insp, in.err, in.once = ids.New(k, opts), nil, true
	in.insp.Guest = m.askGuest
	in.located.Store(in.insp)
	return in.insp, nil
}

// idsGatePage is the guest virtual address of the page holding the kernel
// gate's own LSM hook entries, which the IDS's lsm-hook check accepts (0:
// none). The IDS asks at every check, from its own goroutine: gatePage is
// an atomic load.
func (m *Monitor) idsGatePage() uint64 { return m.gatePage() }

// privateInspector returns a view of the located kernel of its own: its
// own translation cache, no guest agent, usable without m.intro.mu (which
// an IDS query holds for as long as it runs, its wait for the guest agent
// included). It waits for m.intro.mu only to locate the kernel the first
// time.
func (m *Monitor) privateInspector(ctx context.Context) (*ids.Inspector, error) {
	insp := m.intro.located.Load()
	if insp == nil {
		m.intro.mu.Lock()
		var err error
		insp, err = m.inspector(ctx)
		m.intro.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	k := *insp.K
	as := *k.AS
	as.Cache = vmi.NewTranslationCache()
	k.AS = &as
	return ids.New(&k, insp.Opts), nil
}

// askGuest runs a script in the guest through its agent, for the IDS's
// guest-view check: the guest's own account of itself, which a rootkit
// filters. Without a ready agent there is nothing to ask (ids.ErrNoGuest).
func (m *Monitor) askGuest(ctx context.Context, script string) ([]byte, error) {
	m.mu.Lock()
	ready := !m.readyAt.IsZero()
	m.mu.Unlock()
	exec := m.q().exec
	if !ready || exec == nil {
		return nil, fmt.Errorf("%w: the guest's gatevisor agent is not ready", ids.ErrNoGuest)
	}
	res, err := exec.Run(ctx, script, 15*time.Second)
	if err != nil {
		return nil, fmt.Errorf("guest agent: %w", err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("guest agent: the script exited %d: %.200q", res.ExitCode, res.Stderr)
	}
	return res.Stdout, nil
}

// controlRegisters reads CR3 and CR4 of vCPU 0.
func (m *Monitor) controlRegisters(ctx context.Context) (linux.Registers, error) {
	if m.isARM64() || m.isARMHF() {
		return m.armRegisters(ctx)
	}
	var regs linux.Registers
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := m.dbg.Do(ctx, func(ctx context.Context, g *gdbrsp.Client) error {
		if err := g.SetVCPU(ctx, 0); err != nil {
			return err
		}
		var err error
		if regs.CR3, err = g.ReadRegister(ctx, "cr3"); err != nil {
			return err
		}
		regs.CR4, err = g.ReadRegister(ctx, "cr4")
		return err
	})
	if err != nil {
		return regs, fmt.Errorf("read vCPU 0 control registers: %w", err)
	}
	return regs, nil
}

// IDS implements api.VM: it runs one introspection query.
func (m *Monitor) IDS(ctx context.Context, query, source string) (api.IDSResult, error) {
	if err := m.checkRunning(); err != nil {
		return api.IDSResult{}, err
	}
	if source == "" {
		source = SourceRAM
	}
	if source != SourceRAM && source != SourceGDBStub {
		return api.IDSResult{}, &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("source %q: use ram or gdbstub", source)}
	}
	m.intro.mu.Lock()
	defer m.intro.mu.Unlock()
	insp, err := m.inspector(ctx)
	if err != nil {
		return api.IDSResult{}, err
	}
	start := time.Now()
	var result any
	var incomplete string
	run := func(in *ids.Inspector) error {
		in.K.AS.Cache.Invalidate()
		var err error
		result, err = ids.Query(in, query)
		if ids.Partial(result, err) {
			incomplete, err = err.Error(), nil
		}
		return err
	}
	if source == SourceRAM {
		err = run(insp)
	} else {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		err = m.dbg.Do(qctx, func(qctx context.Context, g *gdbrsp.Client) error {
			if err := g.SetPhysicalMemoryMode(qctx, true); err != nil {
				return err
			}
			defer g.SetPhysicalMemoryMode(qctx, false)
			k := *insp.K
			mem := gdbMemory{ctx: qctx, gdb: g, ranges: liveMemory{m.ram}.Ranges()}
			k.Mem = mem
			as := *k.AS
			as.Mem = mem
			as.Cache = vmi.NewTranslationCache()
			k.AS = &as
			return run(ids.New(&k, insp.Opts))
		})
	}
	if err != nil {
		if errors.Is(err, ids.ErrUnknownQuery) {
			return api.IDSResult{}, &api.Error{Code: api.CodeNotFound, Message: err.Error()}
		}
		return api.IDSResult{}, fmt.Errorf("ids %s: %w", query, err)
	}
	raw, err := ids.EncodeResult(result)
	if err != nil {
		return api.IDSResult{}, err
	}
	res := api.IDSResult{Query: query, Source: source, ElapsedMicros: time.Since(start).Microseconds(), Result: raw, Incomplete: incomplete}
	if query == "ps" || query == "threads" {
		res.Frozen = m.frozenPIDs()
	}
	return res, nil
}

// Dump implements api.VM: it writes an ELF dump of guest memory to path.
func (m *Monitor) Dump(ctx context.Context, path string) (api.DumpResult, error) {
	if err := m.checkRunning(); err != nil {
		return api.DumpResult{}, err
	}
	start := time.Now()
	// The monitor creates the file for the caller, never QEMU from a
	// path: a new file, no symbolic link on the way, in a directory of the
	// caller's (unless the caller is the VM's owner or root), theirs.
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if c, ok := api.CallerFromContext(ctx); ok {
		uid, gid = c.UID, c.GID
	}
	f, err := safefile.CreateFor(path, uid, gid)
	if err != nil {
		return api.DumpResult{}, &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("dump: %v", err)}
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := m.q().qmp.DumpGuestMemoryToFile(ctx, f); err != nil {
		os.Remove(path)
		return api.DumpResult{}, fmt.Errorf("dump guest memory to %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return api.DumpResult{}, err
	}
	return api.DumpResult{Path: path, Size: fi.Size(), ElapsedMicros: time.Since(start).Microseconds()}, nil
}

// WritePhysical implements api.VM: it writes guest-physical memory through
// the live mapping.
func (m *Monitor) WritePhysical(_ context.Context, addr uint64, p []byte) error {
	if err := m.checkRunning(); err != nil {
		return err
	}
	if _, err := m.ram.WriteAt(p, int64(addr)); err != nil {
		if errors.Is(err, qemu.ErrNotRAM) {
			return &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("%v: see GET /v1/memory for the RAM layout", err)}
		}
		return err
	}
	return nil
}
