package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/accel"
	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/guestexec"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/monitor"
	"github.com/gatevisor/gatevisor/internal/qemu"
)

func init() { addSubcommand(newBenchCmd) }

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmarks against peers, run in one process so they share the machine's state",
	}
	cmd.AddCommand(newBenchBootCmd(), newBenchIDSCmd(), newBenchSyscallsCmd(), newBenchNetCmd())
	return cmd
}

type bootSample struct {
	Kind    string  `json:"kind"` // gatevisor or qemu
	Seconds float64 `json:"seconds"`
	PeakRSS int64   `json:"peak_rss_kib,omitempty"` // the monitor's VmHWM
}

type bootReport struct {
	Accel            string       `json:"accel"`
	Rounds           int          `json:"rounds"`
	Mem              int          `json:"mem_mib"`
	Kernel           string       `json:"kernel"`
	MedianGatevisor  float64      `json:"median_gatevisor_seconds"`
	MedianQEMU       float64      `json:"median_qemu_seconds"`
	Ratio            float64      `json:"ratio"`
	MedianPeakRSSKiB int64        `json:"median_monitor_peak_rss_kib"`
	MaxPeakRSSKiB    int64        `json:"max_monitor_peak_rss_kib"`
	PlainCommand     string       `json:"plain_command"`
	Samples          []bootSample `json:"samples"`
}

