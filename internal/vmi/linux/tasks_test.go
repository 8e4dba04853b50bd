package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/gatevisor/gatevisor/internal/vmi"
)

// A synthetic kernel: BTF with the structures the walks read (at offsets
// unlike the real kernel's, so nothing hard-coded can pass), kallsyms, and
// guest memory with page tables for a direct map and the module area.

const (
	synthDirectMap = 0xffff888000000000
	synthMemSize   = 8 << 20
	synthModPA     = 4 << 20 // module area pages: physical 4-6 MiB
	synthPercpuPA  = 6 << 20 // CPU 0's per-CPU area
)

// synthBTF builds the structure layouts.
func synthBTF(t testing.TB) *BTF {
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	i32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	u64 := &btf.Int{Name: "long unsigned int", Size: 8}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Char}
	ptr := &btf.Pointer{Target: &btf.Void{}}
	arr := func(elem btf.Type, n uint32) *btf.Array { return &btf.Array{Index: u32, Type: elem, Nelems: n} }
	type m struct {
		name string
		off  uint32
		typ  btf.Type
	}
	st := func(name string, size uint32, ms ...m) *btf.Struct {
		s := &btf.Struct{Name: name, Size: size}
		for _, x := range ms {
			s.Members = append(s.Members, btf.Member{Name: x.name, Type: x.typ, Offset: btf.Bits(8 * x.off)})
		}
		return s
	}
	listHead := st("list_head", 16, m{"next", 0, ptr}, m{"prev", 8, ptr})
	hlistNode := st("hlist_node", 16, m{"next", 0, ptr}, m{"pprev", 8, ptr})
	hlistHead := st("hlist_head", 8, m{"first", 0, ptr})
	rbNode := st("rb_node", 24, m{"__rb_parent_color", 0, u64}, m{"rb_right", 8, ptr}, m{"rb_left", 16, ptr})
	rbRoot := st("rb_root", 8, m{"rb_node", 0, ptr})
	rbCached := st("rb_root_cached", 16, m{"rb_root", 0, rbRoot}, m{"rb_leftmost", 8, ptr})
	se := st("sched_entity", 96, m{"load", 0, u64}, m{"run_node", 24, rbNode}, m{"my_q", 80, ptr})
	task := st("task_struct", 1024,
		m{"flags", 4, u32}, m{"__state", 12, u32}, m{"se", 32, se},
		m{"", 128, st("", 64, m{"mm", 8, ptr})}, // an anonymous member, as randomize_layout makes
		m{"pid_links", 200, arr(hlistNode, 4)}, m{"tasks", 272, listHead}, m{"exit_state", 290, i32},
		m{"pid", 300, i32}, m{"tgid", 304, i32}, m{"real_parent", 320, ptr}, m{"thread_node", 336, listHead},
		m{"start_time", 360, u64}, m{"cred", 400, ptr}, m{"comm", 416, arr(char, 16)}, m{"signal", 440, ptr})
	signal := st("signal_struct", 64, m{"nr_threads", 12, i32}, m{"thread_head", 24, listHead})
	cred := st("cred", 48, m{"usage", 0, u64}, m{"uid", 12, u32}, m{"gid", 16, u32}, m{"euid", 28, u32})
	mm := st("mm_struct", 256, m{"", 0, st("", 256, m{"pgd", 72, ptr}, m{"exe_file", 200, ptr})})
	path := st("path", 16, m{"mnt", 0, ptr}, m{"dentry", 8, ptr})
	file := st("file", 64, m{"f_path", 24, path})
	qstr := st("qstr", 16, m{"", 0, &btf.Union{Size: 8, Members: []btf.Member{
		{Name: "", Type: st("", 8, m{"hash", 0, u32}, m{"len", 4, u32})},
		{Name: "hash_len", Type: u64}}}}, m{"name", 8, ptr})
	dentry := st("dentry", 96, m{"d_flags", 0, u32}, m{"d_name", 16, qstr}, m{"d_parent", 40, ptr})
	vfsmount := st("vfsmount", 24, m{"mnt_sb", 0, ptr}, m{"mnt_root", 8, ptr})
	mount := st("mount", 128, m{"mnt_mountpoint", 8, ptr}, m{"mnt", 24, vfsmount}, m{"mnt_parent", 64, ptr})
	upid := st("upid", 16, m{"nr", 0, i32}, m{"ns", 8, ptr})
	pid := st("pid", 96, m{"count", 0, u32}, m{"level", 4, u32}, m{"tasks", 16, arr(hlistHead, 4)}, m{"numbers", 96, arr(upid, 0)})
	xarray := st("xarray", 16, m{"xa_flags", 4, u32}, m{"xa_head", 8, ptr})
	idr := st("idr", 24, m{"idr_rt", 0, xarray}, m{"idr_base", 16, u32})
	pidNS := st("pid_namespace", 64, m{"pid_allocated", 0, u32}, m{"idr", 16, idr})
	xaNode := st("xa_node", 576, m{"shift", 0, u8}, m{"offset", 1, u8}, m{"slots", 40, arr(ptr, 64)})
	cfsRQ := st("cfs_rq", 128, m{"nr_running", 0, u32}, m{"tasks_timeline", 48, rbCached})
	rq := st("rq", 512, m{"nr_running", 4, u32}, m{"cfs", 64, cfsRQ}, m{"curr", 400, ptr})
	kobject := st("kobject", 64, m{"name", 0, ptr}, m{"entry", 8, listHead})
	mkobj := st("module_kobject", 96, m{"kobj", 0, kobject}, m{"mod", 64, ptr})
	kset := st("kset", 96, m{"list", 0, listHead}, m{"kobj", 24, kobject})
	layout := st("module_layout", 80, m{"base", 0, ptr}, m{"size", 8, u32}, m{"text_size", 12, u32})
	module := st("module", 512, m{"state", 0, u32}, m{"list", 8, listHead}, m{"name", 24, arr(char, 56)},
		m{"mkobj", 80, mkobj}, m{"core_layout", 320, layout}, m{"init_layout", 400, layout})
	b, err := btf.NewBuilder([]btf.Type{task, signal, cred, mm, file, dentry, mount, pid, pidNS, xaNode,
		rq, module, kset, hlistNode, rbNode, rbRoot, rbCached, xarray, idr, upid, mkobj, kobject, layout, qstr, path, vfsmount, listHead}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return builtBTF(t, b)
}

