// Package ids is gatevisor's introspection IDS: from a guest's physical
// memory (the live VM or a dump) and its kernel profile it answers banner,
// syscalls, processes, modules and sockets, runs every integrity check in
// one report, and diffs snapshots into events for continuous monitoring.
//
// The kernel objects themselves are read by internal/vmi/linux; this package
// decides what is suspicious and how reports look. All of it is pure over a
// memory source: the same code serves the live VM (in the monitor) and dumps
// (in the CLI), so their results can be compared.
package ids

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Options tune the checks to a guest.
type Options struct {
	// MultiCall lists executables that run under many names (comm differs
	// from the executable's name by design), such as busybox, and script
	// interpreters, whose processes carry the script's name.
	MultiCall []string
	// SetUID lists executables allowed to run with effective uid 0 for a
	// non-root user.
	SetUID []string
	// GatePage returns the guest virtual address of the page holding the
	// kernel gate's own LSM hook entries (0: none), asked at each check:
	// the lsm-hook check accepts an entry there that calls the kernel's
	// bpf_lsm_<hook> no-op, and nothing else there. Nil (a dump, which
	// does not record the page): the check recognises the pages that
	// name themselves the gate's, and holds their entries to the same
	// rule (selfNamedGatePages).
	GatePage func() uint64
}

// DefaultOptions suit a busybox-based device and common Linux userlands.
func DefaultOptions() Options {
	return Options{
		MultiCall: []string{"busybox", "toybox", "sh", "ash", "bash", "dash", "python3", "perl"},
		SetUID:    []string{"su", "sudo", "passwd", "login", "mount", "umount", "ping", "newgrp", "chsh", "chfn", "gpasswd"},
	}
}

// Inspector answers IDS queries about one located kernel.
type Inspector struct {
	K    *linux.Kernel
	Opts Options
	// Guest asks the running guest's userland (nil for a memory dump):
	// the guest-view check compares its answers with the kernel's.
	Guest GuestRunner
	// creds remembers processes' credentials across checks.
	creds credHistory
	// code remembers the live code the code checks found clean.
	code linux.CodeMemo
	// guestView is the last guest-view check, for scans between its turns.
	guestView guestViewState
}

// New returns an inspector for k.
func New(k *linux.Kernel, opts Options) *Inspector { return &Inspector{K: k, Opts: opts} }

// Open profiles and locates the kernel in mem. kernelImage may be "", in
// which case the profile cache is searched by the banner found in mem.
func Open(mem vmi.PhysicalMemory, regs linux.Registers, kernelImage string, opts Options) (*Inspector, error) {
	prof, err := LoadProfile(mem, kernelImage)
	if err != nil {
		return nil, err
	}
	k, err := linux.Locate(mem, prof, regs)
	if err != nil {
		return nil, err
	}
	return New(k, opts), nil
}

// LoadKernelProfile returns the profile of a kernel image with the image
// facts the syscall checks need attached; both are cached per build.
func LoadKernelProfile(kernelImage string) (*linux.Profile, error) {
	return LoadKernelProfileWith(kernelImage, linux.ProfileOptions{})
}

// ErrNeedSymbols means the kernel image has no .BTF and no symbol table
// was given for its structure layouts.
var ErrNeedSymbols = errors.New("this kernel has no .BTF: give --symbols FILE.json (Volatility 3 ISF, e.g. from dwarf2json)")

// SymbolsOptions returns the profile options of a symbol table file
// (--symbols: a Volatility 3 ISF, .json or .json.xz, or a vmlinux with
// DWARF; "" for none), and
// with ignoreBTF the image's BTF ignored (to check a table against it).
func SymbolsOptions(symbols string, ignoreBTF bool) (linux.ProfileOptions, error) {
	opts := linux.ProfileOptions{IgnoreBTF: ignoreBTF}
	if symbols == "" {
		return opts, nil
	}
	isf, err := linux.LoadSymbols(symbols)
	if err != nil {
		return opts, fmt.Errorf("--symbols: %w", err)
	}
	opts.Symbols = isf
	return opts, nil
}

// LoadKernelProfileWith is LoadKernelProfile with the structure layouts
// of a kernel without .BTF from opts.Symbols (see linux.ProfileOptions).
func LoadKernelProfileWith(kernelImage string, opts linux.ProfileOptions) (*linux.Profile, error) {
	p, err := linux.LoadProfileWith(kernelImage, "", opts)
	if errors.Is(err, linux.ErrNoBTF) && opts.Symbols == nil {
		return nil, fmt.Errorf("%s: %w", kernelImage, ErrNeedSymbols)
	}
	if err != nil {
		return nil, err
	}
	if err := p.LoadImage(kernelImage, ""); err != nil {
		return nil, err
	}
	return p, nil
}

