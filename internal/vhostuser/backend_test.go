package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// echo copies what the guest sent into the reply buffers.
type echo struct{}

func (echo) Handle(_ int, c *Chain) uint32 {
	var in []byte
	for _, b := range c.In {
		in = append(in, b...)
	}
	n := 0
	for _, o := range c.Out {
		n += copy(o, in[n:])
	}
	return uint32(n)
}

// frontEnd plays QEMU on one end of a socket pair.
type frontEnd struct {
	t  *testing.T
	fd int
}

func (f *frontEnd) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, req)
	b = binary.LittleEndian.AppendUint32(b, flagVersion|flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(f.fd, b, oob, nil, 0); err != nil {
		f.t.Fatal(err)
	}
}

func (f *frontEnd) reply(req uint32) []byte {
	f.t.Helper()
	b := make([]byte, hdrSize+64)
	n, err := unix.Read(f.fd, b)
	if err != nil || n < hdrSize {
		f.t.Fatalf("reply to %d: %d bytes, %v", req, n, err)
	}
	if got := binary.LittleEndian.Uint32(b); got != req || binary.LittleEndian.Uint32(b[4:])&flagReply == 0 {
		f.t.Fatalf("reply %x to %d", b[:n], req)
	}
	return b[hdrSize:n]
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func state(i, n uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, i), n)
}

