package linux

import (
	"encoding/binary"
	"testing"
)

// Function and object addresses of the detail scene's kernel: the d_dname
// functions are compared by symbol, never called.
const (
	dsPipefsDname  = 0xffffffff81100000
	dsSockfsDname  = 0xffffffff81100100
	dsAnonDname    = 0xffffffff81100200
	dsSimpleDname  = 0xffffffff81100300
	dsNSDname      = 0xffffffff81100400
	dsOtherDname   = 0xffffffff81100500
	dsSocketFops   = 0xffffffff82000000
	dsUserStack    = 0x7ffd00000000 // each process's argument pages start here
	dsSwapEntry    = 0x3a5a00       // a non-present PTE: a swap entry
	detailTaskSize = 2048
)

// detailScene is a synthetic guest with processes whose usage, memory and
// descriptors are known.
type detailScene struct {
	*synth
	initTask uint64
	tasks    map[int]uint64
	dops     map[string]uint64 // d_dname function -> a dentry_operations using it
	// mounts and directories of the file tree
	rootMnt, rootDentry, pipeMnt uint64
	dirs                         map[string]uint64
}

// allocPage returns a fresh zeroed page's kernel virtual address.
func (s *detailScene) allocPage() uint64 {
	s.next = (s.next + 4095) &^ 4095
	return s.alloc(4096)
}

// mapUser maps user page va to pte (the whole entry) in the PML4 at pml4.
func (s *detailScene) mapUser(pml4, va, pte uint64) {
	table := pml4
	for level := 4; level > 1; level-- {
		slot := table + 8*((va>>(12+9*(level-1)))&511)
		next := s.get64(slot)
		if next == 0 {
			next = s.pa(s.allocPage()) | 7
			s.put64(slot, next)
		}
		table = s.va(next &^ 0xfff)
	}
	s.put64(table+8*((va>>12)&511), pte)
}

// userPage maps va to a new page holding data and returns the page.
func (s *detailScene) userPage(pml4, va uint64, data []byte) uint64 {
	p := s.allocPage()
	s.putBytes(p+va&0xfff, data)
	s.mapUser(pml4, va&^0xfff, s.pa(p)|7)
	return p
}

func (s *detailScene) dentry(name string, parent uint64, dname string) uint64 {
	d := s.alloc(192)
	if parent == 0 {
		parent = d
	}
	s.put64(d+s.off("dentry.d_parent"), parent)
	s.put64(d+s.off("dentry.d_hash.pprev"), d) // hashed
	nm := s.alloc(uint64(len(name)) + 1)
	s.putBytes(nm, []byte(name))
	s.put32(d+s.off("dentry.d_name")+s.off("qstr.len"), uint32(len(name)))
	s.put64(d+s.off("dentry.d_name")+s.off("qstr.name"), nm)
	if dname != "" {
		s.put64(d+s.off("dentry.d_op"), s.dops[dname])
	}
	return d
}

func (s *detailScene) mount(root, mountpoint, parent uint64) uint64 {
	m := s.alloc(256)
	if parent == 0 {
		parent = m
	}
	s.put64(m+s.off("mount.mnt")+s.off("vfsmount.mnt_root"), root)
	s.put64(m+s.off("mount.mnt_mountpoint"), mountpoint)
	s.put64(m+s.off("mount.mnt_parent"), parent)
	return m
}

// fileSpec is one descriptor a scene process holds.
type fileSpec struct {
	fd           int
	mnt, dentry  uint64
	mode         uint16 // inode i_mode
	ino          uint64
	fmode, flags uint32
	sock         bool // a listening TCP socket on port ino%65536
	garbage      bool // the slot holds a pointer that is not a kernel address
}

