package linux

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"
)

// netBTF describes the structures the socket walk uses, laid out as
// sockHeap writes them. sock_common's addresses sit in an anonymous struct
// inside an anonymous union, as in the kernel.
func netBTF(t testing.TB) *BTF {
	t.Helper()
	u8 := &btf.Int{Name: "u8", Size: 1}
	u16 := &btf.Int{Name: "u16", Size: 2}
	s16 := &btf.Int{Name: "short", Size: 2, Encoding: btf.Signed}
	u32 := &btf.Int{Name: "u32", Size: 4}
	u64 := &btf.Int{Name: "u64", Size: 8}
	ptr := &btf.Pointer{Target: &btf.Void{}}
	m := func(name string, typ btf.Type, off uint32) btf.Member {
		return btf.Member{Name: name, Type: typ, Offset: btf.Bits(8 * off)}
	}
	in6 := &btf.Struct{Name: "in6_addr", Size: 16, Members: []btf.Member{m("s6_addr", &btf.Array{Index: u32, Type: u8, Nelems: 16}, 0)}}
	addrs := &btf.Struct{Size: 8, Members: []btf.Member{m("skc_daddr", u32, 0), m("skc_rcv_saddr", u32, 4)}}
	common := &btf.Struct{Name: "sock_common", Size: 136, Members: []btf.Member{
		m("", &btf.Union{Size: 8, Members: []btf.Member{m("skc_addrpair", u64, 0), m("", addrs, 0)}}, 0),
		m("skc_dport", u16, 12), m("skc_num", u16, 14), m("skc_family", u16, 16), m("skc_state", u8, 18),
		m("skc_v6_daddr", in6, 56), m("skc_v6_rcv_saddr", in6, 72),
	}}
	sockaddrUn := &btf.Struct{Name: "sockaddr_un", Size: 110, Members: []btf.Member{m("sun_family", u16, 0)}}
	types := []btf.Type{
		&btf.Struct{Name: "task_struct", Size: 0x100, Members: []btf.Member{m("files", ptr, 0x40)}},
		&btf.Struct{Name: "files_struct", Size: 0x40, Members: []btf.Member{m("fdt", ptr, 0x20)}},
		&btf.Struct{Name: "fdtable", Size: 0x10, Members: []btf.Member{m("max_fds", u32, 0), m("fd", ptr, 8)}},
		&btf.Struct{Name: "file", Size: 0xd0, Members: []btf.Member{m("f_inode", ptr, 0x20), m("f_op", ptr, 0x28), m("private_data", ptr, 0xc8)}},
		&btf.Struct{Name: "inode", Size: 0x80, Members: []btf.Member{m("i_ino", u64, 0x40)}},
		&btf.Struct{Name: "socket", Size: 0x20, Members: []btf.Member{m("type", s16, 4), m("file", ptr, 0x10), m("sk", ptr, 0x18)}},
		common,
		&btf.Struct{Name: "sock", Size: 0x300, Members: []btf.Member{m("__sk_common", common, 0), m("sk_type", u16, 514), m("sk_protocol", u16, 516)}},
		&btf.Struct{Name: "unix_sock", Size: 0x310, Members: []btf.Member{m("addr", ptr, 0x308)}},
		&btf.Struct{Name: "unix_address", Size: 8, Members: []btf.Member{m("len", u32, 4), m("name", &btf.Array{Index: u32, Type: sockaddrUn, Nelems: 0}, 8)}},
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	return builtBTF(t, b)
}

// heap allocates guest objects in the synthetic kernel's object region.
type heap struct {
	m    flatMem
	next uint64 // offset from _text
}

func (h *heap) alloc(size uint64) uint64 {
	off := h.next
	h.next += (size + 63) &^ 63
	return testText + scSlide + off
}

func (h *heap) phys(va uint64) []byte { return h.m[va-testText-scSlide+scPhys:] }
func (h *heap) u64(va, v uint64)      { binary.LittleEndian.PutUint64(h.phys(va), v) }
func (h *heap) u32(va uint64, v uint32) {
	binary.LittleEndian.PutUint32(h.phys(va), v)
}
func (h *heap) u16(va uint64, v uint16) { binary.LittleEndian.PutUint16(h.phys(va), v) }

// sockSpec is a socket sockHeap creates.
type sockSpec struct {
	family, typ, proto uint16
	state              uint8
	local, remote      []byte // 4 or 16 bytes
	lport, rport       uint16
	unixPath           string
	ino                uint64
	brokenBackPointer  bool
	noSock             bool
}

// sockHeap builds tasks with file tables holding the given sockets (and a
// regular file), and returns the tasks.
func sockHeap(t testing.TB, k *Kernel, m flatMem, procs map[int][]sockSpec) []Task {
	h := &heap{m: m, next: offObjects}
	ops := uint64(testText + scSlide + offSockOps)
	var tasks []Task
	for pid := 1; pid <= 1000; pid++ {
		specs, ok := procs[pid]
		if !ok {
			continue
		}
		task, files, fdt := h.alloc(0x100), h.alloc(0x40), h.alloc(0x10)
		arr := h.alloc(8 * uint64(len(specs)+2))
		h.u64(task+0x40, files)
		h.u64(files+0x20, fdt)
		h.u32(fdt, uint32(len(specs)+2))
		h.u64(fdt+8, arr)
		// fd 0 is empty, fd 1 a regular file.
		reg := h.alloc(0xd0)
		h.u64(reg+0x28, testText+scSlide+offTable)
		h.u64(arr+8, reg)
		for i, s := range specs {
			file, sock, ino := h.alloc(0xd0), h.alloc(0x20), h.alloc(0x80)
			sk := h.alloc(0x310)
			h.u64(arr+8*uint64(i+2), file)
			h.u64(file+0x20, ino)
			h.u64(file+0x28, ops)
			h.u64(file+0xc8, sock)
			h.u64(ino+0x40, s.ino)
			h.u16(sock+4, s.typ)
			if !s.brokenBackPointer {
				h.u64(sock+0x10, file)
			}
			if !s.noSock {
				h.u64(sock+0x18, sk)
			}
			h.u16(sk+16, s.family)
			h.phys(sk + 18)[0] = s.state
			h.u16(sk+514, s.typ)
			h.u16(sk+516, s.proto)
			h.u16(sk+14, s.lport)
			binary.BigEndian.PutUint16(h.phys(sk+12), s.rport)
			if len(s.local) == 4 {
				copy(h.phys(sk+4), s.local)
				copy(h.phys(sk), s.remote)
			} else if len(s.local) == 16 {
				copy(h.phys(sk+72), s.local)
				copy(h.phys(sk+56), s.remote)
			}
			if s.unixPath != "" {
				ua := h.alloc(8 + 110)
				h.u64(sk+0x308, ua)
				h.u32(ua+4, uint32(2+len(s.unixPath)))
				copy(h.phys(ua+10), s.unixPath)
			}
		}
		tasks = append(tasks, Task{Addr: task, PID: pid, TGID: pid, Comm: "p" + string(rune('a'+pid%26))})
	}
	return tasks
}

func sockKernel(t testing.TB) (*Kernel, flatMem) {
	k, m := scKernel(t)
	k.Profile.BTF = netBTF(t)
	return k, m
}

func v6(b ...byte) []byte { return append(make([]byte, 16-len(b)), b...) }

func TestSockets(t *testing.T) {
	k, m := sockKernel(t)
	tasks := sockHeap(t, k, m, map[int][]sockSpec{
		100: {
			{family: afInet6, typ: sockStream, proto: 6, state: 10, local: v6(), remote: v6(), lport: 80, ino: 1001},
			{family: afUnix, typ: sockStream, state: 10, unixPath: "/run/ctl.sock", ino: 1002},
		},
		200: {
			{family: afInet, typ: sockDgram, proto: 17, state: 1, local: []byte{10, 0, 0, 2}, remote: []byte{10, 0, 0, 1}, lport: 123, rport: 123, ino: 2001},
			{family: afInet, typ: sockStream, proto: 6, state: 1, local: []byte{127, 0, 0, 1}, remote: []byte{127, 0, 0, 1}, lport: 4000, rport: 80, ino: 2002},
			{family: afInet, typ: sockRaw, proto: 1, state: 7, local: []byte{0, 0, 0, 0}, remote: []byte{0, 0, 0, 0}, ino: 2003},
			{family: afUnix, typ: sockDgram, state: 7, unixPath: "\x00abstract\x01", ino: 2004},
			{family: afNetlink, typ: sockRaw, ino: 2005},
			{family: 99, typ: sockDgram, ino: 2006},
		},
		300: {
			{family: afInet, typ: sockStream, proto: 6, brokenBackPointer: true, ino: 3001},
			{family: afInet, typ: sockStream, proto: 6, noSock: true, ino: 3002},
		},
	})
	// A thread sharing pid 100's file table, and a kernel thread.
	tasks = append(tasks, Task{Addr: tasks[0].Addr, PID: 101, TGID: 100, Comm: "thread"}, Task{Addr: tasks[0].Addr, PID: 2, KernelThread: true})
	got, st, err := k.SocketsWithStats(tasks)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i].Addr = 0
	}
	want := []Socket{
		{Family: "inet6", Proto: "tcp", LocalAddr: "::", LocalPort: 80, RemoteAddr: "::", State: "LISTEN", Inode: 1001, FD: 2, PID: 100, Comm: tasks[0].Comm},
		{Family: "unix", Proto: "unix", LocalAddr: "/run/ctl.sock", State: "LISTEN", Inode: 1002, FD: 3, PID: 100, Comm: tasks[0].Comm},
		{Family: "inet", Proto: "udp", LocalAddr: "10.0.0.2", LocalPort: 123, RemoteAddr: "10.0.0.1", RemotePort: 123, State: "ESTABLISHED", Inode: 2001, FD: 2, PID: 200, Comm: tasks[1].Comm},
		{Family: "inet", Proto: "tcp", LocalAddr: "127.0.0.1", LocalPort: 4000, RemoteAddr: "127.0.0.1", RemotePort: 80, State: "ESTABLISHED", Inode: 2002, FD: 3, PID: 200, Comm: tasks[1].Comm},
		{Family: "inet", Proto: "raw", LocalAddr: "0.0.0.0", RemoteAddr: "0.0.0.0", Inode: 2003, FD: 4, PID: 200, Comm: tasks[1].Comm},
		{Family: "unix", Proto: "unix", LocalAddr: `@abstract\x01`, Inode: 2004, FD: 5, PID: 200, Comm: tasks[1].Comm},
		{Family: "netlink", Proto: "netlink", Inode: 2005, FD: 6, PID: 200, Comm: tasks[1].Comm},
		{Family: "family 99", Proto: "proto 0", Inode: 2006, FD: 7, PID: 200, Comm: tasks[1].Comm},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}
	if st.Skipped != 2 || !strings.Contains(st.FirstError, "does not point back") {
		t.Errorf("stats %+v; want 2 skipped (broken back pointer, no sock)", st)
	}
}

