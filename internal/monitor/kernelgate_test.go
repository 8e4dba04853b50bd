package monitor

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	gate "github.com/gatevisor/gatevisor/internal/gate/syscall"
	"github.com/gatevisor/gatevisor/internal/qemu/gdbrsp"
)

// fakeStub is a gdbstub that records the traps in place and fails the
// call numbered failAt (1-based; 0: never).
type fakeStub struct {
	in     map[string]bool
	calls  int
	failAt int
}

func (f *fakeStub) op(set bool, what string) error {
	f.calls++
	if f.calls == f.failAt {
		return fmt.Errorf("stub: %s refused", what)
	}
	if f.in == nil {
		f.in = map[string]bool{}
	}
	if set {
		f.in[what] = true
	} else {
		delete(f.in, what)
	}
	return nil
}

func (f *fakeStub) SetBreakpoint(_ context.Context, _ gdbrsp.BreakpointKind, a uint64) error {
	return f.op(true, fmt.Sprintf("bp %#x", a))
}
func (f *fakeStub) ClearBreakpoint(_ context.Context, _ gdbrsp.BreakpointKind, a uint64) error {
	return f.op(false, fmt.Sprintf("bp %#x", a))
}
func (f *fakeStub) SetWatchpoint(_ context.Context, _ gdbrsp.BreakpointKind, a uint64, n int) error {
	return f.op(true, fmt.Sprintf("wp %#x/%d", a, n))
}
func (f *fakeStub) ClearWatchpoint(_ context.Context, _ gdbrsp.BreakpointKind, a uint64, n int) error {
	return f.op(false, fmt.Sprintf("wp %#x/%d", a, n))
}

func (f *fakeStub) state() []string {
	var out []string
	for k := range f.in {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestTrapChangeRollsBack: a move of the traps that fails at any step,
// or that a later step of the transaction undoes, leaves the stub and the
// gate's view exactly as before.
func TestTrapChangeRollsBack(t *testing.T) {
	old := []gate.Trap{{Addr: 0x1000}, {Addr: 0x2000}, {Addr: 0x9000, Watch: 0x8000, WatchLen: 8}}
	next := []gate.Trap{{Addr: 0x2000}, {Addr: 0x3000}, {Addr: 0xa000, Watch: 0x8008, WatchLen: 4}}
	ctx := context.Background()
	start := func() (*fakeStub, *kernelGate) {
		stub := &fakeStub{}
		for _, tr := range old {
			if err := setTrap(ctx, stub, tr); err != nil {
				t.Fatal(err)
			}
		}
		stub.calls = 0
		return stub, &kernelGate{traps: old}
	}
	stub, _ := start()
	before := stub.state()
	// The move clears 2 traps and sets 2: four calls; fail each in turn.
	for failAt := 1; failAt <= 4; failAt++ {
		t.Run(fmt.Sprintf("step %d fails", failAt), func(t *testing.T) {
			stub, kg := start()
			stub.failAt = failAt
			ch := &trapChange{kg: kg, c: stub, old: kg.traps, next: next, restored: true}
			if err := ch.applyLocked(ctx); err == nil {
				t.Fatal("the failing step went unnoticed")
			}
			stub.failAt = 0
			if err := ch.undoLocked(ctx); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(before, stub.state()); diff != "" {
				t.Errorf("traps after the undo (-before +after):\n%s", diff)
			}
			if len(kg.traps) != len(old) || kg.traps[0].Addr != old[0].Addr {
				t.Errorf("the gate's traps after the undo: %+v", kg.traps)
			}
		})
	}
	t.Run("a later step of the transaction fails", func(t *testing.T) {
		stub, kg := start()
		ch := &trapChange{kg: kg, c: stub, old: kg.traps, next: next, restored: true}
		if err := ch.applyLocked(ctx); err != nil {
			t.Fatal(err)
		}
		ch.commitLocked()
		want := []string{"bp 0x2000", "bp 0x3000", "wp 0x8008/4"}
		if diff := cmp.Diff(want, stub.state()); diff != "" {
			t.Fatalf("traps after the move (-want +got):\n%s", diff)
		}
		if err := ch.undoLocked(ctx); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before, stub.state()); diff != "" {
			t.Errorf("traps after the undo (-before +after):\n%s", diff)
		}
	})
	t.Run("an undo that fails is reported", func(t *testing.T) {
		stub, kg := start()
		stub.failAt = 4
		ch := &trapChange{kg: kg, c: stub, old: kg.traps, next: next, restored: true}
		_ = ch.applyLocked(ctx)
		stub.failAt = stub.calls + 1
		if err := ch.undoLocked(ctx); err == nil {
			t.Fatal("a failed undo was not reported")
		}
	})
}
