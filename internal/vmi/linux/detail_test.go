package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// A synthetic guest for the process-detail reads (usage, arguments,
// descriptors): BTF laid out unlike the kernel's and unlike synthBTF
// (thread_info.cpu, utime far from the other task fields, rss_stat in
// either layout), processes with threads, user page tables, and file
// tables holding every kind of file /proc/PID/fd names.

// detailVariant picks the rss_stat layout: 6.1's struct of atomic_long_t
// counters, 6.2's percpu_counter array, or a counter array of another
// length whose indices come from the BTF enum.
type detailVariant int

const (
	rssStruct detailVariant = iota
	rssPercpu
	rssEnum
)

func detailBTF(t testing.TB, v detailVariant) *BTF {
	t.Helper()
	u16 := &btf.Int{Name: "short unsigned int", Size: 2}
	s16 := &btf.Int{Name: "short int", Size: 2, Encoding: btf.Signed}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	i32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	u64 := &btf.Int{Name: "long unsigned int", Size: 8}
	s64 := &btf.Int{Name: "long long int", Size: 8, Encoding: btf.Signed}
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
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
	threadInfo := st("thread_info", 24, m{"flags", 0, u64}, m{"status", 16, u32}, m{"cpu", 20, u32})
	se := st("sched_entity", 128, m{"exec_start", 64, u64}, m{"sum_exec_runtime", 72, u64})
	task := st("task_struct", 2048,
		m{"thread_info", 0, threadInfo}, m{"__state", 24, u32}, m{"flags", 44, u32},
		m{"tasks", 200, listHead}, m{"pid", 240, i32}, m{"tgid", 244, i32}, m{"real_parent", 256, ptr},
		m{"signal", 264, ptr}, m{"mm", 272, ptr}, m{"cred", 280, ptr}, m{"comm", 288, arr(char, 16)},
		m{"start_time", 304, u64}, m{"exit_state", 312, i32}, m{"thread_node", 320, listHead},
		m{"files", 336, ptr}, m{"se", 384, se}, m{"utime", 1600, u64}, m{"stime", 1608, u64})
	signal := st("signal_struct", 512, m{"nr_threads", 8, i32}, m{"thread_head", 16, listHead},
		m{"utime", 440, u64}, m{"stime", 448, u64}, m{"sum_sched_runtime", 496, u64})
	cred := st("cred", 64, m{"uid", 4, u32}, m{"gid", 8, u32}, m{"euid", 20, u32})
	atomicLong := &btf.Typedef{Name: "atomic_long_t", Type: st("", 8, m{"counter", 0, s64})}
	var rss btf.Type
	types := []btf.Type{}
	switch v {
	case rssStruct:
		rss = st("mm_rss_stat", 32, m{"count", 0, arr(atomicLong, 4)})
	case rssPercpu:
		pc := st("percpu_counter", 40, m{"lock", 0, u32}, m{"count", 8, s64}, m{"list", 16, listHead}, m{"counters", 32, ptr})
		rss = arr(pc, 4)
	case rssEnum:
		rss = st("mm_rss_stat", 40, m{"count", 0, arr(atomicLong, 5)})
		types = append(types, &btf.Enum{Size: 4, Values: []btf.EnumValue{{Name: "MM_ANONPAGES", Value: 0},
			{Name: "MM_FILEPAGES", Value: 1}, {Name: "MM_SWAPENTS", Value: 2}, {Name: "MM_SHMEMPAGES", Value: 4}, {Name: "NR_MM_COUNTERS", Value: 5}}})
	}
	mm := st("mm_struct", 1024, m{"pgd", 72, ptr}, m{"total_vm", 192, u64}, m{"arg_start", 312, u64},
		m{"arg_end", 320, u64}, m{"env_start", 328, u64}, m{"env_end", 336, u64}, m{"rss_stat", 728, rss},
		m{"exe_file", 944, ptr})
	path := st("path", 16, m{"mnt", 0, ptr}, m{"dentry", 8, ptr})
	file := st("file", 256, m{"f_path", 16, path}, m{"f_inode", 32, ptr}, m{"f_op", 40, ptr},
		m{"f_flags", 64, u32}, m{"f_mode", 68, u32}, m{"private_data", 200, ptr})
	inode := st("inode", 128, m{"i_mode", 0, u16}, m{"i_ino", 64, u64})
	hlistBL := st("hlist_bl_node", 16, m{"next", 0, ptr}, m{"pprev", 8, ptr})
	qstr := st("qstr", 16, m{"", 0, &btf.Union{Size: 8, Members: []btf.Member{
		{Name: "", Type: st("", 8, m{"hash", 0, u32}, m{"len", 4, u32})},
		{Name: "hash_len", Type: u64}}}}, m{"name", 8, ptr})
	dentry := st("dentry", 192, m{"d_flags", 0, u32}, m{"d_hash", 8, hlistBL}, m{"d_parent", 24, ptr},
		m{"d_name", 32, qstr}, m{"d_op", 96, ptr}, m{"d_fsdata", 120, ptr})
	dops := st("dentry_operations", 128, m{"d_revalidate", 0, ptr}, m{"d_dname", 72, ptr})
	vfsmount := st("vfsmount", 32, m{"mnt_root", 0, ptr}, m{"mnt_sb", 8, ptr})
	mount := st("mount", 256, m{"mnt_parent", 16, ptr}, m{"mnt_mountpoint", 24, ptr}, m{"mnt", 32, vfsmount})
	files := st("files_struct", 64, m{"fdt", 32, ptr})
	fdtable := st("fdtable", 32, m{"max_fds", 0, u32}, m{"fd", 8, ptr})
	nsOps := st("proc_ns_operations", 64, m{"name", 0, ptr})
	types = append(types, task, signal, cred, mm, path, file, inode, hlistBL, qstr, dentry, dops, vfsmount,
		mount, files, fdtable, nsOps, listHead, threadInfo)
	types = append(types, detailNetTypes(u8, u16, s16, u32, u64, ptr)...)
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	return builtBTF(t, b)
}

