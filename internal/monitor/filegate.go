package monitor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatevisor/gatevisor/internal/event"
	gatefile "github.com/gatevisor/gatevisor/internal/gate/file"
	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// FileShare is one directory the monitor serves to the guest (run
// --files NAME=HOSTDIR[:GUESTPATH][,ro][,9p]).
type FileShare struct {
	Name, HostDir, GuestPath string
	ReadOnly                 bool
	// Transport is how the guest reaches it: TransportVirtioFS (the
	// default) or Transport9P (",9p": a kit or QEMU without virtio-fs).
	Transport string `json:",omitempty"`
}

// The file gate's transports.
const (
	// TransportVirtioFS is FUSE over a vhost-user-fs-pci device whose
	// backend is the monitor (filevirtiofs.go).
	TransportVirtioFS = "virtiofs"
	// Transport9P is 9P2000.L over a virtio-serial port, relayed by the
	// guest through two FIFOs.
	Transport9P = "9p"
)

// FilePortPrefix is the prefix of a share's virtio-serial port name.
const FilePortPrefix = "org.gatevisor.files."

// guestPathPattern is what a share's guest path may be: it goes on the
// kernel command line and into the kit's mount script.
var guestPathPattern = regexp.MustCompile(`^(/[A-Za-z0-9._-]+)+$`)