// synth is a synthetic guest being built.
type synth struct {
	t    testing.TB
	mem  flatMem
	prof *Profile
	next uint64 // next free physical address for objects
	mod  uint64 // next free module-area address
	syms map[string]uint64
}

func (s *synth) va(pa uint64) uint64 { return synthDirectMap + pa }

func (s *synth) pa(va uint64) uint64 {
	switch {
	case va >= modulesVAddr && va < modulesVAddr+2<<20:
		return synthModPA + va - modulesVAddr
	case va >= synthDirectMap && va < synthDirectMap+synthMemSize:
		return va - synthDirectMap
	}
	s.t.Fatalf("synth: %#x is not mapped", va)
	return 0
}

func (s *synth) alloc(size uint64) uint64 {
	pa := (s.next + 63) &^ 63
	s.next = pa + size
	if s.next > synthModPA {
		s.t.Fatal("synth: out of memory")
	}
	return s.va(pa)
}

func (s *synth) allocModule(size uint64) uint64 {
	va := (s.mod + 63) &^ 63
	s.mod = va + size
	return va
}

func (s *synth) off(path string) uint64 {
	o, err := s.prof.FieldOffset(path)
	if err != nil {
		s.t.Fatal(err)
	}
	return o
}

func (s *synth) put64(va, v uint64) { binary.LittleEndian.PutUint64(s.mem[s.pa(va):], v) }
func (s *synth) put32(va uint64, v uint32) {
	binary.LittleEndian.PutUint32(s.mem[s.pa(va):], v)
}
func (s *synth) putBytes(va uint64, b []byte) { copy(s.mem[s.pa(va):], b) }
func (s *synth) get64(va uint64) uint64       { return binary.LittleEndian.Uint64(s.mem[s.pa(va):]) }

