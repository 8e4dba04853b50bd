package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/kit"
)

// docCommand is one command line of a document's examples: a line of a
// ```sh block (with its `\` continuations), or a `$ ` line of a
// ```console block with the output shown after it.
type docCommand struct {
	file string
	line int
	text string
	want *string // the output a console block shows; nil for sh blocks
}

func (c docCommand) String() string { return fmt.Sprintf("%s:%d: %s", c.file, c.line, c.text) }

// docCommands extracts the commands of path's ```sh and ```console
// blocks, in order; other blocks (```text, grammar, bare ```) are prose.
func docCommands(path string) ([]docCommand, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		cmds  []docCommand
		block string // "" outside a block
		cont  *docCommand
		n     int
	)
	name := filepath.Base(path)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			switch {
			case block != "":
				if cont != nil {
					return nil, fmt.Errorf("%s:%d: the block ends inside a continued line", name, n)
				}
				block = ""
			case line == "```sh" || line == "```console":
				block = line[3:]
			default:
				block = "prose"
			}
			continue
		}
		switch block {
		case "sh":
			if cont != nil {
				cont.text += "\n" + line
			} else {
				t := strings.TrimSpace(line)
				if t == "" || strings.HasPrefix(t, "#") {
					continue
				}
				cmds = append(cmds, docCommand{file: name, line: n, text: line})
				cont = &cmds[len(cmds)-1]
			}
			if !strings.HasSuffix(line, "\\") {
				cont = nil
			}
		case "console":
			if c, ok := strings.CutPrefix(line, "$ "); ok {
				empty := ""
				cmds = append(cmds, docCommand{file: name, line: n, text: c, want: &empty})
			} else if len(cmds) > 0 && cmds[len(cmds)-1].want != nil {
				w := cmds[len(cmds)-1].want
				*w += line + "\n"
			}
		}
	}
	if block != "" {
		return nil, fmt.Errorf("%s: a ``` block is not closed", name)
	}
	return cmds, sc.Err()
}

func TestDocCommands(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "doc.md")
	doc := "# x\n```sh\ngo build ./x   # comment\n\n# a comment line\na --long \\\n  --more\n```\n" +
		"```text\nnot run\n```\n```console\n$ echo hi\nhi\n$ true\n```\n```\nprose\n```\n"
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cmds, err := docCommands(p)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cmds {
		s := fmt.Sprintf("%d %q", c.line, c.text)
		if c.want != nil {
			s += fmt.Sprintf(" -> %q", *c.want)
		}
		got = append(got, s)
	}
	want := []string{`3 "go build ./x   # comment"`, `6 "a --long \\\n  --more"`, `13 "echo hi" -> "hi\n"`, `15 "true" -> ""`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := os.WriteFile(p, []byte("```sh\na \\\n```\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := docCommands(p); err == nil {
		t.Fatal("a block ending inside a continued line was accepted")
	}
}

var (
	foregroundRun = regexp.MustCompile(`^bin/gatevisor run(\s|$)`)
	consoleCmd    = regexp.MustCompile(`^bin/gatevisor console \S+`)
	followEvents  = regexp.MustCompile(`bin/gatevisor events \S+ -f(\s|$)`)
)

// TestREADME runs every command of README.md's blocks, then docs/policy.md's
// examples, in order, as written, from the repository's root, the way a new
// user with a fresh HOME would: a line that fails fails the test. What the
// text says a person does is done: the foreground `run` and `console` get
// a terminal (a command typed at the guest's shell, then Ctrl-C or
// Ctrl-]), `events -f` is stopped with Ctrl-C once it has followed an
// event; `scripts/test` is this suite itself and is not run again.
func TestREADME(t *testing.T) {
	needVM(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var cmds []docCommand
	for _, f := range []string{"README.md", "docs/policy.md"} {
		c, err := docCommands(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c...)
	}
	environ := readmeEnv(t)
	before := map[string]bool{}
	if ents, err := os.ReadDir(env.runtimeDir); err == nil {
		for _, e := range ents {
			before[e.Name()] = true
		}
	}
	t.Cleanup(func() {
		// Stop what the lines started, had one failed before its stop.
		ents, _ := os.ReadDir(env.runtimeDir)
		for _, e := range ents {
			if !before[e.Name()] {
				_ = env.gv.Stop(e.Name(), 10*time.Second)
			}
		}
	})
	for _, c := range cmds {
		if f := strings.Fields(c.text); f[0] == "scripts/test" {
			t.Logf("%v: skipped (the suite running this test)", c)
			continue
		}
		start := time.Now()
		var out string
		switch {
		case foregroundRun.MatchString(c.text) && !strings.Contains(c.text, "--detach"):
			out = runOnTerminal(t, c, root, environ, func(p *ptyCmd) {
				p.waitFor(t, "ready after", readyTimeout)
				p.checkConsole(t, "readme")
				p.typeIn(t, "\x03") // Ctrl-C powers it off
			})
		case consoleCmd.MatchString(c.text):
			out = runOnTerminal(t, c, root, environ, func(p *ptyCmd) {
				p.waitFor(t, "press Ctrl-] to detach", time.Minute)
				p.checkConsole(t, "console")
				p.typeIn(t, "\x1d") // Ctrl-] detaches
			})
		case followEvents.MatchString(c.text):
			out = runFollow(t, c, root, environ)
		default:
			out = runLine(t, c, root, environ)
		}
		t.Logf("%v: ok in %.1fs", c, time.Since(start).Seconds())
		if c.want != nil && out != *c.want {
			t.Fatalf("%v: the output differs from the document's\ngot:\n%s\nthe document shows:\n%s", c, out, *c.want)
		}
	}
}

// readmeEnv is a new user's environment: a fresh HOME (so ~/.local/state
// is the test's), the kit and Go caches kept (they are downloads, not
// state), and the run's runtime directory (so the test's VMs are its own).
func readmeEnv(t *testing.T) []string {
	home := t.TempDir()
	cache, err := kit.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
			"GOPATH", "GOCACHE", "GOMODCACHE", "GATEVISOR_RUNTIME_DIR":
			continue
		}
		keep = append(keep, kv)
	}
	keep = append(keep, "HOME="+home, "XDG_CACHE_HOME="+filepath.Dir(cache), "GATEVISOR_RUNTIME_DIR="+env.runtimeDir)
	for _, v := range []string{"GOPATH", "GOCACHE", "GOMODCACHE"} {
		out, err := exec.Command("go", "env", v).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", v, err)
		}
		keep = append(keep, v+"="+strings.TrimSpace(string(out)))
	}
	return keep
}

