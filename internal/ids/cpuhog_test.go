package ids

import (
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

func TestHogDetector(t *testing.T) {
	h := &HogDetector{Threshold: 0.8, Window: 3 * time.Second}
	t0 := time.Unix(1000, 0)
	proc := func(pid int, runtime time.Duration) linux.Task {
		return linux.Task{PID: pid, TGID: pid, Comm: "p", Exe: "/bin/p", StartTime: uint64(pid), GroupRuntime: uint64(runtime)}
	}
	kthread := linux.Task{PID: 2, TGID: 2, Comm: "kthreadd", KernelThread: true, StartTime: 2}
	var got []Finding
	var st CheckStatus
	// pid 10 uses a whole CPU, pid 11 half, pid 12 appears late.
	for i := 0; i <= 5; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		procs := []linux.Task{proc(10, time.Duration(i)*time.Second), proc(11, time.Duration(i)*500*time.Millisecond), kthread}
		if i >= 4 {
			procs = append(procs, proc(12, time.Duration(i)*time.Second))
		}
		got, st = h.Observe(now, procs)
		if i < 3 && (st.Ran || len(got) != 0) {
			t.Fatalf("scan %d, before a whole window: ran %v, findings %v", i, st.Ran, got)
		}
	}
	if !st.Ran || len(got) != 1 || got[0].PID != 10 || got[0].Check != CheckCPUHog || st.Findings != 1 {
		t.Fatalf("after the window: ran %v, findings %+v", st.Ran, got)
	}
	if want := "process 10 (p, /bin/p) used 100% of a CPU over the last 3s (threshold 80%)"; got[0].Summary != want {
		t.Errorf("summary %q, want %q", got[0].Summary, want)
	}
	// A pid reused by another process (new start time) is not compared
	// with the old one's runtime.
	got, _ = h.Observe(t0.Add(6*time.Second), []linux.Task{{PID: 10, TGID: 10, StartTime: 99, GroupRuntime: uint64(time.Hour)}})
	if len(got) != 0 {
		t.Fatalf("a reused pid was compared with its predecessor: %+v", got)
	}
	// Memory is bounded by the processes, not by window / interval: a
	// 1 h window scanned every 100 ms keeps 8 samples a process, and the
	// exited processes' none.
	long := &HogDetector{Threshold: 0.5, Window: time.Hour}
	for i := range 40000 {
		long.Observe(t0.Add(time.Duration(i)*100*time.Millisecond), []linux.Task{proc(10, time.Duration(i)*100*time.Millisecond)})
	}
	if tr := long.procs["10@10"]; len(long.procs) != 1 || tr == nil || tr.n > hogSamples || tr.n < 4 {
		t.Errorf("after 40000 scans: %d processes tracked, %+v", len(long.procs), tr)
	}
	if got, _ := long.Observe(t0.Add(4001*time.Second), []linux.Task{proc(10, 4001*time.Second)}); len(got) != 1 {
		t.Errorf("a process at 100%% for over an hour: %+v", got)
	}
	long.Observe(t0.Add(4002*time.Second), nil)
	if len(long.procs) != 0 {
		t.Errorf("an exited process is still tracked")
	}
	off := &HogDetector{}
	if f, st := off.Observe(t0, []linux.Task{proc(10, time.Hour)}); f != nil || st.NotApplicable == "" {
		t.Errorf("a disabled detector: %v %+v", f, st)
	}
}