// listInit makes the list_head at head empty; listAdd appends node.
func (s *synth) listInit(head uint64) { s.put64(head, head); s.put64(head+8, head) }
func (s *synth) listAdd(head, node uint64) {
	prev := s.get64(head + 8)
	s.put64(node, head)
	s.put64(node+8, prev)
	s.put64(prev, node)
	s.put64(head+8, node)
}

func newSynth(t testing.TB) *synth {
	s := &synth{t: t, mem: make(flatMem, synthMemSize), next: 0x10000, mod: modulesVAddr + 0x1000, syms: map[string]uint64{}}
	s.prof = &Profile{BTF: synthBTF(t)}
	// Page tables: PML4 at 0x1000; the direct map (2 MiB pages over all
	// memory) through 0x2000/0x3000; the module area's first 2 MiB through
	// 0x4000/0x5000, as 4 KiB pages with a hole (one page not present).
	le := binary.LittleEndian
	pml4, pdptD, pdD, pdptM, pdM, ptM := uint64(0x1000), uint64(0x2000), uint64(0x3000), uint64(0x4000), uint64(0x5000), uint64(0x6000)
	le.PutUint64(s.mem[pml4+8*((synthDirectMap>>39)&511):], pdptD|3)
	le.PutUint64(s.mem[pdptD+8*((synthDirectMap>>30)&511):], pdD|3)
	for i := uint64(0); i < synthMemSize>>21; i++ {
		le.PutUint64(s.mem[pdD+8*(((synthDirectMap>>21)&511)+i):], i<<21|0x83)
	}
	le.PutUint64(s.mem[pml4+8*((modulesVAddr>>39)&511):], pdptM|3)
	le.PutUint64(s.mem[pdptM+8*((modulesVAddr>>30)&511):], pdM|3)
	le.PutUint64(s.mem[pdM+8*((modulesVAddr>>21)&511):], ptM|3)
	for i := uint64(0); i < 512; i++ {
		if i != 300 {
			le.PutUint64(s.mem[ptM+8*i:], (synthModPA+i<<12)|3)
		}
	}
	return s
}

func (s *synth) kernel() *Kernel {
	names := make([]string, 0, len(s.syms))
	for n := range s.syms {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return s.syms[names[i]] < s.syms[names[j]] })
	var syms []Symbol
	for _, n := range names {
		syms = append(syms, Symbol{Name: n, Addr: s.syms[n], Type: 'D'})
	}
	s.prof.Symbols = kallsymsOf(syms)
	return &Kernel{Profile: s.prof, Mem: s.mem, AS: &vmi.AddressSpace{Mem: s.mem, CR3: 0x1000, Cache: vmi.NewTranslationCache()}}
}

// scene is the synthetic guest's contents.
type scene struct {
	*synth
	initTask        uint64
	tasks           map[int]uint64 // pid -> task_struct
	modules         map[string]uint64
	wantTasks       []Task // leaders, in list order
	wantThreads     int
	runnable        []int // pids on the run queue
	modulesHead     uint64
	ksetList        uint64
	pidNodeChildren []uint64
}

type synthProc struct {
	pid, ppid   int
	comm, exe   string
	uid, gid    uint32
	euid        uint32
	state, exit uint32
	kthread     bool
	threads     []int // extra threads' pids
}

