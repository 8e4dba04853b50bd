package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Handler serves the requests of a device's queues.
type Handler interface {
	// Handle answers one chain of queue q and returns the bytes it wrote
	// into c.Out. The chain's buffers are guest RAM, valid only during the
	// call; Handle must not keep them. Calls for one queue are serial.
	Handle(q int, c *Chain) uint32
}

// Config configures a backend.
type Config struct {
	// Queues is the number of virtqueues the device has (vhost-user-fs:
	// 1 high-priority + request queues).
	Queues int
	// Features are the device-specific virtio features offered besides
	// VIRTIO_F_VERSION_1.
	Features uint64
	Handler  Handler
	// Logf receives notices (a queue stopped by a malformed ring).
	Logf func(format string, a ...any)
}

// Stats are a backend's counters.
type Stats struct {
	Chains, Kicks, Interrupts, RingErrors uint64
}

// queue is one virtqueue's configuration and worker.
type queue struct {
	num           uint32
	addr          vringAddr
	hasAddr       bool
	base          uint16
	kick          *os.File // the poller's: read by the worker only
	kickFD        int      // kick's descriptor, to wake the worker
	callFD, errFD int      // -1: none
	enabled       bool
	started       bool
	stop          chan struct{}
	done          chan struct{}
	r             *ring // while started
	failed        bool  // a malformed ring stopped it
}

// backend is one connection's state. Lock order: mu, then memMu, then
// callMu; a worker holds memMu (reading) and may take callMu.
type backend struct {
	cfg Config

	// memMu guards mem and every queue's ring: workers hold it for reading
	// while they use guest RAM, the control loop for writing to change it.
	memMu sync.RWMutex
	mem   *Memory

	mu       sync.Mutex // guards features, protocol, qs' fields but r, callFD and errFD
	features uint64
	protocol uint64
	qs       []*queue

	// callMu guards every queue's callFD and errFD: a worker signals under
	// it (holding memMu for reading), so it is taken after memMu, never
	// before.
	callMu sync.Mutex

	statsMu sync.Mutex
	stats   Stats
}

// Serve serves one vhost-user connection from the front end until it
// closes, ctx ends or it sends a message that is not allowed (ErrProtocol).
// Every mapping and descriptor is released on return.
func Serve(ctx context.Context, c *net.UnixConn, cfg Config) (Stats, error) {
	if cfg.Queues < 1 || cfg.Queues > 64 || cfg.Handler == nil {
		return Stats{}, errors.New("vhost-user: a handler and 1 to 64 queues are required")
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	b := &backend{cfg: cfg, mem: &Memory{}}
	for range cfg.Queues {
		b.qs = append(b.qs, &queue{kickFD: -1, callFD: -1, errFD: -1})
	}
	stopCtx := context.AfterFunc(ctx, func() { c.Close() })
	defer stopCtx()
	defer b.release()
	buf := make([]byte, hdrSize+maxPayload)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for {
		m, err := readMsg(c, buf, oob)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = nil
			}
			return b.snapshot(), err
		}
		out, err := b.handle(m)
		for _, fd := range m.fds { // descriptors not taken by the message
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		if err != nil {
			return b.snapshot(), err
		}
		if m.flags&flagNeedReply != 0 && b.protocol&protoReplyAck != 0 && out == nil {
			out = replyU64(m.req, 0)
		}
		if out != nil {
			if _, err := c.Write(out); err != nil {
				return b.snapshot(), fmt.Errorf("vhost-user: reply to %d: %w", m.req, err)
			}
		}
	}
}

func (b *backend) snapshot() Stats {
	b.statsMu.Lock()
	defer b.statsMu.Unlock()
	return b.stats
}

// readMsg reads one message and the descriptors sent with it.
func readMsg(c *net.UnixConn, buf, oob []byte) (*msg, error) {
	n, oobn, _, _, err := c.ReadMsgUnix(buf[:hdrSize], oob)
	var fds []int
	if oobn > 0 {
		cms, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, cm := range cms {
				if f, rerr := unix.ParseUnixRights(&cm); rerr == nil {
					fds = append(fds, f...)
				}
			}
		}
	}
	fail := func(e error) (*msg, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, e
	}
	if err != nil {
		return fail(err)
	}
	if n == 0 {
		return fail(io.EOF)
	}
	if n < hdrSize {
		if _, err := io.ReadFull(c, buf[n:hdrSize]); err != nil {
			return fail(err)
		}
	}
	if len(fds) > maxFDs {
		return fail(fmt.Errorf("%w: %d descriptors in one message", ErrProtocol, len(fds)))
	}
	req, flags, size, err := parseHeader(buf[:hdrSize])
	if err != nil {
		return fail(err)
	}
	if _, err := io.ReadFull(c, buf[hdrSize:hdrSize+size]); err != nil {
		return fail(err)
	}
	return &msg{req: req, flags: flags, payload: buf[hdrSize : hdrSize+size], fds: fds}, nil
}

