package linux

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// TestRealKernelDump boots the default kit's Debian kernel under QEMU (TCG),
// dumps guest memory with QMP dump-guest-memory and introspects the dump: the
// banner through the kernel's KASLR'd virtual address, init_task's comm via
// BTF offsets, the task list, and the syscall table via kallsyms. The guest
// and the dump are the ones the package's real-kernel tests share.
func TestRealKernelDump(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	k, dumpPath := bootedDump(ctx, t)
	dir := t.TempDir()

	t0 := time.Now()
	cache := filepath.Join(dir, "profiles")
	prof, err := LoadProfile(k.Kernel, cache)
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	t.Logf("profile built in %v: %d symbols, %s compression, build id %s", time.Since(t0), prof.Symbols.Len(), prof.Compression, prof.BuildID)
	t0 = time.Now()
	cached, err := LoadProfile(k.Kernel, cache)
	if err != nil || cached.Banner != prof.Banner || cached.Symbols.Len() != prof.Symbols.Len() {
		t.Fatalf("cached profile: %v", err)
	}
	t.Logf("profile from cache in %v", time.Since(t0))

	dump, err := vmi.OpenELFDump(dumpPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dump.Close()
	cpus := dump.CPUs()
	if len(cpus) == 0 {
		t.Fatal("dump has no vCPU notes")
	}
	cpu := cpus[0]
	t.Logf("vCPU 0: CR3 %#x CR4 %#x RIP %#x GS base %#x kernel GS base %#x", cpu.CR3(), cpu.CR4(), cpu.RIP, cpu.GSBase(), cpu.KernelGSBase)

	kern, err := Locate(dump, prof, Registers{CR3: cpu.CR3(), CR4: cpu.CR4()})
	if err != nil {
		t.Fatalf("Locate: %v", err)
	}
	kern.AS.Cache.Static = true
	t.Logf("_text at physical %#x, virtual slide %#x", kern.PhysBase, kern.Slide)

	// Without registers: the kernel's own init_top_pgt gives the same answer.
	k2, err := Locate(dump, cached, Registers{})
	if err != nil || k2.Slide != kern.Slide || k2.PhysBase != kern.PhysBase {
		t.Errorf("Locate without CR3 = %+v, %v", k2, err)
	}

	banner, err := kern.Banner()
	if err != nil || banner != prof.Banner || !strings.HasPrefix(banner, "Linux version 6.1") {
		t.Errorf("banner read through translation = %q, %v", banner, err)
	}

	initTask := mustAddr(t, kern, "init_task")
	commOff := mustField(t, prof, "task_struct.comm")
	comm, err := vmi.ReadCString(kern.AS, initTask+commOff, 16)
	if err != nil || comm != "swapper/0" {
		t.Errorf("init_task.comm = %q, %v; want swapper/0", comm, err)
	}

	// The task list from init_task.
	tasksOff := mustField(t, prof, "task_struct.tasks")
	pidOff := mustField(t, prof, "task_struct.pid")
	var procs []string
	err = vmi.WalkList(kern.AS, initTask+tasksOff, 100000, func(node uint64) error {
		task := node - tasksOff
		pid, err := vmi.ReadU32(kern.AS, task+pidOff)
		if err != nil {
			return err
		}
		c, err := vmi.ReadCString(kern.AS, task+commOff, 16)
		if err != nil {
			return err
		}
		procs = append(procs, fmt.Sprintf("%d:%s", pid, c))
		return nil
	})
	if err != nil || len(procs) == 0 || !strings.HasPrefix(procs[0], "1:") {
		t.Errorf("task list = %v, %v; want pid 1 first", procs, err)
	}
	t.Logf("%d tasks: %s", len(procs), strings.Join(procs, " "))

	// The first syscall table entries.
	table := mustAddr(t, kern, "sys_call_table")
	for i, want := range []string{"__x64_sys_read", "__x64_sys_write", "__x64_sys_open", "__x64_sys_close"} {
		fn, err := vmi.ReadU64(kern.AS, table+uint64(8*i))
		if err != nil {
			t.Fatalf("sys_call_table[%d]: %v", i, err)
		}
		sym, off, ok := kern.SymbolAt(fn)
		if !ok || sym.Name != want || off != 0 {
			t.Errorf("sys_call_table[%d] = %#x = %s+%#x; want %s", i, fn, sym.Name, off, want)
		}
	}
}

func mustAddr(t *testing.T, k *Kernel, name string) uint64 {
	t.Helper()
	a, err := k.Addr(name)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustField(t *testing.T, p *Profile, path string) uint64 {
	t.Helper()
	o, err := p.FieldOffset(path)
	if err != nil {
		t.Fatal(err)
	}
	return o
}
