package cli

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
)

// monitorGCPercent is the monitor's GC target: a collection when the heap
// has grown by half since the last one, not doubled (Go's default). The
// monitor keeps ~23 MiB live for months (the kernel profile's symbols and
// BTF, the image facts), so the default lets its heap sit near 50 MiB;
// at 50 % it sits near 40 MiB for the same CPU (measured in
// docs/benchmarks.md, "Monitor memory"). No memory limit is set: under a
// flood the live heap legitimately grows (flow tables), and a limit below
// it would turn the GC into a CPU sink exactly then.
const monitorGCPercent = 50

// tuneMonitorGC applies monitorGCPercent to the process that runs a
// monitor, unless GOGC in the environment says otherwise.
func tuneMonitorGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(monitorGCPercent)
	}
}

// monitorProcs is how many threads run the monitor's Go code at once
// (GOMAXPROCS): the CPUs the process may use less the VM's vCPUs, at
// least one. A busy vCPU holds a CPU (a TCG thread, or a KVM vCPU), and
// the monitor's hot path is one goroutine at a time: a trap's stop reply,
// the register read, the decision, the continue, each handed from the
// gdbstub reader to the debugger goroutine. With a P idle, every such
// hand-off wakes another thread that finds nothing to do and sleeps again
// (20 context switches per trapped call on the 2-CPU test host), and
// those threads take CPU from QEMU's while the guest waits: on that host
// a 1-vCPU VM's monitor used 25-30 % less CPU per trapped call and the
// guest's trapped loop ran 10-14 % faster with one P instead of two
// (docs/benchmarks.md, "The monitor's threads").
func monitorProcs(cpus, vcpus int) int { return max(1, cpus-vcpus) }

// tuneMonitorProcs applies monitorProcs to the process that runs a
// monitor of a VM with vcpus vCPUs, unless GOMAXPROCS in the environment
// says otherwise, and says which in the monitor's log (stderr).
func tuneMonitorProcs(vcpus int) {
	if os.Getenv("GOMAXPROCS") != "" {
		fmt.Fprintf(os.Stderr, "gatevisor: the monitor runs Go code on %d threads at once (GOMAXPROCS from the environment)\n", runtime.GOMAXPROCS(0))
		return
	}
	// The runtime's own choice: the CPUs of the affinity mask and the
	// cgroup's quota.
	n := monitorProcs(runtime.GOMAXPROCS(0), vcpus)
	runtime.GOMAXPROCS(n)
	fmt.Fprintf(os.Stderr, "gatevisor: the monitor runs Go code on %d thread(s) at once: the CPUs it may use less the VM's %d vCPU(s), at least one (set GOMAXPROCS to choose)\n", n, vcpus)
}