// detailNetTypes are struct socket and struct sock as the detail scene
// lays them out (newFile writes them).
func detailNetTypes(u8, u16, s16, u32, u64 *btf.Int, ptr btf.Type) []btf.Type {
	m := func(name string, off uint32, typ btf.Type) btf.Member {
		return btf.Member{Name: name, Type: typ, Offset: btf.Bits(8 * off)}
	}
	st := func(name string, size uint32, ms ...btf.Member) *btf.Struct {
		return &btf.Struct{Name: name, Size: size, Members: ms}
	}
	socket := st("socket", 32, m("type", 4, s16), m("file", 16, ptr), m("sk", 24, ptr))
	addrs := st("", 8, m("skc_daddr", 0, u32), m("skc_rcv_saddr", 4, u32))
	common := st("sock_common", 136, m("", 0, &btf.Union{Size: 8, Members: []btf.Member{{Name: "skc_addrpair", Type: u64}, {Name: "", Type: addrs}}}),
		m("skc_dport", 12, u16), m("skc_num", 14, u16), m("skc_family", 16, u16), m("skc_state", 18, u8))
	sock := st("sock", 768, m("__sk_common", 0, common), m("sk_type", 514, u16), m("sk_protocol", 516, u16))
	return []btf.Type{socket, common, sock}
}

func (s *detailScene) kernelOf() *Kernel { return s.kernel() }