// LoadProfile returns the profile for the kernel in mem: from kernelImage
// when given (cached by the image's hash), else from the profile cache by a
// banner found in mem.
func LoadProfile(mem vmi.PhysicalMemory, kernelImage string) (*linux.Profile, error) {
	if kernelImage != "" {
		return LoadKernelProfile(kernelImage)
	}
	banners := FindBanners(mem, maxBanners)
	if len(banners) == 0 {
		return nil, errNoBanner
	}
	dir, err := linux.ProfileCacheDir()
	if err != nil {
		return nil, err
	}
	for _, b := range banners {
		if p, err := linux.LoadCachedProfile(dir, linux.BannerKey(b.Text)); err == nil {
			// Without cached image facts only the syscall checks are
			// unavailable; they say so when asked.
			_ = p.LoadImage("", "")
			return p, nil
		}
	}
	return nil, fmt.Errorf("no cached profile for %q: pass the guest's kernel image with --kernel (a bzImage or vmlinux); it is profiled once and cached", strings.TrimSpace(banners[0].Text))
}

// maxBannerLen bounds the banner read from memory; maxBanners the number of
// banner-like strings collected (memory holds copies and templates).
const (
	maxBannerLen = 512
	maxBanners   = 32
)

var errNoBanner = errors.New("no Linux banner in guest memory: is this a Linux guest's RAM?")

// Banner is a banner-like string found in physical memory.
type Banner struct {
	Text string
	Phys uint64
}

// FindBanner returns the first banner in physical memory.
func FindBanner(mem vmi.PhysicalMemory) (string, uint64, error) {
	b := FindBanners(mem, 1)
	if len(b) == 0 {
		return "", 0, errNoBanner
	}
	return b[0].Text, b[0].Phys, nil
}

// FindBanners scans physical memory for strings that look like the kernel's
// banner ("Linux version ... (...) ...\n", printable) and returns up to max
// distinct ones in address order. Memory holds several: the live
// linux_banner, copies in the page cache or a decompressor, log lines.
func FindBanners(mem vmi.PhysicalMemory, max int) []Banner {
	marker := []byte("Linux version ")
	const chunk = 4 << 20
	buf := make([]byte, chunk+maxBannerLen)
	seen := map[string]bool{}
	var out []Banner
	for _, r := range mem.Ranges() {
		for pa := r.Start; pa < r.End && len(out) < max; pa += chunk {
			n := min(uint64(len(buf)), r.End-pa)
			got, err := mem.ReadAt(buf[:n], int64(pa))
			if got <= 0 && err != nil {
				continue
			}
			b := buf[:got]
			for off := 0; len(out) < max; {
				i := bytes.Index(b[off:], marker)
				if i < 0 || off+i >= chunk {
					break
				}
				start := off + i
				end := bytes.IndexByte(b[start:min(len(b), start+maxBannerLen)], '\n')
				if end > 0 {
					cand := b[start : start+end+1]
					if bytes.Contains(cand, []byte(" (")) && printable(cand[:len(cand)-1]) && !seen[string(cand)] {
						seen[string(cand)] = true
						out = append(out, Banner{Text: string(cand), Phys: pa + uint64(start)})
					}
				}
				off = start + 1
			}
		}
	}
	return out
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// BannerReport is the `ids banner` answer.
type BannerReport struct {
	Banner    string `json:"banner"`
	Release   string `json:"release"`
	BuildID   string `json:"build_id,omitempty"`
	Slide     uint64 `json:"kaslr_slide"`
	PhysBase  uint64 `json:"phys_base"`
	Verified  bool   `json:"verified"`
	CachedKey string `json:"profile_key"`
}

// Banner reads the banner through the kernel's page tables (so it is
// verified against the profile).
func (i *Inspector) Banner() (BannerReport, error) {
	b, err := i.K.Banner()
	if err != nil {
		return BannerReport{}, err
	}
	p := i.K.Profile
	return BannerReport{Banner: strings.TrimRight(b, "\n\x00"), Release: p.Release, BuildID: p.BuildID, Slide: i.K.Slide,
		PhysBase: i.K.PhysBase, Verified: b == p.Banner, CachedKey: linux.BannerKey(p.Banner)}, nil
}

// SyscallReport is the `ids syscalls` answer.
type SyscallReport struct {
	Entries  []linux.SyscallEntry    `json:"entries"`
	Dispatch []linux.DispatchFinding `json:"dispatch_findings"`
	// DispatchChecked says whether the kernel dispatches through code
	// (x64_sys_call, Linux 6.9+ and backports) that was checked too.
	DispatchChecked bool `json:"dispatch_checked"`
}

// Syscalls reads the syscall table and checks the dispatch code.
func (i *Inspector) Syscalls() (SyscallReport, error) {
	entries, err := i.K.SyscallTable()
	if err != nil {
		return SyscallReport{}, err
	}
	disp, err := i.K.CheckDispatch()
	if err != nil {
		return SyscallReport{}, err
	}
	_, hasDispatch := i.K.Addr("x64_sys_call")
	return SyscallReport{Entries: entries, Dispatch: nonNil(disp), DispatchChecked: hasDispatch == nil}, nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// Processes lists processes (thread-group leaders) sorted by pid. When the
// task list has entries that do not validate, the rest is returned with an
// error that wraps linux.ErrIncomplete and names the bad objects
// (linux.BadObjects): one corrupted task does not blind the listing.
func (i *Inspector) Processes() ([]linux.Task, error) {
	t, err := i.K.Tasks()
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return nil, err
	}
	sort.Slice(t, func(a, b int) bool { return t[a].PID < t[b].PID })
	return nonNil(t), err
}

// Modules lists loaded kernel modules by name; an incomplete module list
// is returned as Processes returns an incomplete task list.
func (i *Inspector) Modules() ([]linux.Module, error) {
	m, err := i.K.Modules()
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return nil, err
	}
	sort.Slice(m, func(a, b int) bool { return m[a].Name < m[b].Name })
	return nonNil(m), err
}

