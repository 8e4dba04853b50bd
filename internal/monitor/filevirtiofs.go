package monitor

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/gatevisor/gatevisor/internal/event"
	gatefile "github.com/gatevisor/gatevisor/internal/gate/file"
	"github.com/gatevisor/gatevisor/internal/qemu"
	"github.com/gatevisor/gatevisor/internal/vhostuser"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// The file gate over virtio-fs: per share a vhost-user-fs-pci device
// whose vhost-user backend is the monitor (internal/vhostuser, no
// virtiofsd), its FUSE requests answered by the share's gate
// (gatefile.FUSE). The guest's kit mounts it with mount -t virtiofs NAME
// GUESTPATH (gatevisor.virtiofs=NAME:GUESTPATH[:ro] on the kernel command
// line).

// virtioFSQueues is the device's queues: the high-priority one (FORGET)
// and one request queue.
const virtioFSQueues = 2

// virtioFSQueueSize is each queue's size: a 128 KiB direct read is 34
// descriptors (header in, header out, 32 pages), so 128 holds a few.
const virtioFSQueueSize = 128

// startVirtioFS listens on the share's vhost-user socket and adds the
// device (QEMU connects as the front end when it starts).
func (m *Monitor) startVirtioFS(qcfg *qemu.Config, sh *fileShare, id string) error {
	sc := sh.cfg
	sock := m.dir.File("files-" + sc.Name + ".vhost.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("--files %s: %w", sc.Name, err)
	}
	sh.ln, sh.virtioFS = ln, true
	go m.serveConns(sh, "vhost-user", func(c net.Conn) error {
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return fmt.Errorf("a %T, not a unix connection", c)
		}
		fs := sh.gate.NewFUSE(context.Background())
		defer fs.Close()
		_, err := vhostuser.Serve(context.Background(), uc, vhostuser.Config{Queues: virtioFSQueues, Handler: fuseHandler{fs}, Logf: m.logf})
		return err
	})
	qcfg.ExtraArgs = append(qcfg.ExtraArgs,
		"-chardev", "socket,id="+id+",path="+sock,
		"-device", fmt.Sprintf("vhost-user-fs-pci,chardev=%s,tag=%s,queue-size=%d", id, sc.Name, virtioFSQueueSize))
	qcfg.Append += shareArg("gatevisor.virtiofs", sc)
	return nil
}

// fuseHandler answers a virtio-fs queue's chains with the share's FUSE
// server.
type fuseHandler struct{ fs *gatefile.FUSE }

// Handle implements vhostuser.Handler.
func (h fuseHandler) Handle(_ int, c *vhostuser.Chain) uint32 {
	return h.fs.Handle(c.In, c.Out, c.InLen, c.OutLen)
}

// virtioFSMarker is what the kit's mount script must know for a
// virtio-fs share: a kit built before it would not mount the share.
const virtioFSMarker = "gatevisor.virtiofs="

// checkKitVirtioFS checks that the initramfs the guest boots mounts
// virtio-fs shares (its /sbin/gatevisor-mount-files reads
// gatevisor.virtiofs=): a kit built by an older gatevisor is refused, not
// booted with a share it would silently leave unmounted.
func checkKitVirtioFS(initrd string) error {
	if initrd == "" {
		return errors.New("virtio-fs shares need the kit's init: boot the default kit (or give ,9p)")
	}
	const script = "sbin/gatevisor-mount-files"
	files, err := initrdFiles(initrd, 1, 1<<20, func(name string) bool { return name == script })
	if err != nil {
		return err
	}
	if !strings.Contains(string(files[script]), virtioFSMarker) {
		return fmt.Errorf("%s does not mount virtio-fs shares (a kit built by an older gatevisor): rebuild it (gatevisor kit build --force) or serve over 9P (--files NAME=DIR,9p)", initrd)
	}
	return nil
}

