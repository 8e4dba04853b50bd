package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The memory benchmark's readings of /proc: parsing is pure (the tests
// and fuzz targets feed it text); reading and sampling a live process
// happen here too, apart from the harness.

// ProcMemory is a process's memory as /proc/PID/status gives it, in KiB.
type ProcMemory struct {
	VmRSS    int64 `json:"vm_rss_kib"`
	RssAnon  int64 `json:"rss_anon_kib"`
	RssFile  int64 `json:"rss_file_kib"`
	RssShmem int64 `json:"rss_shmem_kib"`
	VmHWM    int64 `json:"vm_hwm_kib"`
	VmSwap   int64 `json:"vm_swap_kib"`
	Threads  int64 `json:"threads"`
}

// Own is the process's own resident memory: anonymous and file pages,
// without the shared memory (for the monitor, the guest's RAM).
func (m ProcMemory) Own() int64 { return m.RssAnon + m.RssFile }

// ErrNoRssSplit is returned for a /proc/PID/status without RssAnon,
// RssFile and RssShmem (kernels before 4.5).
var ErrNoRssSplit = errors.New("no RssAnon/RssFile/RssShmem in /proc/PID/status (Linux 4.5 or later has them)")

// ParseProcStatus reads the memory fields of a /proc/PID/status text.
func ParseProcStatus(b []byte) (ProcMemory, error) {
	var m ProcMemory
	fields := map[string]*int64{"VmRSS": &m.VmRSS, "RssAnon": &m.RssAnon, "RssFile": &m.RssFile, "RssShmem": &m.RssShmem,
		"VmHWM": &m.VmHWM, "VmSwap": &m.VmSwap, "Threads": &m.Threads}
	seen, err := parseProcFields(b, fields)
	if err != nil {
		return ProcMemory{}, fmt.Errorf("/proc status: %w", err)
	}
	if !seen["VmRSS"] {
		return ProcMemory{}, errors.New("/proc status: no VmRSS (a kernel thread, or a process that has exited)")
	}
	if !seen["RssAnon"] || !seen["RssFile"] || !seen["RssShmem"] {
		return ProcMemory{}, ErrNoRssSplit
	}
	return m, nil
}

// SmapsRollup is /proc/PID/smaps_rollup: the process's mappings summed,
// in KiB. Pss divides each page by the processes that map it, so
// PssShmem is the monitor's share of the guest pages it has touched (QEMU
// maps them too); Private is the pages no other process maps.
type SmapsRollup struct {
	Rss          int64 `json:"rss_kib"`
	Pss          int64 `json:"pss_kib"`
	PssAnon      int64 `json:"pss_anon_kib"`
	PssFile      int64 `json:"pss_file_kib"`
	PssShmem     int64 `json:"pss_shmem_kib"`
	SharedClean  int64 `json:"shared_clean_kib"`
	SharedDirty  int64 `json:"shared_dirty_kib"`
	PrivateClean int64 `json:"private_clean_kib"`
	PrivateDirty int64 `json:"private_dirty_kib"`
	Anonymous    int64 `json:"anonymous_kib"`
	Swap         int64 `json:"swap_kib"`
}

// ParseSmapsRollup reads a /proc/PID/smaps_rollup text. Pss_Anon,
// Pss_File and Pss_Shmem (Linux 5.1) stay 0 where the kernel lacks them.
func ParseSmapsRollup(b []byte) (SmapsRollup, error) {
	var s SmapsRollup
	fields := map[string]*int64{"Rss": &s.Rss, "Pss": &s.Pss, "Pss_Anon": &s.PssAnon, "Pss_File": &s.PssFile,
		"Pss_Shmem": &s.PssShmem, "Shared_Clean": &s.SharedClean, "Shared_Dirty": &s.SharedDirty,
		"Private_Clean": &s.PrivateClean, "Private_Dirty": &s.PrivateDirty, "Anonymous": &s.Anonymous, "Swap": &s.Swap}
	seen, err := parseProcFields(b, fields)
	if err != nil {
		return SmapsRollup{}, fmt.Errorf("smaps_rollup: %w", err)
	}
	if !seen["Rss"] || !seen["Pss"] {
		return SmapsRollup{}, errors.New("smaps_rollup: no Rss or Pss line")
	}
	return s, nil
}

// maxProcLines bounds the lines parseProcFields reads.
const maxProcLines = 1000

