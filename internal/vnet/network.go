package vnet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultNetwork is the name of the network `--net isolated` joins.
const DefaultNetwork = "default"

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName checks a network name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("network name %q: use 1-63 of a-z 0-9 . _ -, starting with a letter or digit", name)
	}
	return nil
}

// Network is one monitor's membership in a named isolated network.
//
// The first monitor to join a network hosts it: it takes an exclusive
// flock on <root>/net/NAME/host.lock, runs the Switch and the Services,
// and listens on <root>/net/NAME/switch.sock (in a 0700 directory: only
// the same user's monitors can join). Later monitors connect to that socket
// and exchange length-prefixed frames with the switch.
//
// When the hosting monitor stops, its switch and services go with it:
// members lose their link (frames are dropped), and each retries every
// rejoinDelay until one of them takes the lock and hosts a new switch, which
// the others join. DHCP leases restart from the pool, so a guest that
// renews may get a new address; established TCP connections between guests
// survive the switchover if it is shorter than their retransmission timeout.
//
// With a Spawn function (what monitors use), no monitor hosts: the switch
// and the services run in a network host process of their own (HostNetwork,
// started through Spawn by the first member), which outlives any one member
// and ends once no member has been connected for HostLinger. A member then
// comes and goes (a monitor upgrade, a restart) without taking the
// network's other end, the services' TCP connections and DHCP leases
// included, with it.
type Network struct {
	name, dir string
	deliver   func([][]byte)
	logf      func(string, ...any)
	spawn     Spawn

	mu     sync.Mutex // guards the fields below
	uplink Port
	host   *hosting
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

const rejoinDelay = 250 * time.Millisecond

// Spawn starts the host process of the network dir (HostNetwork in another
// process) and returns once it listens on the switch's socket, or once it
// found another host holding the network.
type Spawn func(dir string) error

// Join joins (or hosts) the named network under root. deliver receives the
// frames switched to this member; logf gets notices (may be nil). spawn
// nil hosts the switch in this process when nobody does.
func Join(root, name string, deliver func([][]byte), logf func(string, ...any), spawn Spawn) (*Network, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	dir := filepath.Join(root, "net", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("network %s: %w", name, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	n := &Network{name: name, dir: dir, deliver: deliver, logf: logf, spawn: spawn, done: make(chan struct{})}
	if err := n.connect(); err != nil {
		return nil, err
	}
	return n, nil
}

// Hosting reports whether this member hosts the switch.
func (n *Network) Hosting() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.host != nil
}

// Services returns the network's services when this member hosts it.
func (n *Network) Services() *Services {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.host == nil {
		return nil
	}
	return n.host.svcs
}

// Send switches frames from this member; while the uplink is down they are
// dropped.
func (n *Network) Send(frames [][]byte) {
	n.mu.Lock()
	up := n.uplink
	n.mu.Unlock()
	if up != nil {
		up.Send(frames)
	}
}

// Close leaves the network; a hosting member stops its switch.
func (n *Network) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	close(n.done)
	up, h := n.uplink, n.host
	n.uplink, n.host = nil, nil
	n.mu.Unlock()
	if up != nil {
		up.Close()
	}
	if h != nil {
		h.close()
	}
	n.wg.Wait()
}

// connect hosts the network if nobody does, else joins the host.
func (n *Network) connect() error {
	if n.spawn != nil {
		return n.connectSpawning()
	}
	h, err := host(n.dir)
	if err == nil {
		n.mu.Lock()
		n.host, n.uplink = h, h.sw.Attach(n.deliver)
		n.mu.Unlock()
		n.logf("network %s: hosting the switch at %s", n.name, filepath.Join(n.dir, "switch.sock"))
		return nil
	}
	if !errors.Is(err, errHosted) {
		return err
	}
	c, err := net.DialTimeout("unix", filepath.Join(n.dir, "switch.sock"), 2*time.Second)
	if err != nil {
		return fmt.Errorf("network %s: join the host's switch: %w", n.name, err)
	}
	n.joined(c)
	return nil
}

// joined makes c, a connection to the host's switch, the uplink.
func (n *Network) joined(c net.Conn) { n.joinedWith(c, nil) }

// joinedWith is joined for a connection whose stream begins with rest
// (read from it before by another process, see Detach).
func (n *Network) joinedWith(c net.Conn, rest []byte) {
	cp := &connPort{c: c, w: NewFrameWriter(c), rest: rest}
	n.mu.Lock()
	n.uplink = cp
	n.mu.Unlock()
	n.wg.Add(1)
	go n.member(cp)
}

// joinTimeout bounds how long a member tries to reach a host (spawning
// one at most once per spawnEvery).
const (
	joinTimeout = 10 * time.Second
	spawnEvery  = 2 * time.Second
)

// connectSpawning joins the network's host process, starting one when
// none listens.
func (n *Network) connectSpawning() error {
	sock := filepath.Join(n.dir, "switch.sock")
	deadline := time.Now().Add(joinTimeout)
	var spawned time.Time
	var last error
	for {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			n.joined(c)
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("network %s: no host process answers at %s: %w", n.name, sock, last)
		}
		if time.Since(spawned) >= spawnEvery {
			spawned = time.Now()
			if err := n.spawn(n.dir); err != nil {
				return fmt.Errorf("network %s: start its host process: %w", n.name, err)
			}
			continue
		}
		select {
		case <-n.done:
			return fmt.Errorf("network %s: left while joining", n.name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// member delivers frames from the host's switch until the link breaks, then
// rejoins.
func (n *Network) member(cp *connPort) {
	defer n.wg.Done()
	var src io.Reader = cp.c
	if len(cp.rest) > 0 {
		src = io.MultiReader(bytes.NewReader(cp.rest), cp.c)
	}
	r := NewFrameReader(src)
	var batch [][]byte
	for {
		var err error
		batch, err = r.ReadBatch(batch[:0], 64)
		if len(batch) > 0 {
			n.deliver(append([][]byte(nil), batch...))
		}
		if err != nil {
			break
		}
	}
	if cp.detaching.Load() {
		cp.rest = r.Unread()
		return
	}
	cp.Close()
	for {
		select {
		case <-n.done:
			return
		case <-time.After(rejoinDelay):
		}
		n.mu.Lock()
		closed := n.closed
		n.uplink = nil
		n.mu.Unlock()
		if closed {
			return
		}
		if err := n.connect(); err == nil {
			n.logf("network %s: the host left; rejoined (hosting: %v)", n.name, n.Hosting())
			return
		}
	}
}

var errHosted = errors.New("network already hosted")

type hosting struct {
	lock *os.File
	sw   *Switch
	svcs *Services
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	cons map[net.Conn]bool
	// changed is signalled when a member joins or leaves.
	changed chan struct{}
}

// members is the number of member connections.
func (h *hosting) members() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.cons)
}

func (h *hosting) signal() {
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

func host(dir string) (*hosting, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "host.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errHosted
		}
		return nil, err
	}
	sock := filepath.Join(dir, "switch.sock")
	_ = os.Remove(sock) // left by a host that died; we hold the lock
	ln, err := net.Listen("unix", sock)
	if err != nil {
		lock.Close()
		return nil, err
	}
	h := &hosting{lock: lock, sw: NewSwitch(), ln: ln, cons: map[net.Conn]bool{}, changed: make(chan struct{}, 1)}
	if h.svcs, err = NewServices(h.sw); err != nil {
		ln.Close()
		lock.Close()
		return nil, err
	}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

func (h *hosting) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		if uc, ok := c.(*net.UnixConn); ok && !sameUser(uc) {
			c.Close()
			continue
		}
		h.mu.Lock()
		h.cons[c] = true
		h.mu.Unlock()
		h.signal()
		h.wg.Add(1)
		go h.serve(c)
	}
}

