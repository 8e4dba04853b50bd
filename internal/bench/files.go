package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

// FilesOptions are Files's parameters.
type FilesOptions struct {
	Rounds int // rounds, each timing both sides, alternating which goes first
	MiB    int // the sequential file's size
	Small  int // small files read in the open+read+close test
}

// FilesSide is one side's samples: a file gate's transport, or QEMU's
// own export.
type FilesSide struct {
	ReadMiBs  []float64 `json:"read_mib_s"`
	WriteMiBs []float64 `json:"write_mib_s"`
	// SmallMicros is the time per small file of `cat` over all of them
	// (one process: open, read, close each), µs.
	SmallMicros []float64 `json:"small_open_read_close_us"`
	// Medians.
	ReadMedian, WriteMedian, SmallMedian float64
	// Ratios are this side / QEMU's export, of the medians (throughput:
	// higher is better; latency: lower). Gate sides only.
	ReadRatio, WriteRatio, SmallRatio float64 `json:",omitempty"`
	// MonitorCPUPerDecisionMicros is the monitor process's CPU time
	// (utime+stime from /proc) over the small-file phases on this gate,
	// divided by the decisions it took meanwhile: everything the monitor
	// does per decided request (transport, attribution, decision).
	MonitorCPUPerDecisionMicros []float64 `json:"monitor_cpu_per_decision_us,omitempty"`
	MonitorCPUMedian            float64   `json:"monitor_cpu_per_decision_us_median,omitempty"`
	Decisions                   uint64    `json:"decisions,omitempty"`
	// MonitorCPUPerRequestMicros is the same CPU over every request (9P
	// walks, getattr and clunk; FUSE lookups, getattr and release; and
	// the decided ones).
	MonitorCPUPerRequestMicros []float64 `json:"monitor_cpu_per_request_us,omitempty"`
	Requests                   uint64    `json:"requests,omitempty"`
	// DecisionCPUMicros is the part of it the decisions took: the
	// gate's own CPU clock around attribution and the security server's
	// decision (decide_cpu_ns), per decided request.
	DecisionCPUMicros []float64 `json:"decision_cpu_per_decision_us,omitempty"`
	DecisionCPUMedian float64   `json:"decision_cpu_per_decision_us_median,omitempty"`
}

// FilesReport is what Files measured.
type FilesReport struct {
	Accel    string `json:"accel"`
	Rounds   int    `json:"rounds"`
	MiB      int    `json:"mib"`
	Small    int    `json:"small_files"`
	HostCPUs int    `json:"host_cpus"`
	// LoadAvg is the host's load average before and after.
	LoadAvg [2]string `json:"load_average_before_after"`
	// Gate is the file gate over virtio-fs (the default transport), Gate9P
	// over 9P (,9p), Peer QEMU's own virtio-9p export: the same directory.
	Gate   FilesSide `json:"gate_virtiofs"`
	Gate9P FilesSide `json:"gate_9p"`
	Peer   FilesSide `json:"qemu_9p"`
}