func TestSocketsHostile(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mutate    func(h *heap, task uint64)
		skipped   int // -1: any
		truncated int
	}{
		{"files not a kernel pointer", func(h *heap, task uint64) { h.u64(task+0x40, 0x1234) }, 1, 0},
		{"files unmapped", func(h *heap, task uint64) { h.u64(task+0x40, 0xffffc90000000000) }, 1, 0},
		{"fdt not a kernel pointer", func(h *heap, task uint64) {
			h.u64(h.read64(task+0x40)+0x20, 0x7fff00000000)
		}, 1, 0},
		{"fd array unmapped", func(h *heap, task uint64) {
			h.u64(h.read64(h.read64(task+0x40)+0x20)+8, 0xffffc90000000000)
		}, 1, 0},
		{"absurd max_fds", func(h *heap, task uint64) {
			h.u32(h.read64(h.read64(task+0x40)+0x20), 0xffffffff)
		}, -1, 1}, // the slots past the real ones hold whatever follows
		{"file pointer garbage", func(h *heap, task uint64) {
			arr := h.read64(h.read64(h.read64(task+0x40)+0x20) + 8)
			h.u64(arr+16, 0x4141414141414141)
		}, 1, 0},
		{"file unmapped", func(h *heap, task uint64) {
			arr := h.read64(h.read64(h.read64(task+0x40)+0x20) + 8)
			h.u64(arr+16, 0xffffc90000000000)
		}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, m := sockKernel(t)
			tasks := sockHeap(t, k, m, map[int][]sockSpec{
				7: {{family: afInet, typ: sockStream, proto: 6, state: 10, local: []byte{0, 0, 0, 0}, lport: 22, ino: 1}},
			})
			tc.mutate(&heap{m: m}, tasks[0].Addr)
			_, st, err := k.SocketsWithStats(tasks)
			if err != nil {
				t.Fatal(err)
			}
			if tc.skipped >= 0 && st.Skipped != tc.skipped || st.Truncated != tc.truncated {
				t.Errorf("stats %+v; want %d skipped, %d truncated", st, tc.skipped, tc.truncated)
			}
		})
	}
}

