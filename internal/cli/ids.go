package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/termtext"
	"github.com/gatevisor/gatevisor/internal/vmi"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

func init() { addSubcommand(newIDSCmd) }

// idsTarget is where `ids` reads from: a running VM or a memory dump.
type idsTarget struct {
	vm, dump, kernel, source string
	// symbols is --symbols: a Volatility 3 ISF for a kernel without BTF.
	symbols string
	asJSON  bool
	detail  detailOpts
	frozen  []int // processes the VM's monitor keeps stopped
	served  bool  // files --served: only the file gate's shares (idsfiles.go)
	// addresses is syscalls --addresses: the seed's format (ids_seed.go).
	addresses bool
	// gatePage is --gate-page: with --dump, the kernel gate's own page
	// ("" for none), whose LSM hook entries lsm-hook accepts.
	gatePage string
}

// joinInts is "1, 2, 3".
func joinInts(ns []int) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ", ")
}

func newIDSCmd() *cobra.Command {
	t := &idsTarget{}
	cmd := &cobra.Command{
		Use:   "ids",
		Short: "Introspect a guest kernel from outside: live (--vm NAME) or from a dump (--dump FILE)",
		Long: `Read the guest kernel's own structures from outside the guest, with no
agent and no debug package: the kernel's symbols come from kallsyms and its
structure layouts from .BTF, both read from the kernel image, and KASLR is
located from the live state. A kernel without .BTF is read with its
layouts from a Volatility 3 symbol table or a vmlinux with DWARF:
--symbols FILE.json[.xz] or --symbols vmlinux (with --dump; for a live
VM, give it to run). The same code reads a running VM's memory
(--vm NAME) and a memory dump (--dump FILE: an ELF dump from 'gatevisor dump'
or QEMU's dump-guest-memory, or a raw image of RAM from address 0).`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&t.vm, "vm", "", "name of a running VM")
	pf.StringVar(&t.dump, "dump", "", "memory dump file (ELF or raw)")
	pf.StringVar(&t.kernel, "kernel", "", "with --dump: the guest's kernel image (default: the profile cache, then the default kit's kernel)")
	pf.StringVar(&t.gatePage, "gate-page", "", "with --dump: the kernel gate's own page (the address 'gatevisor status' showed as its own page): its LSM hook entries are the gate's, not foreign, and no other page's are (without it, the pages that name themselves the gate's are taken as its; either way a gate entry passes only when it calls its hook's kernel no-op)")
	pf.StringVar(&t.symbols, "symbols", "", "with --dump: the kernel's structure layouts as a Volatility 3 symbol table (ISF .json or .json.xz, e.g. from dwarf2json), for a kernel without .BTF")
	pf.StringVar(&t.source, "source", "", "with --vm: read memory from ram (default; the guest keeps running) or gdbstub (the guest pauses)")
	pf.BoolVar(&t.asJSON, "json", false, "print JSON")
	for _, sub := range []struct{ use, short string }{
		{"banner", "The kernel's version banner, verified through its page tables, and the KASLR offsets"},
		{"syscalls", "Every syscall table entry, its handler and symbol; hooks flagged and traced to their module (exit 1); dispatch code checked"},
		{"ps", "Processes: pid, ppid, uid, gid, state, threads, CPU time, VSZ, RSS, start time, comm, executable; --args, --env, --threads"},
		{"threads", "Every thread: tid, tgid, state, the CPU it last ran on, CPU time, name"},
		{"files", "File descriptors of every process (--pid N: of one): number, type, mode, what each points to"},
		{"pstree", "Processes as a tree"},
		{"modules", "Kernel modules from the module list, sysfs and a scan of the module area; hidden ones flagged (exit 1)"},
		{"sockets", "Sockets of every process: protocol, addresses, state, owner"},
		{"hooks", "ftrace and kprobe registrations and LSM hook entries, and the code they run; foreign (module) callbacks flagged (exit 1)"},
		{"check", "Every integrity check in one report; exit 1 on findings, 2 if a check could not run"},
	} {
		name := sub.use
		cmd.AddCommand(&cobra.Command{
			Use:   name,
			Short: sub.short,
			Args:  cobra.NoArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return runIDS(cmd.Context(), t, name) },
		})
	}
	t.detail.addFlags(cmd)
	pf.BoolVar(&t.served, "served", false, "with files and --vm: only the files the monitor serves (run --files), who holds them open")
	pf.BoolVar(&t.addresses, "addresses", false, "with syscalls: one line per entry, the handler's address and name, as the source paper's ids syscall printed them (c001b10c sys_exit)")
	return cmd
}