// ParseFileShare parses a --files value.
func ParseFileShare(s string) (FileShare, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || rest == "" {
		return FileShare{}, fmt.Errorf("--files %q: use NAME=HOSTDIR[:GUESTPATH][,ro][,9p]", s)
	}
	if err := gatefile.ValidName(name); err != nil {
		return FileShare{}, fmt.Errorf("--files: %w", err)
	}
	fs := FileShare{Name: name, GuestPath: "/mnt/" + name, Transport: TransportVirtioFS}
	for {
		if r, ok := strings.CutSuffix(rest, ",ro"); ok && !fs.ReadOnly {
			rest, fs.ReadOnly = r, true
			continue
		}
		if r, ok := strings.CutSuffix(rest, ",9p"); ok && fs.Transport != Transport9P {
			rest, fs.Transport = r, Transport9P
			continue
		}
		break
	}
	if i := strings.LastIndex(rest, ":/"); i >= 0 {
		rest, fs.GuestPath = rest[:i], rest[i+1:]
	}
	if !guestPathPattern.MatchString(fs.GuestPath) || len(fs.GuestPath) > 128 || path.Clean(fs.GuestPath) != fs.GuestPath ||
		strings.Contains("/"+fs.GuestPath+"/", "/../") || strings.Contains("/"+fs.GuestPath+"/", "/./") {
		return FileShare{}, fmt.Errorf("--files %s: guest path %q: an absolute, clean path of A-Z a-z 0-9 . _ - (at most 128 bytes)", name, fs.GuestPath)
	}
	abs, err := filepath.Abs(rest)
	if err != nil {
		return FileShare{}, fmt.Errorf("--files %s: %w", name, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return FileShare{}, fmt.Errorf("--files %s: %w", name, err)
	}
	if !fi.IsDir() {
		return FileShare{}, fmt.Errorf("--files %s: %s is not a directory", name, abs)
	}
	fs.HostDir = abs
	return fs, nil
}

// CheckPolicyFiles is CheckPolicy for a VM that also serves files.
func CheckPolicyFiles(path, kernel string, netOpts NetOptions, idsInterval time.Duration, files []FileShare) error {
	m := &Monitor{cfg: Config{PolicyFile: path, Kernel: kernel, Net: netOpts, IDSInterval: idsInterval, Files: files}}
	_, err := m.prepareStartPolicy()
	return err
}

// fileState is the file gate of a VM started with --files.
type fileState struct {
	shares []*fileShare
	// mods are the .BTF sections of the 9P modules (linux.P9Modules),
	// read from the kit's initramfs before QEMU starts.
	mods     map[string][]byte
	verdicts verdictCounts

	// locating is set while the kernel is located for virtio-fs.
	locating atomic.Bool

	mu     sync.Mutex // guards layout and pages
	layout *linux.P9Layout
	pages  *linux.PageLayout
}

type fileShare struct {
	cfg  FileShare
	gate *gatefile.Gate
	ln   net.Listener
	attr *fileAttributor
	// virtioFS: served over virtio-fs (else 9P).
	virtioFS bool
}

// startFiles prepares the file gate before QEMU starts: a gate and a
// socket per share, QEMU's virtio-serial port on it, and the shares on
// the kernel command line for the kit's init to mount.
func (m *Monitor) startFiles(qcfg *qemu.Config) error {
	if d := m.cfg.FilesPeer9P; d != "" {
		// Benchmarks only: QEMU's own virtio-9p export of d (tag peer),
		// the peer the file gate is measured against. No gate.
		if strings.ContainsAny(d, ",=") || !filepath.IsAbs(d) {
			return fmt.Errorf("peer 9P directory %q: an absolute path without ',' or '='", d)
		}
		qcfg.ExtraArgs = append(qcfg.ExtraArgs, "-fsdev", "local,id=gvpeer,path="+d+",security_model=none",
			"-device", "virtio-9p-pci,fsdev=gvpeer,mount_tag=peer"+qcfg.VirtioOpts())
	}
	if len(m.cfg.Files) == 0 {
		return nil
	}
	need9P, needVFS := false, false
	for _, sc := range m.cfg.Files {
		need9P = need9P || sc.Transport == Transport9P
		needVFS = needVFS || sc.Transport != Transport9P
	}
	var mods map[string][]byte
	var err error
	if need9P {
		if mods, err = readP9Modules(m.cfg.Initrd); err != nil {
			return fmt.Errorf("--files: %w", err)
		}
	}
	if needVFS {
		if err := checkKitVirtioFS(m.cfg.Initrd); err != nil {
			return fmt.Errorf("--files: %w", err)
		}
	}
	fst := &fileState{mods: mods}
	m.files = fst
	seen := map[string]bool{}
	for i, sc := range m.cfg.Files {
		if seen[sc.Name] || seen["path:"+sc.GuestPath] {
			return fmt.Errorf("--files %s: a share of that name or guest path is already given", sc.Name)
		}
		seen[sc.Name], seen["path:"+sc.GuestPath] = true, true
		sh := &fileShare{cfg: sc}
		sh.attr = &fileAttributor{m: m, fst: fst, name: sc.Name}
		sh.gate, err = gatefile.New(gatefile.Config{Name: sc.Name, Root: sc.HostDir, GuestPath: sc.GuestPath, ReadOnly: sc.ReadOnly,
			Decider: authServer{countingServer{m.pol.sec, &fst.verdicts}, &m.grants}, Attributor: sh.attr,
			OnDecision: m.onFileDecision, Logf: m.logf})
		if err != nil {
			return err
		}
		fst.shares = append(fst.shares, sh)
		id := fmt.Sprintf("gvf%d", i)
		if sc.Transport != Transport9P {
			if err := m.startVirtioFS(qcfg, sh, id); err != nil {
				return err
			}
			continue
		}
		sock := m.dir.File("files-" + sc.Name + ".sock")
		if sh.ln, err = net.Listen("unix", sock); err != nil {
			return fmt.Errorf("--files %s: %w", sc.Name, err)
		}
		go m.serveConns(sh, "9P", func(c net.Conn) error { return sh.gate.Serve(context.Background(), c) })
		qcfg.ExtraArgs = append(qcfg.ExtraArgs,
			"-chardev", "socket,id="+id+",path="+sock+",server=off",
			"-device", "virtserialport,bus=vser0.0,chardev="+id+",name="+FilePortPrefix+sc.Name)
		qcfg.Append += shareArg("gatevisor.files", sc)
	}
	if err := qemu.CheckCmdline(qcfg.Append); err != nil {
		return fmt.Errorf("--files: %w", err)
	}
	return nil
}

// shareArg is a share's kernel command-line argument for the kit's
// mount script: " PARAM=NAME:GUESTPATH[:ro]".
func shareArg(param string, sc FileShare) string {
	arg := " " + param + "=" + sc.Name + ":" + sc.GuestPath
	if sc.ReadOnly {
		arg += ":ro"
	}
	return arg
}

// serveConns serves QEMU's connections to a share's socket, one at a
// time (QEMU connects once, and again after a restart), each with serve.
func (m *Monitor) serveConns(sh *fileShare, transport string, serve func(net.Conn) error) {
	for {
		c, err := sh.ln.Accept()
		if err != nil {
			return
		}
		err = serve(c)
		c.Close()
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			m.logf("file gate %s: %s connection ended: %v", sh.cfg.Name, transport, err)
		}
	}
}

// stopFiles closes the shares' sockets and roots.
func (m *Monitor) stopFiles() {
	if m.files == nil {
		return
	}
	for _, sh := range m.files.shares {
		if sh.ln != nil {
			sh.ln.Close()
		}
		sh.gate.Close()
	}
}