// takeFD takes the message's only descriptor (-1 if none).
func (m *msg) takeFD() int {
	if len(m.fds) != 1 {
		return -1
	}
	fd := m.fds[0]
	m.fds[0] = -1
	return fd
}

// stateOf decodes a vring-state message and returns the queue it names.
func (b *backend) stateOf(m *msg) (vringState, *queue, error) {
	s, err := m.state()
	if err != nil {
		return s, nil, err
	}
	q, err := b.queueOf(s.index)
	return s, q, err
}

// queueOf returns the queue named by a message (index in the low byte
// for KICK/CALL/ERR, the whole u32 otherwise).
func (b *backend) queueOf(i uint32) (*queue, error) {
	if i >= uint32(len(b.qs)) {
		return nil, fmt.Errorf("%w: queue %d of %d", ErrProtocol, i, len(b.qs))
	}
	return b.qs[i], nil
}

// handle acts on one message and returns its reply (nil: none).
func (b *backend) handle(m *msg) ([]byte, error) {
	switch m.req {
	case reqGetFeatures:
		return replyU64(m.req, FeatureVersion1|featureProtocol|b.cfg.Features), nil
	case reqSetFeatures:
		v, err := m.u64()
		if err != nil {
			return nil, err
		}
		if v&^(FeatureVersion1|featureProtocol|b.cfg.Features) != 0 {
			return nil, fmt.Errorf("%w: features %#x were not offered", ErrProtocol, v)
		}
		b.mu.Lock()
		b.features = v
		b.mu.Unlock()
		return nil, nil
	case reqGetProtocolFeatures:
		return replyU64(m.req, protoFeatures), nil
	case reqSetProtocolFeatures:
		v, err := m.u64()
		if err != nil {
			return nil, err
		}
		if v&^protoFeatures != 0 {
			return nil, fmt.Errorf("%w: protocol features %#x were not offered", ErrProtocol, v)
		}
		b.protocol = v
		return nil, nil
	case reqGetQueueNum:
		return replyU64(m.req, uint64(len(b.qs))), nil
	case reqSetOwner, reqResetOwner:
		return nil, nil
	case reqSetMemTable:
		return nil, b.setMemTable(m)
	case reqSetVringNum, reqSetVringBase, reqSetVringEnable:
		s, q, err := b.stateOf(m)
		if err != nil {
			return nil, err
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		switch m.req {
		case reqSetVringNum:
			if q.started || s.num == 0 || s.num > MaxQueueSize || s.num&(s.num-1) != 0 {
				return nil, fmt.Errorf("%w: queue %d size %d", ErrProtocol, s.index, s.num)
			}
			q.num = s.num
		case reqSetVringBase:
			if q.started || s.num > 0xffff {
				return nil, fmt.Errorf("%w: queue %d base %d", ErrProtocol, s.index, s.num)
			}
			q.base = uint16(s.num)
		case reqSetVringEnable:
			q.enabled = s.num != 0
			if q.enabled && q.kickFD >= 0 {
				signal(q.kickFD) // requests made available while disabled
			}
		}
		return nil, nil
	case reqSetVringAddr:
		a, err := m.addr()
		if err != nil {
			return nil, err
		}
		q, err := b.queueOf(a.index)
		if err != nil {
			return nil, err
		}
		if a.flags != 0 {
			return nil, fmt.Errorf("%w: queue %d: dirty logging (flags %#x) was not negotiated", ErrProtocol, a.index, a.flags)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if q.started {
			return nil, fmt.Errorf("%w: queue %d: address set while it runs", ErrProtocol, a.index)
		}
		q.addr, q.hasAddr = a, true
		return nil, nil
	case reqGetVringBase:
		s, q, err := b.stateOf(m)
		if err != nil {
			return nil, err
		}
		base := b.stopQueue(q)
		p := binary.LittleEndian.AppendUint32(nil, s.index)
		return reply(m.req, binary.LittleEndian.AppendUint32(p, uint32(base))), nil
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		v, err := m.u64()
		if err != nil {
			return nil, err
		}
		q, err := b.queueOf(uint32(v & 0xff))
		if err != nil {
			return nil, err
		}
		if v&^uint64(0x1ff) != 0 {
			return nil, fmt.Errorf("%w: request %d argument %#x", ErrProtocol, m.req, v)
		}
		fd := -1
		if v&vringInvalidFD == 0 {
			if fd = m.takeFD(); fd < 0 {
				return nil, fmt.Errorf("%w: request %d without its descriptor", ErrProtocol, m.req)
			}
		} else if m.req == reqSetVringKick {
			return nil, fmt.Errorf("%w: queue %d: polling without a kick descriptor is not supported", ErrProtocol, v&0xff)
		}
		return nil, b.setFD(m.req, q, fd)
	case reqSetLogBase, reqSetLogFD:
		return nil, fmt.Errorf("%w: dirty logging (request %d) was not negotiated", ErrProtocol, m.req)
	}
	return nil, fmt.Errorf("%w: request %d is not supported", ErrProtocol, m.req)
}

// setFD installs a queue's kick, call or err eventfd (-1: none); a kick
// starts the queue.
func (b *backend) setFD(req uint32, q *queue, fd int) error {
	if req == reqSetVringKick {
		b.stopQueue(q) // a new kick descriptor replaces a running one
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return fmt.Errorf("vhost-user: eventfd: %w", err)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		q.kick, q.kickFD = os.NewFile(uintptr(fd), "vhost-user-kick"), fd
		return b.startQueue(q)
	}
	b.callMu.Lock()
	defer b.callMu.Unlock()
	slot := &q.callFD
	if req == reqSetVringErr {
		slot = &q.errFD
	}
	if *slot >= 0 {
		unix.Close(*slot)
	}
	*slot = fd
	return nil
}

// startQueue starts q's worker.
// Preconditions: b.mu held; q is stopped and has a kick descriptor.
func (b *backend) startQueue(q *queue) error {
	if q.num == 0 || !q.hasAddr {
		return fmt.Errorf("%w: a queue kicked before its size and address", ErrProtocol)
	}
	b.memMu.Lock()
	r, err := b.resolve(q)
	b.memMu.Unlock()
	if err != nil {
		return err
	}
	q.r, q.started, q.failed = r, true, false
	q.stop, q.done = make(chan struct{}), make(chan struct{})
	idx := -1
	for i := range b.qs {
		if b.qs[i] == q {
			idx = i
		}
	}
	go b.work(idx, q, q.kick, q.stop, q.done)
	return nil
}

// resolve maps q's ring in the current memory table.
// Preconditions: b.memMu held for writing (or no worker runs).
func (b *backend) resolve(q *queue) (*ring, error) {
	var gpa [3]uint64
	for i, ua := range []uint64{q.addr.desc, q.addr.avail, q.addr.used} {
		g, err := b.mem.gpaOf(ua)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		gpa[i] = g
	}
	r, err := setupRing(b.mem, q.num, gpa[0], gpa[1], gpa[2])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	r.lastAvail = q.base
	r.usedIdx = load16(r.use, 2)
	return r, nil
}

// stopQueue stops q's worker if it runs and returns the next avail index
// it would have taken.
func (b *backend) stopQueue(q *queue) uint16 {
	b.mu.Lock()
	if !q.started {
		base := q.base
		b.mu.Unlock()
		return base
	}
	stop, done := q.stop, q.done
	close(stop)
	if q.kickFD >= 0 {
		signal(q.kickFD) // wake the worker
	}
	b.mu.Unlock()
	<-done
	b.mu.Lock()
	defer b.mu.Unlock()
	b.memMu.Lock()
	q.base = q.r.lastAvail
	b.memMu.Unlock()
	q.started, q.r = false, nil
	if q.kick != nil {
		q.kick.Close()
		q.kick, q.kickFD = nil, -1
	}
	return q.base
}

// setMemTable replaces the memory table: every running ring is resolved
// again in the new one (the workers wait meanwhile).
func (b *backend) setMemTable(m *msg) error {
	regs, err := m.memTable()
	if err != nil {
		return err
	}
	ids := make([][2]uint64, len(regs))
	for i := range regs {
		var st unix.Stat_t
		if err := unix.Fstat(m.fds[i], &st); err != nil {
			return fmt.Errorf("vhost-user: memory region %d: %w", i, err)
		}
		ids[i] = [2]uint64{st.Dev, st.Ino}
	}
	if b.sameTable(regs, ids) {
		// QEMU sends the table again each time the device starts (after
		// every VM stop, a kernel-gate trap included): the mappings it
		// names are the ones in use.
		return nil
	}
	nm := &Memory{}
	for i, r := range regs {
		fd := m.fds[i]
		mp, err := mapRegion(fd, r.size+r.mmapOffset)
		if err != nil {
			nm.unmap()
			return fmt.Errorf("vhost-user: map memory region %d (%#x bytes): %w", i, r.size+r.mmapOffset, err)
		}
		nm.regions = append(nm.regions, memRegion{gpa: r.gpa, uaddr: r.uaddr, b: mp[r.mmapOffset : r.mmapOffset+r.size : r.mmapOffset+r.size], mapping: mp,
			dev: ids[i][0], ino: ids[i][1], offset: r.mmapOffset})
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	old := b.mem
	b.mem = nm
	for _, q := range b.qs {
		if !q.started {
			continue
		}
		r, err := b.resolve(q)
		if err != nil {
			return err
		}
		r.lastAvail, r.usedIdx = q.r.lastAvail, q.r.usedIdx
		q.r = r
	}
	old.unmap()
	return nil
}

// sameTable reports whether regs (whose files are ids: device, inode)
// describe exactly the regions mapped now.
func (b *backend) sameTable(regs []region, ids [][2]uint64) bool {
	b.memMu.RLock()
	defer b.memMu.RUnlock()
	cur := b.mem.regions
	if len(cur) != len(regs) {
		return false
	}
	for i, r := range regs {
		c := &cur[i]
		if c.mapping == nil || c.gpa != r.gpa || c.uaddr != r.uaddr || uint64(len(c.b)) != r.size || c.offset != r.mmapOffset ||
			c.dev != ids[i][0] || c.ino != ids[i][1] {
			return false
		}
	}
	return true
}

// unmap releases m's mappings.
func (m *Memory) unmap() {
	for _, r := range m.regions {
		if r.mapping != nil {
			unix.Munmap(r.mapping)
		}
	}
	m.regions = nil
}

// release stops every queue and releases the memory and descriptors.
func (b *backend) release() {
	for _, q := range b.qs {
		b.stopQueue(q)
		b.callMu.Lock()
		for _, fd := range []*int{&q.callFD, &q.errFD} {
			if *fd >= 0 {
				unix.Close(*fd)
				*fd = -1
			}
		}
		b.callMu.Unlock()
	}
	b.memMu.Lock()
	b.mem.unmap()
	b.memMu.Unlock()
}

// work is queue qi's worker: it waits for kicks and serves every chain
// made available, until stop closes.
func (b *backend) work(qi int, q *queue, kick *os.File, stop, done chan struct{}) {
	defer close(done)
	var c Chain
	var ev [8]byte
	for {
		select {
		case <-stop:
			return
		default:
		}
		b.mu.Lock()
		enabled := q.enabled
		b.mu.Unlock()
		if enabled {
			if err := b.drain(qi, q, &c); err != nil {
				b.mu.Lock()
				q.failed = true
				b.mu.Unlock()
				b.statsMu.Lock()
				b.stats.RingErrors++
				b.statsMu.Unlock()
				b.cfg.Logf("vhost-user: queue %d stopped: %v", qi, err)
				<-stop
				return
			}
		}
		if err := readKick(kick, &ev); err != nil {
			<-stop // closed by stopQueue only after stop
			return
		}
		b.statsMu.Lock()
		b.stats.Kicks++
		b.statsMu.Unlock()
	}
}

// drain serves every available chain of q, kicks turned off meanwhile.
func (b *backend) drain(qi int, q *queue, c *Chain) error {
	b.memMu.RLock()
	defer b.memMu.RUnlock()
	r := q.r
	served := uint64(0)
	interrupts := uint64(0)
	defer func() {
		b.statsMu.Lock()
		b.stats.Chains += served
		b.stats.Interrupts += interrupts
		b.statsMu.Unlock()
	}()
	r.setNoNotify(true)
	for {
		n, err := r.pending()
		if err != nil {
			return err
		}
		if n == 0 {
			r.setNoNotify(false)
			// A chain made available between the check and the flag's
			// clearing sent no kick: look again (the atomic store and load
			// are ordered).
			if n, err = r.pending(); err != nil || n == 0 {
				return err
			}
			r.setNoNotify(true)
		}
		for ; n > 0; n-- {
			if err := r.next(b.mem, c); err != nil {
				return err
			}
			w := b.cfg.Handler.Handle(qi, c)
			if w > uint32(c.OutLen) {
				w = uint32(c.OutLen)
			}
			r.put(c.head, w)
			served++
			if r.wantsInterrupt() {
				// The call descriptor may change at any time (QEMU points it
				// elsewhere while the vector is masked): used under the lock
				// that guards its replacement, never after it is closed.
				b.callMu.Lock()
				if q.callFD >= 0 {
					signal(q.callFD)
					interrupts++
				}
				b.callMu.Unlock()
			}
		}
	}
}