func (h *heap) read64(va uint64) uint64 { return binary.LittleEndian.Uint64(h.phys(va)) }

func TestSocketsNoLayout(t *testing.T) {
	k, _ := scKernel(t)
	empty, err := btf.NewBuilder([]btf.Type{&btf.Int{Name: "int", Size: 4}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := scProfile()
	p.BTF = builtBTF(t, empty)
	k.Profile = p
	if _, err := k.Sockets([]Task{{Addr: testText + scSlide, PID: 1}}); err == nil {
		t.Error("no error without the structures in BTF")
	}
}

// FuzzSockets runs the socket walk over hostile memory: the fuzzer's bytes
// replace the heap of tasks, file tables, files, sockets and socks. It must
// not panic, and it reads at most maxFDs slots per process.
func FuzzSockets(f *testing.F) {
	k, m := sockKernel(f)
	tasks := sockHeap(f, k, m, map[int][]sockSpec{
		1: {{family: afInet, typ: sockStream, proto: 6, state: 10, local: []byte{0, 0, 0, 0}, lport: 80, ino: 1}},
		2: {{family: afUnix, typ: sockStream, state: 10, unixPath: "/x", ino: 2}, {family: afInet6, typ: sockDgram, proto: 17, local: v6(1), ino: 3}},
	})
	heap := append([]byte(nil), m[scPhys+offObjects:scPhys+offObjects+0x1000]...)
	f.Add(heap)
	f.Add(heap[:0x200])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 0x4000 {
			data = data[:0x4000]
		}
		km := k.withPatches(patch{scPhys + offObjects, data})
		socks, st, err := km.SocketsWithStats(tasks)
		if err != nil {
			t.Fatal(err)
		}
		if len(socks) > 2*maxFDs || st.Truncated > len(tasks) {
			t.Fatalf("%d sockets, stats %+v", len(socks), st)
		}
	})
}

// BenchmarkSockets lists the sockets of every process in a real guest's
// dump (the process list is taken once, outside the timing).
func BenchmarkSockets(b *testing.B) {
	k := realDumpKernel(b)
	tasks := realTasks(b, k)
	var n int
	for b.Loop() {
		s, err := k.Sockets(tasks)
		if err != nil {
			b.Fatal(err)
		}
		n = len(s)
	}
	b.ReportMetric(float64(len(tasks)), "tasks")
	b.ReportMetric(float64(n), "sockets")
}
