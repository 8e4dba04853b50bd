// Package accel chooses QEMU's accelerator. KVM is chosen only when /dev/kvm
// opens and a calibration run shows that it executes guest code at hardware
// speed: a nested KVM that is emulated by the outer hypervisor runs guest
// code about a thousand times slower than TCG, so trusting the device node
// would make every boot crawl.
//
// The calibration creates a throw-away KVM virtual machine with one vCPU and
// 64 KiB of memory, runs a counted loop in real mode until HLT, and compares
// the time per iteration with a threshold that hardware KVM meets by two
// orders of magnitude. It is hand-written because no Go library offers a
// minimal KVM runner; it needs only five ioctls.
package accel

import (
	"errors"
	"fmt"
	"time"
)

// Mode is what the user asked for.
type Mode string

// Accelerator choices.
const (
	Auto Mode = "auto"
	KVM  Mode = "kvm"
	TCG  Mode = "tcg"
)

// ParseMode validates a --accel value.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case Auto, KVM, TCG:
		return Mode(s), nil
	}
	return "", fmt.Errorf("unknown accelerator %q: use auto, kvm or tcg", s)
}

// Choice is the accelerator to pass to QEMU and why it was chosen.
type Choice struct {
	Accel  Mode   `json:"accel"`  // kvm or tcg
	Reason string `json:"reason"` // one line for the operator
	// NsPerIteration is the calibrated cost of one loop iteration under KVM,
	// zero when no calibration ran.
	NsPerIteration float64 `json:"ns_per_iteration,omitempty"`
}

// FastThresholdNs is the most one calibration-loop iteration (dec + jnz) may
// cost under KVM for KVM to count as hardware speed. Hardware runs it in about
// 0.3–1 ns; emulated nested KVM was measured at about 2,000 ns.
const FastThresholdNs = 20.0

// calibrationIterations keeps the run short even on a slow, emulated KVM
// (10,000 × 2 µs = 20 ms) while being long enough on hardware to outweigh
// the cost of entering the guest.
const calibrationIterations = 200_000

// ErrKVMSlow says KVM works but runs guest code far below hardware speed.
var ErrKVMSlow = errors.New("KVM runs guest code far below hardware speed (nested virtualization is emulated)")

// Choose picks the accelerator for mode. For KVM it returns an error when
// KVM is unusable; for Auto it falls back to TCG and says why.
func Choose(mode Mode) (Choice, error) {
	switch mode {
	case TCG:
		return Choice{Accel: TCG, Reason: "TCG requested with --accel tcg"}, nil
	case KVM:
		ns, err := Calibrate()
		if err != nil && !errors.Is(err, ErrKVMSlow) {
			return Choice{}, fmt.Errorf("--accel kvm: %w; use --accel tcg or --accel auto", err)
		}
		c := Choice{Accel: KVM, NsPerIteration: ns, Reason: fmt.Sprintf("KVM requested with --accel kvm (%.1f ns per calibration iteration)", ns)}
		return c, nil
	case Auto, "":
		ns, err := Calibrate()
		if err != nil {
			reason := fmt.Sprintf("using TCG: %v", err)
			if errors.Is(err, ErrKVMSlow) {
				reason = fmt.Sprintf("using TCG: KVM is emulated here (%.0f ns per loop iteration, hardware needs < %.0f); pass --accel kvm to force it", ns, FastThresholdNs)
			}
			return Choice{Accel: TCG, Reason: reason, NsPerIteration: ns}, nil
		}
		return Choice{Accel: KVM, NsPerIteration: ns, Reason: fmt.Sprintf("using KVM (%.1f ns per calibration iteration)", ns)}, nil
	}
	return Choice{}, fmt.Errorf("unknown accelerator %q: use auto, kvm or tcg", mode)
}

// Calibrate measures KVM's cost per loop iteration. It returns ErrKVMSlow
// (with the measurement) when KVM works but is slow, and another error when
// KVM cannot be used at all.
func Calibrate() (float64, error) {
	// A short first run bounds the time spent on an emulated KVM.
	short, err := runLoop(calibrationIterations / 20)
	if err != nil {
		return 0, err
	}
	if perIter(short, calibrationIterations/20) > 50*FastThresholdNs {
		return perIter(short, calibrationIterations/20), ErrKVMSlow
	}
	long, err := runLoop(calibrationIterations)
	if err != nil {
		return 0, err
	}
	ns := perIter(long, calibrationIterations)
	if ns > FastThresholdNs {
		return ns, ErrKVMSlow
	}
	return ns, nil
}

func perIter(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / float64(n) }
