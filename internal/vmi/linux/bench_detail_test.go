package linux

import "testing"

// BenchmarkProcessDetail times the process-detail reads over the dump
// that TestRealKernelTasksBench kept at GATEVISOR_VMI_DUMP (1,000 sleeping
// processes), from a copy of guest RAM in host memory with translations
// re-validated as on live memory, as BenchmarkTasks does: the process
// list (which now also reads each task's CPU, CPU time, VSZ and RSS),
// every thread, the argument vectors (each through its process's own
// page tables), with the environments, and every file descriptor with
// what it points to. The process list each detail read starts from is
// taken once, outside the timing.
func BenchmarkProcessDetail(b *testing.B) {
	kern := dumpKernel(b, "needs a dump: run TestRealKernelTasksBench with GATEVISOR_VMI_BENCH=1 GATEVISOR_VMI_DUMP=FILE first")
	tasks, err := kern.Tasks()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("tasks", func(b *testing.B) {
		for b.Loop() {
			if _, err := kern.Tasks(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(tasks)), "procs")
	})
	b.Run("threads", func(b *testing.B) {
		for b.Loop() {
			if _, err := kern.Threads(); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, env := range []bool{false, true} {
		name := "args"
		if env {
			name = "args+env"
		}
		b.Run(name, func(b *testing.B) {
			var n int
			for b.Loop() {
				a, err := kern.ProcessArgs(tasks, env)
				if err != nil {
					b.Fatal(err)
				}
				n = len(a)
			}
			b.ReportMetric(float64(n), "procs")
		})
	}
	b.Run("files", func(b *testing.B) {
		var n int
		for b.Loop() {
			f, err := kern.Files(tasks)
			if err != nil {
				b.Fatal(err)
			}
			n = len(f)
		}
		b.ReportMetric(float64(n), "fds")
	})
	b.Run("sockets", func(b *testing.B) {
		for b.Loop() {
			if _, err := kern.Sockets(tasks); err != nil {
				b.Fatal(err)
			}
		}
	})
}
