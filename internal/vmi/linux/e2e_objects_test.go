package linux

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi"
)

// objGuest is a kit guest under QEMU TCG with the exec agent, and the
// test's own directory for dumps and profile caches.
type objGuest struct {
	t   *testing.T
	dir string
	vm  *testvm.VM
}

// sharedObjGuest returns the package's shared guest (256 MiB), ready, with
// the exec agent answering.
func sharedObjGuest(t *testing.T) (*objGuest, *kit.Kit) {
	t.Helper()
	v, k := realGuest(t)
	return &objGuest{t: t, dir: t.TempDir(), vm: v}, k
}

// bootObjGuest boots a guest of its own from the default kit with memMiB of
// RAM, waits for the ready marker and for the exec agent to answer.
func bootObjGuest(t *testing.T, memMiB int) (*objGuest, *kit.Kit) {
	t.Helper()
	k := testvm.Kit(t)
	cfg := testvm.KitGuest(k)
	cfg.MemoryMiB, cfg.NoReboot = memMiB, true
	v := testvm.Start(t, cfg)
	t.Logf("guest ready after %v", v.WaitReady(t, 5*time.Minute).Round(100*time.Millisecond))
	v.Agent(t)
	return &objGuest{t: t, dir: t.TempDir(), vm: v}, k
}

func (g *objGuest) run(ctx context.Context, script string) string {
	g.t.Helper()
	res, err := g.vm.Agent(g.t).Run(ctx, script, 60*time.Second)
	if err != nil {
		g.t.Fatalf("guest exec %q: %v", script, err)
	}
	if res.ExitCode != 0 {
		g.t.Fatalf("guest exec %q: exit %d, stderr %q", script, res.ExitCode, res.Stderr)
	}
	return string(res.Stdout)
}

// dump writes guest memory to an ELF file with QMP dump-guest-memory.
func (g *objGuest) dump(ctx context.Context, name string) string {
	g.t.Helper()
	path := filepath.Join(g.dir, name)
	dumpGuest(ctx, g.t, g.vm, path)
	return path
}

// ramCopy is a writable copy of guest RAM, for simulating rootkits.
type ramCopy struct {
	ranges []vmi.Range
	data   [][]byte
}

// dumpKernel locates the default kit's kernel in a dump of its guest
// (GATEVISOR_VMI_DUMP), RAM copied into host memory, for the benchmarks
// that read a dump; without one the benchmark is skipped with skip.
func dumpKernel(b *testing.B, skip string) *Kernel {
	b.Helper()
	path := os.Getenv("GATEVISOR_VMI_DUMP")
	if path == "" {
		b.Skip(skip)
	}
	k := testvm.Kit(b)
	prof, err := LoadProfile(k.Kernel, "")
	if err != nil {
		b.Fatal(err)
	}
	dump, err := vmi.OpenELFDump(path)
	if err != nil {
		b.Fatal(err)
	}
	defer dump.Close()
	ram := copyRAM(b, dump)
	cpu := dump.CPUs()[0]
	kern, err := Locate(ram, prof, Registers{CR3: cpu.CR3(), CR4: cpu.CR4()})
	if err != nil {
		b.Fatal(err)
	}
	return kern
}

func copyRAM(t testing.TB, mem vmi.PhysicalMemory) *ramCopy {
	t.Helper()
	c := &ramCopy{ranges: mem.Ranges()}
	for _, r := range c.ranges {
		b := make([]byte, r.Len())
		if _, err := mem.ReadAt(b, int64(r.Start)); err != nil {
			t.Fatalf("copy RAM %v: %v", r, err)
		}
		c.data = append(c.data, b)
	}
	return c
}

func (c *ramCopy) Ranges() []vmi.Range { return c.ranges }

func (c *ramCopy) ReadAt(p []byte, gpa int64) (int, error) {
	for i, r := range c.ranges {
		if gpa >= 0 && r.Contains(uint64(gpa)) && uint64(gpa)+uint64(len(p)) <= r.End {
			return copy(p, c.data[i][uint64(gpa)-r.Start:]), nil
		}
	}
	return 0, fmt.Errorf("%w: %#x", vmi.ErrNoMemory, gpa)
}