// buildScene makes init_task, processes with threads, a PID IDR two levels
// deep, a run queue and three modules in list and sysfs.
func buildScene(t testing.TB) *scene {
	s := &scene{synth: newSynth(t), tasks: map[int]uint64{}, modules: map[string]uint64{}}
	taskSize := uint64(1024)
	s.initTask = s.alloc(taskSize)
	s.syms["init_task"] = s.initTask
	s.listInit(s.initTask + s.off("task_struct.tasks"))
	s.put32(s.initTask+s.off("task_struct.pid"), 0)
	s.putBytes(s.initTask+s.off("task_struct.comm"), []byte("swapper/0"))
	s.tasks[0] = s.initTask

	pob := s.alloc(8)
	s.syms["page_offset_base"] = pob
	s.put64(pob, synthDirectMap)

	// Files: "/" is rootfs's root; /bin/busybox on it; /tmp is a tmpfs
	// mounted on rootfs's /tmp dentry, holding gv-mark.
	dentry := func(name string, parent uint64) uint64 {
		d := s.alloc(96)
		if parent == 0 {
			parent = d
		}
		s.put64(d+s.off("dentry.d_parent"), parent)
		nm := s.alloc(uint64(len(name)) + 1)
		s.putBytes(nm, []byte(name))
		s.put32(d+s.off("dentry.d_name")+s.off("qstr.len"), uint32(len(name)))
		s.put64(d+s.off("dentry.d_name")+s.off("qstr.name"), nm)
		return d
	}
	mount := func(root, mountpoint, parent uint64) uint64 {
		m := s.alloc(128)
		if parent == 0 {
			parent = m
		}
		s.put64(m+s.off("mount.mnt")+s.off("vfsmount.mnt_root"), root)
		s.put64(m+s.off("mount.mnt_mountpoint"), mountpoint)
		s.put64(m+s.off("mount.mnt_parent"), parent)
		return m
	}
	root := dentry("/", 0)
	rootMnt := mount(root, root, 0)
	bin := dentry("bin", root)
	busybox := dentry("busybox", bin)
	tmpOnRoot := dentry("tmp", root)
	tmpRoot := dentry("/", 0)
	tmpMnt := mount(tmpRoot, tmpOnRoot, rootMnt)
	mark := dentry("gv-mark", tmpRoot)
	file := func(mnt, d uint64) uint64 {
		f := s.alloc(64)
		s.put64(f+s.off("file.f_path")+s.off("path.mnt"), mnt+s.off("mount.mnt"))
		s.put64(f+s.off("file.f_path")+s.off("path.dentry"), d)
		return f
	}
	exes := map[string]uint64{"/bin/busybox": file(rootMnt, busybox), "/tmp/gv-mark": file(tmpMnt, mark)}

	procs := []synthProc{
		{pid: 1, ppid: 0, comm: "init", exe: "/bin/busybox", state: 1},
		{pid: 2, ppid: 0, comm: "kthreadd", kthread: true, state: 1},
		{pid: 3, ppid: 2, comm: "kworker/0:0", kthread: true, state: 0x402},
		{pid: 70, ppid: 1, comm: "httpd", exe: "/bin/busybox", state: 1, uid: 33, gid: 33, euid: 33, threads: []int{71, 72}},
		{pid: 100, ppid: 1, comm: "gv-mark", exe: "/tmp/gv-mark", state: 0, uid: 1000, gid: 1000, euid: 0},
		{pid: 130, ppid: 70, comm: "zombie", state: 0x80, exit: 0x20},
		{pid: 131, ppid: 1, comm: "stopped", exe: "/bin/busybox", state: 4},
	}
	tasksHead := s.initTask + s.off("task_struct.tasks")
	newTask := func(p synthProc, pid int, leader uint64) uint64 {
		tk := s.alloc(taskSize)
		s.tasks[pid] = tk
		s.put32(tk+s.off("task_struct.pid"), uint32(pid))
		s.put32(tk+s.off("task_struct.tgid"), uint32(p.pid))
		s.put32(tk+s.off("task_struct.__state"), p.state)
		s.put32(tk+s.off("task_struct.exit_state"), p.exit)
		s.put64(tk+s.off("task_struct.start_time"), uint64(pid)*1000)
		s.putBytes(tk+s.off("task_struct.comm"), []byte(p.comm))
		s.put64(tk+s.off("task_struct.real_parent"), s.tasks[p.ppid])
		c := s.alloc(48)
		s.put32(c+s.off("cred.uid"), p.uid)
		s.put32(c+s.off("cred.gid"), p.gid)
		s.put32(c+s.off("cred.euid"), p.euid)
		s.put64(tk+s.off("task_struct.cred"), c)
		if p.kthread {
			s.put32(tk+s.off("task_struct.flags"), pfKthread)
		} else if p.exit == 0 {
			mm := s.alloc(256)
			s.put64(mm+s.off("mm_struct.pgd"), s.va(0x1000))
			s.put64(mm+s.off("mm_struct.exe_file"), exes[p.exe])
			s.put64(tk+s.off("task_struct.mm"), mm)
		}
		if leader == 0 {
			sig := s.alloc(64)
			s.put32(sig+s.off("signal_struct.nr_threads"), uint32(1+len(p.threads)))
			s.listInit(sig + s.off("signal_struct.thread_head"))
			s.put64(tk+s.off("task_struct.signal"), sig)
		} else {
			s.put64(tk+s.off("task_struct.signal"), s.get64(leader+s.off("task_struct.signal")))
		}
		sig := s.get64(tk + s.off("task_struct.signal"))
		s.listAdd(sig+s.off("signal_struct.thread_head"), tk+s.off("task_struct.thread_node"))
		return tk
	}
	for _, p := range procs {
		tk := newTask(p, p.pid, 0)
		s.listAdd(tasksHead, tk+s.off("task_struct.tasks"))
		for _, th := range p.threads {
			newTask(p, th, tk)
		}
		s.wantThreads += 1 + len(p.threads)
		want := Task{Addr: tk, PID: p.pid, TGID: p.pid, PPID: p.ppid, UID: p.uid, GID: p.gid, EUID: p.euid,
			Comm: p.comm, Exe: p.exe, StartTime: uint64(p.pid) * 1000, Threads: 1 + len(p.threads), KernelThread: p.kthread}
		if !p.kthread && p.exit == 0 {
			want.PGD = 0x1000
		}
		want.State = stateLetter(p.state, p.exit)
		s.wantTasks = append(s.wantTasks, want)
	}

	// The PID IDR: a root node of shift 6 whose slots 0, 1 and 2 hold leaf
	// nodes for pids 0-63, 64-127 and 128-191.
	ns := s.alloc(64)
	s.syms["init_pid_ns"] = ns
	rootNode := s.alloc(576)
	s.put64(ns+s.off("pid_namespace.idr")+s.off("idr.idr_rt")+s.off("xarray.xa_head"), rootNode|2)
	s.mem[s.pa(rootNode+s.off("xa_node.shift"))] = 6
	slots := s.off("xa_node.slots")
	for i := uint64(0); i < 3; i++ {
		leaf := s.alloc(576)
		s.put64(rootNode+slots+8*i, leaf|2)
		s.pidNodeChildren = append(s.pidNodeChildren, leaf)
	}
	s.put64(rootNode+slots+8*5, 0x406) // XA_ZERO_ENTRY: skipped
	for pidNr, tk := range s.tasks {
		if pidNr == 0 {
			continue
		}
		p := s.alloc(112)
		s.put32(p+s.off("pid.numbers")+s.off("upid.nr"), uint32(pidNr))
		link := tk + s.off("task_struct.pid_links")
		s.put64(p+s.off("pid.tasks"), link)
		s.put64(link+8, p+s.off("pid.tasks"))
		leaf := s.pidNodeChildren[pidNr/64]
		s.put64(leaf+slots+8*uint64(pidNr%64), p)
	}

	// One CPU: rq->curr is gv-mark; the CFS tree holds init, httpd and a
	// group entity whose queue holds thread 71.
	s.syms["runqueues"] = 0x2000 // a per-CPU offset, not a kernel address
	pco := s.alloc(8 * 4)
	s.syms["__per_cpu_offset"] = pco
	s.put64(pco, s.va(synthPercpuPA)-0x2000)
	nr := s.alloc(4)
	s.syms["nr_cpu_ids"] = nr
	s.put32(nr, 1)
	online := s.alloc(8)
	s.syms["__cpu_online_mask"] = online
	s.put64(online, 1)
	rqAddr := s.va(synthPercpuPA)
	s.put64(rqAddr+s.off("rq.curr"), s.tasks[100])
	seOf := func(pid int) uint64 { return s.tasks[pid] + s.off("task_struct.se") }
	runNode := s.off("sched_entity.run_node")
	group := s.alloc(96)
	groupQ := s.alloc(128)
	s.put64(group+s.off("sched_entity.my_q"), groupQ)
	timeline := s.off("cfs_rq.tasks_timeline") + s.off("rb_root_cached.rb_root") + s.off("rb_root.rb_node")
	s.put64(rqAddr+s.off("rq.cfs")+timeline, seOf(70)+runNode)
	s.put64(seOf(70)+runNode+s.off("rb_node.rb_left"), seOf(1)+runNode)
	s.put64(seOf(70)+runNode+s.off("rb_node.rb_right"), group+runNode)
	s.put64(groupQ+timeline, seOf(71)+runNode)
	s.runnable = []int{1, 70, 71, 100}

	// Modules: three on the list and in sysfs, plus a built-in module's
	// kobject with no struct module.
	s.modulesHead = s.alloc(16)
	s.syms["modules"] = s.modulesHead
	s.listInit(s.modulesHead)
	kset := s.alloc(96)
	ksetPtr := s.alloc(8)
	s.syms["module_kset"] = ksetPtr
	s.put64(ksetPtr, kset)
	s.ksetList = kset + s.off("kset.list")
	s.listInit(s.ksetList)
	builtin := s.alloc(96)
	s.listAdd(s.ksetList, builtin+s.off("module_kobject.kobj")+s.off("kobject.entry"))
	for i, name := range []string{"virtio_ring", "virtio_net", "evdev"} {
		base := s.allocModule(0x3000)
		mod := base + 0x1040 // struct module in the module's data
		s.modules[name] = mod
		s.put32(mod+s.off("module.state"), 0)
		s.putBytes(mod+s.off("module.name"), []byte(name))
		s.put64(mod+s.off("module.core_layout")+s.off("module_layout.base"), base)
		s.put32(mod+s.off("module.core_layout")+s.off("module_layout.size"), 0x3000)
		mk := mod + s.off("module.mkobj")
		s.put64(mk+s.off("module_kobject.mod"), mod)
		s.listAdd(s.modulesHead, mod+s.off("module.list"))
		s.listAdd(s.ksetList, mk+s.off("module_kobject.kobj")+s.off("kobject.entry"))
		_ = i
	}
	return s
}