// TestProcessUsage: CPU, CPU time (a thread's own, and its group's with
// the exited threads' share), VSZ and RSS, for each rss_stat layout.
func TestProcessUsage(t *testing.T) {
	for _, v := range []detailVariant{rssStruct, rssPercpu, rssEnum} {
		s := buildDetailScene(t, v)
		k := s.kernelOf()
		tasks, err := k.Tasks()
		if err != nil {
			t.Fatalf("variant %d: Tasks: %v", v, err)
		}
		byPID := map[int]Task{}
		for _, tk := range tasks {
			byPID[tk.PID] = tk
		}
		app := byPID[100]
		want := Task{CPU: 1, UTime: 1000, STime: 10, Runtime: 1111, GroupUTime: 5000 + 1000 + 2000 + 3000, GroupSTime: 10 + 20 + 30,
			GroupRuntime: 7000 + 1111 + 2222 + 3333, VSZ: 1000 * 4096, RSS: (10 + 20) * 4096, Threads: 3}
		got := Task{CPU: app.CPU, UTime: app.UTime, STime: app.STime, Runtime: app.Runtime, GroupUTime: app.GroupUTime,
			GroupSTime: app.GroupSTime, GroupRuntime: app.GroupRuntime, VSZ: app.VSZ, RSS: app.RSS, Threads: app.Threads}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("variant %d: app's usage (-want +got):\n%s", v, diff)
		}
		if kt := byPID[2]; kt.VSZ != 0 || kt.RSS != 0 || !kt.KernelThread {
			t.Errorf("variant %d: kernel thread %+v has memory", v, kt)
		}
		threads, err := k.Threads()
		if err != nil {
			t.Fatal(err)
		}
		var tids []string
		for _, th := range threads {
			if th.TGID == 100 {
				tids = append(tids, fmt.Sprintf("%d cpu%d %d+%d=%d group %d+%d=%d", th.PID, th.CPU, th.UTime, th.STime, th.Runtime,
					th.GroupUTime, th.GroupSTime, th.GroupRuntime))
			}
		}
		wantTids := []string{"100 cpu1 1000+10=1111 group 11000+60=13666", "101 cpu2 2000+20=2222 group 11000+60=13666",
			"102 cpu3 3000+30=3333 group 11000+60=13666"}
		if diff := cmp.Diff(wantTids, tids); diff != "" {
			t.Errorf("variant %d: app's threads (-want +got):\n%s", v, diff)
		}
		// A single read (as the kernel gate does) has the thread's own times only.
		one, err := k.TaskAt(s.tasks[101])
		if err != nil || one.UTime != 2000 || one.GroupUTime != 0 || one.CPU != 2 {
			t.Errorf("TaskAt(101) = %+v, %v", one, err)
		}
	}
}

// TestProcessArgs reads arguments and environments as /proc/PID/cmdline
// and environ show them, and says what is not in memory.
func TestProcessArgs(t *testing.T) {
	s := buildDetailScene(t, rssStruct)
	k := s.kernelOf()
	tasks, err := k.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.ProcessArgs(tasks, true)
	if err != nil {
		t.Fatal(err)
	}
	strs := func(ss ...string) []string { return append([]string{}, ss...) }
	want := map[int][2]UserStrings{
		1:   {{Strings: strs("init", ""), Size: 6}, {Strings: strs("HOME=/", "TERM=linux"), Size: 18}},
		2:   {{}, {}},
		100: {{Strings: strs("app", "-v", "", "x y"), Size: 12}, {Strings: strs("A=1", "B=\x1b[2J"), Size: 11}},
		200: {{Strings: strs(), Size: 10, NotPresent: 10, NotPresentWhy: "swapped out"},
			{Strings: strs(), Size: 4, NotPresent: 4, NotPresentWhy: "never touched"}},
		300: {{Strings: strs("worker: idle"), Size: 26}, {Strings: strs("PATH=/bin"), Size: 10}},
		400: {{Error: errNoMM.Error()}, {Error: errNoMM.Error()}},
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d: %+v", len(got), len(want), got)
	}
	for _, pa := range got {
		w, ok := want[pa.PID]
		if !ok || pa.Env == nil {
			t.Errorf("unexpected row %+v", pa)
			continue
		}
		if diff := cmp.Diff(w[0], pa.Args); diff != "" {
			t.Errorf("pid %d args (-want +got):\n%s", pa.PID, diff)
		}
		if diff := cmp.Diff(w[1], *pa.Env); diff != "" {
			t.Errorf("pid %d env (-want +got):\n%s", pa.PID, diff)
		}
	}
	// Without env, no environment is read.
	noEnv, err := k.ProcessArgs(tasks, false)
	if err != nil || noEnv[0].Env != nil {
		t.Errorf("ProcessArgs(env=false) = %+v, %v", noEnv[0], err)
	}
}