// put64 writes a uint64 at kernel virtual address va.
func (c *ramCopy) put64(t *testing.T, as *vmi.AddressSpace, va, v uint64) {
	t.Helper()
	pa, _, err := as.Translate(va)
	if err != nil {
		t.Fatalf("translate %#x: %v", va, err)
	}
	for i, r := range c.ranges {
		if r.Contains(pa) && pa+8 <= r.End {
			binary.LittleEndian.PutUint64(c.data[i][pa-r.Start:], v)
			return
		}
	}
	t.Fatalf("physical %#x not in RAM", pa)
}

// unlink removes the list_head at node from its list, as list_del does
// (poisoning the node's pointers), or as list_del_init when poison is false.
func (c *ramCopy) unlink(t *testing.T, as *vmi.AddressSpace, node uint64, poison bool) {
	t.Helper()
	next, err := vmi.ReadU64(as, node)
	if err != nil {
		t.Fatal(err)
	}
	prev, err := vmi.ReadU64(as, node+8)
	if err != nil {
		t.Fatal(err)
	}
	c.put64(t, as, prev, next)   // prev->next = next
	c.put64(t, as, next+8, prev) // next->prev = prev
	if poison {
		c.put64(t, as, node, listPoison1)
		c.put64(t, as, node+8, listPoison2)
	} else {
		c.put64(t, as, node, node)
		c.put64(t, as, node+8, node)
	}
}

// guestProc is one line of the guest's own process listing.
type guestProc struct {
	comm, exe string
}

// guestProcs lists /proc in the guest: pid, comm, exe. It returns the
// listing shell's pid too: processes from it on are the listing's own.
func guestProcs(ctx context.Context, g *objGuest) (map[int]guestProc, int) {
	out := g.run(ctx, `echo self $$; for p in /proc/[0-9]*; do n=${p#/proc/}; c=$(cat $p/comm 2>/dev/null) || continue; echo "$n|$c|$(readlink $p/exe 2>/dev/null)"; done`)
	procs := map[int]guestProc{}
	self := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if s, ok := strings.CutPrefix(line, "self "); ok {
			self, _ = strconv.Atoi(s)
			continue
		}
		f := strings.SplitN(line, "|", 3)
		if len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		procs[pid] = guestProc{comm: f[1], exe: f[2]}
	}
	if self == 0 || len(procs) == 0 {
		g.t.Fatalf("guest process listing: %q", out)
	}
	return procs, self
}