func newBenchBootCmd() *cobra.Command {
	var (
		rounds  int
		accelF  string
		asJSON  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "boot",
		Short: "Time `gatevisor run` to the guest's ready marker against the same kit under plain QEMU",
		Long: `Boot the default kit alternately with 'gatevisor run' and with the
equivalent plain qemu-system-x86_64 command line (same machine, accelerator,
memory backend, devices, kernel, initrd and command line, but no monitor
channels), timing each from process start to the guest's ready marker on the
serial console. Reports medians, their ratio, and the monitor's peak RSS
(VmHWM of the gatevisor process, QEMU excluded).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 || rounds > 50 {
				return fmt.Errorf("--rounds %d: use 1 to 50", rounds)
			}
			mode, err := accel.ParseMode(accelF)
			if err != nil {
				return fmt.Errorf("--accel: %w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := benchBoot(ctx, rounds, mode, timeout)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			fmt.Printf("boot to ready marker, %d rounds alternating, accel %s, %dM:\n", rep.Rounds, rep.Accel, rep.Mem)
			fmt.Printf("  gatevisor run   median %.3fs\n  plain QEMU      median %.3fs\n  ratio           %.3f (goal <= 1.05)\n", rep.MedianGatevisor, rep.MedianQEMU, rep.Ratio)
			fmt.Printf("  monitor peak RSS median %.1f MiB, max %.1f MiB (goal <= 30 MiB)\n", float64(rep.MedianPeakRSSKiB)/1024, float64(rep.MaxPeakRSSKiB)/1024)
			fmt.Printf("  plain command: %s\n", rep.PlainCommand)
			return nil
		},
	}
	cmd.Flags().IntVar(&rounds, "rounds", 5, "boots of each kind")
	cmd.Flags().StringVar(&accelF, "accel", "auto", "accelerator for both: auto, kvm or tcg")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "longest one boot may take")
	return cmd
}

func benchBoot(ctx context.Context, rounds int, mode accel.Mode, timeout time.Duration) (*bootReport, error) {
	const memMiB = 256
	qemuBin, err := qemu.FindBinary()
	if err != nil {
		return nil, err
	}
	k, err := kit.EnsureDefault(ctx, kit.Options{Progress: os.Stderr})
	if err != nil {
		return nil, err
	}
	choice, err := accel.Choose(mode)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "gatevisor-bench-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	plainArgs := plainQEMUArgs(k, string(choice.Accel), memMiB)
	rep := &bootReport{Accel: string(choice.Accel), Rounds: rounds, Mem: memMiB, Kernel: k.Kernel,
		PlainCommand: qemu.CommandLine(qemuBin, plainArgs)}
	var gvTimes, qTimes []float64
	var rss []int64
	for i := 0; i < rounds; i++ {
		name := fmt.Sprintf("bench-%d-%d", os.Getpid(), i)
		gvCmd := exec.Command(self, "run", "--name", name, "--accel", string(choice.Accel), "--mem", strconv.Itoa(memMiB),
			"--console-log", filepath.Join(tmp, name+".log"))
		s, err := timeBoot(ctx, gvCmd, timeout, true)
		if err != nil {
			return nil, fmt.Errorf("round %d, gatevisor run: %w", i+1, err)
		}
		s.Kind = "gatevisor"
		rep.Samples = append(rep.Samples, s)
		gvTimes = append(gvTimes, s.Seconds)
		rss = append(rss, s.PeakRSS)
		fmt.Fprintf(os.Stderr, "round %d: gatevisor %.3fs (peak RSS %d KiB)", i+1, s.Seconds, s.PeakRSS)

		ram, err := os.CreateTemp(tmp, "ram-")
		if err != nil {
			return nil, err
		}
		os.Remove(ram.Name())
		if err := ram.Truncate(memMiB << 20); err != nil {
			return nil, err
		}
		qCmd := exec.Command(qemuBin, plainArgs...)
		qCmd.ExtraFiles = []*os.File{ram}
		s, err = timeBoot(ctx, qCmd, timeout, false)
		ram.Close()
		if err != nil {
			return nil, fmt.Errorf("round %d, plain QEMU: %w", i+1, err)
		}
		s.Kind = "qemu"
		rep.Samples = append(rep.Samples, s)
		qTimes = append(qTimes, s.Seconds)
		fmt.Fprintf(os.Stderr, ", plain QEMU %.3fs\n", s.Seconds)
	}
	rep.MedianGatevisor = median(gvTimes)
	rep.MedianQEMU = median(qTimes)
	rep.Ratio = rep.MedianGatevisor / rep.MedianQEMU
	sort.Slice(rss, func(i, j int) bool { return rss[i] < rss[j] })
	rep.MedianPeakRSSKiB = rss[len(rss)/2]
	rep.MaxPeakRSSKiB = rss[len(rss)-1]
	return rep, nil
}

// plainQEMUArgs is the command line a user would write for the same guest:
// gatevisor's machine, memory backend, devices and kernel, with the serial
// console on stdio and no monitor channels (no QMP, gdbstub or sockets).
func plainQEMUArgs(k *kit.Kit, accelName string, memMiB int) []string {
	cpu := "max,la57=off"
	if accelName == "kvm" {
		cpu = "host"
	}
	return []string{
		"-machine", qemu.Machine + ",accel=" + accelName + ",memory-backend=ram0",
		"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%dM,mem-path=/proc/self/fd/3,share=on", memMiB),
		"-m", strconv.Itoa(memMiB) + "M", "-smp", "1", "-cpu", cpu,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "null,id=gvx",
		"-device", "virtserialport,bus=vser0.0,chardev=gvx,name=" + guestexec.PortName,
		"-kernel", k.Kernel, "-initrd", k.Initrd, "-append", k.Append,
	}
}

// timeBoot starts cmd, returns the time until its stdout shows the ready
// marker, then stops it (SIGTERM, then SIGKILL) and waits for it.
func timeBoot(ctx context.Context, cmd *exec.Cmd, timeout time.Duration, isMonitor bool) (bootSample, error) {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return bootSample{}, err
	}
	cmd.Stderr = io.Discard
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return bootSample{}, err
	}
	found := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if strings.Contains(sc.Text(), monitor.ReadyMarker) {
				found <- time.Since(start)
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var s bootSample
	var runErr error
	select {
	case d := <-found:
		s.Seconds = d.Seconds()
		if isMonitor {
			s.PeakRSS = peakRSS(cmd.Process.Pid)
		}
	case <-time.After(timeout):
		runErr = fmt.Errorf("no ready marker within %v", timeout)
	case <-ctx.Done():
		runErr = ctx.Err()
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	return s, runErr
}

// peakRSS returns VmHWM of pid in KiB.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// bootBenchVM starts `gatevisor run --detach --name name args...` with this
// binary and returns its API client and a function that stops it.
func bootBenchVM(ctx context.Context, name string, args ...string) (*apiclient.Client, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	run := exec.CommandContext(ctx, self, append([]string{"run", "--detach", "--name", name}, args...)...)
	run.Stderr = os.Stderr
	if err := run.Run(); err != nil {
		return nil, nil, fmt.Errorf("boot the benchmark VM: %w", err)
	}
	c, err := clientFor(name)
	if err != nil {
		return nil, nil, err
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = c.Stop(sctx, api.StopRequest{Force: true})
		if waitGone(sctx, name) == nil {
			// A benchmark VM's logs (console, audit, events) are of no use
			// once its numbers are printed.
			if dir, err := stateDir(name); err == nil {
				_ = os.RemoveAll(dir)
			}
		}
	}
	return c, stop, nil
}
