package gdbrsp

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/qemu/qmp"
	"github.com/gatevisor/gatevisor/internal/testvm"
)

// startQEMU starts a kernel-less, paused q35 VM under TCG with a gdbstub
// and returns the gdb and QMP socket paths, both listening. The harness
// kills QEMU when the test ends, whatever the test did.
func startQEMU(t *testing.T) (gdbPath, qmpPath string) {
	t.Helper()
	v := testvm.Start(t, testvm.Config{Paused: true, GDB: true})
	return v.GDB, v.QMP
}

func TestMain(m *testing.M) { os.Exit(testvm.Main(m)) }

func TestQEMU(t *testing.T) {
	gdbPath, _ := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Dial(ctx, gdbPath)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	t.Logf("PacketSize %d, arch %s, %d registers", c.PacketSize(), c.TargetDescription().Architecture, len(c.Registers()))

	for _, name := range []string{"rip", "cs", "cr0", "cr3", "cr4", "efer", "fs_base", "gs_base", "k_gs_base"} {
		if _, ok := c.Register(name); !ok {
			t.Errorf("target description lacks %s", name)
		}
	}

	rip, err := c.ReadRegister(ctx, "rip")
	if err != nil || rip != 0xfff0 {
		t.Errorf("ReadRegister(rip) = %#x, %v; want 0xfff0 at reset", rip, err)
	}
	regs, err := c.ReadRegisters(ctx)
	if err != nil {
		t.Fatalf("ReadRegisters: %v", err)
	}
	if regs["rip"] != 0xfff0 || regs["cs"] != 0xf000 || regs["cr0"] != 0x60000010 {
		t.Errorf("reset state rip=%#x cs=%#x cr0=%#x, want 0xfff0 0xf000 0x60000010", regs["rip"], regs["cs"], regs["cr0"])
	}
	for _, name := range []string{"cr3", "gs_base", "efer"} {
		if _, ok := regs[name]; !ok {
			t.Errorf("ReadRegisters lacks %s", name)
		}
	}
	if _, err := c.ReadRegister(ctx, "xmm0"); !errors.Is(err, ErrRegisterTooWide) {
		t.Errorf("ReadRegister(xmm0) = %v, want ErrRegisterTooWide", err)
	}
	if b, err := c.ReadRegisterBytes(ctx, "xmm0"); err != nil || len(b) != 16 {
		t.Errorf("ReadRegisterBytes(xmm0) = %x, %v; want 16 bytes", b, err)
	}

	threads, err := c.Threads(ctx)
	if err != nil || len(threads) != 1 || threads[0] != 1 {
		t.Errorf("Threads = %v, %v; want [1]", threads, err)
	}
	if err := c.SetVCPU(ctx, 0); err != nil {
		t.Errorf("SetVCPU(0): %v", err)
	}

	// Physical memory: write across a chunk boundary, read it back.
	if err := c.SetPhysicalMemoryMode(ctx, true); err != nil {
		t.Fatalf("SetPhysicalMemoryMode: %v", err)
	}
	want := make([]byte, 5000)
	for i := range want {
		want[i] = byte(i*7) ^ '#' // includes bytes that need escaping
	}
	if err := c.WriteMemory(ctx, 0x1000, want); err != nil {
		t.Fatalf("WriteMemory: %v", err)
	}
	got := make([]byte, len(want))
	if err := c.ReadMemory(ctx, 0x1000, got); err != nil {
		t.Fatalf("ReadMemory: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("memory read back differs from what was written")
	}
	// Beyond the end of RAM (and below the 4 GiB hole) reads fail cleanly.
	var te *TargetError
	if err := c.ReadMemory(ctx, 0x3000_0000, make([]byte, 16)); err == nil {
		t.Log("reading unbacked physical memory succeeded (QEMU returns zeros or 0xff there)")
	} else if !errors.As(err, &te) {
		t.Errorf("ReadMemory of unbacked memory = %v, want *TargetError", err)
	}
	if err := c.SetPhysicalMemoryMode(ctx, false); err != nil {
		t.Fatalf("SetPhysicalMemoryMode(false): %v", err)
	}

	t.Logf("X packets supported: %v", c.xWrites.Load() > 0)

	// The firmware's reset vector (f000:fff0) far-jumps to f000:e05b, linear
	// address 0xfe05b, SeaBIOS's fixed POST entry. Breakpoints take linear
	// addresses. A hardware one is set and cleared here and hit in
	// TestQEMUHardwareBreakpoint; a software one must stop there on vCPU 1.
	if err := c.SetBreakpoint(ctx, Hardware, 0xfe05b); err != nil {
		t.Fatalf("SetBreakpoint(Hardware): %v", err)
	}
	if err := c.ClearBreakpoint(ctx, Hardware, 0xfe05b); err != nil {
		t.Fatalf("ClearBreakpoint(Hardware): %v", err)
	}
	if err := c.SetBreakpoint(ctx, Software, 0xfe05b); err != nil {
		t.Fatalf("SetBreakpoint(Software): %v", err)
	}
	if err := c.Continue(ctx); err != nil {
		t.Fatalf("Continue: %v", err)
	}
	sr, err := c.WaitStop(ctx)
	if err != nil {
		t.Fatalf("WaitStop at breakpoint: %v", err)
	}
	if sr.Kind != 'T' || sr.Signal != 5 || sr.Thread != 1 {
		t.Errorf("stop at breakpoint = %+v, want T05 thread 1", sr)
	}
	if rip, err := c.ReadRegister(ctx, "rip"); err != nil || rip != 0xe05b {
		t.Errorf("rip at breakpoint = %#x, %v; want 0xe05b", rip, err)
	}
	if err := c.ClearBreakpoint(ctx, Software, 0xfe05b); err != nil {
		t.Errorf("ClearBreakpoint(Software): %v", err)
	}

	if err := c.Continue(ctx); err != nil {
		t.Fatalf("Continue: %v", err)
	}
	if _, err := c.ReadRegister(ctx, "rip"); !errors.Is(err, ErrRunning) {
		t.Errorf("ReadRegister while running = %v, want ErrRunning", err)
	}
	if err := c.Interrupt(ctx); err != nil {
		t.Fatalf("Interrupt: %v", err)
	}
	sr, err = c.WaitStop(ctx)
	if err != nil {
		t.Fatalf("WaitStop: %v", err)
	}
	if sr.Kind != 'T' || sr.Signal != 2 || sr.Thread != 1 {
		t.Errorf("stop after interrupt = %+v, want T02 thread 1", sr)
	}
	rip, err = c.ReadRegister(ctx, "rip")
	if err != nil {
		t.Fatalf("ReadRegister after interrupt: %v", err)
	}
	t.Logf("rip after running the firmware: %#x", rip)
}

// TestQEMUHardwareBreakpoint hits a Z1 breakpoint at the firmware's POST
// entry on a fresh VM.
func TestQEMUHardwareBreakpoint(t *testing.T) {
	gdbPath, _ := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Dial(ctx, gdbPath)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if err := c.SetBreakpoint(ctx, Hardware, 0xfe05b); err != nil {
		t.Fatalf("SetBreakpoint: %v", err)
	}
	if err := c.Continue(ctx); err != nil {
		t.Fatalf("Continue: %v", err)
	}
	sr, err := c.WaitStop(ctx)
	if err != nil {
		t.Fatalf("WaitStop: %v", err)
	}
	if sr.Kind != 'T' || sr.Signal != 5 {
		t.Errorf("stop = %+v, want T05", sr)
	}
	if rip, err := c.ReadRegister(ctx, "rip"); err != nil || rip != 0xe05b {
		t.Errorf("rip at breakpoint = %#x, %v; want 0xe05b", rip, err)
	}
}

// TestQEMUResumedBehindOurBack resumes the VM through QMP, which the gdb
// client cannot see, and checks that WithStopped still stops it, does its
// work and resumes it; and that Detach leaves it running.
func TestQEMUResumedBehindOurBack(t *testing.T) {
	gdbPath, qmpPath := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Dial(ctx, gdbPath)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	q, err := qmp.Dial(ctx, qmpPath)
	if err != nil {
		t.Fatalf("qmp.Dial: %v", err)
	}
	defer q.Close()

	// Stopped: WithStopped must not resume.
	if err := c.WithStopped(ctx, func() error { return nil }); err != nil {
		t.Fatalf("WithStopped while stopped: %v", err)
	}
	if st, err := q.QueryStatus(ctx); err != nil || st.Running {
		t.Errorf("after WithStopped on a stopped VM: %+v, %v; want not running", st, err)
	}

	if err := q.Cont(ctx); err != nil {
		t.Fatalf("qmp cont: %v", err)
	}
	var rip uint64
	var statusInside qmp.Status
	// Until the firmware has run (rip left the reset vector), or 10 s.
	_ = testvm.Poll(10*time.Second, func() error {
		err = c.WithStopped(ctx, func() error {
			var err error
			if statusInside, err = q.QueryStatus(ctx); err != nil {
				return err
			}
			rip, err = c.ReadRegister(ctx, "rip")
			return err
		})
		if err == nil && rip == 0xfff0 {
			return errors.New("still at the reset vector")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("WithStopped: %v", err)
	}
	if statusInside.Running {
		t.Errorf("VM running inside WithStopped: %+v", statusInside)
	}
	if rip == 0xfff0 {
		t.Errorf("rip = %#x: the VM never ran", rip)
	}
	if st, err := q.QueryStatus(ctx); err != nil || !st.Running {
		t.Errorf("after WithStopped: %+v, %v; want running again", st, err)
	}

	// QMP stop while attached: QEMU 7.2 tells the gdb client. Taking that
	// stop reply keeps Halt from mistaking it for one it caused.
	if err := q.Stop(ctx); err != nil {
		t.Fatalf("qmp stop: %v", err)
	}
	if sr, err := c.WaitStop(ctx); err != nil || sr.Signal != 2 {
		t.Errorf("stop reply after QMP stop = %+v, %v; want T02", sr, err)
	}
	if wasRunning, err := c.Halt(ctx); err != nil || wasRunning {
		t.Errorf("Halt after QMP stop = %v, %v; want false, nil", wasRunning, err)
	}
	if err := c.Detach(ctx); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if st, err := q.QueryStatus(ctx); err != nil || !st.Running {
		t.Errorf("after Detach: %+v, %v; want running", st, err)
	}
	if _, err := c.ReadRegister(ctx, "rip"); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadRegister after Detach = %v, want ErrClosed", err)
	}
}

// TestQEMUStepThread steps one vCPU of two: only it moves.
func TestQEMUStepThread(t *testing.T) {
	v := testvm.Start(t, testvm.Config{Paused: true, GDB: true, Extra: []string{"-smp", "2"}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Dial(ctx, v.GDB)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if th, err := c.Threads(ctx); err != nil || len(th) != 2 {
		t.Fatalf("Threads = %v, %v; want 2", th, err)
	}
	rip := func(tid int) uint64 {
		t.Helper()
		if err := c.SetThread(ctx, tid); err != nil {
			t.Fatal(err)
		}
		r, err := c.ReadRegister(ctx, "rip")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	before2 := rip(2)
	sr, err := c.StepThread(ctx, 1)
	if err != nil || sr.Signal != 5 || sr.Thread != 1 {
		t.Fatalf("StepThread(1) = %+v, %v", sr, err)
	}
	if r := rip(1); r == 0xfff0 {
		t.Errorf("vCPU 0 did not move: rip %#x", r)
	}
	if r := rip(2); r != before2 {
		t.Errorf("vCPU 1 moved while vCPU 0 stepped: rip %#x -> %#x", before2, r)
	}
	if _, err := c.StepThread(ctx, 0); err == nil {
		t.Error("StepThread(0) accepted an invalid thread")
	}
}

// TestQEMUContinueWithRegisters writes registers and continues in one
// write on QEMU: the VM runs from the rip written, with the other
// register written too, and the stop that follows is the breakpoint's.
func TestQEMUContinueWithRegisters(t *testing.T) {
	gdbPath, _ := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Dial(ctx, gdbPath)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	// Stopped at the POST entry (f000:e05b, linear 0xfe05b: cs base
	// 0xf0000 from the reset vector's far jump), then sent on with rip
	// and rax written, to a breakpoint at the rip written: it stops
	// before that instruction runs, with both writes in place.
	if err := c.SetBreakpoint(ctx, Hardware, 0xfe05b); err != nil {
		t.Fatalf("SetBreakpoint: %v", err)
	}
	if err := c.Continue(ctx); err != nil {
		t.Fatalf("Continue: %v", err)
	}
	if sr, err := c.WaitStop(ctx); err != nil || sr.Signal != 5 {
		t.Fatalf("WaitStop = %+v, %v; want T05", sr, err)
	}
	if err := c.ClearBreakpoint(ctx, Hardware, 0xfe05b); err != nil {
		t.Fatalf("ClearBreakpoint: %v", err)
	}
	if err := c.SetBreakpoint(ctx, Hardware, 0xfe05c); err != nil {
		t.Fatalf("SetBreakpoint: %v", err)
	}
	if _, err := c.ContinueWithRegisters(ctx, []RegValue{{"rax", 0x1234}, {"rip", 0xe05c}}); err != nil {
		t.Fatalf("ContinueWithRegisters: %v", err)
	}
	sr, err := c.WaitStop(ctx)
	if err != nil || sr.Signal != 5 {
		t.Fatalf("WaitStop = %+v, %v; want T05 at the breakpoint, not a stop caused by the client", sr, err)
	}
	regs, err := c.ReadRegisters(ctx)
	if err != nil {
		t.Fatalf("ReadRegisters: %v", err)
	}
	if regs["rip"] != 0xe05c || regs["rax"] != 0x1234 {
		t.Errorf("rip %#x rax %#x, want 0xe05c 0x1234", regs["rip"], regs["rax"])
	}
}
