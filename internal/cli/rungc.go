package cli

import (
	"os"
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