// TestProcessArgsBounds: a range longer than its bound is cut and
// flagged; one that is not in user space, or backwards, is an error.
func TestProcessArgsBounds(t *testing.T) {
	s := buildDetailScene(t, rssStruct)
	k := s.kernelOf()
	mm := s.get64(s.tasks[100] + s.off("task_struct.mm"))
	start := s.get64(mm + s.off("mm_struct.arg_start"))
	for _, tc := range []struct {
		name     string
		argEnd   uint64
		want     string
		truncate bool
	}{
		{"longer than the bound", start + MaxArgBytes + 100, "", true},
		{"backwards", start - 1, "arg_start", false},
		{"kernel address", 0xffff888000001000, "not a user address", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.put64(mm+s.off("mm_struct.arg_end"), tc.argEnd)
			defer s.put64(mm+s.off("mm_struct.arg_end"), start+12)
			tasks, _ := k.Tasks()
			got, _ := k.ProcessArgs(tasks, false)
			for _, pa := range got {
				if pa.PID != 100 {
					continue
				}
				if pa.Args.Truncated != tc.truncate || (tc.want != "" && !strings.Contains(pa.Args.Error, tc.want)) {
					t.Errorf("args = %+v", pa.Args)
				}
				if tc.truncate && (pa.Args.Size != tc.argEnd-start || pa.Args.NotPresent == 0) {
					t.Errorf("args = %+v; want the size of the whole range, the unmapped rest not present", pa.Args)
				}
			}
		})
	}
}

// TestFiles names every kind of descriptor as /proc/PID/fd does, and
// counts the slot that holds garbage.
func TestFiles(t *testing.T) {
	s := buildDetailScene(t, rssStruct)
	k := s.kernelOf()
	tasks, err := k.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.Files(tasks)
	ie := (*IncompleteError)(nil)
	if !errors.As(err, &ie) || ie.Skipped != 1 || ie.Stopped {
		t.Errorf("Files error = %v; want one skipped slot", err)
	}
	var rows []string
	for _, f := range got {
		row := fmt.Sprintf("%d %d %s %s %q %o %d", f.PID, f.FD, f.Type, f.Mode, f.Target, f.Flags, f.Inode)
		if f.Socket != nil {
			row += fmt.Sprintf(" %s:%d %s fd%d", f.Socket.Proto, f.Socket.LocalPort, f.Socket.State, f.Socket.FD)
		}
		if f.Error != "" {
			row += " error " + f.Error
		}
		rows = append(rows, row)
	}
	want := []string{
		`1 0 CHR rw "/dev/console" 2 3`,
		`100 0 CHR rw "/dev/console" 2 3`,
		`100 1 FIFO w "pipe:[7777]" 1 7777`,
		`100 3 SOCK rw "socket:[8080]" 2 8080 tcp:8080 LISTEN fd3`,
		`100 4 ANON rw "anon_inode:[eventfd]" 4002 1`,
		`100 5 REG r "/tmp/gone (deleted)" 100000 99`,
		`100 6 REG rw "/memfd:buf (deleted)" 0 12`,
		`100 7 REG r "net:[4026531840]" 0 4026531840`,
		`100 8 UNKN  "dmabuffs:[5]" 0 5`,
		`100 9 DIR r "/" 0 2`,
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("Files (-want +got):\n%s", diff)
	}
	// Sockets name their descriptor too.
	socks, err := k.Sockets(tasks)
	if err != nil || len(socks) != 1 || socks[0].FD != 3 || socks[0].PID != 100 {
		t.Errorf("Sockets = %+v, %v", socks, err)
	}
}