func TestTasksSynthetic(t *testing.T) {
	s := buildScene(t)
	k := s.kernel()
	got, err := k.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s.wantTasks) {
		t.Errorf("Tasks (-want +got):\n-%+v\n+%+v", s.wantTasks, got)
	}
	threads, err := k.Threads()
	if err != nil || len(threads) != s.wantThreads {
		t.Errorf("Threads = %d, %v; want %d", len(threads), err, s.wantThreads)
	}
	for _, th := range threads {
		if th.PID == 71 && (th.TGID != 70 || th.Comm != "httpd" || th.Exe != "/bin/busybox") {
			t.Errorf("thread 71 = %+v", th)
		}
	}
	idr, err := k.PIDNamespaceTasks()
	if err != nil || len(idr) != s.wantThreads {
		t.Errorf("PIDNamespaceTasks = %d tasks, %v; want %d", len(idr), err, s.wantThreads)
	}
	rq, err := k.RunQueueTasks()
	var pids []int
	for _, tk := range rq {
		pids = append(pids, tk.PID)
	}
	sort.Ints(pids)
	if err != nil || !reflect.DeepEqual(pids, s.runnable) {
		t.Errorf("RunQueueTasks pids = %v, %v; want %v", pids, err, s.runnable)
	}
	if h, err := CrossViewProcesses(k); err != nil || len(h) != 0 {
		t.Errorf("CrossViewProcesses on a clean scene = %+v, %v", h, err)
	}
}

