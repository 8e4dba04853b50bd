package linux

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/vmi"
)

// TestRealKernelDump boots the default kit's Debian kernel under QEMU (TCG),
// dumps guest memory with QMP dump-guest-memory and introspects the dump: the
// banner through the kernel's KASLR'd virtual address, init_task's comm via
// BTF offsets, the task list, and the syscall table via kallsyms.
func TestRealKernelDump(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	qemu, k := realKernelKit(ctx, t)

	dir := t.TempDir()
	dumpPath := filepath.Join(dir, "guest.elf")
	bootAndDump(ctx, t, qemu, k, dir, dumpPath)

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

// bootAndDump boots the kit, waits for its ready marker on the serial
// console, and writes a dump-guest-memory (paging=false) ELF to dumpPath.
func bootAndDump(ctx context.Context, t *testing.T, qemu string, k *kit.Kit, dir, dumpPath string) {
	t.Helper()
	qmpPath := filepath.Join(dir, "qmp.sock")
	serial := filepath.Join(dir, "serial.log")
	cmd := exec.CommandContext(ctx, qemu, "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
		"-m", "256", "-kernel", k.Kernel, "-initrd", k.Initrd, "-append", k.Append,
		"-serial", "file:"+serial, "-qmp", "unix:"+qmpPath+",server=on,wait=off", "-no-reboot")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	start := time.Now()
	for {
		b, _ := os.ReadFile(serial)
		if strings.Contains(string(b), kit.ReadyMarker) {
			break
		}
		if ctx.Err() != nil || time.Since(start) > 5*time.Minute {
			t.Fatalf("guest not ready after %v; serial log:\n%s", time.Since(start), b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("guest ready after %v", time.Since(start).Round(100*time.Millisecond))

	conn, err := net.Dial("unix", qmpPath)
	if err != nil {
		t.Fatalf("QMP: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil { // greeting
		t.Fatalf("QMP greeting: %v", err)
	}
	qmpExec := func(cmd string, args any) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
		if _, err := conn.Write(append(b, '\n')); err != nil {
			t.Fatalf("QMP %s: %v", cmd, err)
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("QMP %s: %v", cmd, err)
			}
			var m map[string]json.RawMessage
			if json.Unmarshal([]byte(line), &m) != nil {
				continue
			}
			if e, ok := m["error"]; ok {
				t.Fatalf("QMP %s: %s", cmd, e)
			}
			if _, ok := m["return"]; ok {
				return
			}
		}
	}
	qmpExec("qmp_capabilities", map[string]any{})
	t0 := time.Now()
	qmpExec("dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + dumpPath})
	t.Logf("dump-guest-memory took %v", time.Since(t0).Round(time.Millisecond))
}