// TestRealKernelObjects boots the default kit, starts a marked process, and
// checks tasks, threads, the PID IDR, run queues and modules read from a
// memory dump against the guest's own /proc; then simulates rootkits that
// unlink a task and a module, and checks that the cross-view checks name
// them.
func TestRealKernelObjects(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	g, k := sharedObjGuest(t)

	// A marked process: busybox copied to tmpfs, run with argv[0] "busybox"
	// so it runs the sleep applet; its comm and exe are the copy's name.
	// The guest is shared: the process and its file go at the end.
	t.Cleanup(func() {
		g.run(context.Background(), `for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = gv-mark ] && kill ${p#/proc/}; done; rm -f /tmp/gv-mark`)
	})
	g.run(ctx, `cp /bin/busybox /tmp/gv-mark && (exec -a busybox /tmp/gv-mark sleep 1000 </dev/null >/dev/null 2>&1 &)`)
	procs, self := guestProcs(ctx, g)
	modsOut := g.run(ctx, "cat /proc/modules")
	dumpPath := g.dump(ctx, "guest.elf")

	prof, err := LoadProfile(k.Kernel, filepath.Join(g.dir, "profiles"))
	if err != nil {
		t.Fatal(err)
	}
	dump, err := vmi.OpenELFDump(dumpPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dump.Close()
	cpu := dump.CPUs()[0]
	kern, err := Locate(dump, prof, Registers{CR3: cpu.CR3(), CR4: cpu.CR4()})
	if err != nil {
		t.Fatal(err)
	}
	kern.AS.Cache.Static = true

	// Tasks against the guest's /proc.
	tasks, err := kern.Tasks()
	if err != nil {
		t.Fatalf("Tasks: %v", err)
	}
	byPID := map[int]Task{}
	for _, tk := range tasks {
		byPID[tk.PID] = tk
	}
	for pid, p := range procs {
		if pid >= self || p.comm == "timeout" {
			continue // the agent's and the listing's own processes, gone by the dump
		}
		tk, ok := byPID[pid]
		if !ok {
			t.Errorf("guest pid %d (%s) missing from Tasks", pid, p.comm)
			continue
		}
		// /proc shows kernel threads' full names, and a kworker's
		// workqueue after a dash; comm holds the first 15 bytes.
		comm := p.comm
		if tk.KernelThread {
			comm = comm[:min(len(comm), taskCommLen-1)]
			if strings.HasPrefix(comm, "kworker/") {
				comm, _, _ = strings.Cut(comm, "-")
			}
		}
		if tk.Comm != comm || tk.Exe != p.exe {
			t.Errorf("pid %d: Tasks comm %q exe %q; guest comm %q exe %q", pid, tk.Comm, tk.Exe, p.comm, p.exe)
		}
		if (p.exe == "") != tk.KernelThread {
			t.Errorf("pid %d (%s): KernelThread %v with guest exe %q", pid, p.comm, tk.KernelThread, p.exe)
		}
	}
	for _, tk := range tasks {
		if _, ok := procs[tk.PID]; !ok && tk.PID < self && tk.Comm != "timeout" {
			t.Errorf("Tasks has pid %d (%s) the guest does not", tk.PID, tk.Comm)
		}
	}
	init, mark := byPID[1], Task{}
	for _, tk := range tasks {
		if tk.Comm == "gv-mark" {
			mark = tk
		}
	}
	if init.Comm != "init" || init.Exe != "/bin/busybox" || init.PPID != 0 || init.UID != 0 || init.State != "S" || init.PGD == 0 || init.Threads != 1 {
		t.Errorf("pid 1 = %+v; want init, /bin/busybox, ppid 0, uid 0, sleeping, a PGD", init)
	}
	if mark.PID == 0 || mark.Exe != "/tmp/gv-mark" || mark.KernelThread || mark.PPID != 1 || mark.StartTime <= init.StartTime {
		t.Errorf("gv-mark = %+v; want exe /tmp/gv-mark, reparented to init, started after init", mark)
	}
	httpd := false
	for _, tk := range tasks {
		if tk.Comm == "httpd" {
			httpd = tk.Exe == "/bin/busybox"
			t.Logf("httpd: %+v", tk)
		}
	}
	if !httpd {
		t.Errorf("no httpd with exe /bin/busybox in Tasks")
	}
	// The process's page tables map the kernel too: its PGD is a usable CR3.
	if _, err := Locate(dump, prof, Registers{CR3: mark.PGD, CR4: cpu.CR4()}); err != nil {
		t.Errorf("Locate through gv-mark's PGD %#x: %v", mark.PGD, err)
	}
	var lines []string
	for _, tk := range tasks {
		lines = append(lines, fmt.Sprintf("%d/%d %s %s uid=%d %q %s", tk.PID, tk.PPID, tk.State, tk.Comm, tk.UID, tk.Exe, map[bool]string{true: "[k]"}[tk.KernelThread]))
	}
	t.Logf("%d tasks:\n%s", len(tasks), strings.Join(lines, "\n"))

	threads, err := kern.Threads()
	if err != nil || len(threads) < len(tasks) {
		t.Errorf("Threads: %d threads, %v", len(threads), err)
	}
	idr, err := kern.PIDNamespaceTasks()
	if err != nil || len(idr) != len(threads) {
		t.Errorf("PIDNamespaceTasks: %d tasks (Threads: %d), %v", len(idr), len(threads), err)
	}
	rq, err := kern.RunQueueTasks()
	if err != nil {
		t.Errorf("RunQueueTasks: %v", err)
	}
	for _, tk := range rq {
		t.Logf("on a run queue: pid %d %s %s", tk.PID, tk.Comm, tk.State)
	}

	// Modules against /proc/modules.
	mods, err := kern.Modules()
	if err != nil {
		t.Fatalf("Modules: %v", err)
	}
	guestMods := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(modsOut), "\n") {
		if f := strings.Fields(line); len(f) >= 6 {
			guestMods[f[0]] = f
		}
	}
	if len(mods) != len(guestMods) || len(mods) == 0 {
		t.Errorf("Modules lists %d, /proc/modules %d", len(mods), len(guestMods))
	}
	for _, m := range mods {
		f, ok := guestMods[m.Name]
		if !ok {
			t.Errorf("module %s not in /proc/modules", m.Name)
			continue
		}
		base, _ := strconv.ParseUint(strings.TrimPrefix(f[5], "0x"), 16, 64)
		if f[1] != strconv.FormatUint(m.Size, 10) || (base != 0 && base != m.Base) || !strings.EqualFold(f[4], m.State) {
			t.Errorf("module %+v; /proc/modules %q", m, f)
		}
	}
	if _, ok := guestMods["virtio_net"]; !ok {
		t.Errorf("virtio_net not loaded: %v", guestMods)
	}
	sysfs, err := kern.ModulesFromSysfs()
	if err != nil || !sameModules(sysfs, mods) {
		t.Errorf("ModulesFromSysfs = %v, %v; Modules = %v", sysfs, err, mods)
	}
	scan, err := kern.ScanModules()
	if err != nil || !sameModules(scan, mods) {
		t.Errorf("ScanModules = %v, %v; Modules = %v", scan, err, mods)
	}
	t.Logf("%d modules: %v", len(mods), mods)

	if h, err := CrossViewProcesses(kern); err != nil || len(h) != 0 {
		t.Errorf("CrossViewProcesses on a clean guest = %+v, %v", h, err)
	}
	if h, err := CrossViewModules(kern); err != nil || len(h) != 0 {
		t.Errorf("CrossViewModules on a clean guest = %+v, %v", h, err)
	}

	// Simulated rootkits on a writable copy of guest RAM.
	ram := copyRAM(t, dump)
	rk, err := Locate(ram, prof, Registers{CR3: cpu.CR3(), CR4: cpu.CR4()})
	if err != nil {
		t.Fatal(err)
	}
	rk.AS.Cache.Static = true
	tasksOff, _ := prof.FieldOffset("task_struct.tasks")
	ram.unlink(t, rk.AS, mark.Addr+tasksOff, false)
	var victim Module
	for _, m := range mods {
		if m.Name == "virtio_net" {
			victim = m
		}
	}
	listOff, _ := prof.FieldOffset("module.list")
	ram.unlink(t, rk.AS, victim.Addr+listOff, true)
	rk.AS.Cache.Invalidate()

	after, err := rk.Tasks()
	if err != nil || len(after) != len(tasks)-1 {
		t.Errorf("Tasks after unlinking gv-mark: %d tasks (before %d), %v", len(after), len(tasks), err)
	}
	hp, err := CrossViewProcesses(rk)
	if err != nil || len(hp) != 1 || hp[0].PID != mark.PID || hp[0].Name != "gv-mark" || hp[0].Addr != mark.Addr ||
		!containsAll(hp[0].SeenIn, ViewPIDIDR) || !containsAll(hp[0].MissingFrom, ViewTasks) {
		t.Errorf("CrossViewProcesses after unlinking gv-mark (pid %d) = %+v, %v", mark.PID, hp, err)
	}
	hm, err := CrossViewModules(rk)
	if err != nil || len(hm) != 1 || hm[0].Name != "virtio_net" || hm[0].Addr != victim.Addr ||
		!containsAll(hm[0].SeenIn, ViewSysfs, ViewScan) || !containsAll(hm[0].MissingFrom, ViewModules) {
		t.Errorf("CrossViewModules after unlinking virtio_net = %+v, %v", hm, err)
	}
	t.Logf("hidden: %+v %+v", hp, hm)
}