func TestStateLetter(t *testing.T) {
	for _, c := range []struct {
		state, exit uint32
		want        string
	}{
		{0, 0, "R"}, {1, 0, "S"}, {2, 0, "D"}, {4, 0, "T"}, {8, 0, "t"}, {0x80, 0x10, "X"}, {0x80, 0x20, "Z"},
		{0x40, 0, "P"}, {0x402, 0, "I"}, {0x1000, 0, "D"}, {0x101, 0, "S"}, {0x102, 0, "D"},
	} {
		if got := stateLetter(c.state, c.exit); got != c.want {
			t.Errorf("stateLetter(%#x, %#x) = %s; want %s", c.state, c.exit, got, c.want)
		}
	}
}

// TestHiddenProcess unlinks tasks from the task list, as a rootkit does,
// and checks the cross-view report.
func TestHiddenProcess(t *testing.T) {
	s := buildScene(t)
	unlink := func(node uint64) {
		next, prev := s.get64(node), s.get64(node+8)
		s.put64(prev, next)
		s.put64(next+8, prev)
		s.put64(node, listPoison1)
		s.put64(node+8, listPoison2)
	}
	unlink(s.tasks[100] + s.off("task_struct.tasks"))
	unlink(s.tasks[70] + s.off("task_struct.tasks")) // its threads go with it
	k := s.kernel()
	h, err := CrossViewProcesses(k)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range h {
		got = append(got, fmt.Sprintf("%d %s seen=%v missing=%v", x.PID, x.Name, x.SeenIn, x.MissingFrom))
	}
	want := []string{
		"70 httpd seen=[pid_idr runqueue] missing=[tasks]",
		"71 httpd seen=[pid_idr runqueue] missing=[tasks]",
		"72 httpd seen=[pid_idr] missing=[tasks]",
		"100 gv-mark seen=[pid_idr runqueue] missing=[tasks]",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CrossViewProcesses (-want +got):\n-%s\n+%s", strings.Join(want, "\n-"), strings.Join(got, "\n+"))
	}
}