func runIDS(ctx context.Context, t *idsTarget, query string) error {
	if (t.vm == "") == (t.dump == "") {
		return errors.New("name exactly one target: --vm NAME or --dump FILE")
	}
	if t.served {
		return runServedFiles(ctx, t, query)
	}
	query, err := t.detail.query(query)
	if err != nil {
		return err
	}
	q := query
	if q == "pstree" {
		q = "ps"
	}
	raw, incomplete, err := t.fetch(ctx, q)
	if err != nil {
		return err
	}
	if raw, err = t.detail.filter(query, raw); err != nil {
		return err
	}
	var code int
	if t.asJSON && query != "pstree" {
		if err := printIDSJSON(os.Stdout, raw); err != nil {
			return err
		}
		code = findingsExit(query, raw)
	} else {
		printer := printIDS
		if t.addresses && query == "syscalls" {
			printer = printSyscallAddresses
		}
		err := printer(os.Stdout, query, raw)
		if ec := exitCodeOf(err); ec != 0 {
			code, err = ec, nil
		}
		if err != nil {
			return err
		}
		if len(t.frozen) > 0 && (query == "ps" || query == "pstree" || query == "threads") {
			fmt.Fprintf(os.Stdout, "frozen by gatevisor (stopped again whenever resumed, until 'gatevisor proc thaw'): %s\n", joinInts(t.frozen))
		}
	}
	if incomplete != "" {
		// Every row printed was read and validated; what could not be
		// read is said after them, and the listing does not pass for whole.
		fmt.Fprintf(os.Stderr, "gatevisor: ids %s is incomplete: %s\n", query, termtext.Escape(incomplete))
		code = 2
	}
	if code != 0 {
		return withExitCode(code, nil)
	}
	return nil
}

// findingsExit is the exit code of a JSON answer: 1 when it reports a
// finding (a hooked syscall, a hidden module, a check's finding), 2 when
// a check could not run, else 0.
func findingsExit(query string, raw json.RawMessage) int {
	var err error
	switch query {
	case "check":
		var r ids.Report
		if json.Unmarshal(raw, &r) == nil {
			err = checkExit(&r)
		}
	case "syscalls":
		var r ids.SyscallReport
		if json.Unmarshal(raw, &r) == nil {
			err = syscallsExit(&r)
		}
	case "hooks":
		var r ids.HooksReport
		if json.Unmarshal(raw, &r) == nil && hooksFlagged(&r) {
			err = withExitCode(1, nil)
		}
	case "modules":
		var ms []ids.ModuleEntry
		if json.Unmarshal(raw, &ms) == nil && slices.ContainsFunc(ms, func(m ids.ModuleEntry) bool { return m.Hidden }) {
			err = withExitCode(1, nil)
		}
	}
	return exitCodeOf(err)
}

