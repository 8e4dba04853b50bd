package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gatevisor/gatevisor/internal/accel"
	"github.com/gatevisor/gatevisor/internal/guestexec"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/qemu"
)

// BootSample is one timed boot.
type BootSample struct {
	Kind    string  `json:"kind"` // gatevisor or qemu
	Seconds float64 `json:"seconds"`
	PeakRSS int64   `json:"peak_rss_kib,omitempty"` // the monitor's VmHWM
}

// BootReport is what Boot measured.
type BootReport struct {
	Accel            string       `json:"accel"`
	Rounds           int          `json:"rounds"`
	Mem              int          `json:"mem_mib"`
	Kit              string       `json:"kit,omitempty"` // a named kit (--kit); "" for the default kit
	Kernel           string       `json:"kernel"`
	MedianGatevisor  float64      `json:"median_gatevisor_seconds"`
	MedianQEMU       float64      `json:"median_qemu_seconds"`
	Ratio            float64      `json:"ratio"`
	MedianPeakRSSKiB int64        `json:"median_monitor_peak_rss_kib"`
	MaxPeakRSSKiB    int64        `json:"max_monitor_peak_rss_kib"`
	PlainCommand     string       `json:"plain_command"`
	Samples          []BootSample `json:"samples"`
}

// BootOptions are Boot's parameters.
type BootOptions struct {
	Rounds  int           // boots of each kind
	Accel   accel.Mode    // for both kinds
	Timeout time.Duration // the longest one boot may take
	Kit     string        // a built kit's name ("" or "default": the default kit, built if needed)
}

// bootMemMiB is both kinds' guest memory.
const bootMemMiB = 256

// Boot boots the default kit (or o.Kit) alternately with `gatevisor run` and with
// the equivalent plain QEMU command line (same machine, accelerator,
// memory backend, devices, kernel, initrd and command line, but no monitor
// channels), timing each from process start to the guest's ready marker
// on the serial console, and reports the medians, their ratio and the
// monitor's peak RSS (QEMU excluded).
func Boot(ctx context.Context, env Env, o BootOptions) (*BootReport, error) {
	b, err := newBootBench(ctx, env, o)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(b.tmp)
	for i := range o.Rounds {
		if err := b.round(ctx, i); err != nil {
			return nil, err
		}
	}
	b.summarize()
	return b.rep, nil
}

// bootBench is one run of Boot.
type bootBench struct {
	env       Env
	timeout   time.Duration
	accel     string
	qemuBin   string
	kit       string // run --kit, "" for the default kit
	self      string // the gatevisor binary
	tmp       string // console logs and the plain QEMU's RAM files
	plainArgs []string
	rep       *BootReport
}

// newBootBench finds QEMU, the default kit and the accelerator, and makes
// the temporary directory (the caller removes b.tmp).
func newBootBench(ctx context.Context, env Env, o BootOptions) (*bootBench, error) {
	var k *kit.Kit
	var err error
	if o.Kit != "" && o.Kit != kit.DefaultName {
		k, err = kit.Find("", o.Kit)
	} else {
		o.Kit = ""
		k, err = kit.EnsureDefault(ctx, kit.Options{Progress: env.progress()})
	}
	if err != nil {
		return nil, err
	}
	qemuBin, err := qemu.FindBinaryFor(k.Arch())
	if err != nil {
		return nil, err
	}
	var choice accel.Choice
	switch {
	case qemu.NativeArch(k.Arch()):
		choice, err = accel.Choose(o.Accel)
	case o.Accel == accel.KVM:
		err = fmt.Errorf("--accel kvm: KVM runs only this host's own architecture, and kit %s is %s", k.Name, k.Arch())
	default:
		choice = accel.Choice{Accel: accel.TCG}
	}
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
	b := &bootBench{env: env, timeout: o.Timeout, accel: string(choice.Accel), qemuBin: qemuBin, kit: o.Kit, self: self, tmp: tmp,
		plainArgs: plainQEMUArgs(k, string(choice.Accel), bootMemMiB)}
	b.rep = &BootReport{Accel: b.accel, Rounds: o.Rounds, Mem: bootMemMiB, Kit: o.Kit, Kernel: k.Kernel,
		PlainCommand: qemu.CommandLine(qemuBin, b.plainArgs)}
	return b, nil
}