// TestAdversarialTasks corrupts the scene and checks for bounded errors.
func TestAdversarialTasks(t *testing.T) {
	for _, c := range []struct {
		name    string
		corrupt func(s *scene)
		check   func(t *testing.T, k *Kernel)
	}{
		{"task list cycle", func(s *scene) {
			n := s.tasks[70] + s.off("task_struct.tasks")
			s.put64(n, s.tasks[2]+s.off("task_struct.tasks"))
		}, func(t *testing.T, k *Kernel) {
			tasks, err := k.Tasks()
			if !errors.Is(err, vmi.ErrListCycle) || !errors.Is(err, ErrIncomplete) || len(tasks) != 4 {
				t.Errorf("Tasks = %d tasks, %v", len(tasks), err)
			}
			if _, err := CrossViewProcesses(k); !errors.Is(err, ErrIncomplete) {
				t.Errorf("CrossViewProcesses over an incomplete task list: %v", err)
			}
		}},
		{"unmapped task", func(s *scene) {
			s.put64(s.tasks[70]+s.off("task_struct.tasks"), 0xffffc90000000000)
		}, func(t *testing.T, k *Kernel) {
			tasks, err := k.Tasks()
			var ie *IncompleteError
			if !errors.As(err, &ie) || ie.Skipped != 1 || len(tasks) != 4 {
				t.Errorf("Tasks = %d tasks, %v", len(tasks), err)
			}
		}},
		{"pid out of range is skipped", func(s *scene) {
			s.put32(s.tasks[3]+s.off("task_struct.pid"), 0x7fffffff)
		}, func(t *testing.T, k *Kernel) {
			tasks, err := k.Tasks()
			var ie *IncompleteError
			if !errors.As(err, &ie) || ie.Skipped != 1 || len(tasks) != 6 {
				t.Errorf("Tasks = %d tasks, %v", len(tasks), err)
			}
		}},
		{"comm without NUL, dentry loop, huge name", func(s *scene) {
			s.putBytes(s.tasks[1]+s.off("task_struct.comm"), []byte("0123456789abcdefXYZ"))
			f := s.get64(s.get64(s.tasks[100]+s.off("task_struct.mm")) + s.off("mm_struct.exe_file"))
			d := s.get64(f + s.off("file.f_path") + s.off("path.dentry"))
			d2 := s.alloc(96)
			s.put64(d+s.off("dentry.d_parent"), d2)
			s.put64(d2+s.off("dentry.d_parent"), d)
			s.put32(d2+s.off("dentry.d_name")+s.off("qstr.len"), 1)
			s.put64(d2+s.off("dentry.d_name")+s.off("qstr.name"), d2)
			f2 := s.get64(s.get64(s.tasks[131]+s.off("task_struct.mm")) + s.off("mm_struct.exe_file"))
			s.put64(f2+s.off("file.f_path")+s.off("path.dentry"), d2)
			s.put32(d2+s.off("dentry.d_name")+s.off("qstr.len"), 1<<30)
		}, func(t *testing.T, k *Kernel) {
			tasks, err := k.Tasks()
			if err != nil {
				t.Fatal(err)
			}
			for _, tk := range tasks {
				switch tk.PID {
				case 1:
					if tk.Comm != "0123456789abcdef" {
						t.Errorf("comm = %q", tk.Comm)
					}
				case 100, 131:
					if tk.Exe != "" {
						t.Errorf("pid %d exe = %q through a dentry loop", tk.PID, tk.Exe)
					}
				}
			}
		}},
		{"xarray cycle and bad shift", func(s *scene) {
			slots := s.off("xa_node.slots")
			s.put64(s.pidNodeChildren[1]+slots+8*63, s.pidNodeChildren[0]|2) // a leaf pointing at a node
			s.mem[s.pa(s.pidNodeChildren[2])] = 12                           // wrong shift
		}, func(t *testing.T, k *Kernel) {
			tasks, err := k.PIDNamespaceTasks()
			if !errors.Is(err, ErrIncomplete) || len(tasks) == 0 {
				t.Errorf("PIDNamespaceTasks = %d, %v", len(tasks), err)
			}
		}},
		{"xarray self-reference", func(s *scene) {
			slots := s.off("xa_node.slots")
			root := s.get64(s.syms["init_pid_ns"]+s.off("pid_namespace.idr")+s.off("idr.idr_rt")+s.off("xarray.xa_head")) &^ 3
			s.put64(root+slots, root|2)
		}, func(t *testing.T, k *Kernel) {
			if _, err := k.PIDNamespaceTasks(); !errors.Is(err, vmi.ErrListCycle) && !errors.Is(err, ErrInconsistent) {
				t.Errorf("PIDNamespaceTasks: %v", err)
			}
		}},
		{"run queue cycle", func(s *scene) {
			n := s.tasks[1] + s.off("task_struct.se") + s.off("sched_entity.run_node")
			s.put64(n+s.off("rb_node.rb_left"), s.tasks[70]+s.off("task_struct.se")+s.off("sched_entity.run_node"))
		}, func(t *testing.T, k *Kernel) {
			tasks, err := k.RunQueueTasks()
			if !errors.Is(err, vmi.ErrListCycle) || len(tasks) == 0 {
				t.Errorf("RunQueueTasks = %d, %v", len(tasks), err)
			}
		}},
		{"absurd nr_cpu_ids", func(s *scene) {
			s.put32(s.syms["nr_cpu_ids"], 1<<30)
		}, func(t *testing.T, k *Kernel) {
			if _, err := k.RunQueueTasks(); !errors.Is(err, ErrInconsistent) {
				t.Errorf("RunQueueTasks: %v", err)
			}
			if h, err := CrossViewProcesses(k); err != nil || len(h) != 0 {
				t.Errorf("CrossViewProcesses without run queues = %v, %v", h, err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := buildScene(t)
			c.corrupt(s)
			c.check(t, s.kernel())
		})
	}
}

func TestTaskLayoutErrors(t *testing.T) {
	p := &Profile{BTF: synthBTF(t)}
	var empty btf.Builder
	k := &Kernel{Profile: &Profile{BTF: builtBTF(t, &empty), Symbols: kallsymsOf(nil)}}
	if _, err := k.Tasks(); !errors.Is(err, ErrNoField) {
		t.Errorf("Tasks without BTF layouts: %v", err)
	}
	if _, err := k.Modules(); !errors.Is(err, ErrNoField) {
		t.Errorf("Modules without BTF layouts: %v", err)
	}
	if l := layoutForTasks(p); l.err != nil || l.pidErr != nil || l.rqErr != nil {
		t.Errorf("synthetic layout: %v %v %v", l.err, l.pidErr, l.rqErr)
	}
}