// parseProcFields reads "Name: N kB" (or "Name: N") lines into the fields
// named and says which it saw. Other lines are skipped; a named field
// that is not a non-negative number, has a unit other than kB or appears
// twice is an error.
func parseProcFields(b []byte, fields map[string]*int64) (map[string]bool, error) {
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 0; sc.Scan(); n++ {
		if n >= maxProcLines {
			return nil, fmt.Errorf("more than %d lines", maxProcLines)
		}
		name, rest, ok := strings.Cut(sc.Text(), ":")
		p, want := fields[name]
		if !ok || !want {
			continue
		}
		if seen[name] {
			return nil, fmt.Errorf("%s twice", name)
		}
		f := strings.Fields(rest)
		if len(f) == 0 || len(f) > 2 || (len(f) == 2 && f[1] != "kB") {
			return nil, fmt.Errorf("%s: %q is not a size in kB", name, strings.TrimSpace(rest))
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("%s: %q is not a size in kB", name, strings.TrimSpace(rest))
		}
		*p, seen[name] = v, true
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return seen, nil
}

// readProcMemory reads process pid's /proc/PID/status.
func readProcMemory(pid int) (ProcMemory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcMemory{}, err
	}
	return ParseProcStatus(b)
}

// readSmapsRollup reads process pid's /proc/PID/smaps_rollup.
func readSmapsRollup(pid int) (SmapsRollup, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return SmapsRollup{}, err
	}
	return ParseSmapsRollup(b)
}

// resetHWM resets process pid's VmHWM to its current VmRSS (clear_refs
// 5, Linux 4.0), so that VmHWM read later is the peak since now.
func resetHWM(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// MemoryPeaks are the largest values of a series of samples, in KiB,
// each column on its own (they need not come from one sample).
type MemoryPeaks struct {
	Samples  int   `json:"samples"`
	VmRSS    int64 `json:"vm_rss_kib"`
	Own      int64 `json:"own_kib"` // RssAnon + RssFile
	RssAnon  int64 `json:"rss_anon_kib"`
	RssShmem int64 `json:"rss_shmem_kib"`
}

// add takes one sample into p.
func (p *MemoryPeaks) add(m ProcMemory) {
	p.Samples++
	p.VmRSS = max(p.VmRSS, m.VmRSS)
	p.Own = max(p.Own, m.Own())
	p.RssAnon = max(p.RssAnon, m.RssAnon)
	p.RssShmem = max(p.RssShmem, m.RssShmem)
}

// medianProcMemory is the column-wise median of samples.
func medianProcMemory(samples []ProcMemory) ProcMemory {
	col := func(f func(ProcMemory) int64) int64 {
		v := make([]int64, len(samples))
		for i, s := range samples {
			v[i] = f(s)
		}
		return medianInt(v)
	}
	return ProcMemory{
		VmRSS:    col(func(m ProcMemory) int64 { return m.VmRSS }),
		RssAnon:  col(func(m ProcMemory) int64 { return m.RssAnon }),
		RssFile:  col(func(m ProcMemory) int64 { return m.RssFile }),
		RssShmem: col(func(m ProcMemory) int64 { return m.RssShmem }),
		VmHWM:    col(func(m ProcMemory) int64 { return m.VmHWM }),
		VmSwap:   col(func(m ProcMemory) int64 { return m.VmSwap }),
		Threads:  col(func(m ProcMemory) int64 { return m.Threads }),
	}
}

// medianInt is the median of v rounded to a whole number (the mean of
// the middle two for an even count), 0 for none.
func medianInt(v []int64) int64 {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return int64(math.Round(Median(f)))
}

// memSampler reads a process's /proc/PID/status every period in the
// background, keeping the peaks; a failed read is skipped. pid 0 means
// not known yet: find is then called every period until it returns one.
type memSampler struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex // guards the fields below
	pid   int
	peaks MemoryPeaks
}

// startMemSampler starts sampling pid (or, if pid is 0, the pid find
// returns once it returns one) every period until stop or ctx ends.
func startMemSampler(ctx context.Context, pid int, find func() int, period time.Duration) *memSampler {
	s := &memSampler{done: make(chan struct{}), pid: pid}
	s.wg.Go(func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			s.sampleOnce(find)
			select {
			case <-s.done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return s
}

// sampleOnce takes one sample, or looks for the pid.
func (s *memSampler) sampleOnce(find func() int) {
	s.mu.Lock()
	pid := s.pid
	s.mu.Unlock()
	if pid == 0 {
		if find != nil {
			pid = find()
		}
		s.mu.Lock()
		s.pid = pid
		s.mu.Unlock()
		if pid == 0 {
			return
		}
	}
	if m, err := readProcMemory(pid); err == nil {
		s.mu.Lock()
		s.peaks.add(m)
		s.mu.Unlock()
	}
}

// stop ends the sampling (once) and returns the peaks and the pid sampled.
func (s *memSampler) stop() (MemoryPeaks, int) {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peaks, s.pid
}