// round boots once with gatevisor, then once with plain QEMU.
func (b *bootBench) round(ctx context.Context, i int) error {
	name := fmt.Sprintf("bench-%d-%d", os.Getpid(), i)
	gv := exec.Command(b.self, "run", "--name", name, "--accel", b.accel, "--mem", strconv.Itoa(bootMemMiB),
		"--console-log", filepath.Join(b.tmp, name+".log"))
	if b.kit != "" {
		gv.Args = append(gv.Args, "--kit", b.kit)
	}
	s, err := timeBoot(ctx, gv, b.timeout, true)
	if err != nil {
		return fmt.Errorf("round %d, gatevisor run: %w", i+1, err)
	}
	s.Kind = "gatevisor"
	b.rep.Samples = append(b.rep.Samples, s)
	b.env.logf("round %d: gatevisor %.3fs (peak RSS %d KiB)", i+1, s.Seconds, s.PeakRSS)

	if s, err = b.bootPlain(ctx); err != nil {
		return fmt.Errorf("round %d, plain QEMU: %w", i+1, err)
	}
	s.Kind = "qemu"
	b.rep.Samples = append(b.rep.Samples, s)
	b.env.logf(", plain QEMU %.3fs\n", s.Seconds)
	return nil
}

// bootPlain times plain QEMU, its guest RAM an unlinked file as fd 3 (the
// memory backend gatevisor gives QEMU).
func (b *bootBench) bootPlain(ctx context.Context) (BootSample, error) {
	ram, err := os.CreateTemp(b.tmp, "ram-")
	if err != nil {
		return BootSample{}, err
	}
	defer ram.Close()
	os.Remove(ram.Name())
	if err := ram.Truncate(bootMemMiB << 20); err != nil {
		return BootSample{}, err
	}
	cmd := exec.Command(b.qemuBin, b.plainArgs...)
	cmd.ExtraFiles = []*os.File{ram}
	return timeBoot(ctx, cmd, b.timeout, false)
}

// summarize fills in the report's medians from its samples.
func (b *bootBench) summarize() {
	var gv, plain []float64
	var rss []int64
	for _, s := range b.rep.Samples {
		if s.Kind == "gatevisor" {
			gv, rss = append(gv, s.Seconds), append(rss, s.PeakRSS)
		} else {
			plain = append(plain, s.Seconds)
		}
	}
	r := b.rep
	r.MedianGatevisor, r.MedianQEMU = Median(gv), Median(plain)
	r.Ratio = r.MedianGatevisor / r.MedianQEMU
	r.MedianPeakRSSKiB, r.MaxPeakRSSKiB = medianMax(rss)
}

// plainQEMUArgs is the command line a user would write for the same guest:
// gatevisor's machine, memory backend, devices and kernel, with the serial
// console on stdio and no monitor channels (no QMP, gdbstub or sockets).
func plainQEMUArgs(k *kit.Kit, accelName string, memMiB int) []string {
	machine, cpu := qemu.MachineCPU(k.Arch(), accelName)
	return []string{
		"-machine", machine + ",accel=" + accelName + ",memory-backend=ram0",
		"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%dM,mem-path=/proc/self/fd/3,share=on", memMiB),
		"-m", strconv.Itoa(memMiB) + "M", "-smp", "1", "-cpu", cpu,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio",
		"-device", "virtio-serial-pci,id=vser0" + (&qemu.Config{Accel: accelName}).VirtioOpts(),
		"-chardev", "null,id=gvx",
		"-device", "virtserialport,bus=vser0.0,chardev=gvx,name=" + guestexec.PortName,
		"-kernel", k.Kernel, "-initrd", k.Initrd, "-append", k.Append,
	}
}

// timeBoot starts cmd, returns the time until its stdout shows the ready
// marker (and, for the monitor, its peak RSS then), and stops it.
func timeBoot(ctx context.Context, cmd *exec.Cmd, timeout time.Duration, isMonitor bool) (BootSample, error) {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return BootSample{}, err
	}
	cmd.Stderr = io.Discard
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return BootSample{}, err
	}
	defer stopProcess(cmd)
	found := make(chan time.Duration, 1)
	go watchReady(stdout, start, found)
	select {
	case d := <-found:
		s := BootSample{Seconds: d.Seconds()}
		if isMonitor {
			s.PeakRSS = peakRSS(cmd.Process.Pid)
		}
		return s, nil
	case <-time.After(timeout):
		return BootSample{}, fmt.Errorf("no ready marker within %v", timeout)
	case <-ctx.Done():
		return BootSample{}, ctx.Err()
	}
}

// watchReady sends the time since start to found when r shows the ready
// marker, and reads r to its end.
func watchReady(r io.Reader, start time.Time, found chan<- time.Duration) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), kit.ReadyMarker) {
			found <- time.Since(start)
			break
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// stopProcess stops a started cmd (SIGTERM, then SIGKILL after a minute)
// and waits for it.
func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}