// newFile makes a struct file with its inode.
func (s *detailScene) newFile(f fileSpec) uint64 {
	file, ino := s.alloc(256), s.alloc(128)
	s.put64(file+s.off("file.f_path")+s.off("path.mnt"), f.mnt+s.off("mount.mnt"))
	s.put64(file+s.off("file.f_path")+s.off("path.dentry"), f.dentry)
	s.put64(file+s.off("file.f_inode"), ino)
	s.put32(file+s.off("file.f_flags"), f.flags)
	s.put32(file+s.off("file.f_mode"), f.fmode)
	binary.LittleEndian.PutUint16(s.mem[s.pa(ino+s.off("inode.i_mode")):], f.mode)
	s.put64(ino+s.off("inode.i_ino"), f.ino)
	if f.sock {
		sock, sk := s.alloc(32), s.alloc(768)
		s.put64(file+s.off("file.f_op"), dsSocketFops)
		s.put64(file+s.off("file.private_data"), sock)
		binary.LittleEndian.PutUint16(s.mem[s.pa(sock+4):], sockStream)
		s.put64(sock+16, file)
		s.put64(sock+24, sk)
		binary.LittleEndian.PutUint16(s.mem[s.pa(sk+16):], afInet)
		s.mem[s.pa(sk+18)] = 10 // LISTEN
		binary.LittleEndian.PutUint16(s.mem[s.pa(sk+14):], uint16(f.ino))
		binary.LittleEndian.PutUint16(s.mem[s.pa(sk+514):], sockStream)
		binary.LittleEndian.PutUint16(s.mem[s.pa(sk+516):], 6)
	}
	return file
}

// detailProc is one process of the scene.
type detailProc struct {
	pid, ppid       int
	comm            string
	kthread, zombie bool
	threads         []int   // more threads' tids
	cpu             uint32  // each thread runs on cpu + its index
	utime, stime    uint64  // each thread's: thread i has (i+1) times these
	runtime         uint64  // each thread's se.sum_exec_runtime, likewise
	exitedU         uint64  // signal_struct.utime of exited threads
	exitedRun       uint64  // signal_struct.sum_sched_runtime
	totalVM         uint64  // pages
	rss             []int64 // counters MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES
	args, env       []byte  // what the argument and environment areas hold
	argPTE, envPTE  *uint64 // a non-present PTE for the page instead of data
	files           []fileSpec
}

func (s *detailScene) newProcess(p detailProc, v detailVariant) uint64 {
	leader := uint64(0)
	for i, tid := range append([]int{p.pid}, p.threads...) {
		tk := s.alloc(detailTaskSize)
		s.tasks[tid] = tk
		s.put32(tk+s.off("task_struct.pid"), uint32(tid))
		s.put32(tk+s.off("task_struct.tgid"), uint32(p.pid))
		s.putBytes(tk+s.off("task_struct.comm"), []byte(p.comm))
		s.put64(tk+s.off("task_struct.real_parent"), s.tasks[p.ppid])
		s.put32(tk+s.off("task_struct.thread_info.cpu"), p.cpu+uint32(i))
		s.put64(tk+s.off("task_struct.utime"), uint64(i+1)*p.utime)
		s.put64(tk+s.off("task_struct.stime"), uint64(i+1)*p.stime)
		s.put64(tk+s.off("task_struct.se.sum_exec_runtime"), uint64(i+1)*p.runtime)
		s.put64(tk+s.off("task_struct.cred"), s.alloc(64))
		if leader == 0 {
			leader = tk
			sig := s.alloc(512)
			s.put32(sig+s.off("signal_struct.nr_threads"), uint32(1+len(p.threads)))
			s.put64(sig+s.off("signal_struct.utime"), p.exitedU)
			s.put64(sig+s.off("signal_struct.sum_sched_runtime"), p.exitedRun)
			s.listInit(sig + s.off("signal_struct.thread_head"))
			s.put64(tk+s.off("task_struct.signal"), sig)
			s.listAdd(s.initTask+s.off("task_struct.tasks"), tk+s.off("task_struct.tasks"))
			if p.kthread {
				s.put32(tk+s.off("task_struct.flags"), pfKthread)
			}
			if p.zombie {
				s.put32(tk+s.off("task_struct.exit_state"), 0x20)
			}
			if !p.kthread && !p.zombie {
				s.put64(tk+s.off("task_struct.mm"), s.newMM(p, v))
				s.put64(tk+s.off("task_struct.files"), s.newFiles(p.files))
			}
		} else {
			for _, f := range []string{"task_struct.signal", "task_struct.mm", "task_struct.files"} {
				s.put64(tk+s.off(f), s.get64(leader+s.off(f)))
			}
		}
		sig := s.get64(tk + s.off("task_struct.signal"))
		s.listAdd(sig+s.off("signal_struct.thread_head"), tk+s.off("task_struct.thread_node"))
	}
	return leader
}

