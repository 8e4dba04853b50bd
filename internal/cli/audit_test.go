package cli

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/event"
)

// runAudit runs `gatevisor audit ARGS` and returns stdout, stderr and the
// exit status Main would return.
func runAudit(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := newAuditCmd()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- cmd.Execute() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("audit %s: still running after 10s", strings.Join(args, " "))
	}
	code := 0
	if err != nil {
		var ee *exitError
		code = 1
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintln(&errOut, "gatevisor:", err)
	}
	return out.String(), errOut.String(), code
}

// writeAuditLog writes a closed log of an open record, the decisions recs
// and a close record, and returns its path.
func writeAuditLog(t *testing.T, recs ...*audit.Record) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(path, audit.Options{VM: "cam4", Policy: "sha256:0123", PolicySeq: 1, Sync: audit.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func decision(pid int32, comm, path, rule, reason string) *audit.Record {
	return &audit.Record{Time: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Verdict: "deny", Errno: 13, Rule: rule, Reason: reason, PolicySeq: 1,
		Event: event.Event{Class: event.ClassFile, Op: "read", Path: path, Subject: event.Subject{PID: pid, Comm: comm, Exe: "/bin/" + comm}}}
}

func TestAuditVerify(t *testing.T) {
	good := writeAuditLog(t, decision(1, "cat", "/etc/shadow", "r", "x"), decision(2, "cat", "/etc/shadow", "r", "x"), decision(3, "cat", "/etc/shadow", "r", "x"))
	b, _ := os.ReadFile(good)
	edited := filepath.Join(t.TempDir(), "edited.jsonl")
	os.WriteFile(edited, bytes.Replace(b, []byte(`"pid":2`), []byte(`"pid":7`), 1), 0o600)
	garbage := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(garbage, []byte("this is not\nan audit log\n"), 0o600)
	old := filepath.Join(t.TempDir(), "old.jsonl")
	os.WriteFile(old, []byte(`{"n":1,"time":"2024-01-01T00:00:00Z","verdict":"deny","rule":"r","reason":"x","policy_seq":1,"event":{"class":"file","subject":{"pid":5,"uid":0,"gid":0}}}`+"\n"), 0o600)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(good)
	if err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("%d:%s", rep.LastN, rep.Head)
	wrongHead := fmt.Sprintf("%d:%s", rep.LastN, strings.Repeat("0", 64))

	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		stdout   string // a part of it
		stderr   string // a part of it
		noStdout bool
	}{
		{"intact", []string{"--verify", "--file", good}, 0, "intact", "", false},
		{"intact head", []string{"--verify", "--file", good}, 0, "head:      " + head, "", false},
		{"intact, head known", []string{"--verify", "--file", good, "--expect-head", head}, 0, "has the hash recorded elsewhere", "", false},
		{"wrong head", []string{"--verify", "--file", good, "--expect-head", wrongHead}, 1, "BROKEN", "does not match the head recorded elsewhere", false},
		{"bad head flag", []string{"--verify", "--file", good, "--expect-head", "6:xyz"}, 2, "", "64 hex digits", true},
		{"edited", []string{"--verify", "--file", edited}, 1, "BROKEN", ":3: record n=3 was edited (its hash does not match record 4's prev)", false},
		{"edited, JSON report", []string{"--verify", "--json", "--file", edited}, 1, `"problem": "edited"`, "record n=3 was edited", false},
		{"unchained", []string{"--verify", "--file", old}, 1, "not verifiable", "predate the hash chain", false},
		{"garbage", []string{"--verify", "--file", garbage}, 2, "", "not a gatevisor audit log", true},
		{"fifo", []string{"--verify", "--file", fifo}, 2, "", "a FIFO", true},
		{"device", []string{"--verify", "--file", "/dev/zero"}, 2, "", "a character device", true},
		{"filters", []string{"--verify", "--file", good, "--verdict", "deny"}, 2, "", "takes no filter", true},
		// Reading verifies too: a warning, and the records still printed.
		{"read intact", []string{"--file", good}, 0, "[close]", "", false},
		{"read edited", []string{"--file", edited}, 0, "deny", "warning: " + edited + " does not verify: " + edited + ":3: record n=3 was edited", false},
		{"read garbage", []string{"--file", garbage}, 2, "", "not a gatevisor audit log (line 1 is not an audit record)", true},
		{"read garbage JSON", []string{"--json", "--file", garbage}, 2, "", "not a gatevisor audit log", true},
		{"read fifo", []string{"--file", fifo}, 2, "", "a FIFO", true},
		{"read device", []string{"--file", "/dev/zero"}, 2, "", "a character device", true},
		{"read unchained", []string{"--file", old}, 0, "deny", "predate the hash chain", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runAudit(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errOut)
			}
			if !strings.Contains(out, tc.stdout) {
				t.Errorf("stdout %q, want %q in it", out, tc.stdout)
			}
			if !strings.Contains(errOut, tc.stderr) {
				t.Errorf("stderr %q, want %q in it", errOut, tc.stderr)
			}
			if tc.noStdout && out != "" {
				t.Errorf("printed %q for input it refused", out)
			}
		})
	}
}

