package testvm

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// recorder is a testing.TB that records Skip and Fatal instead of ending
// the test.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper()                        {}
func (r *recorder) Skip(args ...any)               { r.skipped = fmt.Sprint(args...) }
func (r *recorder) Fatalf(format string, a ...any) { r.failed = fmt.Sprintf(format, a...) }

func TestSkipOrFail(t *testing.T) {
	for _, tc := range []struct {
		env        string
		skip, fail bool
	}{
		{"", true, false},
		{"0", true, false},
		{"1", false, true},
	} {
		t.Run("GATEVISOR_REQUIRE_VM="+tc.env, func(t *testing.T) {
			t.Setenv(RequireEnv, tc.env)
			r := &recorder{TB: t}
			Skip(r, "no %s: install it", "thing")
			if (r.skipped != "") != tc.skip || (r.failed != "") != tc.fail {
				t.Fatalf("skipped %q, failed %q; want skip %v, fail %v", r.skipped, r.failed, tc.skip, tc.fail)
			}
			if msg := r.skipped + r.failed; !strings.Contains(msg, "no thing: install it") {
				t.Errorf("message %q lacks the reason", msg)
			}
			if tc.fail && !strings.Contains(r.failed, RequireEnv+"=1") {
				t.Errorf("failure %q does not name %s", r.failed, RequireEnv)
			}
		})
	}
}

// TestStartAndKill starts the firmware alone, paused, with a gdbstub: every
// socket listens when Start returns, and Kill leaves no QEMU.
func TestStartAndKill(t *testing.T) {
	v := Start(t, Config{Paused: true, GDB: true})
	for _, p := range []string{v.QMP, v.GDB} {
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatalf("%s does not listen: %v", p, err)
		}
		c.Close()
	}
	if v.Cmd.SysProcAttr == nil || v.Cmd.SysProcAttr.Pdeathsig == 0 {
		t.Error("QEMU started without a parent-death signal")
	}
	v.Kill()
	select {
	case <-v.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("Exited not closed after Kill")
	}
	if pids := QEMUProcesses(v.Dir); len(pids) > 0 {
		t.Errorf("QEMU %v still running after Kill", pids)
	}
	if left := Leftovers(); len(left) > 0 {
		t.Errorf("Leftovers after Kill: %v", left)
	}
}
