package linux

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi"
	"golang.org/x/arch/x86/x86asm"
)

// TestRealKernelSyscallsAndSockets boots the default kit under QEMU (TCG),
// dumps guest memory through QMP and checks, on the real Debian 6.1 kernel
// (which has the backported x64_sys_call): every sys_call_table slot holds
// its image handler and nothing is flagged; the dispatch path matches the
// image; busybox httpd and telnetd listen on ports 80 and 23. Then it
// simulates rootkits in copies of the memory: a syscall slot pointed at
// module space, at the direct map and at another handler, and branches in
// x64_sys_call and entry_SYSCALL_64 redirected; each must be reported.
//
// The guest and the dump are the ones the package's real-kernel tests share.
// With GATEVISOR_KEEP_DUMP=FILE the dump is kept for the benchmarks.
func TestRealKernelSyscallsAndSockets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	kt, dumpPath := bootedDump(ctx, t)
	dir := t.TempDir()
	if keep := os.Getenv("GATEVISOR_KEEP_DUMP"); keep != "" {
		if err := copyFile(dumpPath, keep); err != nil {
			t.Errorf("keep dump: %v", err)
		}
	}

	cache := filepath.Join(dir, "profiles")
	k := openRealKernel(t, kt.Kernel, cache, dumpPath)
	// The facts come back from the cache for a fresh profile of the same build.
	t0 := time.Now()
	p2, err := LoadProfile(kt.Kernel, cache)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.LoadImage("", cache); err != nil || len(p2.Image().SyscallTable) != len(k.Profile.Image().SyscallTable) {
		t.Fatalf("image facts from the cache: %v", err)
	}
	t.Logf("image facts from the cache in %v", time.Since(t0))

	t.Run("syscall table clean", func(t *testing.T) {
		table, err := k.SyscallTable()
		if err != nil {
			t.Fatal(err)
		}
		if len(table) < 400 || len(table) > 600 {
			t.Fatalf("%d syscall slots; want the x86-64 table (about 450)", len(table))
		}
		for _, e := range table {
			if e.Hooked || e.Symbol != e.Name || !e.InCoreText || !strings.HasPrefix(e.Name, "__x64_sys_") || e.SlotPhys == 0 {
				t.Errorf("slot %+v", e)
			}
		}
		want := map[int]string{0: "__x64_sys_read", 1: "__x64_sys_write", 39: "__x64_sys_getpid", 59: "__x64_sys_execve", 62: "__x64_sys_kill"}
		for nr, name := range want {
			if table[nr].Name != name {
				t.Errorf("slot %d = %s; want %s", nr, table[nr].Name, name)
			}
		}
		t.Logf("%d syscall slots, none hooked; slot 0 %s at %#x (physical %#x)", len(table), table[0].Name, table[0].SlotAddr, table[0].SlotPhys)
	})

	t.Run("code references", func(t *testing.T) {
		// The LSM hooks the syscall gate traps are only ever called
		// directly, each from the callers named here; a function in file
		// operation tables has its address in data.
		want := map[string][]string{
			"security_file_open":           {"do_dentry_open"},
			"security_bprm_creds_for_exec": {"bprm_execve"},
			"security_path_mknod":          {"path_openat", "do_mknodat"},
		}
		var targets []uint64
		byAddr := map[uint64]string{}
		for name := range want {
			a := mustAddr(t, k, name)
			targets = append(targets, a)
			byAddr[a] = name
		}
		fops := mustAddr(t, k, "generic_file_read_iter")
		targets = append(targets, fops)
		t0 := time.Now()
		refs, err := k.CodeRefs(targets)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("CodeRefs of %d functions in %v", len(targets), time.Since(t0))
		for a, name := range byAddr {
			got := map[string]bool{}
			for _, r := range refs[a] {
				t.Logf("%s: %s at %#x (%s), %d bytes", name, r.Kind, r.Addr, r.Where, r.Len)
				if r.Kind != RefCall {
					t.Errorf("%s: %+v; want only direct calls", name, r)
				}
				var live [5]byte
				if _, err := k.AS.ReadVirtual(r.Addr, live[:]); err != nil || live[0] != 0xe8 ||
					r.Addr+5+uint64(int64(int32(binary.LittleEndian.Uint32(live[1:])))) != a {
					t.Errorf("%s: %#x is not a call to %#x: % x", name, r.Addr, a, live)
				}
				got[strings.SplitN(r.Where, "+", 2)[0]] = true
			}
			for _, caller := range want[name] {
				if !got[caller] {
					t.Errorf("%s: no call from %s among %v", name, caller, got)
				}
			}
		}
		other := 0
		for _, r := range refs[fops] {
			if r.Kind == RefOther {
				other++
			}
		}
		if other == 0 {
			t.Errorf("generic_file_read_iter: %d references, none in data or taking its address: %+v", len(refs[fops]), refs[fops])
		}
	})

	t.Run("dispatch clean", func(t *testing.T) {
		f, err := k.CheckDispatch()
		if err != nil || len(f) != 0 {
			t.Fatalf("CheckDispatch = %+v, %v; want no findings", f, err)
		}
		var names []string
		for _, c := range k.Profile.Image().Code {
			names = append(names, c.Name)
		}
		t.Logf("dispatch path clean: %s; %d alternatives in it", strings.Join(names, ", "), len(k.Profile.Image().Alternatives))
	})

	t.Run("sockets", func(t *testing.T) {
		tasks := realTasks(t, k)
		pids := map[string]int{}
		for _, task := range tasks {
			pids[task.Comm] = task.PID
		}
		socks, st, err := k.SocketsWithStats(tasks)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range socks {
			t.Logf("%-5s %-5s %s:%d -> %s:%d %-11s inode %d pid %d %s", s.Family, s.Proto, s.LocalAddr, s.LocalPort, s.RemoteAddr, s.RemotePort, s.State, s.Inode, s.PID, s.Comm)
		}
		if st.Skipped != 0 || st.Truncated != 0 {
			t.Errorf("stats %+v on a quiescent dump", st)
		}
		for comm, port := range map[string]int{"httpd": 80, "telnetd": 23} {
			found := false
			for _, s := range socks {
				if s.Comm == comm && s.LocalPort == port && s.State == "LISTEN" && s.Proto == "tcp" &&
					(s.Family == "inet" && s.LocalAddr == "0.0.0.0" || s.Family == "inet6" && s.LocalAddr == "::") &&
					s.PID == pids[comm] && s.PID != 0 && s.Inode != 0 {
					found = true
				}
			}
			if !found {
				t.Errorf("no %s socket listening on port %d with pid %d", comm, port, pids[comm])
			}
		}
	})

	t.Run("hooked syscall slot", func(t *testing.T) {
		table, err := k.SyscallTable()
		if err != nil {
			t.Fatal(err)
		}
		pageOffset, ok := k.readVar("page_offset_base")
		if !ok {
			t.Fatal("page_offset_base unreadable")
		}
		for _, tc := range []struct {
			name   string
			value  uint64
			reason string
		}{
			{"module space", 0xffffffffc0a01230, "module space"},
			{"direct map", pageOffset + 0x1234560, "direct map"},
			{"another handler", table[39].Addr, "points at __x64_sys_getpid; the image has __x64_sys_read"},
			{"inside a handler", table[0].Addr + 0x10, "__x64_sys_read+0x10"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var b [8]byte
				binary.LittleEndian.PutUint64(b[:], tc.value)
				hk := k.withPatches(patch{table[0].SlotPhys, b[:]})
				got, err := hk.SyscallTable()
				if err != nil {
					t.Fatal(err)
				}
				e := got[0]
				if !e.Hooked || e.Addr != tc.value || !strings.Contains(e.Reason, tc.reason) || e.Name != "__x64_sys_read" {
					t.Errorf("slot 0 = %+v; want hooked, reason with %q", e, tc.reason)
				}
				for _, e := range got[1:] {
					if e.Hooked {
						t.Errorf("slot %d hooked too: %+v", e.Nr, e)
					}
				}
				t.Logf("reason: %s", e.Reason)
			})
		}
	})

	t.Run("hooked dispatch", func(t *testing.T) {
		getpid := table0(t, k, 39)
		for _, tc := range []struct {
			name, fn string
			// pick chooses the branch to patch.
			pick   func(x86asm.Inst, uint64) bool
			target uint64
			reason string
		}{
			{"x64_sys_call to module space", "x64_sys_call", externalBranch(k, "x64_sys_call"), 0xffffffffc0a01230, "module space"},
			{"x64_sys_call to another handler", "x64_sys_call", externalBranch(k, "x64_sys_call"), getpid, "where the image branches to"},
			{"entry_SYSCALL_64 call to module space", "entry_SYSCALL_64", callTo(k, "do_syscall_64"), 0xffffffffc0a01230, "module space"},
			{"do_syscall_64 to a handler", "do_syscall_64", callTo(k, "x64_sys_call"), getpid, "where the image branches to x64_sys_call"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				site, inst := findLiveBranch(t, k, tc.fn, tc.pick)
				p := relPatch(t, k, site, inst, tc.target)
				f, err := k.withPatches(p).CheckDispatch()
				if err != nil {
					t.Fatal(err)
				}
				if len(f) != 1 || f[0].Addr != site || f[0].Target != tc.target || f[0].Function != tc.fn || !strings.Contains(f[0].Reason, tc.reason) {
					t.Fatalf("findings %+v; want one at %#x with %q", f, site, tc.reason)
				}
				t.Logf("%s+%#x: %s", tc.fn, site-mustAddr(t, k, tc.fn), f[0].Reason)
			})
		}
		t.Run("ftrace-style hook at __fentry__", func(t *testing.T) {
			fn := mustAddr(t, k, "x64_sys_call")
			pa, _, err := k.AS.Translate(fn)
			if err != nil {
				t.Fatal(err)
			}
			call := make([]byte, 5)
			call[0] = 0xe8
			binary.LittleEndian.PutUint32(call[1:], uint32(int32(int64(0xffffffffc0a01230-(fn+5)))))
			f, err := k.withPatches(patch{pa, call}).CheckDispatch()
			if err != nil || len(f) != 1 || !strings.Contains(f[0].Reason, "__fentry__") {
				t.Fatalf("findings %+v, %v; want one naming the __fentry__ site", f, err)
			}
			t.Logf("%s", f[0].Reason)
		})
	})
}