// TestAuditTextEscapesGuestText: guest-chosen names cannot forge rows or
// reach the terminal in the text table; --json prints the lines exactly.
func TestAuditTextEscapesGuestText(t *testing.T) {
	path := writeAuditLog(t,
		decision(66, forgedRow, clearScreen, "r", "ok"),
		decision(67, bidiName, "/tmp/"+c1CSI, "rule\nforged", titleSet+tabName),
		&audit.Record{Time: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Verdict: "deny", Rule: "m", Reason: crModule,
			Event: event.Event{Class: event.ClassModule, Op: "load", Module: crModule, Subject: event.Subject{PID: 68, Comm: "insmod"}}},
	)
	out, errOut, code := runAudit(t, "--file", path)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	// Header, open, three decisions, close.
	if n := strings.Count(out, "\n"); n != 6 {
		t.Errorf("%d lines, want 6 (a row was forged):\n%s", n, out)
	}
	for _, r := range out {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x202e {
			t.Fatalf("control character %U in the text output:\n%q", r, out)
		}
	}
	if !utf8.ValidString(out) {
		t.Error("output is not valid UTF-8")
	}
	for _, want := range []string{`x\n    1     0     0 S init`, `/tmp/\x1b[2J\x1b[Hpwned`, `evil\rext4`, `rule\nforged`, `\x1b]0;owned\x07a\tb`, `cat\u{202e}gnp.sh`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	// JSON: each record's line as stored.
	out, _, code = runAudit(t, "--json", "--file", path)
	b, _ := os.ReadFile(path)
	if code != 0 || out != string(b) {
		t.Errorf("--json is not the file's lines (exit %d):\n%s", code, out)
	}
}

// TestAuditAggregatedRow: an aggregated record shows how many decisions it
// stands for and the last one, escaped.
func TestAuditAggregatedRow(t *testing.T) {
	r := decision(7, "flood", "", "gate-flow-rate", "over its rate")
	r.Event = event.Event{Class: event.ClassNet, Op: "connect", Dir: event.DirOut, Proto: "tcp", Addr: netip.MustParseAddr("10.0.2.2"), Port: 1000,
		Subject: event.Subject{PID: 7, Comm: "flo\nod"}}
	last := r.Event
	last.Port = 1999
	r.Repeat = &audit.Repeat{Count: 1000, Until: r.Time.Add(time.Second), Last: last}
	out, _, code := runAudit(t, "--file", writeAuditLog(t, r))
	if code != 0 || !strings.Contains(out, "deny ×1000") || !strings.Contains(out, "connect out tcp 10.0.2.2:1000 … 10.0.2.2:1999 until 2024-05-01T12:00:01Z") ||
		!strings.Contains(out, `flo\nod`) {
		t.Errorf("audit output:\n%s", out)
	}
}