func sameUser(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	return err == nil && cred != nil && (cred.Uid == uint32(os.Getuid()) || cred.Uid == 0)
}

// serve switches frames of one member connection.
func (h *hosting) serve(c net.Conn) {
	defer h.wg.Done()
	w := NewFrameWriter(c)
	p := h.sw.Attach(func(b [][]byte) {
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		if w.WriteFrames(b) != nil {
			c.Close()
		}
	})
	r := NewFrameReader(c)
	for {
		batch, err := r.ReadBatch(nil, 64)
		if len(batch) > 0 {
			p.Send(batch)
		}
		if err != nil {
			break
		}
	}
	p.Close()
	c.Close()
	h.mu.Lock()
	delete(h.cons, c)
	h.mu.Unlock()
	h.signal()
}

func (h *hosting) close() {
	h.ln.Close()
	h.mu.Lock()
	for c := range h.cons {
		c.Close()
	}
	h.mu.Unlock()
	h.svcs.Close()
	h.wg.Wait()
	// Remove the network's files while still holding the lock. A member
	// rejoining at this instant may lock the unlinked file and host a new
	// switch at the same path; the directory then comes back.
	dir := filepath.Dir(h.lock.Name())
	_ = os.Remove(filepath.Join(dir, "switch.sock"))
	_ = os.Remove(h.lock.Name())
	_ = os.Remove(dir)
	_ = os.Remove(filepath.Dir(dir)) // <root>/net, if no other network is left
	h.lock.Close()
}

// connPort is an uplink over a member connection.
type connPort struct {
	c    net.Conn
	w    *FrameWriter
	once sync.Once
	// rest is what the stream begins with (Adopt), then what the reader
	// had read past the last whole frame when it stopped (Detach).
	rest      []byte
	detaching atomic.Bool
}

