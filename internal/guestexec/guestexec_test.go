package guestexec

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestQuoteArgvRoundTripsThroughSh(t *testing.T) {
	argv := []string{"printf", "%s|", "a b", "it's", `"q"`, "$HOME", "`id`", "\\n", ""}
	out, err := exec.Command("sh", "-c", QuoteArgv(argv)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := `a b|it's|"q"|$HOME|` + "`id`|\\n||"; string(out) != want {
		t.Fatalf("sh ran %q; want %q", out, want)
	}
}

func TestParseReply(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name    string
		line    string
		wantID  uint64
		want    Result
		wantErr string
	}{
		{"ok", "GVX1 7 0 " + b64("out\n") + " -", 7, Result{ExitCode: 0, Stdout: []byte("out\n"), Stderr: []byte{}}, ""},
		{"exit code", "GVX1 8 127 - " + b64("not found"), 8, Result{ExitCode: 127, Stdout: []byte{}, Stderr: []byte("not found")}, ""},
		{"bad magic", "GVX2 1 0 - -", 0, Result{}, "malformed"},
		{"few fields", "GVX1 1 0 -", 0, Result{}, "malformed"},
		{"bad id", "GVX1 x 0 - -", 0, Result{}, "bad reply id"},
		{"negative code", "GVX1 1 -1 - -", 0, Result{}, "bad exit code"},
		{"huge code", "GVX1 1 256 - -", 0, Result{}, "bad exit code"},
		{"bad base64", "GVX1 1 0 !!!! -", 0, Result{}, "bad base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, res, err := ParseReply([]byte(tc.line))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseReply(%q) error = %v, want %q", tc.line, err, tc.wantErr)
				}
				return
			}
			if err != nil || id != tc.wantID {
				t.Fatalf("ParseReply(%q) = %d, %v", tc.line, id, err)
			}
			if diff := cmp.Diff(tc.want, res); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeAgent answers requests on conn like the guest agent, after sending
// the lines in noise first.
func fakeAgent(t *testing.T, conn net.Conn, noise []string, delay time.Duration) {
	t.Helper()
	go func() {
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			if len(f) != 4 || f[0] != "GVX1" {
				continue
			}
			script, _ := base64.StdEncoding.DecodeString(f[3])
			for _, n := range noise {
				fmt.Fprint(conn, n)
			}
			time.Sleep(delay)
			out := base64.StdEncoding.EncodeToString([]byte("ran: " + string(script)))
			fmt.Fprintf(conn, "GVX1 %s 3 %s -\n", f[1], out)
		}
	}()
}

func TestClientRun(t *testing.T) {
	host, guest := net.Pipe()
	// A stale reply to an old request, console noise and an overlong line
	// must all be skipped.
	long := "GVX1 9 0 " + strings.Repeat("A", maxLine+10) + " -\n"
	fakeAgent(t, guest, []string{"GVX1 999 0 - -\n", "garbage line\n", long}, 0)
	c := NewClient(host)
	defer c.Close()
	res, err := c.Run(context.Background(), "echo hi", 5*time.Second)
	if err != nil || res.ExitCode != 3 || string(res.Stdout) != "ran: echo hi" {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	res, err = c.Run(context.Background(), "second", 5*time.Second)
	if err != nil || string(res.Stdout) != "ran: second" {
		t.Fatalf("second Run = %+v, %v", res, err)
	}
}

func TestClientContextAndClose(t *testing.T) {
	host, guest := net.Pipe()
	fakeAgent(t, guest, nil, 2*time.Second)
	c := NewClient(host)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Run(ctx, "slow", 10*time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run past its context: %v", err)
	}
	guest.Close()
	if _, err := c.Run(context.Background(), "x", time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after the agent closed: %v, want ErrClosed", err)
	}
	if _, err := c.Run(context.Background(), strings.Repeat("x", MaxScript+1), time.Second); err == nil {
		t.Fatal("oversized script accepted")
	}
}

func TestAgentScriptIsValidSh(t *testing.T) {
	cmd := exec.Command("sh", "-n")
	cmd.Stdin = strings.NewReader(AgentScript)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("agent script does not parse: %v\n%s", err, out)
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add([]byte("GVX1 1 0 aGk= -"))
	f.Add([]byte("GVX1 18446744073709551615 255 - -"))
	f.Add([]byte("GVX1 1 0 ==== ===="))
	f.Fuzz(func(t *testing.T, line []byte) {
		_, res, err := ParseReply(line)
		if err == nil && (res.ExitCode < 0 || res.ExitCode > 255 || len(res.Stdout) > MaxOutput+3 || len(res.Stderr) > MaxOutput+3) {
			t.Fatalf("accepted out-of-range reply %q", line)
		}
	})
}
