// Package fgterm puts the terminal of a foreground `gatevisor run` into the
// mode a serial console needs and keeps the monitor's status lines apart
// from the guest's output.
//
// The guest's own tty does the line editing and the echo, so the host
// terminal must pass every byte through unchanged: no canonical mode, no
// local echo (else each typed line shows twice), no input translation, no
// output post-processing. Unlike golang.org/x/term's MakeRaw it keeps ISIG,
// so that Ctrl-C still reaches gatevisor as SIGINT and powers the guest off
// as the README says; Ctrl-\ and Ctrl-Z are disabled as signal keys (a
// core dump or a suspended monitor would leave the terminal raw) and go to
// the guest as bytes. Replies to the guest's terminal queries (cursor
// position reports) now reach the guest that asked, instead of being echoed.
//
// The two writers share what was last written, so a status line never runs
// into a line of guest output: it starts on a fresh line and ends with
// "\r\n" while the terminal is raw. Restore puts the terminal back exactly
// as it was, and is safe to call more than once.
package fgterm

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// Terminal is a terminal in console mode, with writers for the guest's
// output and for status lines.
type Terminal struct {
	fd  int
	old *unix.Termios // nil when not a terminal or already restored

	mu        sync.Mutex
	out, errw io.Writer
	midLine   bool // the last byte written was not a newline
}

// Open switches the terminal on fd to console mode if it is one; out and
// errw are where guest output and status lines go (usually stdout and
// stderr, which may be the same terminal). On a non-terminal fd nothing is
// changed and the writers pass through.
func Open(fd int, out, errw io.Writer) (*Terminal, error) {
	t := &Terminal{fd: fd, out: out, errw: errw}
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return t, nil // not a terminal
	}
	raw := ConsoleMode(*old)
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("console: set the terminal to raw mode: %w", err)
	}
	t.old = old
	return t, nil
}

// ConsoleMode is the termios a serial console needs, derived from m: raw
// input and output, no echo, ISIG kept with only Ctrl-C as a signal key.
func ConsoleMode(m unix.Termios) unix.Termios {
	m.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	m.Oflag &^= unix.OPOST
	m.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.IEXTEN
	m.Lflag |= unix.ISIG
	m.Cflag &^= unix.CSIZE | unix.PARENB
	m.Cflag |= unix.CS8
	m.Cc[unix.VMIN] = 1
	m.Cc[unix.VTIME] = 0
	m.Cc[unix.VQUIT] = 0 // _POSIX_VDISABLE
	m.Cc[unix.VSUSP] = 0
	return m
}

// Raw reports whether the terminal is in console mode now.
func (t *Terminal) Raw() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.old != nil
}

// Restore puts the terminal back as Open found it, after ending a guest
// line left open so the shell's prompt starts on its own line.
func (t *Terminal) Restore() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.old == nil {
		return nil
	}
	if t.midLine {
		_, _ = t.errw.Write([]byte("\r\n"))
		t.midLine = false
	}
	err := unix.IoctlSetTermios(t.fd, unix.TCSETS, t.old)
	t.old = nil
	if err != nil {
		return fmt.Errorf("console: restore the terminal: %w", err)
	}
	return nil
}

// Console is the writer for the guest's serial output.
func (t *Terminal) Console() io.Writer { return consoleWriter{t} }

// Status is the writer for the monitor's status lines.
func (t *Terminal) Status() io.Writer { return statusWriter{t} }

type consoleWriter struct{ t *Terminal }

func (w consoleWriter) Write(p []byte) (int, error) {
	w.t.mu.Lock()
	defer w.t.mu.Unlock()
	n, err := w.t.out.Write(p)
	if n > 0 {
		w.t.midLine = p[n-1] != '\n'
	}
	return n, err
}

type statusWriter struct{ t *Terminal }

// Write writes p on lines of its own: after a newline if guest output left
// a line open, with "\r\n" line ends while the terminal is raw. It reports
// len(p) written when all of it was.
func (w statusWriter) Write(p []byte) (int, error) {
	t := w.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	var b []byte
	if t.midLine {
		if t.old != nil {
			b = append(b, '\r')
		}
		b = append(b, '\n')
	}
	if t.old != nil {
		b = append(b, bytes.ReplaceAll(bytes.ReplaceAll(p, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))...)
	} else {
		b = append(b, p...)
	}
	if _, err := t.errw.Write(b); err != nil {
		return 0, err
	}
	t.midLine = p[len(p)-1] != '\n'
	return len(p), nil
}