func (p *connPort) Send(frames [][]byte) {
	_ = p.c.SetWriteDeadline(time.Now().Add(time.Second))
	if p.w.WriteFrames(frames) != nil {
		p.Close()
	}
}

func (p *connPort) Close() { p.once.Do(func() { p.c.Close() }) }

// ErrHosted is what HostNetwork reports when another process already
// hosts the network.
var ErrHosted = errHosted

// HostLinger is how long a network host process stays without members;
// HostFirstWait how long it waits for its first.
var (
	HostLinger    = 3 * time.Second
	HostFirstWait = 15 * time.Second
)

// HostNetwork runs the switch and services of the named network under
// root in this process (a network host process, see Network) until no
// member has been connected for HostLinger, or stop is closed. ready is
// called once: nil once it listens, ErrHosted (and HostNetwork returns
// it) when another process hosts the network, or the error that kept it
// from hosting.
func HostNetwork(root, name string, stop <-chan struct{}, ready func(error), logf func(string, ...any)) error {
	linger, firstWait := HostLinger, HostFirstWait
	if err := ValidateName(name); err != nil {
		ready(err)
		return err
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	dir := filepath.Join(root, "net", name)
	h, err := host(dir)
	if err != nil {
		ready(err)
		return err
	}
	ready(nil)
	logf("network %s: hosting the switch at %s (pid %d)", name, filepath.Join(dir, "switch.sock"), os.Getpid())
	wait, had := firstWait, false
	for {
		if h.members() > 0 {
			had, wait = true, linger
			select {
			case <-stop:
				h.close()
				return nil
			case <-h.changed:
			}
			continue
		}
		select {
		case <-stop:
			h.close()
			return nil
		case <-h.changed:
			continue
		case <-time.After(wait):
		}
		if h.members() == 0 {
			if had {
				logf("network %s: no member for %v: the host ends", name, wait)
			} else {
				logf("network %s: no member joined within %v: the host ends", name, wait)
			}
			h.close()
			return nil
		}
	}
}

// Detach hands this member's connection to the host process over to
// another process, without leaving the network: the host keeps the port
// (its MAC learning, the services' TCP connections to the guest behind it)
// and buffers what it switches meanwhile in the connection. The reader is
// stopped at a frame boundary; Detach returns the connection as a file
// and the bytes read past the last whole frame, which Adopt takes. The
// Network is closed afterwards. Only a member of a host process can
// detach (not one hosting the switch itself).
func (n *Network) Detach() (*os.File, []byte, error) {
	n.mu.Lock()
	cp, ok := n.uplink.(*connPort)
	if n.closed || n.spawn == nil || !ok {
		n.mu.Unlock()
		return nil, nil, fmt.Errorf("network %s: only a member of a network host process can hand its connection over", n.name)
	}
	n.closed = true
	close(n.done)
	n.uplink = nil
	n.mu.Unlock()
	cp.detaching.Store(true)
	_ = cp.c.SetReadDeadline(time.Now())
	n.wg.Wait()
	uc, ok := cp.c.(*net.UnixConn)
	if !ok {
		cp.Close()
		return nil, nil, fmt.Errorf("network %s: the connection to the host is not a unix socket", n.name)
	}
	f, err := uc.File()
	cp.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("network %s: hand the connection over: %w", n.name, err)
	}
	return f, cp.rest, nil
}

// maxAdoptRest bounds the bytes a detached member had read past its last
// whole frame: less than one frame and its length.
const maxAdoptRest = 4 + MaxFrame

// Adopt joins the named network under root through a connection to its
// host process that another process detached (Detach): f and the bytes
// it had read past its last whole frame. The Network then behaves as one
// Join made with spawn (rejoining through it if the host goes).
func Adopt(root, name string, f *os.File, rest []byte, deliver func([][]byte), logf func(string, ...any), spawn Spawn) (*Network, error) {
	defer f.Close()
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if spawn == nil {
		return nil, errors.New("vnet: Adopt needs the function that starts the network's host process")
	}
	if len(rest) > maxAdoptRest {
		return nil, fmt.Errorf("network %s: %d bytes of a partial frame to adopt, at most %d", name, len(rest), maxAdoptRest)
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("network %s: adopt the connection to its host: %w", name, err)
	}
	if _, ok := c.(*net.UnixConn); !ok {
		c.Close()
		return nil, fmt.Errorf("network %s: the adopted connection is not a unix socket", name)
	}
	_ = c.SetReadDeadline(time.Time{})
	n := &Network{name: name, dir: filepath.Join(root, "net", name), deliver: deliver, logf: logf, spawn: spawn, done: make(chan struct{})}
	n.joinedWith(c, rest)
	return n, nil
}
