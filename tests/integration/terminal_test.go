package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/testvm"
)

// ptyCmd is a command whose controlling terminal is a pseudo-terminal the
// test types into, as a person at a terminal would.
type ptyCmd struct {
	cmd           *exec.Cmd
	master, slave *os.File
	before        unix.Termios // the terminal's mode before the command ran
	out           syncBuffer
	answered      atomic.Int32 // cursor-position queries answered
	exited        chan struct{}
	err           error // cmd.Wait's, once exited is closed
}

// startPTY starts cmd (not yet started) on a new pseudo-terminal in cooked
// mode, as its session's controlling terminal (so Ctrl-C is SIGINT). It
// answers the cursor-position queries a guest shell sends, as a terminal
// emulator does.
func startPTY(t *testing.T, cmd *exec.Cmd) *ptyCmd {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	_ = pty.Setsize(master, &pty.Winsize{Rows: 24, Cols: 80})
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	p := &ptyCmd{cmd: cmd, master: master, slave: slave, before: *before, exited: make(chan struct{})}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go p.read()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		master.Close()
		slave.Close()
	})
	return p
}

func (p *ptyCmd) read() {
	buf := make([]byte, 4096)
	var pending []byte // output not yet scanned for a query
	col := 0           // the cursor's column as a terminal would have it
	for {
		n, err := p.master.Read(buf)
		if n > 0 {
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.Index(pending, []byte("\x1b[6n"))
				if i < 0 {
					// Keep a possible start of a query for the next read.
					k := bytes.LastIndexByte(pending, 0x1b)
					if k < 0 || len(pending)-k >= 4 {
						k = len(pending)
					}
					col = column(col, pending[:k])
					_, _ = p.out.Write(pending[:k])
					pending = append([]byte(nil), pending[k:]...)
					break
				}
				col = column(col, pending[:i])
				_, _ = p.out.Write(pending[:i+4])
				_, _ = fmt.Fprintf(p.master, "\x1b[24;%dR", col+1)
				p.answered.Add(1)
				pending = pending[i+4:]
			}
		}
		if err != nil {
			_, _ = p.out.Write(pending)
			return
		}
	}
}

// column is the cursor's column after b is printed from column col
// (printable bytes advance it, CR and LF reset it, escapes do not move it).
func column(col int, b []byte) int {
	esc := false
	for _, c := range b {
		switch {
		case esc:
			esc = !(c >= '@' && c <= '~' && c != '[')
		case c == 0x1b:
			esc = true
		case c == '\r' || c == '\n':
			col = 0
		case c >= ' ' && c != 0x7f:
			col++
		}
	}
	return col
}

// waitFor waits until the output contains s.
func (p *ptyCmd) waitFor(t *testing.T, s string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !strings.Contains(p.out.String(), s) {
		select {
		case <-p.exited:
			if !strings.Contains(p.out.String(), s) {
				t.Fatalf("exited (%v) before printing %q; terminal:\n%s", p.err, s, tail([]byte(p.out.String())))
			}
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the terminal within %v; terminal:\n%s", s, limit, tail([]byte(p.out.String())))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// typeIn writes s to the terminal as typed keys.
func (p *ptyCmd) typeIn(t *testing.T, s string) {
	t.Helper()
	if _, err := p.master.Write([]byte(s)); err != nil {
		t.Fatalf("type %q: %v", s, err)
	}
}

// wait waits for the command to exit and returns its exit code (-signal
// when a signal ended it).
func (p *ptyCmd) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		t.Fatalf("did not exit within %v; terminal:\n%s", limit, tail([]byte(p.out.String())))
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -int(ws.Signal())
		}
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

// checkRestored fails unless the terminal is back in the mode it had.
func (p *ptyCmd) checkRestored(t *testing.T) {
	t.Helper()
	after, err := unix.IoctlGetTermios(int(p.slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != p.before {
		t.Errorf("the terminal was left in another mode: lflag %#x -> %#x, iflag %#x -> %#x, oflag %#x -> %#x",
			p.before.Lflag, after.Lflag, p.before.Iflag, after.Iflag, p.before.Oflag, after.Oflag)
	}
}

// checkConsole types a command into the guest's shell on the terminal and
// checks the answer, that the command is echoed once (by the guest, not
// also by the host terminal) and that no reply to a terminal query shows.
func (p *ptyCmd) checkConsole(t *testing.T, word string) {
	t.Helper()
	typed := "echo " + word + "-$((6*7))"
	// Type at the shell's prompt: before the shell reads, the guest's tty
	// echoes input on its own, and the shell echoes it again.
	p.waitFor(t, "built-in commands.", time.Minute)
	testvm.Eventually(t, time.Minute, "the guest shell's prompt", func() error {
		out := p.out.String()
		after := out[strings.Index(out, "built-in commands."):]
		if !strings.Contains(after, "# ") {
			return errors.New("no prompt yet")
		}
		// The shell asks where the cursor is after its prompt: typed keys
		// must not come before the answer.
		if strings.Contains(after, "\x1b[6n") && p.answered.Load() == 0 {
			return errors.New("the cursor query is not answered yet")
		}
		return nil
	})
	p.typeIn(t, typed+"\r")
	p.waitFor(t, word+"-42", time.Minute)
	out := p.out.String()
	if n := strings.Count(out, typed); n != 1 {
		t.Errorf("the typed line shows %d times on the terminal, want once (local echo in the host terminal?):\n%s", n, tail([]byte(out)))
	}
	if strings.Contains(out, "^[[") || strings.Contains(out, "24;80R") {
		t.Errorf("a terminal reply or escape shows as text on the terminal:\n%q", tail([]byte(out)))
	}
}

// startForeground starts `gatevisor run --name NAME ARGS...` on a terminal.
func startForeground(t *testing.T, name string, args ...string) *ptyCmd {
	t.Helper()
	cmd := gvCmd(context.Background(), nil, append([]string{"run", "--name", name}, args...)...)
	return startPTY(t, cmd)
}

// checkStatusLine fails unless the monitor's line containing s starts on
// a line of its own (after "\n", not run into the guest's output).
func checkStatusLine(t *testing.T, out, s string) {
	t.Helper()
	i := strings.Index(out, s)
	if i < 0 {
		t.Errorf("no %q on the terminal", s)
		return
	}
	j := strings.LastIndex(out[:i], "gatevisor:")
	if j <= 0 || out[j-1] != '\n' {
		t.Errorf("the status line with %q does not start a line of its own:\n%q", s, out[max(0, j-80):min(len(out), i+len(s))])
	}
}
