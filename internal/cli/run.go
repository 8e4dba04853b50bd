package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/gatevisor/gatevisor/internal/accel"
	"github.com/gatevisor/gatevisor/internal/api/apiserver"
	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/eventbus"
	"github.com/gatevisor/gatevisor/internal/fgterm"
	"github.com/gatevisor/gatevisor/internal/fleet"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/monitor"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/vmdir"
)

func init() { addSubcommand(newRunCmd) }

type runOptions struct {
	name, mem, accel           string
	cpus                       int
	kernel, initrd, appendArgs string
	kit                        string
	adds                       []string
	files                      []string
	filesPeer9P                string
	detach, detachedChild      bool
	// symbols is --symbols: a Volatility 3 ISF for a kernel without BTF.
	symbols                   string
	readyTimeout, stopTimeout time.Duration
	consoleLog, readyMarker   string
	idsInterval               time.Duration
	cpuHogThreshold           float64
	cpuHogWindow              time.Duration
	net, policy, auditLog     string
	auditMaxSize              string
	auditKeep                 int
	eventsMaxSize             string
	eventsKeep                int
	netNoGate                 bool
	fleet, fleetPolicy        bool
	snapshotReady             bool
	autoUpgrade               bool
	nats                      natsFlags
}

func newRunCmd() *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a guest under the gatevisor monitor",
		Long: `Run a guest in QEMU with the gatevisor monitor attached: QMP, the gdbstub,
a live mapping of guest RAM, the serial console and the local API.

Without --kernel it boots the default guest kit (Debian's kernel and busybox),
building it first if it is not cached. In the foreground the serial console is
on the terminal; Ctrl-C or SIGTERM shuts the guest down (ACPI power button,
then quit after --stop-timeout). With --detach it runs in the background and
returns once the guest is ready.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runVM(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", defaultVMName, "VM name (a-z 0-9 . _ -)")
	f.StringVar(&o.mem, "mem", "256M", "guest memory, e.g. 256M or 1G")
	f.IntVar(&o.cpus, "cpus", 1, "number of vCPUs")
	f.StringVar(&o.accel, "accel", "auto", "accelerator: auto (KVM only if calibrated fast), kvm or tcg")
	f.StringVar(&o.kernel, "kernel", "", "boot this bzImage instead of the default kit's kernel")
	f.StringVar(&o.symbols, "symbols", "", "the kernel's structure layouts, for a kernel without .BTF: a Volatility 3 symbol table (ISF .json or .json.xz, e.g. from dwarf2json) or a vmlinux with DWARF")
	f.StringVar(&o.kit, "kit", "", "boot this built kit ('gatevisor kit ls'; e.g. one of 'kit build --kernel-suite bookworm-backports') instead of the default kit")
	f.StringVar(&o.initrd, "initrd", "", "initramfs to use with --kernel")
	f.StringVar(&o.appendArgs, "append", "", "kernel command line (default: the kit's)")
	f.StringArrayVar(&o.files, "files", nil, "serve a host directory to the guest through the file gate as NAME=HOSTDIR[:GUESTPATH][,ro][,9p] (repeatable; mounted at /mnt/NAME by default over virtio-fs, or over 9P with ,9p; every access decided by the policy)")
	f.StringVar(&o.filesPeer9P, "files-peer-9p", "", "benchmarks only: export DIR with QEMU's own virtio-9p (tag peer), no gate")
	_ = f.MarkHidden("files-peer-9p")
	f.StringArrayVar(&o.adds, "add", nil, "add a host file or directory to the initramfs as HOST:GUEST (repeatable)")
	f.BoolVar(&o.detach, "detach", false, "run in the background; the console goes to a log file")
	f.DurationVar(&o.readyTimeout, "ready-timeout", 5*time.Minute, "with --detach, how long to wait for the guest to be ready")
	f.DurationVar(&o.stopTimeout, "stop-timeout", monitor.DefaultStopTimeout, "how long an ACPI shutdown may take before QEMU is told to quit")
	f.StringVar(&o.consoleLog, "console-log", "", "serial console log file (default: in the VM's state directory)")
	f.StringVar(&o.readyMarker, "ready-marker", monitor.ReadyMarker, "console line that means the guest is ready")
	f.DurationVar(&o.idsInterval, "ids-interval", 0, "scan the guest this often and emit IDS events (see 'gatevisor events'); 0 disables")
	f.Float64Var(&o.cpuHogThreshold, "cpu-hog-threshold", 0.9, "with --ids-interval, a cpu-hog finding for a process that uses this share of one CPU (0.9 = 90%; above 1 for several threads) for --cpu-hog-window; 0 disables")
	f.DurationVar(&o.cpuHogWindow, "cpu-hog-window", 10*time.Second, "how long a process must keep --cpu-hog-threshold of a CPU to be a cpu-hog")
	f.StringVar(&o.net, "net", "", "guest network: isolated[:NAME] (gatevisor's own virtual network, no route off the machine), user (NAT to the host's network; the host's 127.0.0.1 is 192.168.127.254), tap:IF[,ip=A.B.C.D/NN]... (an existing tap device; needs root; each ip= is a guest source address the gate lets out, up to 8; without one it is learned from DHCP); none by default; every mode goes through the network gate")
	f.StringVar(&o.policy, "policy", "", "security-server policy file for the gates (without one, every gated event is denied)")
	f.StringVar(&o.auditLog, "audit-log", "", "audit log file (default: audit.jsonl in the VM's state directory)")
	f.StringVar(&o.auditMaxSize, "audit-max-size", "64M", "rotate the audit log at this size (e.g. 64M, 1G)")
	f.IntVar(&o.auditKeep, "audit-keep", 5, "rotated audit log files to keep; older evidence is pruned, and the chain records it")
	f.StringVar(&o.eventsMaxSize, "events-max-size", "16M", "rotate the event log (events.jsonl) at this size (e.g. 16M, 1G); its files never hold more than this × (--events-keep + 1)")
	f.IntVar(&o.eventsKeep, "events-keep", eventbus.DefaultKeep, "rotated event log files to keep; older events are deleted")
	f.BoolVar(&o.netNoGate, "net-no-gate", false, "benchmarks only: connect the NIC to the network without the network gate")
	_ = f.MarkHidden("net-no-gate")
	f.BoolVar(&o.fleet, "fleet", false, "join the fleet (gatevisor serve's NATS, or --nats): publish the audit log, the events and the VM's state, from the log files, catching up after any outage (docs/fleet.md)")
	f.BoolVar(&o.autoUpgrade, "auto-upgrade", false, "replace the monitor with the guest running (gatevisor upgrade) whenever a new gatevisor binary is installed over this one")
	f.BoolVar(&o.snapshotReady, "snapshot-ready", false, "once the guest is ready and its gates armed, take snapshot \"ready\" (replacing an older one): a known-good state for 'gatevisor rollback NAME ready'")
	f.BoolVar(&o.fleetPolicy, "fleet-policy", false, "with --fleet, take policies pushed by 'gatevisor fleet policy push' (the VM's policy still decides each, as action policy.load of this monitor's user)")
	o.nats.add(f)
	f.BoolVar(&o.detachedChild, "detached-child", false, "internal: the background half of --detach")
	_ = f.MarkHidden("detached-child")
	return cmd
}

// guest is what resolveGuest picks.
type guest struct {
	kernel, initrd, appendArgs string
	// kitModules are the SHA-256s of the default kit's modules (none for a
	// user's own kernel and initrd).
	kitModules []string
}

// resolveGuest picks kernel, initrd and command line, building the default
// kit when no kernel is given. It returns a cleanup for temporary files.
func resolveGuest(ctx context.Context, o *runOptions) (g guest, cleanup func(), err error) {
	kernel, initrd, appendArgs, mods, cleanup, err := resolveGuestFiles(ctx, o)
	return guest{kernel, initrd, appendArgs, mods}, cleanup, err
}

func resolveGuestFiles(ctx context.Context, o *runOptions) (kernel, initrd, appendArgs string, mods []string, cleanup func(), err error) {
	cleanup = func() {}
	adds := make([]kit.FileSpec, 0, len(o.adds))
	for _, a := range o.adds {
		fs, err := kit.ParseFileSpec(a)
		if err != nil {
			return "", "", "", nil, cleanup, err
		}
		adds = append(adds, fs)
	}
	if o.kernel == "" {
		if o.initrd != "" {
			return "", "", "", nil, cleanup, errors.New("--initrd needs --kernel: pass both, or neither to use the default kit")
		}
		var progress io.Writer
		if !o.detachedChild {
			progress = os.Stderr
		}
		k, err := runKit(ctx, o, progress)
		if err != nil {
			return "", "", "", nil, cleanup, err
		}
		kernel, initrd, appendArgs = k.Kernel, k.Initrd, k.Append
		for _, m := range k.Manifest.Modules {
			mods = append(mods, m.SHA256)
		}
	} else {
		if err := kit.CheckBzImage(o.kernel); err != nil {
			return "", "", "", nil, cleanup, fmt.Errorf("--kernel %s: %w: pass an x86-64 bzImage, such as the default kit's: --kernel \"$(gatevisor kit show --kernel)\" --initrd \"$(gatevisor kit show --initrd)\" (or leave out --kernel to boot the kit)", o.kernel, err)
		}
		if o.initrd != "" {
			if _, err := os.Stat(o.initrd); err != nil {
				return "", "", "", nil, cleanup, fmt.Errorf("--initrd: %w", err)
			}
		}
		kernel, initrd, appendArgs = o.kernel, o.initrd, kit.DefaultAppend
	}
	if o.appendArgs != "" {
		appendArgs = o.appendArgs
	}
	if len(adds) > 0 {
		if initrd == "" {
			return "", "", "", nil, cleanup, errors.New("--add needs an initramfs: use the default kit or pass --initrd")
		}
		f, err := os.CreateTemp("", "gatevisor-initrd-*")
		if err != nil {
			return "", "", "", nil, cleanup, fmt.Errorf("--add: %w", err)
		}
		f.Close()
		cleanup = func() { os.Remove(f.Name()) }
		if err := kit.AppendFiles(initrd, adds, f.Name()); err != nil {
			cleanup()
			return "", "", "", nil, func() {}, err
		}
		initrd = f.Name()
	}
	kernel, _ = filepath.Abs(kernel)
	if initrd != "" {
		initrd, _ = filepath.Abs(initrd)
	}
	return kernel, initrd, appendArgs, mods, cleanup, nil
}

func runVM(ctx context.Context, o *runOptions) error {
	v, err := validateRun(o)
	if err != nil {
		return err
	}
	if o.policy != "" && !o.detachedChild {
		// Before anything starts: a policy that does not compile, or that
		// states a rule no gate of this VM enforces, starts nothing.
		if err := checkStartPolicy(ctx, o, v.net, v.files, v.kitSymbols); err != nil {
			return err
		}
	}
	if o.detach {
		return detach(ctx, o)
	}
	tuneMonitorGC()
	g, cleanup, err := resolveGuest(ctx, o)
	if err != nil {
		return err
	}
	defer cleanup()
	cfg, err := monitorConfig(o, v, g)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "gatevisor:", cfg.Accel.Reason)
	tuneMonitorProcs(cfg.CPUs)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	status := io.Writer(os.Stderr)
	if !o.detachedChild {
		// The console on this terminal: raw, restored on every way out
		// (the signals above end in an orderly return).
		t, err := fgterm.Open(int(os.Stdin.Fd()), os.Stdout, os.Stderr)
		if err != nil {
			return err
		}
		defer t.Restore()
		cfg.Console, cfg.Log, status = t.Console(), t.Status(), t.Status()
	}

	m, err := monitor.Start(ctx, cfg)
	if err != nil {
		return err
	}
	cleanup() // QEMU has loaded the initrd
	shutdown, err := serveAPI(m)
	if err != nil {
		m.Close()
		return err
	}
	defer shutdown()
	var beforeHandOff func(*monitor.Handover) error
	if o.fleet {
		leave, err := joinFleet(o, m, cfg)
		if err != nil {
			m.Close()
			return err
		}
		defer leave()
		beforeHandOff = fleetUpgrade(o, leave)
	}
	if err := m.Run(ctx); err != nil {
		return err
	}
	go stopOnSignals(m, sigs, o.stopTimeout, status)
	return waitOrUpgrade(m, shutdown, o.stopTimeout, beforeHandOff)
}

// waitOrUpgrade waits until the VM is over, or until an upgrade asks for
// this monitor to be replaced: it then stops serving the API (the upgrade
// request is answered first), runs beforeHandOff (nil: nothing; the fleet
// agent's part), hands the monitor off and execs the new
// binary in place (monitor-resume). If the hand-off or the exec fails,
// the guest, stopped for the upgrade, ends with this process.
func waitOrUpgrade(m *monitor.Monitor, shutdown func(), stopTimeout time.Duration, beforeHandOff func(*monitor.Handover) error) error {
	select {
	case <-m.Done():
		return m.Err()
	case h := <-m.UpgradeRequested():
		shutdown()
		h.StopTimeout = stopTimeout
		if beforeHandOff != nil {
			if err := beforeHandOff(h); err != nil {
				return fmt.Errorf("upgrade: %w (the VM ended)", err)
			}
		}
		fd, err := m.HandOff(h)
		if err != nil {
			return fmt.Errorf("upgrade: %w (the VM ended)", err)
		}
		err = syscall.Exec(h.Binary, []string{h.Binary, "monitor-resume", "--handover-fd", strconv.Itoa(fd)}, os.Environ())
		return fmt.Errorf("upgrade: exec %s: %w (the VM ended)", h.Binary, err)
	}
}

// runValues are run's flags, parsed and checked.
type runValues struct {
	memMiB    int
	mode      accel.Mode
	qemuBin   string
	auditMax  int64
	eventsMax int64
	net       monitor.NetOptions
	arch      string // the kit's architecture (--kit)
	files     []monitor.FileShare

	// kitSymbols is the kit's symbol table when run --kit names a kit
	// that has one (armhf) and --symbols is not given.
	kitSymbols string
}

// validateRun checks every flag of run before anything starts, each error
// naming the flag and the fix.
func validateRun(o *runOptions) (runValues, error) {
	var v runValues
	if err := vmdir.ValidateName(o.name); err != nil {
		return v, err
	}
	var err error
	if v.memMiB, err = parseMem(o.mem); err != nil {
		return v, err
	}
	if v.mode, err = accel.ParseMode(o.accel); err != nil {
		return v, fmt.Errorf("--accel: %w", err)
	}
	if o.kit != "" && o.kernel != "" {
		return v, errors.New("--kit and --kernel: pass one (--kit boots a built kit's kernel and initramfs)")
	}
	if o.kit != "" && o.kit != kit.DefaultName {
		// Early, before a policy check or a detached child: a name no
		// kit has is the user's to fix. The kit's architecture chooses
		// QEMU.
		k, err := kit.Find("", o.kit)
		if err != nil && !o.detachedChild {
			return v, fmt.Errorf("--kit: %w", err)
		}
		if err == nil {
			v.arch = k.Arch()
			if o.symbols == "" {
				v.kitSymbols = k.SymbolsPath() // a kernel without .BTF: the kit's own table
			}
		}
	}
	if o.cpus < 1 || o.cpus > qemu.MaxCPUs {
		return v, fmt.Errorf("--cpus %d is out of range: use 1 to %d", o.cpus, qemu.MaxCPUs)
	}
	if v.memMiB < qemu.MinMemMiB || v.memMiB > qemu.MaxMemMiB {
		return v, (&qemu.Config{MemMiB: v.memMiB, CPUs: 1, Accel: "tcg", Kernel: "-"}).Validate()
	}
	if v.qemuBin, err = qemu.FindBinaryFor(v.arch); err != nil {
		return v, err
	}
	if root, err := vmdir.Root(); err != nil {
		return v, err
	} else if e, err := vmdir.Lookup(root, o.name); err == nil && e.Live {
		return v, fmt.Errorf("%w: %q (monitor pid %d); stop it with 'gatevisor stop %s' or choose another --name", vmdir.ErrRunning, o.name, e.State.MonitorPID, o.name)
	}
	if o.nats.url != "" {
		o.fleet = true
	}
	if o.fleetPolicy && !o.fleet {
		return v, errors.New("--fleet-policy takes policies from the fleet: give --fleet too")
	}
	if o.fleet {
		// Where the fleet is must be known now; that it answers, not: the
		// monitor waits for it (and publishes its backlog then).
		if _, err := o.nats.conn("gatevisor " + o.name); err != nil {
			return v, fmt.Errorf("--fleet: %w", err)
		}
	}
	if o.cpuHogThreshold < 0 || o.cpuHogThreshold > float64(qemu.MaxCPUs) {
		return v, fmt.Errorf("--cpu-hog-threshold %g: give a share of one CPU from 0 (off) to %d, such as 0.9", o.cpuHogThreshold, qemu.MaxCPUs)
	}
	if o.cpuHogWindow < time.Second || o.cpuHogWindow > ids.MaxHogWindow {
		return v, fmt.Errorf("--cpu-hog-window %v: use 1s to %v", o.cpuHogWindow, ids.MaxHogWindow)
	}
	if err := qemu.CheckCmdline(o.appendArgs); err != nil {
		return v, fmt.Errorf("--append: %w", err)
	}
	for _, f := range []struct{ flag, path string }{{"--policy", o.policy}, {"--initrd", o.initrd}} {
		if f.path == "" || f.flag == "--initrd" && o.kernel == "" {
			continue
		}
		if err := safefile.CheckRegular(f.path); err != nil {
			return v, fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	switch {
	case o.stopTimeout <= 0:
		return v, fmt.Errorf("--stop-timeout %v: give a positive duration such as 30s (how long an ACPI shutdown may take)", o.stopTimeout)
	case o.readyTimeout <= 0:
		return v, fmt.Errorf("--ready-timeout %v: give a positive duration such as 5m", o.readyTimeout)
	case o.idsInterval < 0 || (o.idsInterval > 0 && o.idsInterval < 100*time.Millisecond):
		return v, fmt.Errorf("--ids-interval %v: use 0 (off) or at least 100ms", o.idsInterval)
	case o.auditKeep < 1 || o.auditKeep > audit.MaxKeep:
		return v, fmt.Errorf("--audit-keep %d: keep 1 to %d rotated files", o.auditKeep, audit.MaxKeep)
	}
	if v.auditMax, err = parseSize(o.auditMaxSize); err != nil || v.auditMax < 64<<10 {
		return v, fmt.Errorf("--audit-max-size %q: give a size of at least 64K, such as 64M or 1G", o.auditMaxSize)
	}
	if v.eventsMax, err = validateEventsRetention(o.eventsMaxSize, o.eventsKeep); err != nil {
		return v, err
	}
	if v.net, err = monitor.ParseNet(o.net); err != nil {
		return v, err
	}
	v.net.NoGate = o.netNoGate
	for _, a := range o.files {
		fs, err := monitor.ParseFileShare(a)
		if err != nil {
			return v, err
		}
		v.files = append(v.files, fs)
	}
	return v, nil
}

// validateEventsRetention checks --events-max-size and --events-keep and
// returns the size in bytes.
func validateEventsRetention(size string, keep int) (int64, error) {
	if keep < 1 || keep > eventbus.MaxKeep {
		return 0, fmt.Errorf("--events-keep %d: keep 1 to %d rotated files", keep, eventbus.MaxKeep)
	}
	n, err := parseSize(size)
	if err != nil || n < eventbus.MinMaxSize {
		return 0, fmt.Errorf("--events-max-size %q: give a size of at least %dK (an event's longest line), such as 16M or 1G", size, eventbus.MinMaxSize>>10)
	}
	return n, nil
}

// checkStartPolicy checks --policy against the gates the VM will have,
// building the default kit first when no --kernel is given.
// kitSymbols is the --kit's symbol table (armhf), used when --symbols is
// not given, as the monitor will.
func checkStartPolicy(ctx context.Context, o *runOptions, netOpts monitor.NetOptions, files []monitor.FileShare, kitSymbols string) error {
	kernel := o.kernel
	if kernel == "" {
		k, err := runKit(ctx, o, os.Stderr)
		if err != nil {
			return err
		}
		kernel = k.Kernel
	}
	symPath := o.symbols
	if symPath == "" {
		symPath = kitSymbols
	}
	prof, f, err := openSymbols(symPath)
	if err != nil {
		return err
	}
	if f != nil {
		defer f.Close()
	}
	return monitor.CheckStartPolicy(monitor.Config{PolicyFile: o.policy, Kernel: kernel, Profile: prof, Net: netOpts, IDSInterval: o.idsInterval, Files: files, SnapshotReady: o.snapshotReady})
}

// runKit returns the kit run boots: --kit's, which must be built, or the
// default kit, built when it is not.
func runKit(ctx context.Context, o *runOptions, progress io.Writer) (*kit.Kit, error) {
	if o.kit != "" && o.kit != kit.DefaultName {
		k, err := kit.Find("", o.kit)
		if err != nil {
			return nil, fmt.Errorf("--kit: %w", err)
		}
		return k, nil
	}
	return kit.EnsureDefault(ctx, kit.Options{Progress: progress})
}

// monitorConfig is the monitor's configuration for run's flags and guest.
func monitorConfig(o *runOptions, v runValues, g guest) (monitor.Config, error) {
	choice, err := chooseAccel(v.mode, v.arch)
	if err != nil {
		return monitor.Config{}, err
	}
	dir, err := stateDir(o.name)
	if err != nil {
		return monitor.Config{}, err
	}
	symPath := o.symbols
	if symPath == "" {
		symPath = v.kitSymbols
	}
	prof, symbols, err := openSymbols(symPath)
	if err != nil {
		return monitor.Config{}, err
	}
	cfg := monitor.Config{
		Name: o.name, MemMiB: v.memMiB, CPUs: o.cpus, Accel: choice, Kernel: g.kernel, Profile: prof, Symbols: symbols, Initrd: g.initrd, Append: g.appendArgs,
		QEMUBinary: v.qemuBin, ConsoleLog: o.consoleLog, Log: os.Stderr, ReadyMarker: o.readyMarker, NetHost: netHostSpawner(),
		IDSInterval: o.idsInterval, CPUHog: ids.HogDetector{Threshold: o.cpuHogThreshold, Window: o.cpuHogWindow}, EventsLog: filepath.Join(dir, "events.jsonl"), EventsMaxSize: v.eventsMax,
		EventsKeep: o.eventsKeep, Net: v.net, Files: v.files, FilesPeer9P: o.filesPeer9P,
		AuditLog: o.auditLog, AuditMaxSize: v.auditMax, AuditKeep: o.auditKeep, KitModules: g.kitModules, Arch: v.arch,
		SnapshotDir: filepath.Join(dir, "snapshots"), SnapshotReady: o.snapshotReady, AutoUpgrade: o.autoUpgrade,
	}
	if cfg.ConsoleLog == "" {
		cfg.ConsoleLog = filepath.Join(dir, "console.log")
	}
	if cfg.AuditLog == "" {
		cfg.AuditLog = filepath.Join(dir, "audit.jsonl")
	}
	if o.policy != "" {
		if cfg.PolicyFile, err = filepath.Abs(o.policy); err != nil {
			return monitor.Config{}, err
		}
	}
	if !o.detachedChild {
		cfg.Console = os.Stdout
		if term.IsTerminal(int(os.Stdin.Fd())) {
			cfg.ConsoleInput = os.Stdin
		}
	}
	return cfg, nil
}

// serveAPI serves m's API before its guest runs (the monitor knows no
// HTTP) and returns how to stop serving.
func serveAPI(m *monitor.Monitor) (shutdown func(), err error) {
	authorize, shared := m.APIAccess()
	srv := apiserver.New(m, apiserver.Options{Authorize: authorize, Shared: shared})
	if err := srv.Listen(m.APISocket()); err != nil {
		return nil, err
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
	}, nil
}

// stopOnSignals turns the first signal into an orderly stop and the next
// into a forced one.
func stopOnSignals(m *monitor.Monitor, sigs <-chan os.Signal, timeout time.Duration, status io.Writer) {
	n := 0
	for s := range sigs {
		n++
		if n == 1 {
			fmt.Fprintf(status, "gatevisor: %v: shutting the guest down (again to force)\n", s)
			m.RequestStop(timeout)
		} else {
			m.RequestStop(0)
		}
	}
}

// detach starts this command again in the background with --detached-child
// and waits until its guest is ready or it fails.
func detach(ctx context.Context, o *runOptions) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--detach: %w", err)
	}
	dir, err := stateDir(o.name)
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "monitor.log")
	logf, err := safefile.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("--detach: monitor log: %w", err)
	}
	defer logf.Close()
	var args []string
	for _, a := range os.Args[1:] {
		if a == "--detach" || a == "--detach=true" {
			continue
		}
		args = append(args, a)
	}
	args = append(args, "--detached-child")
	// Build the kit here so that its progress shows on this terminal.
	if o.kernel == "" {
		if _, err := runKit(ctx, o, os.Stderr); err != nil {
			return err
		}
	}
	cmd := exec.Command(self, args...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("--detach: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.After(o.readyTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			tail, _ := os.ReadFile(logPath)
			how := "with status 0"
			if err != nil {
				how = err.Error()
			}
			return fmt.Errorf("the background monitor exited (%s) before the guest was ready:\n%s", how, lastLines(string(tail), 10))
		case <-deadline:
			return fmt.Errorf("the guest was not ready within %v; it is still running: see 'gatevisor status %s' and its console log, or 'gatevisor stop %s'", o.readyTimeout, o.name, o.name)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		c, err := clientFor(o.name)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.Status(sctx)
		cancel()
		if err == nil && st.GuestReady {
			fmt.Printf("gatevisor: VM %s is ready after %.1fs (monitor pid %d, %s); console log %s; stop it with 'gatevisor stop %s'\n",
				o.name, st.BootSeconds, st.MonitorPID, st.Accel, st.ConsoleLog, o.name)
			// The child keeps running on its own.
			_ = cmd.Process.Release()
			return nil
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// parseSize parses a size in bytes such as 65536, 64K, 64M or 1G.
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for suf, m := range map[string]int64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30} {
		if v, ok := strings.CutSuffix(strings.TrimSuffix(t, "IB"), suf); ok {
			t, mult = v, m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("size %q: give a size such as 64M or 1G", s)
	}
	return n * mult, nil
}

// joinFleet starts publishing m's logs and state to the fleet, and
// returns how to stop (after a last state). The fleet never holds up the
// VM: the agent reads the files the gates have written.
func joinFleet(o *runOptions, m *monitor.Monitor, cfg monitor.Config) (leave func(), err error) {
	c, err := o.nats.conn("gatevisor " + o.name)
	if err != nil {
		return nil, fmt.Errorf("--fleet: %w", err)
	}
	nc, err := c.Connect()
	if err != nil {
		return nil, err
	}
	dir, err := stateDir(o.name)
	if err != nil {
		nc.Close()
		return nil, err
	}
	authorize, _ := m.APIAccess()
	a := &fleet.Agent{
		Host: fleet.Hostname(), VM: o.name, AuditLog: cfg.AuditLog, EventsLog: cfg.EventsLog,
		Cursor: filepath.Join(dir, "fleet.cursor"), Member: m, AcceptPolicy: o.fleetPolicy, Authorize: authorize,
		Logf: func(format string, args ...any) { fmt.Fprintf(cfg.Log, "gatevisor: "+format+"\n", args...) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx, nc); err != nil {
			fmt.Fprintf(cfg.Log, "gatevisor: the fleet: %v (the VM runs on; nothing is published)\n", err)
		}
	}()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		nc.Close()
	}, nil
}
