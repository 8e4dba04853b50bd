package fgterm

import (
	"bytes"
	"os"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, s, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

func TestOpenRestore(t *testing.T) {
	_, s := openPTY(t)
	fd := int(s.Fd())
	before, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	var out, errw bytes.Buffer
	term, err := Open(fd, &out, &errw)
	if err != nil {
		t.Fatal(err)
	}
	if !term.Raw() {
		t.Fatal("a pseudo-terminal was not switched to console mode")
	}
	during, _ := unix.IoctlGetTermios(fd, unix.TCGETS)
	if during.Lflag&(unix.ECHO|unix.ICANON) != 0 || during.Oflag&unix.OPOST != 0 || during.Iflag&unix.ICRNL != 0 {
		t.Errorf("console mode keeps echo, line mode or translation: lflag %#x oflag %#x iflag %#x", during.Lflag, during.Oflag, during.Iflag)
	}
	if during.Lflag&unix.ISIG == 0 || during.Cc[unix.VINTR] != before.Cc[unix.VINTR] {
		t.Errorf("console mode lost Ctrl-C as SIGINT: lflag %#x VINTR %d", during.Lflag, during.Cc[unix.VINTR])
	}
	if during.Cc[unix.VQUIT] != 0 || during.Cc[unix.VSUSP] != 0 {
		t.Errorf("Ctrl-\\ or Ctrl-Z still signal: VQUIT %d VSUSP %d", during.Cc[unix.VQUIT], during.Cc[unix.VSUSP])
	}
	_, _ = term.Console().Write([]byte("gatevisor-guest: ready"))
	_, _ = term.Status().Write([]byte("gatevisor: guest ready after 5.6s\n"))
	_, _ = term.Console().Write([]byte("~ # "))
	if err := term.Restore(); err != nil {
		t.Fatal(err)
	}
	if err := term.Restore(); err != nil {
		t.Fatalf("second Restore: %v", err)
	}
	after, _ := unix.IoctlGetTermios(fd, unix.TCGETS)
	if *after != *before {
		t.Errorf("terminal not restored:\nbefore %+v\nafter  %+v", *before, *after)
	}
	if got, want := out.String(), "gatevisor-guest: ready~ # "; got != want {
		t.Errorf("console output %q, want %q", got, want)
	}
	if got, want := errw.String(), "\r\ngatevisor: guest ready after 5.6s\r\n\r\n"; got != want {
		t.Errorf("status output %q, want %q (own lines, CRLF while raw, the guest's open line ended on restore)", got, want)
	}
}

func TestNotATerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out, errw bytes.Buffer
	term, err := Open(int(f.Fd()), &out, &errw)
	if err != nil {
		t.Fatal(err)
	}
	if term.Raw() {
		t.Fatal("a regular file was taken for a terminal")
	}
	_, _ = term.Console().Write([]byte("login: "))
	_, _ = term.Status().Write([]byte("gatevisor: stopped\n"))
	if err := term.Restore(); err != nil {
		t.Fatal(err)
	}
	if got, want := errw.String(), "\ngatevisor: stopped\n"; got != want {
		t.Errorf("status output %q, want %q", got, want)
	}
}