// openRealKernel builds the profile, attaches the image facts and locates
// the kernel in the dump.
func openRealKernel(tb testing.TB, kernel, cache, dumpPath string) *Kernel {
	tb.Helper()
	prof, err := LoadProfile(kernel, cache)
	if err != nil {
		tb.Fatalf("profile: %v", err)
	}
	t0 := time.Now()
	if err := prof.LoadImage(kernel, cache); err != nil {
		tb.Fatalf("image facts: %v", err)
	}
	tb.Logf("image facts in %v", time.Since(t0))
	dump, err := vmi.OpenELFDump(dumpPath)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dump.Close() })
	cpus := dump.CPUs()
	if len(cpus) == 0 {
		tb.Fatal("dump has no vCPU notes")
	}
	k, err := Locate(dump, prof, Registers{CR3: cpus[0].CR3(), CR4: cpus[0].CR4()})
	if err != nil {
		tb.Fatalf("Locate: %v", err)
	}
	k.AS.Cache.Static = true
	return k
}

// realTasks returns the processes: from Tasks, or while that is not
// available, from a walk of init_task.tasks.
func realTasks(tb testing.TB, k *Kernel) []Task {
	tb.Helper()
	if tasks, err := k.Tasks(); err == nil && len(tasks) > 0 {
		return tasks
	}
	p := k.Profile
	init, err := k.Addr("init_task")
	if err != nil {
		tb.Fatal(err)
	}
	tasksOff, _ := p.FieldOffset("task_struct.tasks")
	pidOff, _ := p.FieldOffset("task_struct.pid")
	commOff, _ := p.FieldOffset("task_struct.comm")
	mmOff, err := p.FieldOffset("task_struct.mm")
	if err != nil {
		tb.Fatal(err)
	}
	var out []Task
	err = vmi.WalkList(k.AS, init+tasksOff, 1<<16, func(node uint64) error {
		task := node - tasksOff
		pid, err := vmi.ReadU32(k.AS, task+pidOff)
		if err != nil {
			return err
		}
		comm, _ := vmi.ReadCString(k.AS, task+commOff, 16)
		mm, err := vmi.ReadU64(k.AS, task+mmOff)
		if err != nil {
			return err
		}
		out = append(out, Task{Addr: task, PID: int(pid), TGID: int(pid), Comm: comm, KernelThread: mm == 0})
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func table0(t *testing.T, k *Kernel, nr int) uint64 {
	t.Helper()
	table, err := k.SyscallTable()
	if err != nil || len(table) <= nr {
		t.Fatalf("SyscallTable: %v", err)
	}
	return table[nr].Addr
}

// externalBranch picks a direct branch from fn to a syscall handler.
func externalBranch(k *Kernel, fn string) func(x86asm.Inst, uint64) bool {
	return func(inst x86asm.Inst, target uint64) bool {
		return inst.Op == x86asm.JMP && hasPrefix(k.symbolName(target), "__x64_sys_", "__do_sys_") && inst.Len == 5
	}
}

// callTo picks a direct call to symbol name.
func callTo(k *Kernel, name string) func(x86asm.Inst, uint64) bool {
	return func(inst x86asm.Inst, target uint64) bool {
		return inst.Op == x86asm.CALL && inst.Len == 5 && k.symbolName(target) == name
	}
}

// findLiveBranch decodes fn's live code and returns the address and
// instruction of the first direct branch pick accepts.
func findLiveBranch(t *testing.T, k *Kernel, fn string, pick func(x86asm.Inst, uint64) bool) (uint64, x86asm.Inst) {
	t.Helper()
	for _, c := range k.Profile.Image().Code {
		if c.Name != fn {
			continue
		}
		base := c.Addr + k.Slide
		code := make([]byte, len(c.Bytes))
		if _, err := k.AS.ReadVirtual(base, code); err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(code); {
			inst, err := x86asm.Decode(code[off:], 64)
			if err != nil {
				off++
				continue
			}
			if rel, ok := inst.Args[0].(x86asm.Rel); ok {
				target := base + uint64(off+inst.Len) + uint64(int64(rel))
				if pick(inst, target) {
					return base + uint64(off), inst
				}
			}
			off += inst.Len
		}
	}
	t.Fatalf("no matching branch in %s", fn)
	return 0, x86asm.Inst{}
}

// relPatch rewrites the rel32 of the 5-byte branch at site to target.
func relPatch(t *testing.T, k *Kernel, site uint64, inst x86asm.Inst, target uint64) patch {
	t.Helper()
	pa, _, err := k.AS.Translate(site + 1)
	if err != nil {
		t.Fatal(err)
	}
	rel := make([]byte, 4)
	binary.LittleEndian.PutUint32(rel, uint32(int32(int64(target-(site+uint64(inst.Len))))))
	return patch{pa, rel}
}

// patch is bytes written at a guest-physical address.
type patch struct {
	gpa uint64
	b   []byte
}

// patchedMem is a copy-on-read view of guest memory with patches applied:
// the simulated rootkit's writes.
type patchedMem struct {
	vmi.PhysicalMemory
	patches []patch
}

func (m patchedMem) ReadAt(p []byte, gpa int64) (int, error) {
	n, err := m.PhysicalMemory.ReadAt(p, gpa)
	for _, pt := range m.patches {
		lo, hi := max(uint64(gpa), pt.gpa), min(uint64(gpa)+uint64(n), pt.gpa+uint64(len(pt.b)))
		if lo < hi {
			copy(p[lo-uint64(gpa):hi-uint64(gpa)], pt.b[lo-pt.gpa:])
		}
	}
	return n, err
}

// withPatches returns k over a patched copy of its memory, with a fresh
// translation cache.
func (k *Kernel) withPatches(ps ...patch) *Kernel {
	m := patchedMem{k.Mem, ps}
	k2 := *k
	k2.Mem = m
	k2.AS = &vmi.AddressSpace{Mem: m, CR3: k.AS.CR3, LA57: k.AS.LA57}
	return &k2
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