func TestServeEcho(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fe := &frontEnd{t: t, fd: fds[0]}
	defer unix.Close(fds[0])
	fc, err := net.FileConn(os.NewFile(uintptr(fds[1]), "backend"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Serve(context.Background(), fc.(*net.UnixConn), Config{Queues: 2, Handler: echo{}})
		done <- err
	}()

	fe.send(reqGetFeatures, 0, nil)
	if v := binary.LittleEndian.Uint64(fe.reply(reqGetFeatures)); v != FeatureVersion1|featureProtocol {
		t.Fatalf("features %#x", v)
	}
	fe.send(reqSetFeatures, 0, u64(FeatureVersion1|featureProtocol))
	fe.send(reqGetProtocolFeatures, 0, nil)
	if v := binary.LittleEndian.Uint64(fe.reply(reqGetProtocolFeatures)); v != protoMQ|protoReplyAck {
		t.Fatalf("protocol features %#x", v)
	}
	fe.send(reqSetProtocolFeatures, 0, u64(protoMQ|protoReplyAck))
	fe.send(reqGetQueueNum, 0, nil)
	if v := binary.LittleEndian.Uint64(fe.reply(reqGetQueueNum)); v != 2 {
		t.Fatalf("queues %d", v)
	}
	fe.send(reqSetOwner, 0, nil)

	// Guest RAM: a 1 MiB memfd at gpa 0, QEMU's address 0x7f0000000000.
	const size, uaddr = 1 << 20, 0x7f0000000000
	mfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	if err := unix.Ftruncate(mfd, size); err != nil {
		t.Fatal(err)
	}
	ram, err := unix.Mmap(mfd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(ram)
	mt := binary.LittleEndian.AppendUint32(nil, 1)
	mt = binary.LittleEndian.AppendUint32(mt, 0)
	for _, v := range []uint64{0, size, uaddr, 0} {
		mt = binary.LittleEndian.AppendUint64(mt, v)
	}
	fe.send(reqSetMemTable, flagNeedReply, mt, mfd)
	if v := binary.LittleEndian.Uint64(fe.reply(reqSetMemTable)); v != 0 {
		t.Fatalf("SET_MEM_TABLE ack %d", v)
	}

	// Queue 1: 8 entries, desc at 0x1000, avail 0x1080, used 0x1100.
	call, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	kick, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	defer unix.Close(call)
	defer unix.Close(kick)
	fe.send(reqSetVringNum, 0, state(1, 8))
	fe.send(reqSetVringBase, 0, state(1, 0))
	addr := binary.LittleEndian.AppendUint32(nil, 1)
	addr = binary.LittleEndian.AppendUint32(addr, 0)
	for _, v := range []uint64{uaddr + 0x1000, uaddr + 0x1100, uaddr + 0x1080, 0} {
		addr = binary.LittleEndian.AppendUint64(addr, v)
	}
	fe.send(reqSetVringAddr, 0, addr)
	fe.send(reqSetVringCall, 0, u64(1), call)
	fe.send(reqSetVringKick, 0, u64(1), kick)
	fe.send(reqSetVringEnable, 0, state(1, 1))

	// The guest offers "ping" and 16 writable bytes, and kicks.
	copy(ram[0x4000:], "ping")
	d := ram[0x1000:]
	binary.LittleEndian.PutUint64(d, 0x4000)
	binary.LittleEndian.PutUint32(d[8:], 4)
	binary.LittleEndian.PutUint16(d[12:], descFNext)
	binary.LittleEndian.PutUint16(d[14:], 1)
	binary.LittleEndian.PutUint64(d[16:], 0x5000)
	binary.LittleEndian.PutUint32(d[24:], 16)
	binary.LittleEndian.PutUint16(d[28:], descFWrite)
	binary.LittleEndian.PutUint16(ram[0x1080+4:], 0)
	binary.LittleEndian.PutUint16(ram[0x1080+2:], 1)
	if _, err := unix.Write(kick, u64(1)); err != nil {
		t.Fatal(err)
	}
	var ev [8]byte
	if _, err := unix.Read(call, ev[:]); err != nil { // blocks until the interrupt
		t.Fatal(err)
	}
	if idx, ln := binary.LittleEndian.Uint16(ram[0x1100+2:]), binary.LittleEndian.Uint32(ram[0x1100+8:]); idx != 1 || ln != 4 {
		t.Fatalf("used idx %d len %d", idx, ln)
	}
	if string(ram[0x5000:0x5004]) != "ping" {
		t.Fatalf("reply %q", ram[0x5000:0x5004])
	}
	fe.send(reqGetVringBase, 0, state(1, 0))
	if s := fe.reply(reqGetVringBase); binary.LittleEndian.Uint32(s) != 1 || binary.LittleEndian.Uint32(s[4:]) != 1 {
		t.Fatalf("GET_VRING_BASE %x", s)
	}
	// Not negotiated: the connection ends.
	fe.send(reqSetLogBase, 0, u64(0))
	if err := <-done; !errors.Is(err, ErrProtocol) {
		t.Fatalf("Serve: %v, want ErrProtocol", err)
	}
}

// FuzzMessage feeds arbitrary front-end messages to the parsers: they
// must never panic, and a memory table is only accepted with one
// descriptor per region and no overlap.
func FuzzMessage(f *testing.F) {
	mt := binary.LittleEndian.AppendUint32(nil, 1)
	mt = binary.LittleEndian.AppendUint32(mt, 0)
	for _, v := range []uint64{0, 1 << 20, 0x7f0000000000, 0} {
		mt = binary.LittleEndian.AppendUint64(mt, v)
	}
	hdr := func(req uint32, n int) []byte {
		b := binary.LittleEndian.AppendUint32(nil, req)
		b = binary.LittleEndian.AppendUint32(b, flagVersion)
		return binary.LittleEndian.AppendUint32(b, uint32(n))
	}
	f.Add(byte(1), append(hdr(reqSetMemTable, len(mt)), mt...))
	f.Add(byte(0), append(hdr(reqSetVringAddr, 40), make([]byte, 40)...))
	f.Add(byte(0), append(hdr(reqSetVringNum, 8), state(0, 128)...))
	f.Fuzz(func(t *testing.T, nfds byte, data []byte) {
		req, flags, size, err := parseHeader(data)
		if err != nil {
			return
		}
		p := data[hdrSize:]
		if int(size) < len(p) {
			p = p[:size]
		}
		m := &msg{req: req, flags: flags, payload: p, fds: make([]int, nfds%(maxFDs+1))}
		m.u64()
		m.state()
		m.addr()
		regs, err := m.memTable()
		if err == nil {
			if len(regs) != len(m.fds) {
				t.Fatalf("%d regions with %d descriptors", len(regs), len(m.fds))
			}
			for i := range regs {
				for j := range i {
					a, b := regs[i], regs[j]
					if a.gpa < b.gpa+b.size && b.gpa < a.gpa+a.size {
						t.Fatalf("overlapping regions %+v %+v", a, b)
					}
				}
			}
		}
	})
}

// TestSetMemTableKeepsSameMapping: QEMU sends the memory table again at
// every device start (after every VM stop); a table naming the same file,
// offset and layout keeps the mapping in use, another one replaces it.
func TestSetMemTableKeepsSameMapping(t *testing.T) {
	const size, uaddr = 1 << 20, 0x7f0000000000
	memfd := func() int {
		fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Ftruncate(fd, size); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	table := func(fd int) *msg {
		mt := binary.LittleEndian.AppendUint32(nil, 1)
		mt = binary.LittleEndian.AppendUint32(mt, 0)
		for _, v := range []uint64{0, size, uaddr, 0} {
			mt = binary.LittleEndian.AppendUint64(mt, v)
		}
		return &msg{req: reqSetMemTable, payload: mt, fds: []int{fd}}
	}
	a, other := memfd(), memfd()
	defer unix.Close(a)
	defer unix.Close(other)
	b := &backend{mem: &Memory{}}
	defer b.release()
	if err := b.setMemTable(table(a)); err != nil {
		t.Fatal(err)
	}
	first := &b.mem.regions[0].mapping[0]
	again, err := unix.Dup(a)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(again)
	if err := b.setMemTable(table(again)); err != nil {
		t.Fatal(err)
	}
	if &b.mem.regions[0].mapping[0] != first {
		t.Fatal("the same table was mapped again")
	}
	if err := b.setMemTable(table(other)); err != nil {
		t.Fatal(err)
	}
	if &b.mem.regions[0].mapping[0] == first {
		t.Fatal("a table naming another file kept the old mapping")
	}
}