func bashCmd(ctx context.Context, c docCommand, root string, environ []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", c.text)
	cmd.Dir, cmd.Env = root, environ
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// runLine runs c to completion (the longest line, bench boot, takes
// about a minute here) and fails the test unless it exits 0, or shows a
// console block's output.
func runLine(t *testing.T, c docCommand, root string, environ []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := bashCmd(ctx, c, root, environ)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if c.want != nil {
		return stdout.String() + stderr.String()
	}
	if err != nil {
		t.Fatalf("%v: %v\nstdout:\n%s\nstderr:\n%s", c, err, tail([]byte(stdout.String())), tail([]byte(stderr.String())))
	}
	return stdout.String()
}

// runOnTerminal runs c on a pseudo-terminal, does what a person would
// (drive), and fails unless it exits 0 with the terminal as it found it.
func runOnTerminal(t *testing.T, c docCommand, root string, environ []string, drive func(*ptyCmd)) string {
	t.Helper()
	cmd := bashCmd(context.Background(), c, root, environ)
	p := startPTY(t, cmd)
	drive(p)
	if code := p.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("%v: exit %d; terminal:\n%s", c, code, tail([]byte(p.out.String())))
	}
	p.checkRestored(t)
	return ""
}

// runFollow runs a line that ends following events: once an event has
// been followed, Ctrl-C (SIGINT to the line's process group) ends it.
func runFollow(t *testing.T, c docCommand, root string, environ []string) string {
	t.Helper()
	cmd := bashCmd(context.Background(), c, root, environ)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(readyTimeout + time.Minute)
	for !strings.Contains(stdout.String(), "\n") {
		select {
		case err := <-done:
			t.Fatalf("%v: ended (%v) before following an event\nstdout:\n%s\nstderr:\n%s", c, err, stdout.String(), tail([]byte(stderr.String())))
		case <-deadline:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatalf("%v: no event followed\nstderr:\n%s", c, tail([]byte(stderr.String())))
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The line printed may be `run --detach`'s ready line in a `run … &&
	// events -f` line: Ctrl-C once the follower runs (a SIGINT in the moment
	// between the two commands was seen to reach neither).
	for !followerRuns(cmd.Process.Pid) {
		select {
		case err := <-done:
			t.Fatalf("%v: ended (%v) before following\nstdout:\n%s\nstderr:\n%s", c, err, stdout.String(), tail([]byte(stderr.String())))
		case <-deadline:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatalf("%v: no `events -f` process\nstderr:\n%s", c, tail([]byte(stderr.String())))
		case <-time.After(50 * time.Millisecond):
		}
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); err != nil && !(ok && (ee.ExitCode() == 130 || ee.ExitCode() == 0 || isSignal(ee, syscall.SIGINT))) {
			t.Fatalf("%v: after Ctrl-C: %v\nstderr:\n%s", c, err, tail([]byte(stderr.String())))
		}
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("%v: still following 30s after Ctrl-C", c)
	}
	return stdout.String()
}

// followerRuns reports whether process group pgid holds a process whose
// arguments are gatevisor's `events … -f`.
func followerRuns(pgid int) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && strings.HasSuffix(args[0], "gatevisor") && args[1] == "events" {
			return true
		}
	}
	return false
}

func isSignal(ee *exec.ExitError, sig syscall.Signal) bool {
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}