// TestDetailNoLayout: without the structures in BTF the listings say so
// rather than return zeros as data; the process list still works.
func TestDetailNoLayout(t *testing.T) {
	s := buildScene(t) // synthBTF: no utime, no arg_start, no f_mode
	k := s.kernel()
	tasks, err := k.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.ProcessArgs(tasks, true); err == nil {
		t.Error("ProcessArgs without mm_struct.arg_start: no error")
	}
	if _, err := k.Files(tasks); err == nil {
		t.Error("Files without the file layout: no error")
	}
}

// TestSplitStrings is /proc's NUL-separated format.
func TestSplitStrings(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{}},
		{"\x00", []string{""}},
		{"a\x00b\x00", []string{"a", "b"}},
		{"a\x00\x00", []string{"a", ""}},
		{"a\x00bc", []string{"a", "bc"}},
		{"\xff\x00", []string{"\xff"}},
	} {
		if diff := cmp.Diff(tc.want, SplitStrings([]byte(tc.in))); diff != "" {
			t.Errorf("SplitStrings(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

// FuzzSplitStrings: joining the strings with NULs gives the input back
// (with its last NUL, when it had one).
func FuzzSplitStrings(f *testing.F) {
	for _, s := range []string{"", "\x00", "init\x00\x00", "a\x00bc", "\xff\xfe\x00x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := strings.Join(SplitStrings(b), "\x00")
		want := string(b)
		if len(b) > 0 && b[len(b)-1] == 0 {
			want = want[:len(want)-1]
		}
		if got != want {
			t.Fatalf("SplitStrings(%q) joins to %q", b, got)
		}
	})
}

// detailFuzz is the detail scene built once for the fuzz target.
var detailFuzz struct {
	once sync.Once
	s    *detailScene
}

// FuzzProcessDetail runs the usage, argument and descriptor reads over
// the detail scene's memory patched by the fuzzer (12-byte records: an
// offset and a value, as fuzzKernel takes them): page tables, tasks, mm,
// user pages and file tables alike. They must return without panicking,
// within their bounds.
func FuzzProcessDetail(f *testing.F) {
	detailFuzz.once.Do(func() {
		detailFuzz.s = buildDetailScene(f, rssStruct)
		detailFuzz.s.kernelOf() // the symbol table
	})
	s := detailFuzz.s
	mm := s.get64(s.tasks[100] + s.off("task_struct.mm"))
	f.Add([]byte{})
	f.Add(fuzzPatch(s.pa(mm+s.off("mm_struct.arg_end")), 1<<47-1))                                                       // an argument range of 128 TiB
	f.Add(fuzzPatch(s.pa(mm+s.off("mm_struct.pgd")), 0xffff888000001234))                                                // a PGD not page-aligned
	f.Add(fuzzPatch(s.pa(s.tasks[101]+s.off("task_struct.thread_node")), s.tasks[101]+s.off("task_struct.thread_node"))) // a thread list loop
	f.Add(fuzzPatch(s.pa(s.pageOfArgs(100)), 0x4141414141414141))
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := append(flatMem(nil), s.mem...)
		for len(data) >= 12 && len(data) <= 12*256 {
			off := uint64(binary.LittleEndian.Uint32(data)) % (synthMemSize - 8)
			binary.LittleEndian.PutUint64(mem[off:], binary.LittleEndian.Uint64(data[4:]))
			data = data[12:]
		}
		k := &Kernel{Profile: s.prof, Mem: mem, AS: &vmi.AddressSpace{Mem: mem, CR3: 0x1000, Cache: vmi.NewTranslationCache()}}
		tasks, _ := k.Tasks()
		k.Threads()
		args, _ := k.ProcessArgs(tasks, true)
		for _, a := range args {
			if n := len(strings.Join(a.Args.Strings, "")); n > MaxArgBytes {
				t.Fatalf("pid %d: %d bytes of arguments", a.PID, n)
			}
			if a.Env != nil && len(strings.Join(a.Env.Strings, "")) > MaxEnvBytes {
				t.Fatalf("pid %d: environment over its bound", a.PID)
			}
		}
		fds, _ := k.Files(tasks)
		if len(fds) > MaxFDRows {
			t.Fatalf("%d descriptors", len(fds))
		}
	})
}