// printIDSJSON writes the JSON answer raw indented. Numbers stay exact
// (kernel addresses do not fit a float64) and so do strings: the guest's
// names are not escaped, JSON's own quoting is all they get.
func printIDSJSON(w io.Writer, raw json.RawMessage) error {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// fetch returns the JSON answer to q from the target, and what a partial
// listing could not read ("" when it is whole).
func (t *idsTarget) fetch(ctx context.Context, q string) (json.RawMessage, string, error) {
	if t.vm != "" {
		if t.kernel != "" {
			return nil, "", errors.New("--kernel goes with --dump: a running VM's monitor knows its kernel")
		}
		if t.symbols != "" {
			return nil, "", errors.New("--symbols goes with --dump: a running VM's monitor has its kernel's (give --symbols to run)")
		}
		if t.gatePage != "" {
			return nil, "", errors.New("--gate-page goes with --dump: a running VM's monitor knows its gate's page")
		}
		c, err := clientFor(t.vm)
		if err != nil {
			return nil, "", err
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		res, err := c.IDS(ctx, q, t.source)
		if err != nil {
			return nil, "", err
		}
		t.frozen = res.Frozen
		return res.Result, res.Incomplete, nil
	}
	if t.source != "" {
		return nil, "", errors.New("--source goes with --vm")
	}
	opts, err := profileOptions(t.symbols)
	if err != nil {
		return nil, "", err
	}
	var page uint64
	if t.gatePage != "" {
		if page, err = strconv.ParseUint(t.gatePage, 0, 64); err != nil || page == 0 || page%4096 != 0 {
			return nil, "", fmt.Errorf("--gate-page %q: a page's address (0xffff888003a5f000)", t.gatePage)
		}
	}
	insp, closeDump, err := openDump(t.dump, t.kernel, opts)
	if err != nil {
		return nil, "", err
	}
	defer closeDump()
	if page != 0 {
		insp.Opts.GatePage = func() uint64 { return page }
	}
	res, err := ids.Query(insp, q)
	incomplete := ""
	if ids.Partial(res, err) {
		incomplete, err = err.Error(), nil
	}
	if err != nil {
		return nil, "", err
	}
	raw, err := json.Marshal(res)
	return raw, incomplete, err
}

// openDump opens an ELF or raw memory dump and locates its kernel. Both
// files must be regular files: a FIFO, a device such as /dev/zero or a
// directory would block the open or the reads forever, or never end.
func openDump(path, kernel string, opts linux.ProfileOptions) (*ids.Inspector, func(), error) {
	if err := safefile.CheckRegular(path); err != nil {
		return nil, nil, fmt.Errorf("--dump: %w", err)
	}
	if kernel != "" {
		if err := safefile.CheckRegular(kernel); err != nil {
			return nil, nil, fmt.Errorf("--kernel: %w", err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--dump: %w", err)
	}
	var magic [4]byte
	_, _ = io.ReadFull(f, magic[:])
	f.Close()
	var (
		mem   vmi.PhysicalMemory
		regs  linux.Registers
		close func()
	)
	if string(magic[:]) == "\x7fELF" {
		d, err := vmi.OpenELFDump(path)
		if err != nil {
			return nil, nil, fmt.Errorf("--dump %s: %w", path, err)
		}
		if cpus := d.CPUs(); len(cpus) > 0 {
			regs = linux.Registers{CR3: cpus[0].CR3(), CR4: cpus[0].CR4()}
		}
		mem, close = d, func() { d.Close() }
	} else {
		r, err := vmi.OpenRaw(path, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("--dump %s: %w", path, err)
		}
		mem, close = r, func() { r.Close() }
	}
	prof, err := dumpProfile(mem, kernel, opts)
	if err != nil {
		close()
		return nil, nil, err
	}
	k, err := linux.Locate(mem, prof, regs)
	if err != nil {
		close()
		return nil, nil, fmt.Errorf("--dump %s: %w", path, err)
	}
	// A dump does not change: translations can be cached without re-checks.
	k.AS.Cache.Static = true
	return ids.New(k, ids.DefaultOptions()), close, nil
}

// ignoreBTFEnv, set to 1, profiles kernels as if their images had no
// .BTF, so that a symbol table (--symbols) is read instead: to check one
// against a kernel's own BTF (tests/integration does).
const ignoreBTFEnv = "GATEVISOR_IGNORE_BTF"

// profileOptions reads --symbols (a Volatility 3 ISF, "" for none) into
// the options kernel profiles are built with.
func profileOptions(symbols string) (linux.ProfileOptions, error) {
	if symbols != "" {
		if err := safefile.CheckRegular(symbols); err != nil {
			return linux.ProfileOptions{}, fmt.Errorf("--symbols: %w", err)
		}
	}
	return ids.SymbolsOptions(symbols, os.Getenv(ignoreBTFEnv) == "1")
}

// openSymbols is profileOptions for a monitor: the symbol table is read
// from a descriptor the monitor keeps (nil without --symbols), so that an
// upgrade hands the very file over.
func openSymbols(symbols string) (linux.ProfileOptions, *os.File, error) {
	if symbols == "" {
		opts, err := profileOptions("")
		return opts, nil, err
	}
	if err := safefile.CheckRegular(symbols); err != nil {
		return linux.ProfileOptions{}, nil, fmt.Errorf("--symbols: %w", err)
	}
	f, err := os.Open(symbols)
	if err != nil {
		return linux.ProfileOptions{}, nil, fmt.Errorf("--symbols: %w", err)
	}
	opts, err := symbolsFromFD(f)
	if err != nil {
		f.Close()
		return opts, nil, err
	}
	return opts, f, nil
}

// symbolsFromFD reads the symbol table open at f.
func symbolsFromFD(f *os.File) (linux.ProfileOptions, error) {
	return ids.SymbolsOptions(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.Getenv(ignoreBTFEnv) == "1")
}

// dumpProfile finds the profile for the kernel in mem: --kernel, else the
// cache by banner, else the default kit's kernel if its banner matches.
// A profile from a symbol table (--symbols) is not cached: it needs the
// image (--kernel, or the default kit's) for kallsyms.
func dumpProfile(mem vmi.PhysicalMemory, kernel string, opts linux.ProfileOptions) (*linux.Profile, error) {
	if kernel != "" {
		return ids.LoadKernelProfileWith(kernel, opts)
	}
	p, err := ids.LoadProfile(mem, "")
	if err == nil && opts.Symbols == nil && !opts.IgnoreBTF {
		return p, nil
	}
	if err == nil {
		err = errors.New("--symbols needs the kernel image too (--kernel): kallsyms are read from it")
	}
	banners := ids.FindBanners(mem, 32)
	if dir, derr := kit.CacheDir(); derr == nil {
		if k, kerr := kit.Load(filepath.Join(dir, "kit")); kerr == nil {
			if kp, perr := ids.LoadKernelProfileWith(k.Kernel, opts); perr == nil {
				for _, b := range banners {
					if strings.TrimSpace(kp.Banner) == strings.TrimSpace(b.Text) {
						return kp, nil
					}
				}
			}
		}
	}
	return nil, err
}

func checkExit(r *ids.Report) error {
	switch {
	case !r.Complete():
		return withExitCode(2, nil)
	case len(r.Findings) > 0:
		return withExitCode(1, nil)
	}
	return nil
}

// printIDS writes the text form of the JSON answer raw to query. Every
// string that comes from the guest (names, paths, addresses, the banner, and
// the findings and errors built from them) is escaped with termtext.Escape,
// so that a guest-chosen name cannot forge a row or reach the terminal as a
// control sequence. The --json output is not escaped: JSON stays exact.
// idsPrinters print each query's answer as text, guest text escaped.
var idsPrinters = map[string]func(w io.Writer, raw json.RawMessage) error{
	"banner": printBanner, "syscalls": printSyscalls, "ps": printPS, "pstree": printPSTree,
	"modules": printModules, "sockets": printSockets, "hooks": printHooks, "check": printCheck,
	"threads": printThreads, "args": printArgs, "env": printArgs, "files": printFiles,
}

func printIDS(w io.Writer, query string, raw json.RawMessage) error {
	if p := idsPrinters[query]; p != nil {
		return p(w, raw)
	}
	return nil
}

func printBanner(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	b, tw, err := decodeTable[ids.BannerReport](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	fmt.Fprintf(tw, "%s\n", esc(b.Banner))
	fmt.Fprintf(tw, "release:\t%s\nbuild id:\t%s\nKASLR slide:\t%#x\nphysical base:\t%#x\nverified:\t%v\n", esc(b.Release), esc(b.BuildID), b.Slide, b.PhysBase, b.Verified)
	return nil
}

func printSyscalls(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	r, tw, err := decodeTable[ids.SyscallReport](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	fmt.Fprintln(tw, "NR\tHANDLER\tADDRESS\tPOINTS TO\tSTATUS")
	hooked := 0
	for _, e := range r.Entries {
		st := "ok"
		if e.Hooked {
			st = "HOOKED: " + e.Reason
			hooked++
		}
		fmt.Fprintf(tw, "%d\t%s\t%#x\t%s\t%s\n", e.Nr, esc(e.Name), e.Addr, esc(e.Symbol), esc(st))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d entries, %d hooked\n", len(r.Entries), hooked)
	if r.DispatchChecked {
		fmt.Fprintf(w, "dispatch code (x64_sys_call): %d findings\n", len(r.Dispatch))
	}
	for _, d := range r.Dispatch {
		fmt.Fprintf(w, "  %s at %#x -> %#x (%s): %s\n", esc(d.Function), d.Addr, d.Target, esc(d.TargetSymbol), esc(d.Reason))
	}
	return syscallsExit(&r)
}

// syscallsExit is 1 when the syscall report flags a hooked entry or a
// dispatch finding.
func syscallsExit(r *ids.SyscallReport) error {
	for _, e := range r.Entries {
		if e.Hooked {
			return withExitCode(1, nil)
		}
	}
	if len(r.Dispatch) > 0 {
		return withExitCode(1, nil)
	}
	return nil
}

func printPS(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	ts, tw, err := decodeTable[[]linux.Task](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	fmt.Fprintln(tw, "PID\tPPID\tUID\tGID\tSTATE\tTHR\tTIME\tVSZ\tRSS\tSTART\tCOMM\tEXE")
	for _, t := range ts {
		exe := esc(t.Exe)
		if t.KernelThread {
			exe = "[kernel]"
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%s\t%d\t%s\t%d\t%d\t%.2fs\t%s\t%s\n", t.PID, t.PPID, t.UID, t.GID, esc(t.State), t.Threads,
			cpuSeconds(t.GroupRuntime), t.VSZ>>10, t.RSS>>10, float64(t.StartTime)/1e9, esc(t.Comm), exe)
	}
	return nil
}

func printPSTree(w io.Writer, raw json.RawMessage) error {
	var ts []linux.Task
	if err := json.Unmarshal(raw, &ts); err != nil {
		return err
	}
	return ids.WriteTree(w, ts)
}

func printModules(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	ms, tw, err := decodeTable[[]ids.ModuleEntry](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	fmt.Fprintln(tw, "NAME\tBASE\tSIZE\tSTATE\tSEEN IN")
	hidden := 0
	for _, m := range ms {
		seen := esc(strings.Join(m.Views, ", "))
		if m.Hidden {
			seen = "HIDDEN: " + seen + "; missing from the module list"
			hidden++
		}
		fmt.Fprintf(tw, "%s\t%#x\t%d\t%s\t%s\n", esc(m.Name), m.Base, m.Size, esc(m.State), seen)
	}
	if hidden > 0 {
		return withExitCode(1, nil)
	}
	return nil
}

func printHooks(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	r, tw, err := decodeTable[ids.HooksReport](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	fmt.Fprintln(tw, "KIND\tADDRESS\tON\tRUNS\tSTATUS")
	for _, e := range append(r.Ftrace, r.Kprobes...) {
		st := "kernel"
		if e.Foreign {
			st = "FOREIGN: not the kernel's own code"
		}
		fmt.Fprintf(tw, "%s\t%#x\t%s\t%s\t%s\n", e.Kind, e.Addr, esc(e.On), esc(strings.Join(e.Runs, ", ")), st)
	}
	// The LSM hook entries, one per hook and LSM.
	for _, e := range r.LSM {
		st := "kernel"
		switch {
		case e.Foreign:
			st = "FOREIGN: " + e.Problem
		case e.Gate:
			st = "kernel gate"
		}
		fmt.Fprintf(tw, "lsm %s\t%#x\t%s\t%s\t%s\n", esc(e.LSM), e.Addr, esc(e.Hook), esc(e.Runs), esc(st))
	}
	tw.Flush()
	for _, b := range r.LSMBroken {
		fmt.Fprintf(w, "LSM hook %s: its list at %#x cannot be walked: %s\n", esc(b.Hook), b.List, esc(b.Reason))
	}
	if r.LSMNote != "" {
		fmt.Fprintf(w, "LSM hook entries: %s\n", esc(r.LSMNote))
	}
	if hooksFlagged(&r) {
		return withExitCode(1, nil)
	}
	return nil
}

// hooksFlagged reports whether an `ids hooks` answer flags something: a
// foreign callback or LSM entry, or an LSM hook list that could not be
// walked.
func hooksFlagged(r *ids.HooksReport) bool {
	foreign := func(e ids.HookEntry) bool { return e.Foreign }
	return slices.ContainsFunc(r.Ftrace, foreign) || slices.ContainsFunc(r.Kprobes, foreign) ||
		slices.ContainsFunc(r.LSM, func(e ids.LSMEntry) bool { return e.Foreign }) || len(r.LSMBroken) > 0
}

func printSockets(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	ss, tw, err := decodeTable[[]linux.Socket](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	fmt.Fprintln(tw, "PROTO\tLOCAL\tREMOTE\tSTATE\tPID\tFD\tCOMM")
	for _, s := range ss {
		local, remote := socketEnds(s)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", esc(s.Proto), esc(local), esc(remote), esc(s.State), s.PID, s.FD, esc(s.Comm))
	}
	return nil
}

func printCheck(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	r, tw, err := decodeTable[ids.Report](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	for _, c := range r.Checks {
		st := fmt.Sprintf("%d findings", c.Findings)
		switch {
		case c.NotApplicable != "":
			st = "not applicable: " + strings.TrimPrefix(c.NotApplicable, "not applicable: ")
		case !c.Ran:
			st = "DID NOT RUN: " + c.Error
		}
		fmt.Fprintf(tw, "%s\t%s\n", esc(c.Name), esc(st))
	}
	tw.Flush()
	for _, f := range r.Findings {
		fmt.Fprintf(w, "[%s] %s: %s\n", esc(f.Severity), esc(f.Check), esc(f.Summary))
	}
	na := 0
	for _, c := range r.Checks {
		if c.NotApplicable != "" {
			na++
		}
	}
	if r.Clean() && na > 0 {
		fmt.Fprintf(w, "clean: no findings in the checks that ran (%d of %d not applicable here)\n", na, len(r.Checks))
	} else if r.Clean() {
		fmt.Fprintln(w, "clean: no findings")
	}
	return checkExit(&r)
}

// socketEnds are a socket's local and remote addresses as text: ADDR:PORT
// for inet sockets, the path for unix ones.
func socketEnds(s linux.Socket) (local, remote string) {
	if s.Family == "unix" {
		return s.LocalAddr, s.RemoteAddr
	}
	return fmt.Sprintf("%s:%d", s.LocalAddr, s.LocalPort), fmt.Sprintf("%s:%d", s.RemoteAddr, s.RemotePort)
}

// detailOpts are the process-detail flags: ps --threads, --args, --env,
// and --pid on ps, threads and files.
type detailOpts struct {
	pid                int
	threads, args, env bool
}

func (o *detailOpts) addFlags(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		switch c.Name() {
		case "ps":
			c.Flags().BoolVar(&o.threads, "threads", false, "every thread, as ids threads")
			c.Flags().BoolVar(&o.args, "args", false, "each process's arguments, read from its memory (bounded: 4 KiB each)")
			c.Flags().BoolVar(&o.env, "env", false, "with the arguments, each process's environment (bounded: 16 KiB each)")
		case "threads", "files":
		default:
			continue
		}
		c.Flags().IntVar(&o.pid, "pid", 0, "only process PID (its threads, its descriptors)")
	}
}

// query is the API query a subcommand and its flags ask for.
func (o *detailOpts) query(sub string) (string, error) {
	if o.pid < 0 {
		return "", fmt.Errorf("--pid %d: a pid is positive", o.pid)
	}
	if sub != "ps" {
		return sub, nil
	}
	switch {
	case o.threads && (o.args || o.env):
		return "", errors.New("--threads lists threads; --args and --env list processes: use one")
	case o.threads:
		return "threads", nil
	case o.env:
		return "env", nil
	case o.args:
		return "args", nil
	}
	return sub, nil
}

// filter keeps the rows of process --pid in a process-detail answer
// (the API answers for every process; the filter is the same for a VM and
// a dump).
func (o *detailOpts) filter(query string, raw json.RawMessage) (json.RawMessage, error) {
	if o.pid == 0 {
		return raw, nil
	}
	switch query {
	case "ps", "threads":
		return keepRows(raw, func(t linux.Task) bool { return t.TGID == o.pid })
	case "args", "env":
		return keepRows(raw, func(a linux.ProcessArgs) bool { return a.PID == o.pid })
	case "files":
		return keepRows(raw, func(f linux.FD) bool { return f.PID == o.pid })
	}
	return raw, nil
}

// keepRows decodes raw as a list of T and encodes the rows keep accepts.
func keepRows[T any](raw json.RawMessage, keep func(T) bool) (json.RawMessage, error) {
	var rows []T
	if err := json.Unmarshal(raw, &rows); err != nil {
		return nil, err
	}
	out := make([]T, 0, len(rows))
	for _, r := range rows {
		if keep(r) {
			out = append(out, r)
		}
	}
	return json.Marshal(out)
}

// cpuSeconds formats nanoseconds of CPU time as seconds, to 1/100 s (the
// resolution of /proc and ps).
func cpuSeconds(ns uint64) string { return fmt.Sprintf("%.2fs", float64(ns)/1e9) }

func printThreads(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	ts, tw, err := decodeTable[[]linux.Task](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	// TIME is the scheduler's runtime (ps's TIME); UTIME and STIME the
	// kernel's sampled split (crash's ps -t).
	fmt.Fprintln(tw, "TID\tTGID\tSTATE\tCPU\tTIME\tUTIME\tSTIME\tCOMM")
	for _, t := range ts {
		cpu := "-"
		if t.CPU >= 0 {
			cpu = fmt.Sprint(t.CPU)
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", t.PID, t.TGID, esc(t.State), cpu, cpuSeconds(t.Runtime),
			cpuSeconds(t.UTime), cpuSeconds(t.STime), esc(t.Comm))
	}
	return nil
}

func printArgs(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	ps, tw, err := decodeTable[[]linux.ProcessArgs](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	withEnv := slices.ContainsFunc(ps, func(p linux.ProcessArgs) bool { return p.Env != nil })
	if withEnv {
		fmt.Fprintln(tw, "PID\tCOMM\tARGS\tENVIRONMENT")
	} else {
		fmt.Fprintln(tw, "PID\tCOMM\tARGS")
	}
	for _, p := range ps {
		args := "[" + esc(p.Comm) + "]" // a kernel thread, as ps shows it
		if !p.KernelThread {
			args = userStringsText(p.Args)
		}
		if !withEnv {
			fmt.Fprintf(tw, "%d\t%s\t%s\n", p.PID, esc(p.Comm), args)
			continue
		}
		env := ""
		if p.Env != nil && !p.KernelThread {
			env = userStringsText(*p.Env)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.PID, esc(p.Comm), args, env)
	}
	return nil
}

// userStringsText is strings read from a process's memory as one line:
// NULs as spaces, every guest byte escaped, and what could not be read
// said in brackets (never shown as empty).
func userStringsText(u linux.UserStrings) string {
	var b strings.Builder
	b.WriteString(termtext.Escape(strings.Join(u.Strings, " ")))
	note := func(s string) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("[" + s + "]")
	}
	if u.Truncated {
		note(fmt.Sprintf("truncated: %d bytes", u.Size))
	}
	if u.NotPresent > 0 {
		note(fmt.Sprintf("%d bytes not in memory: %s", u.NotPresent, termtext.Escape(u.NotPresentWhy)))
	}
	if u.Error != "" {
		note("unreadable: " + termtext.Escape(u.Error))
	}
	return b.String()
}

func printFiles(w io.Writer, raw json.RawMessage) error {
	esc := termtext.Escape
	fs, tw, err := decodeTable[[]linux.FD](w, raw)
	if err != nil {
		return err
	}
	defer tw.Flush()
	fmt.Fprintln(tw, "PID\tCOMM\tFD\tTYPE\tMODE\tTARGET")
	for _, f := range fs {
		target := esc(f.Target)
		if s := f.Socket; s != nil {
			local, remote := socketEnds(*s)
			target += " " + esc(s.Proto) + " " + esc(local)
			if s.State == "ESTABLISHED" || s.RemotePort != 0 || (s.Family == "unix" && s.RemoteAddr != "") {
				target += " -> " + esc(remote)
			}
			if s.State != "" {
				target += " " + esc(s.State)
			}
		}
		if f.Error != "" {
			target += " [unreadable: " + esc(f.Error) + "]"
		}
		mode := f.Mode
		if mode == "" {
			mode = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\n", f.PID, esc(f.Comm), f.FD, esc(f.Type), esc(mode), target)
	}
	return nil
}

// decodeTable decodes the JSON answer raw into a T and returns a table
// writer on w for printing it (the caller flushes it).
func decodeTable[T any](w io.Writer, raw json.RawMessage) (T, *tabwriter.Writer, error) {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, nil, err
	}
	return v, tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), nil
}
