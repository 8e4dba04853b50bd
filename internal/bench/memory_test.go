package bench

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// testdata/memory_status.txt and memory_smaps_rollup.txt are a monitor's
// (`run --net isolated:X --policy policies/iot-default.policy
// --ids-interval 2s`, 25 s after ready), read on Linux 6.18.

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMemoryParseProcStatus(t *testing.T) {
	monitor := readTestdata(t, "memory_status.txt")
	for _, tc := range []struct {
		name    string
		in      string
		want    ProcMemory
		wantErr error // nil: any error if errText is set
		errText string
	}{
		{name: "a monitor's", in: string(monitor),
			want: ProcMemory{VmRSS: 57300, RssAnon: 29836, RssFile: 14568, RssShmem: 12896, VmHWM: 57300, Threads: 9}},
		{name: "only the fields it reads", in: "VmRSS:\t 10 kB\nRssAnon:\t 4 kB\nRssFile:\t 5 kB\nRssShmem:\t 1 kB\n",
			want: ProcMemory{VmRSS: 10, RssAnon: 4, RssFile: 5, RssShmem: 1}},
		{name: "a kernel before 4.5: no RssAnon", in: "VmHWM:\t 10 kB\nVmRSS:\t 10 kB\n", wantErr: ErrNoRssSplit},
		{name: "a kernel thread: no VmRSS", in: "Name:\tkthreadd\nThreads:\t1\n", errText: "no VmRSS"},
		{name: "a unit other than kB", in: "VmRSS:\t 10 MB\nRssAnon:\t 4 kB\nRssFile:\t 5 kB\nRssShmem:\t 1 kB\n", errText: "not a size"},
		{name: "negative", in: "VmRSS:\t -10 kB\nRssAnon:\t 4 kB\nRssFile:\t 5 kB\nRssShmem:\t 1 kB\n", errText: "not a size"},
		{name: "no number", in: "VmRSS:\nRssAnon:\t 4 kB\nRssFile:\t 5 kB\nRssShmem:\t 1 kB\n", errText: "not a size"},
		{name: "a field twice", in: "VmRSS:\t 10 kB\nVmRSS:\t 11 kB\nRssAnon:\t 4 kB\nRssFile:\t 5 kB\nRssShmem:\t 1 kB\n", errText: "twice"},
		{name: "too many lines", in: strings.Repeat("X:\t1\n", maxProcLines+1), errText: "lines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseProcStatus([]byte(tc.in))
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			case tc.errText != "":
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("error %v, want one saying %q", err, tc.errText)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseProcStatus (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMemoryParseSmapsRollup(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    SmapsRollup
		errText string
	}{
		{name: "a monitor's", in: string(readTestdata(t, "memory_smaps_rollup.txt")),
			want: SmapsRollup{Rss: 57300, Pss: 49754, PssAnon: 29836, PssFile: 13340, PssShmem: 6578, SharedClean: 1340,
				SharedDirty: 12636, PrivateClean: 13488, PrivateDirty: 29836, Anonymous: 29836}},
		// Linux 4.14-5.0: no Pss_Anon, Pss_File, Pss_Shmem.
		{name: "an older kernel", in: "00400000-7ffc05831000 ---p 00000000 00:00 0    [rollup]\nRss:  100 kB\nPss:  80 kB\nSwap:  3 kB\n",
			want: SmapsRollup{Rss: 100, Pss: 80, Swap: 3}},
		{name: "no Pss", in: "Rss:  100 kB\n", errText: "no Rss or Pss"},
		{name: "a bad number", in: "Rss:  1e3 kB\nPss:  80 kB\n", errText: "not a size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSmapsRollup([]byte(tc.in))
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("error %v, want one saying %q", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseSmapsRollup (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzMemoryParseProcStatus(f *testing.F) {
	f.Add(readTestdata(f, "memory_status.txt"))
	f.Add([]byte("VmRSS:\t 10 kB\nRssAnon:\t 4 kB\nRssFile:\t 5 kB\nRssShmem:\t 1 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseProcStatus(b)
		if err == nil && (m.VmRSS < 0 || m.RssAnon < 0 || m.RssFile < 0 || m.RssShmem < 0 || m.VmHWM < 0 || m.Threads < 0) {
			t.Errorf("ParseProcStatus accepted a negative size: %+v", m)
		}
	})
}

func FuzzMemoryParseSmapsRollup(f *testing.F) {
	f.Add(readTestdata(f, "memory_smaps_rollup.txt"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSmapsRollup(b)
		if err == nil && (s.Rss < 0 || s.Pss < 0) {
			t.Errorf("ParseSmapsRollup accepted a negative size: %+v", s)
		}
	})
}

func TestMemoryPeaksAndMedians(t *testing.T) {
	samples := []ProcMemory{
		{VmRSS: 50, RssAnon: 30, RssFile: 10, RssShmem: 10, VmHWM: 60, Threads: 9},
		{VmRSS: 40, RssAnon: 20, RssFile: 15, RssShmem: 5, VmHWM: 60, Threads: 8},
		{VmRSS: 45, RssAnon: 25, RssFile: 10, RssShmem: 20, VmHWM: 70, Threads: 9},
	}
	var p MemoryPeaks
	for _, s := range samples {
		p.add(s)
	}
	// Each column's own largest: own 40 (30+10) beats 35 and 35, shmem
	// 20 comes from another sample than VmRSS 50.
	if diff := cmp.Diff(MemoryPeaks{Samples: 3, VmRSS: 50, Own: 40, RssAnon: 30, RssShmem: 20}, p); diff != "" {
		t.Errorf("peaks (-want +got):\n%s", diff)
	}
	want := ProcMemory{VmRSS: 45, RssAnon: 25, RssFile: 10, RssShmem: 10, VmHWM: 60, Threads: 9}
	if diff := cmp.Diff(want, medianProcMemory(samples)); diff != "" {
		t.Errorf("medianProcMemory (-want +got):\n%s", diff)
	}
	if got := medianInt([]int64{1, 4}); got != 3 { // 2.5 rounds up
		t.Errorf("medianInt(1, 4) = %d, want 3", got)
	}
	if got := medianProcMemory(nil); got != (ProcMemory{}) {
		t.Errorf("medianProcMemory(nil) = %+v, want zero", got)
	}
}

// memRun is a run with the numbers the summary reads, in MiB.
func memRun(steadyAnon, steadyFile, shmem, restOwn, loadOwn int64) MemoryRun {
	return MemoryRun{
		Ready:  ProcMemory{VmHWM: (restOwn + shmem) << 10},
		ToRest: MemoryPeaks{Own: restOwn << 10},
		Steady: ProcMemory{VmRSS: (steadyAnon + steadyFile + shmem) << 10, RssAnon: steadyAnon << 10, RssFile: steadyFile << 10, RssShmem: shmem << 10},
		Load: MemoryLoad{Peaks: MemoryPeaks{Own: loadOwn << 10, RssShmem: shmem << 10, VmRSS: (loadOwn + shmem) << 10},
			HWM: (loadOwn + shmem) << 10, HWMBefore: (restOwn + shmem) << 10, LoopSeconds: 2, Seconds: 3},
	}
}

func TestMemorySummarize(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		runs                      []MemoryRun
		steadyOwn, peakOwn        int64 // medians, MiB
		worstSteady, worstPeak    int64 // MiB
		steadyMet, peakMet        bool
		restPeakOwn, loadPeakOwn  int64
		steadyShmem, loadPeakShmm int64
	}{
		{name: "within both", runs: []MemoryRun{memRun(10, 10, 12, 40, 30), memRun(12, 10, 12, 50, 30), memRun(11, 10, 14, 45, 60)},
			steadyOwn: 21, peakOwn: 50, worstSteady: 22, worstPeak: 60, steadyMet: true, peakMet: true,
			restPeakOwn: 45, loadPeakOwn: 30, steadyShmem: 12, loadPeakShmm: 12},
		// The medians meet the goals, one round does not: the verdict is the worst round's.
		{name: "one round over", runs: []MemoryRun{memRun(15, 14, 12, 40, 30), memRun(15, 14, 12, 40, 30), memRun(17, 14, 12, 70, 30)},
			steadyOwn: 29, peakOwn: 40, worstSteady: 31, worstPeak: 70, steadyMet: false, peakMet: false,
			restPeakOwn: 40, loadPeakOwn: 30, steadyShmem: 12, loadPeakShmm: 12},
		// The guest's pages do not count: 100 MiB of them leave the goals met.
		{name: "guest pages apart", runs: []MemoryRun{memRun(15, 14, 100, 40, 30)},
			steadyOwn: 29, peakOwn: 40, worstSteady: 29, worstPeak: 40, steadyMet: true, peakMet: true,
			restPeakOwn: 40, loadPeakOwn: 30, steadyShmem: 100, loadPeakShmm: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := summarizeMemory("x", tc.runs)
			got := []int64{r.Median.SteadyOwn >> 10, r.Median.PeakOwn >> 10, r.WorstSteadyOwn >> 10, r.WorstPeakOwn >> 10,
				r.Median.RestPeakOwn >> 10, r.Median.LoadPeakOwn >> 10, r.Median.Steady.RssShmem >> 10, r.Median.LoadPeakShmem >> 10}
			want := []int64{tc.steadyOwn, tc.peakOwn, tc.worstSteady, tc.worstPeak, tc.restPeakOwn, tc.loadPeakOwn, tc.steadyShmem, tc.loadPeakShmm}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("steady own, peak own, worst steady, worst peak, rest peak, load peak, shmem, load shmem (-want +got):\n%s", diff)
			}
			if r.SteadyMet != tc.steadyMet || r.PeakMet != tc.peakMet {
				t.Errorf("goals met: steady %v, peak %v; want %v, %v", r.SteadyMet, r.PeakMet, tc.steadyMet, tc.peakMet)
			}
			if r.Key != "x" || len(r.Runs) != len(tc.runs) {
				t.Errorf("key %q, %d runs", r.Key, len(r.Runs))
			}
		})
	}
	if r := summarizeMemory("none", nil); r.SteadyMet || r.PeakMet {
		t.Errorf("no runs meet the goals: %+v", r)
	}
}

func TestMemoryConfigs(t *testing.T) {
	if diff := cmp.Diff([]string{"none", "ids", "policy", "net", "all"}, MemoryConfigNames()); diff != "" {
		t.Errorf("configurations (-want +got):\n%s", diff)
	}
	got, err := chooseMemoryConfigs([]string{"all", "none"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].key != "none" || got[1].key != "all" {
		t.Errorf("chooseMemoryConfigs(all, none) = %+v, want none then all", got)
	}
	if _, err := chooseMemoryConfigs([]string{"ids", "gpu"}); err == nil {
		t.Error("chooseMemoryConfigs accepted an unknown configuration")
	}
	if got, _ := chooseMemoryConfigs(nil); len(got) != len(memoryConfigs) {
		t.Errorf("no choice gave %d configurations, want all %d", len(got), len(memoryConfigs))
	}
}

func TestMemoryArgs(t *testing.T) {
	b := &memBench{o: MemoryOptions{Accel: "tcg", Mem: "256M", IDSInterval: "2s"}, policy: "/p/iot.policy", policyNoNet: "/tmp/iot-advisory-net.policy"}
	want := map[string]string{
		"none":   "--accel tcg --mem 256M",
		"ids":    "--accel tcg --mem 256M --ids-interval 2s",
		"policy": "--accel tcg --mem 256M --policy /tmp/iot-advisory-net.policy",
		"net":    "--accel tcg --mem 256M --net isolated:vm1",
		"all":    "--accel tcg --mem 256M --net isolated:vm1 --policy /p/iot.policy --ids-interval 2s",
	}
	got := map[string]string{}
	for _, c := range memoryConfigs {
		got[c.key] = strings.Join(b.args(c, "vm1"), " ")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("run flags (-want +got):\n%s", diff)
	}
}

func TestMemoryPolicies(t *testing.T) {
	dir := t.TempDir()
	withNet, noNet, err := memoryPolicies(dir, "policies/iot-default.policy", []byte("default: deny;\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(withNet) || !strings.HasSuffix(withNet, filepath.Join("policies", "iot-default.policy")) {
		t.Errorf("the all configuration's policy is %q, want the absolute path of the one given", withNet)
	}
	if filepath.Dir(noNet) != dir {
		t.Errorf("the policy configuration's policy is %q, want it in %s", noNet, dir)
	}
	b, err := os.ReadFile(noNet)
	if err != nil {
		t.Fatal(err)
	}
	want := "# iot-default.policy for a VM without a network (gatevisor bench memory)\nadvisory net;\ndefault: deny;\n"
	if diff := cmp.Diff(want, string(b)); diff != "" {
		t.Errorf("the policy without a network (-want +got):\n%s", diff)
	}
}

// TestMemoryNetScriptBounded checks that every network command of the
// loop has a time limit: a guest that gets no answer cannot hold the
// benchmark.
func TestMemoryNetScriptBounded(t *testing.T) {
	s := memNetScript(3)
	for _, cmd := range []string{"udhcpc", "nslookup", "wget"} {
		for l := range strings.Lines(s) {
			if strings.Contains(l, cmd+" ") && !strings.Contains(l, "timeout ") {
				t.Errorf("%s without a timeout: %q", cmd, l)
			}
		}
	}
	if !strings.Contains(s, "-lt 3 ]") || !strings.Contains(s, `echo "lease $lease"`) {
		t.Errorf("the loop's count or its lease line is missing:\n%s", s)
	}
}