// Files measures the file gate (issue 15) over virtio-fs and over 9P
// against QEMU's own virtio-9p export of the same host directory (-fsdev
// local, mounted with trans=virtio, cache=none), in one VM and the same
// run: sequential read and write throughput with dd (128 KiB blocks) and
// small-file latency (one cat over every small file), each round rotating
// which side goes first; and the monitor's CPU per decision on each gate.
func Files(ctx context.Context, env Env, o FilesOptions) (*FilesReport, error) {
	dir, err := os.MkdirTemp("", "gatevisor-bench-files-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, err
	}
	big := make([]byte, o.MiB<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o666); err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Join(dir, "small"), 0o777); err != nil {
		return nil, err
	}
	for i := range o.Small {
		if err := os.WriteFile(filepath.Join(dir, "small", fmt.Sprintf("f%04d", i)), big[:4096], 0o666); err != nil {
			return nil, err
		}
	}
	pol := filepath.Join(dir, "..", filepath.Base(dir)+".policy")
	if err := os.WriteFile(pol, []byte("default: allow;\n"), 0o644); err != nil {
		return nil, err
	}
	defer os.Remove(pol)
	rep := &FilesReport{Rounds: o.Rounds, MiB: o.MiB, Small: o.Small, HostCPUs: runtime.NumCPU()}
	rep.LoadAvg[0] = loadAvg()
	name := fmt.Sprintf("bench-files-%d", os.Getpid())
	env.logf("bench files: booting %s with --files gate=%s (virtio-fs), gate9p (9P) and QEMU's virtio-9p export of the same directory\n", name, dir)
	c, stop, err := env.bootVM(ctx, name, "--files", "gate="+dir+":/mnt/gate", "--files", "gate9p="+dir+":/mnt/gate9p,9p", "--files-peer-9p", dir, "--policy", pol)
	if err != nil {
		return nil, err
	}
	defer stop()
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	rep.Accel = st.Accel
	if r, err := guestSh(ctx, c, "mkdir -p /mnt/peer && mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=131072 peer /mnt/peer && grep -c ' 9p ' /proc/mounts", 60); err != nil || r.ExitCode != 0 {
		return nil, fmt.Errorf("mount QEMU's export: %v %s", err, r.Stderr)
	}
	sides := []struct {
		path, share string
		s           *FilesSide
	}{{"/mnt/gate", "gate", &rep.Gate}, {"/mnt/gate9p", "gate9p", &rep.Gate9P}, {"/mnt/peer", "", &rep.Peer}}
	for round := range o.Rounds {
		for k := range sides {
			sd := sides[(round+k)%len(sides)]
			if err := filesRound(ctx, env, c, st.MonitorPID, sd.path, sd.share, sd.s, o); err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", round+1, sd.path, err)
			}
		}
	}
	for _, s := range []*FilesSide{&rep.Gate, &rep.Gate9P, &rep.Peer} {
		s.ReadMedian, s.WriteMedian, s.SmallMedian = Median(s.ReadMiBs), Median(s.WriteMiBs), Median(s.SmallMicros)
		s.MonitorCPUMedian, s.DecisionCPUMedian = Median(s.MonitorCPUPerDecisionMicros), Median(s.DecisionCPUMicros)
	}
	for _, s := range []*FilesSide{&rep.Gate, &rep.Gate9P} {
		if rep.Peer.ReadMedian > 0 && rep.Peer.WriteMedian > 0 && rep.Peer.SmallMedian > 0 {
			s.ReadRatio = s.ReadMedian / rep.Peer.ReadMedian
			s.WriteRatio = s.WriteMedian / rep.Peer.WriteMedian
			s.SmallRatio = s.SmallMedian / rep.Peer.SmallMedian
		}
	}
	rep.LoadAvg[1] = loadAvg()
	return rep, nil
}