// newMM makes the process's mm: its own PML4 mapping the argument and
// environment pages, its counters.
func (s *detailScene) newMM(p detailProc, v detailVariant) uint64 {
	mm := s.alloc(1024)
	pml4 := s.allocPage()
	s.put64(mm+s.off("mm_struct.pgd"), pml4)
	s.put64(mm+s.off("mm_struct.total_vm"), p.totalVM)
	rssOff := s.off("mm_struct.rss_stat")
	for i, c := range p.rss {
		switch v {
		case rssStruct:
			s.put64(mm+rssOff+8*uint64(i), uint64(c))
		case rssPercpu:
			s.put64(mm+rssOff+40*uint64(i)+8, uint64(c))
		case rssEnum: // indices from the enum: anon 0, file 1, swap 2, shmem 4
			idx := []uint64{1, 0, 2, 4}[i]
			s.put64(mm+rssOff+8*idx, uint64(c))
		}
	}
	// The arguments at the start of a page, the environment right after
	// them (on the next page when it is to be absent).
	argVA := uint64(dsUserStack + 0x10)
	envVA := argVA + uint64(len(p.args))
	if p.envPTE != nil {
		envVA = uint64(dsUserStack + 0x1000)
	}
	if p.argPTE != nil {
		s.mapUser(pml4, dsUserStack, *p.argPTE)
	} else {
		page := s.userPage(pml4, dsUserStack, nil)
		s.putBytes(page+0x10, p.args)
		if p.envPTE == nil {
			s.putBytes(page+0x10+uint64(len(p.args)), p.env)
		}
	}
	if p.envPTE != nil {
		s.mapUser(pml4, envVA, *p.envPTE)
	}
	s.put64(mm+s.off("mm_struct.arg_start"), argVA)
	s.put64(mm+s.off("mm_struct.arg_end"), argVA+uint64(len(p.args)))
	s.put64(mm+s.off("mm_struct.env_start"), envVA)
	s.put64(mm+s.off("mm_struct.env_end"), envVA+uint64(len(p.env)))
	return mm
}

func (s *detailScene) newFiles(specs []fileSpec) uint64 {
	files, fdt := s.alloc(64), s.alloc(32)
	n := 0
	for _, f := range specs {
		n = max(n, f.fd+1)
	}
	arr := s.alloc(8 * uint64(n))
	s.put64(files+s.off("files_struct.fdt"), fdt)
	s.put32(fdt+s.off("fdtable.max_fds"), uint32(n))
	s.put64(fdt+s.off("fdtable.fd"), arr)
	for _, f := range specs {
		if f.garbage {
			s.put64(arr+8*uint64(f.fd), 0x4141414141414141)
			continue
		}
		s.put64(arr+8*uint64(f.fd), s.newFile(f))
	}
	return files
}

func u64p(v uint64) *uint64 { return &v }