func sameModules(a, b []Module) bool {
	key := func(ms []Module) string {
		var s []string
		for _, m := range ms {
			s = append(s, fmt.Sprintf("%#x %s %#x %d %s", m.Addr, m.Name, m.Base, m.Size, m.State))
		}
		sort.Strings(s)
		return strings.Join(s, "\n")
	}
	return key(a) == key(b)
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// TestRealKernelTasksBench measures Tasks() on a guest running over 1,000
// processes, from a copy of guest RAM in host memory (what the live mapping
// gives) with translations re-validated as on live memory, and from the dump
// file. Opt in with GATEVISOR_VMI_BENCH=1; with GATEVISOR_VMI_DUMP=FILE the
// dump is kept there for BenchmarkTasks.
func TestRealKernelTasksBench(t *testing.T) {
	if os.Getenv("GATEVISOR_VMI_BENCH") == "" {
		t.Skip("benchmark; set GATEVISOR_VMI_BENCH=1 to boot a guest with 1,000 processes and time Tasks()")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	g, k := bootObjGuest(t, 512)
	g.run(ctx, `for i in $(seq 1000); do sleep 1000 </dev/null >/dev/null 2>&1 & done`)
	n := g.run(ctx, `ls -d /proc/[0-9]* | wc -l`)
	t.Logf("guest has %s processes", strings.TrimSpace(n))
	dumpPath := g.dump(ctx, "guest.elf")
	if keep := os.Getenv("GATEVISOR_VMI_DUMP"); keep != "" {
		if err := os.Rename(dumpPath, keep); err != nil {
			t.Fatal(err)
		}
		dumpPath = keep
		t.Logf("dump kept at %s for BenchmarkTasks", keep)
	}
	prof, err := LoadProfile(k.Kernel, filepath.Join(g.dir, "profiles"))
	if err != nil {
		t.Fatal(err)
	}
	dump, err := vmi.OpenELFDump(dumpPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dump.Close()
	cpu := dump.CPUs()[0]
	regs := Registers{CR3: cpu.CR3(), CR4: cpu.CR4()}
	ram := copyRAM(t, dump)
	for _, c := range []struct {
		name   string
		mem    vmi.PhysicalMemory
		static bool
	}{
		{"RAM copy, live-memory cache", ram, false},
		{"RAM copy, static cache", ram, true},
		{"dump file, static cache", dump, true},
	} {
		kern, err := Locate(c.mem, prof, regs)
		if err != nil {
			t.Fatal(err)
		}
		kern.AS.Cache.Static = c.static
		var times []time.Duration
		var tasks []Task
		for i := 0; i < 101; i++ {
			t0 := time.Now()
			tasks, err = kern.Tasks()
			times = append(times, time.Since(t0))
			if err != nil {
				t.Fatal(err)
			}
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		t.Logf("%s: Tasks() over %d processes: median %v, min %v, p90 %v", c.name, len(tasks),
			times[len(times)/2].Round(time.Microsecond), times[0].Round(time.Microsecond), times[len(times)*9/10].Round(time.Microsecond))
		if len(tasks) < 1000 {
			t.Errorf("%d tasks; want over 1000", len(tasks))
		}
	}
}

// BenchmarkTasks times Tasks() over the dump that TestRealKernelTasksBench
// kept at GATEVISOR_VMI_DUMP, from a copy of guest RAM in host memory with
// translations re-validated as on live memory.
func BenchmarkTasks(b *testing.B) {
	kern := dumpKernel(b, "needs a dump: run TestRealKernelTasksBench with GATEVISOR_VMI_BENCH=1 GATEVISOR_VMI_DUMP=FILE first")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := kern.Tasks(); err != nil {
			b.Fatal(err)
		}
	}
}