// maxModuleSize bounds a module image read from the initramfs.
const maxModuleSize = 64 << 20

// readP9Modules reads the .BTF sections of the 9P modules from the
// initramfs the guest boots (the kit's: trusted, host side), whose layouts
// attribution needs. Only the first archive of a concatenated initramfs
// is read (the kit's modules are there).
func readP9Modules(initrd string) (map[string][]byte, error) {
	if initrd == "" {
		return nil, errors.New("the file gate needs the kit's 9p modules: boot the default kit (or an initramfs with 9p, 9pnet and 9pnet_fd)")
	}
	want := map[string]bool{}
	for _, n := range linux.P9Modules {
		want[n+".ko"] = true
	}
	kos, err := initrdFiles(initrd, len(want), maxModuleSize, func(name string) bool {
		return strings.HasPrefix(name, "lib/modules/") && want[path.Base(name)]
	})
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for name, ko := range kos {
		sec, err := linux.ModuleBTFSection(ko)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[strings.TrimSuffix(path.Base(name), ".ko")] = sec
	}
	for _, n := range linux.P9Modules {
		if out[n] == nil {
			return nil, fmt.Errorf("%s has no module %s.ko: rebuild the kit (gatevisor kit build --force) or add it", initrd, n)
		}
	}
	return out, nil
}

// p9Layout computes the 9P layout once, from the kernel's profile and the
// modules' BTF.
func (fst *fileState) p9Layout(p *linux.Profile) (*linux.P9Layout, error) {
	fst.mu.Lock()
	defer fst.mu.Unlock()
	if fst.layout != nil {
		return fst.layout, nil
	}
	if p.BTF == nil {
		return nil, errors.New("the guest kernel has no BTF: the 9P client's structures cannot be read")
	}
	mods := map[string]*linux.ModuleBTF{}
	for n, raw := range fst.mods {
		mb, err := linux.ParseSplitBTF(p.BTF, raw)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", n, err)
		}
		mods[n] = mb
	}
	l, err := linux.NewP9Layout(p, mods)
	if err != nil {
		return nil, err
	}
	fst.layout = l
	return l, nil
}

// fileAttributor names the guest process behind a share's request: the
// task waiting on the request's wait queue in the guest kernel's 9P client
// (p9_client_rpc sleeps there in the caller's context until the reply),
// found by the request's tag and bytes, its creds read from its
// task_struct. Never the 9P attach's uid, which the guest kernel fills in.
type fileAttributor struct {
	m    *Monitor
	fst  *fileState
	name string

	mu    sync.Mutex // guards view, tasks and conns
	view  *ids.Inspector
	tasks *linux.TaskReader // of view's kernel
	conns []uint64          // the share's mounts' transports (linux.P9Conns)
	byPID map[int]uint64    // FUSE: task addresses by thread id, checked at each use

	waits, waitNs, retries atomic.Uint64
}

// attributionWait bounds how long a request waits for its caller to
// queue itself (it does so right after handing the request over; the
// transport's worker may write it first).
const attributionWait = 2 * time.Second

// Attribute implements gatefile.Attributor.
func (a *fileAttributor) Attribute(ctx context.Context, req *gatefile.Request) (event.Subject, error) {
	tag, msg := req.Tag, req.Msg
	a.mu.Lock()
	defer a.mu.Unlock()
	if req.FUSE {
		return a.attributeFUSE(ctx, req)
	}
	if err := a.ensureView(ctx); err != nil {
		return event.Subject{}, err
	}
	k := a.view.K
	l, err := a.fst.p9Layout(k.Profile)
	if err != nil {
		return event.Subject{}, err
	}
	start := time.Now()
	var tasks []uint64
	// The translation cache is cleared once a request, and the mount's
	// transports kept while they answer: a request then costs a walk of
	// its transport's requests, not of every superblock.
	k.AS.Cache.Invalidate()
	for try, wait := 0, 20*time.Microsecond; ; try++ {
		if a.conns == nil || try >= 8 && try%4 == 0 {
			k.AS.Cache.Invalidate()
			if a.conns, err = k.P9Conns(l, a.name); err != nil {
				a.conns = nil
				return event.Subject{}, err
			}
		}
		tasks, err = k.P9RequestersAt(l, a.conns, tag, msg)
		if !errors.Is(err, linux.ErrNoRequester) || time.Since(start) > attributionWait {
			break
		}
		a.retries.Add(1)
		if try < 8 {
			// The caller is usually a few guest instructions from its
			// wait queue: yield rather than sleep (a timer costs more
			// than the wait).
			runtime.Gosched()
			continue
		}
		select {
		case <-ctx.Done():
			return event.Subject{}, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Millisecond)
	}
	if d := time.Since(start); d > 0 {
		a.waits.Add(1)
		a.waitNs.Add(uint64(d))
	}
	if err != nil {
		return event.Subject{}, err
	}
	if len(tasks) != 1 {
		return event.Subject{}, fmt.Errorf("%d tasks wait for request %d", len(tasks), tag)
	}
	t, err := a.tasks.Read(tasks[0])
	if err != nil {
		return event.Subject{}, err
	}
	s := event.Subject{PID: int32(t.TGID), PPID: int32(t.PPID), Start: t.StartTime, Comm: t.Comm, Exe: t.Exe, UID: t.UID, GID: t.GID,
		SetUID: t.EUID != t.UID}
	return s, nil
}