// guestNanos runs script between two reads of the guest's clock
// (clockA, clockB) and returns the time it took.
func guestNanos(ctx context.Context, c *apiclient.Client, script string) (time.Duration, error) {
	secs, err := guestSpan(ctx, c, clockA+"; "+script+" || exit 9; "+clockB+"; "+spanEcho, 300)
	if err != nil {
		return 0, err
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// filesRound times one side (share: the gate's share name, "" for QEMU's
// export).
func filesRound(ctx context.Context, env Env, c *apiclient.Client, monitorPID int, path, share string, s *FilesSide, o FilesOptions) error {
	gate := share != ""
	mib := float64(o.MiB)
	d, err := guestNanos(ctx, c, fmt.Sprintf("dd if=%s/big of=/dev/null bs=128k 2>/dev/null", path))
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	s.ReadMiBs = append(s.ReadMiBs, mib/d.Seconds())
	d, err = guestNanos(ctx, c, fmt.Sprintf("dd if=/dev/zero of=%s/w bs=128k count=%d 2>/dev/null && rm %s/w", path, o.MiB*8, path))
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	s.WriteMiBs = append(s.WriteMiBs, mib/d.Seconds())
	var cpu0 time.Duration
	var dec0, req0, dcpu0 uint64
	if gate {
		if cpu0, err = processCPU(monitorPID); err != nil {
			return err
		}
		if dec0, req0, dcpu0, err = gateDecisions(ctx, c, share); err != nil {
			return err
		}
	}
	d, err = guestNanos(ctx, c, fmt.Sprintf("cat %s/small/* >/dev/null", path))
	if err != nil {
		return fmt.Errorf("small files: %w", err)
	}
	s.SmallMicros = append(s.SmallMicros, float64(d.Microseconds())/float64(o.Small))
	if gate {
		cpu1, err := processCPU(monitorPID)
		if err != nil {
			return err
		}
		dec1, req1, dcpu1, err := gateDecisions(ctx, c, share)
		if err != nil {
			return err
		}
		if n := dec1 - dec0; n > 0 {
			s.Decisions += n
			s.MonitorCPUPerDecisionMicros = append(s.MonitorCPUPerDecisionMicros, float64((cpu1-cpu0).Microseconds())/float64(n))
			s.DecisionCPUMicros = append(s.DecisionCPUMicros, float64(dcpu1-dcpu0)/1e3/float64(n))
		}
		if n := req1 - req0; n > 0 {
			s.Requests += n
			s.MonitorCPUPerRequestMicros = append(s.MonitorCPUPerRequestMicros, float64((cpu1-cpu0).Microseconds())/float64(n))
		}
	}
	env.logf("  %s: read %.1f MiB/s, write %.1f MiB/s, small files %.0f µs each\n", path, s.ReadMiBs[len(s.ReadMiBs)-1], s.WriteMiBs[len(s.WriteMiBs)-1], s.SmallMicros[len(s.SmallMicros)-1])
	return nil
}

// gateDecisions returns a share's decisions, requests and decision CPU
// so far (from the counters only: ServedFiles also walks the guest's fd
// tables, which is why the CPU is read before the first call and after
// the second).
func gateDecisions(ctx context.Context, c *apiclient.Client, share string) (decided, requests, decideCPUNs uint64, err error) {
	sf, err := c.ServedFiles(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	for _, s := range sf.Shares {
		if s.Name != share {
			continue
		}
		decided += s.Decided
		requests += s.Requests
		decideCPUNs += s.DecideCPUNs
	}
	return decided, requests, decideCPUNs, nil
}

// processCPU is pid's user+system CPU time from /proc/PID/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	const hz = 100 // USER_HZ
	return time.Duration(u+st) * time.Second / hz, nil
}

// WriteText writes the report for a person.
func (rep *FilesReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	t.printf("file gate (issue 15) over virtio-fs and over 9P vs QEMU's virtio-9p export of the same directory, one VM, %s, %d rounds rotating; host %d CPUs\n", rep.Accel, rep.Rounds, rep.HostCPUs)
	t.printf("load average before: %s; after: %s\n", rep.LoadAvg[0], rep.LoadAvg[1])
	t.printf("  %-44s %10s %10s %10s %8s %8s\n", "median", "virtio-fs", "9P gate", "QEMU 9p", "vfs/q", "9p/q")
	g, n, p := &rep.Gate, &rep.Gate9P, &rep.Peer
	t.printf("  %-44s %10.2f %10.2f %10.2f %8.2f %8.2f\n", fmt.Sprintf("sequential read of %d MiB, MiB/s", rep.MiB), g.ReadMedian, n.ReadMedian, p.ReadMedian, g.ReadRatio, n.ReadRatio)
	t.printf("  %-44s %10.2f %10.2f %10.2f %8.2f %8.2f\n", fmt.Sprintf("sequential write of %d MiB, MiB/s", rep.MiB), g.WriteMedian, n.WriteMedian, p.WriteMedian, g.WriteRatio, n.WriteRatio)
	t.printf("  %-44s %10.0f %10.0f %10.0f %8.2f %8.2f\n", fmt.Sprintf("open+read+close of %d 4 KiB files, µs each", rep.Small), g.SmallMedian, n.SmallMedian, p.SmallMedian, g.SmallRatio, n.SmallRatio)
	for _, sd := range []struct {
		name string
		s    *FilesSide
	}{{"virtio-fs", g}, {"9P", n}} {
		t.printf("%s gate: monitor CPU per decided request (small-file phases, %d decisions): median %.1f µs, rounds %.1f\n", sd.name, sd.s.Decisions, sd.s.MonitorCPUMedian, sd.s.MonitorCPUPerDecisionMicros)
		t.printf("  of which the decision (attribution and security server, the gate's thread CPU clock): median %.1f µs, rounds %.1f\n", sd.s.DecisionCPUMedian, sd.s.DecisionCPUMicros)
		t.printf("  monitor CPU per request (%d requests): median %.1f µs, rounds %.1f\n", sd.s.Requests, Median(sd.s.MonitorCPUPerRequestMicros), sd.s.MonitorCPUPerRequestMicros)
	}
	return t.err
}