// buildDetailScene makes init_task and: a process of three threads with
// every kind of descriptor; one whose arguments are swapped out and whose
// environment was never touched; one that rewrote its arguments
// (setproctitle); a kernel thread; a zombie.
func buildDetailScene(t testing.TB, v detailVariant) *detailScene {
	s := &detailScene{synth: newSynth(t), tasks: map[int]uint64{}, dops: map[string]uint64{}, dirs: map[string]uint64{}}
	s.prof.BTF = detailBTF(t, v)
	s.initTask = s.alloc(detailTaskSize)
	s.tasks[0] = s.initTask
	s.syms["init_task"] = s.initTask
	s.listInit(s.initTask + s.off("task_struct.tasks"))
	pob := s.alloc(8)
	s.syms["page_offset_base"] = pob
	s.put64(pob, synthDirectMap)
	for name, fn := range map[string]uint64{"pipefs_dname": dsPipefsDname, "sockfs_dname": dsSockfsDname,
		"anon_inodefs_dname": dsAnonDname, "simple_dname": dsSimpleDname, "ns_dname": dsNSDname, "dmabuffs_dname": dsOtherDname} {
		s.syms[name] = fn
		ops := s.alloc(128)
		s.put64(ops+s.off("dentry_operations.d_dname"), fn)
		s.dops[name] = ops
	}
	s.syms["socket_file_ops"] = dsSocketFops
	s.syms["zz_last_symbol"] = 0xffffffff83000000

	s.rootDentry = s.dentry("/", 0, "")
	s.rootMnt = s.mount(s.rootDentry, s.rootDentry, 0)
	s.dirs["dev"] = s.dentry("dev", s.rootDentry, "")
	s.dirs["tmp"] = s.dentry("tmp", s.rootDentry, "")
	pipeRoot := s.dentry("pipe:", 0, "pipefs_dname")
	s.pipeMnt = s.mount(pipeRoot, pipeRoot, 0)
	console := s.dentry("console", s.dirs["dev"], "")
	gone := s.dentry("gone", s.dirs["tmp"], "")
	s.put64(gone+s.off("dentry.d_hash.pprev"), 0) // unlinked
	nsOps := s.alloc(64)
	nsName := s.alloc(8)
	s.putBytes(nsName, []byte("net\x00"))
	s.put64(nsOps+s.off("proc_ns_operations.name"), nsName)
	nsDentry := s.dentry("net", 0, "ns_dname")
	s.put64(nsDentry+s.off("dentry.d_fsdata"), nsOps)

	files := []fileSpec{
		{fd: 0, mnt: s.rootMnt, dentry: console, mode: sIFCHR | 0o600, ino: 3, fmode: 3, flags: 2},
		{fd: 1, mnt: s.pipeMnt, dentry: s.dentry("", 0, "pipefs_dname"), mode: sIFIFO | 0o600, ino: 7777, fmode: 2, flags: 1},
		{fd: 3, mnt: s.pipeMnt, dentry: s.dentry("TCP", 0, "sockfs_dname"), mode: sIFSOCK | 0o777, ino: 8080, fmode: 3, flags: 2, sock: true},
		{fd: 4, mnt: s.pipeMnt, dentry: s.dentry("[eventfd]", 0, "anon_inodefs_dname"), mode: 0o600, ino: 1, fmode: 3, flags: 0o4002},
		{fd: 5, mnt: s.rootMnt, dentry: gone, mode: sIFREG | 0o644, ino: 99, fmode: 1, flags: 0o100000},
		{fd: 6, mnt: s.pipeMnt, dentry: s.dentry("memfd:buf", 0, "simple_dname"), mode: sIFREG | 0o777, ino: 12, fmode: 3},
		{fd: 7, mnt: s.pipeMnt, dentry: nsDentry, mode: sIFREG | 0o444, ino: 4026531840, fmode: 1},
		{fd: 8, mnt: s.pipeMnt, dentry: s.dentry("x", 0, "dmabuffs_dname"), mode: 0o600, ino: 5, fmode: 0x4000},
		{fd: 9, mnt: s.rootMnt, dentry: s.rootDentry, mode: sIFDIR | 0o755, ino: 2, fmode: 1},
		{fd: 11, garbage: true},
	}
	s.newProcess(detailProc{pid: 1, comm: "init", cpu: 0, utime: 1e6, stime: 2e6, totalVM: 565,
		rss: []int64{1, 2, 0, 0}, args: []byte("init\x00\x00"), env: []byte("HOME=/\x00TERM=linux\x00"),
		files: files[:1]}, v)
	s.newProcess(detailProc{pid: 2, ppid: 0, comm: "kthreadd", kthread: true}, v)
	s.newProcess(detailProc{pid: 100, ppid: 1, comm: "app", threads: []int{101, 102}, cpu: 1, utime: 1000, stime: 10,
		runtime: 1111, exitedU: 5000, exitedRun: 7000, totalVM: 1000, rss: []int64{10, 20, 99, -3}, args: []byte("app\x00-v\x00\x00x y\x00"),
		env: []byte("A=1\x00B=\x1b[2J\x00"), files: files}, v)
	s.newProcess(detailProc{pid: 200, ppid: 1, comm: "swapped", totalVM: 10, rss: []int64{0, 0, 0, 0},
		args: []byte("sleep\x00100\x00"), env: []byte("X=1\x00"), argPTE: u64p(dsSwapEntry), envPTE: u64p(0)}, v)
	s.newProcess(detailProc{pid: 300, ppid: 1, comm: "retitled", totalVM: 10, rss: []int64{0, 0, 0, 0},
		args: []byte("worker: idle\x00ld\x00"), env: []byte("PATH=/bin\x00")}, v)
	s.newProcess(detailProc{pid: 400, ppid: 1, comm: "zombie", zombie: true}, v)
	// setproctitle: the title ran over the argument area's last NUL.
	s.putBytes(s.pageOfArgs(300)+0x10+uint64(len("worker: idle\x00ld")), []byte{'!'})
	return s
}

// pageOfArgs is the kernel address of the page holding pid's arguments.
func (s *detailScene) pageOfArgs(pid int) uint64 {
	mm := s.get64(s.tasks[pid] + s.off("task_struct.mm"))
	pml4 := s.get64(mm + s.off("mm_struct.pgd"))
	table := pml4
	for level := 4; level >= 1; level-- {
		e := s.get64(table + 8*((dsUserStack>>(12+9*(level-1)))&511))
		table = s.va(e &^ 0xfff)
	}
	return table
}