// ModuleEntry is one row of `ids modules`: a module any view shows, with
// the views that show it; Hidden when the module list does not.
type ModuleEntry struct {
	linux.Module
	Views  []string `json:"views"`
	Hidden bool     `json:"hidden"`
}

// ModuleListing lists every module the module list, sysfs or a scan of the
// module area shows, by name, hidden ones flagged. A view that could not
// be read makes the listing incomplete (an error wrapping
// linux.ErrIncomplete, with the rows that were read).
func (i *Inspector) ModuleListing() ([]ModuleEntry, error) {
	mm := i.K.ModuleMap()
	out := []ModuleEntry{}
	for _, s := range mm.Spans() {
		out = append(out, ModuleEntry{Module: s.Module, Views: s.Views, Hidden: s.Hidden()})
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Name != out[b].Name {
			return out[a].Name < out[b].Name
		}
		return out[a].Addr < out[b].Addr
	})
	if len(mm.Errs) > 0 {
		return out, fmt.Errorf("%w: %w", linux.ErrIncomplete, errors.Join(mm.Errs...))
	}
	return out, nil
}

// Sockets lists sockets owned by processes: those of every task that could
// be read, with an error wrapping linux.ErrIncomplete when some could not.
func (i *Inspector) Sockets() ([]linux.Socket, error) {
	tasks, terr := i.K.Tasks()
	if terr != nil && !errors.Is(terr, linux.ErrIncomplete) {
		return nil, terr
	}
	s, err := i.K.Sockets(tasks)
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return nil, err
	}
	sort.Slice(s, func(a, b int) bool {
		if s[a].PID != s[b].PID {
			return s[a].PID < s[b].PID
		}
		if s[a].LocalPort != s[b].LocalPort {
			return s[a].LocalPort < s[b].LocalPort
		}
		return s[a].FD < s[b].FD
	})
	return nonNil(s), errors.Join(terr, err)
}

// baseName is the last element of an executable path.
func baseName(p string) string { return filepath.Base(strings.TrimSuffix(p, " (deleted)")) }

// Queries lists the answers Query gives.
var Queries = []string{"banner", "syscalls", "ps", "threads", "args", "env", "files", "modules", "sockets", "hooks", "check"}

// ErrUnknownQuery is returned by Query for a name not in Queries.
var ErrUnknownQuery = errors.New("unknown IDS query: use banner, syscalls, ps, threads, args, env, files, modules, sockets, hooks or check")

// Query answers one named query; the result is JSON-encodable and is the
// same for a live VM and a dump. A listing that could read only part of
// what the kernel holds returns that part and an error wrapping
// linux.ErrIncomplete (see Partial): its rows are true, and the error says
// what is missing.
func Query(in *Inspector, query string) (any, error) {
	if err := in.notOnThisArch(query); err != nil {
		return nil, err
	}
	switch query {
	case "banner":
		return in.Banner()
	case "syscalls":
		return in.Syscalls()
	case "ps":
		return in.Processes()
	case "modules":
		return in.ModuleListing()
	case "sockets":
		return in.Sockets()
	case "hooks":
		return in.Hooks()
	case "check":
		return in.Check(), nil
	}
	if res, ok, err := detailQuery(in, query); ok {
		return res, err
	}
	return nil, fmt.Errorf("%w (got %q)", ErrUnknownQuery, query)
}

// Partial reports whether Query's answer (result, err) is a partial one:
// rows worth printing and an error naming what is missing.
func Partial(result any, err error) bool {
	return result != nil && errors.Is(err, linux.ErrIncomplete)
}
