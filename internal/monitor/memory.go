package monitor

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"golang.org/x/sys/unix"
)

// releaseMemory hands back what a burst of start-up work left behind: the
// heap's free pages (debug.FreeOSMemory: the runtime would otherwise keep
// them until its forced collection minutes later) and the pages of the
// gatevisor executable mapped so far (releaseBinaryPages). Called when the
// guest is first ready and when the kernel profile has been loaded, the
// two ends of the monitor's start-up (docs/benchmarks.md, "Monitor
// memory").
func releaseMemory() {
	debug.FreeOSMemory()
	_ = releaseBinaryPages()
}

// releaseBinaryPages unmaps the pages of the executable's read-only
// mappings (its text and read-only data) from the monitor's address space,
// with MADV_DONTNEED: they stay in the page cache, and whatever the monitor
// runs afterwards faults back in from there. The executable holds every
// subcommand and the package initialisation of every dependency, most of
// which the monitor touches once at start (or never: the kernel maps a
// page cache folio, up to 2 MiB, whole on the first touch of any of its
// pages); unmapped, they no longer count in its RSS, and the kernel can
// reclaim them without unmapping them first. Nothing changes for the
// program: a private read-only file mapping that was never written reads
// back the same bytes. Writable mappings (data, bss) are never touched.
func releaseBinaryPages() error {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(maps), "\n") {
		// start-end perms offset dev inode path
		f := strings.Fields(l)
		if len(f) != 6 || f[5] != exe || len(f[1]) != 4 || f[1][1] != '-' || f[1][3] != 'p' {
			continue
		}
		var lo, hi uintptr
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil || hi <= lo {
			continue
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, lo, hi-lo, unix.MADV_DONTNEED); e != 0 {
			return fmt.Errorf("madvise %s: %w", f[0], e)
		}
	}
	return nil
}