// initrdFiles reads the files that want (given a path without a leading
// "/" or "./") from the first archive of the initramfs (the kit's:
// trusted, host side), each at most max bytes, until it has n of them.
func initrdFiles(initrd string, n int, max int64, want func(name string) bool) (map[string][]byte, error) {
	f, err := os.Open(initrd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	var magic [2]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if magic == [2]byte{0x1f, 0x8b} {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = gz
	}
	out := map[string][]byte{}
	cr := cpio.NewReader(r)
	for len(out) < n {
		h, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", initrd, err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if !want(name) || h.Size > max {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(cr, max))
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	return out, nil
}

// locateForVirtioFS locates the guest kernel in the background, once at
// a time, when the VM serves a share over virtio-fs: attribution needs it,
// and must not stop the VM itself (see attributeFUSE).
func (m *Monitor) locateForVirtioFS() {
	fst := m.files
	if fst == nil || m.intro.located.Load() != nil {
		return
	}
	vfs := false
	for _, sh := range fst.shares {
		vfs = vfs || sh.virtioFS
	}
	if !vfs || !fst.locating.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer fst.locating.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := m.privateInspector(ctx); err != nil {
			m.logf("file gate: locating the guest kernel for virtio-fs attribution: %v", err)
		}
	}()
}

// ensureView opens the attributor's view of the guest kernel.
// Preconditions: a.mu held.
func (a *fileAttributor) ensureView(ctx context.Context) error {
	if a.view != nil {
		return nil
	}
	v, err := a.m.privateInspector(ctx)
	if err != nil {
		return err
	}
	tr, err := v.K.NewTaskReader()
	if err != nil {
		return err
	}
	a.view, a.tasks = v, tr
	return nil
}

// attributeFUSE names the process behind a FUSE request: the task whose
// pid the guest kernel's FUSE client wrote in the request's header (the
// caller's thread id, in the mount's pid namespace: the initial one for
// the kit's init), read from guest memory. The header's uid and gid are
// never used. The caller is inside the system call until the answer, so
// its creds (a thread's own, changed only by itself) cannot change
// meanwhile. Its address is kept by pid and checked again at every
// request; a pid not found, or found reused, is looked up in the kernel's
// thread list again.
// Preconditions: a.mu held.
func (a *fileAttributor) attributeFUSE(ctx context.Context, req *gatefile.Request) (event.Subject, error) {
	if req.PID == 0 {
		return event.Subject{}, errors.New("the FUSE request names no process (a request of the guest kernel's own)")
	}
	if a.view == nil {
		// Locating the kernel stops the VM (vCPU registers), and a stop
		// stops the vhost-user device, which waits for this request: the
		// worker must not wait for it. It is located when the guest is
		// ready (locateForVirtioFS); before, requests are denied.
		if a.m.intro.located.Load() == nil {
			a.m.locateForVirtioFS()
			return event.Subject{}, errors.New("the guest kernel is not located yet (it is being located)")
		}
		if err := a.ensureView(ctx); err != nil {
			return event.Subject{}, err
		}
	}
	a.view.K.AS.Cache.Invalidate()
	t, err := a.fuseTask(int(req.PID))
	if err != nil {
		return event.Subject{}, err
	}
	if t.KernelThread {
		return event.Subject{}, fmt.Errorf("pid %d is a kernel thread (%s)", req.PID, t.Comm)
	}
	return event.Subject{PID: int32(t.TGID), PPID: int32(t.PPID), Start: t.StartTime, Comm: t.Comm, Exe: t.Exe, UID: t.UID, GID: t.GID,
		SetUID: t.EUID != t.UID}, nil
}

// fuseTask reads the task with thread id pid.
// Preconditions: a.mu held, a.view set.
func (a *fileAttributor) fuseTask(pid int) (linux.Task, error) {
	if addr, ok := a.byPID[pid]; ok {
		if t, err := a.tasks.Read(addr); err == nil && t.PID == pid {
			return t, nil
		}
		delete(a.byPID, pid)
	}
	threads, err := a.view.K.Threads()
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return linux.Task{}, err
	}
	a.byPID = make(map[int]uint64, len(threads))
	for _, t := range threads {
		a.byPID[t.PID] = t.Addr
	}
	addr, ok := a.byPID[pid]
	if !ok {
		return linux.Task{}, fmt.Errorf("no guest task has pid %d", pid)
	}
	return a.tasks.Read(addr)
}
