package accel

import (
	"errors"
	"os"
	"testing"
)

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Mode
		wantErr bool
	}{{"auto", Auto, false}, {"kvm", KVM, false}, {"tcg", TCG, false}, {"xen", "", true}, {"", "", true}} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseMode(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseMode(%q) = %q, %v; want %q, err %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestChooseTCGNeedsNoKVM(t *testing.T) {
	c, err := Choose(TCG)
	if err != nil || c.Accel != TCG {
		t.Fatalf("Choose(TCG) = %+v, %v", c, err)
	}
}

// TestCalibrate runs the real KVM calibration. Its result depends on the
// machine, so it checks consistency, not speed: auto must agree with it.
func TestCalibrate(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm on this machine: calibration cannot run; auto falls back to TCG")
	}
	ns, err := Calibrate()
	if err != nil && !errors.Is(err, ErrKVMSlow) {
		t.Skipf("KVM unusable here (%v)", err)
	}
	if ns <= 0 {
		t.Fatalf("calibration measured %v ns per iteration", ns)
	}
	c, err := Choose(Auto)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("calibration: %.2f ns/iteration; auto chose %s: %s", ns, c.Accel, c.Reason)
	wantKVM := ns <= FastThresholdNs
	if (c.Accel == KVM) != wantKVM {
		// Two measurements may straddle the threshold only on a machine that is
		// near it; report both so that the cause is visible.
		t.Errorf("auto chose %s with calibration %.2f ns (threshold %.0f)", c.Accel, ns, FastThresholdNs)
	}
}