// onFileDecision reports what the policy should hear about: accesses by
// processes whose creds a setuid exec changed (setuid domain), and denies.
func (m *Monitor) onFileDecision(ev *event.Event, d secserver.Decision) {
	if v, ok := policy.ParseVerdict(d.Verdict.String()); ok && v != policy.VerdictAllow {
		m.respondToVerdict(ev, v, d.Rule)
	}
	if ev.Subject.SetUID {
		m.logf("file gate: setuid process pid %d (%s, uid %d) %s %s: %s by %s", ev.Subject.PID, ev.Subject.Exe, ev.Subject.UID, ev.Op, ev.Path, d.Verdict, d.Rule)
	}
}

// authServer is the security server with the monitor's grants: a file
// event's subject carries the users whose grant covers it.
type authServer struct {
	countingServer
	grants *grantTable
}

// Decide implements the gates' Decider.
func (s authServer) Decide(ev *event.Event) secserver.Decision {
	if ev.Class == event.ClassFile {
		ev.Subject.Authenticated = s.grants.covering(&ev.Subject, time.Now())
	}
	return s.countingServer.Decide(ev)
}

// GateFailure implements the gates' Decider.
func (s authServer) GateFailure(ev *event.Event, rule, reason string, errno int32) secserver.Decision {
	return s.countingServer.GateFailure(ev, rule, reason, errno)
}

// FileGateCoverage adds the file gate to what a VM's gates observe: its
// ops join the kernel gate's on the file class, and setuidExec() can be
// kept.
func FileGateCoverage(cov policy.Coverage) policy.Coverage {
	cov.FileGate = true
	o, ok := cov.Observers[event.ClassFile]
	if !ok {
		cov.Observers[event.ClassFile] = policy.Observer{Gate: "the file gate", Ops: gatefile.Ops,
			PartialWhy: "the kernel has no file hooks: only the served files (--files) are observed"}
		delete(cov.Absent, event.ClassFile)
		return cov
	}
	ops := append([]string(nil), o.Ops...)
	for _, op := range gatefile.Ops {
		if !slices.Contains(ops, op) {
			ops = append(ops, op)
		}
	}
	slices.Sort(ops)
	o.Ops, o.Gate = ops, o.Gate+" and the file gate"
	cov.Observers[event.ClassFile] = o
	return cov
}

// canaryPages counts the guest-physical pages that hold canary, by a raw
// scan of guest RAM through the monitor's mapping.
func (m *Monitor) canaryPages(canary []byte) (int, error) {
	pfns, err := m.canaryPFNs(canary)
	return len(pfns), err
}

// canaryPFNs are the guest page frames where canary starts, in order.
func (m *Monitor) canaryPFNs(canary []byte) ([]uint64, error) {
	if len(canary) < 8 || len(canary) > 4096 {
		return nil, fmt.Errorf("canary of %d bytes: give 8 to 4096", len(canary))
	}
	const chunk = 4 << 20
	buf := make([]byte, chunk+len(canary)-1)
	pages := map[uint64]bool{}
	for _, r := range m.ram.Regions() {
		for off := uint64(0); off < r.Size; off += chunk {
			n := min(uint64(len(buf)), r.Size-off)
			got, err := m.ram.ReadAt(buf[:n], int64(r.GPA+off))
			if err != nil && got == 0 {
				return nil, err
			}
			b := buf[:got]
			for i := 0; ; {
				j := bytes.Index(b[i:], canary)
				if j < 0 {
					break
				}
				pages[(r.GPA+off+uint64(i+j))>>12] = true
				i += j + 1
			}
		}
	}
	out := make([]uint64, 0, len(pages))
	for pfn := range pages {
		out = append(out, pfn)
	}
	slices.Sort(out)
	return out, nil
}
