package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// TestDetailOutputEscapesGuestText renders the process-detail answers
// (threads, arguments, environment, descriptors) with guest-chosen text
// that attacks the table or the terminal, like
// TestTextOutputEscapesGuestText, against testdata/ids_{threads,args,env,files}.golden
// (-update rewrites them).
func TestDetailOutputEscapesGuestText(t *testing.T) {
	threads := []linux.Task{
		{PID: 1, TGID: 1, State: "S", Comm: "init", CPU: 0, UTime: 32e6, STime: 1_500_000_000, Runtime: 1_612_345_678},
		{PID: 70, TGID: 70, State: "S", Comm: forgedRow, CPU: 1, UTime: 4e6, Runtime: 9e6},
		{PID: 71, TGID: 70, State: "R", Comm: titleSet + tabName, CPU: -1, STime: 8e6, Runtime: 11e6},
	}
	args := []linux.ProcessArgs{
		{PID: 1, Comm: "init", Args: linux.UserStrings{Strings: []string{"init", ""}, Size: 6},
			Env: &linux.UserStrings{Strings: []string{"HOME=/", "TERM=linux"}, Size: 18}},
		{PID: 2, Comm: "kthreadd", KernelThread: true, Env: &linux.UserStrings{}},
		{PID: 66, Comm: forgedRow, Args: linux.UserStrings{Strings: []string{"sh", "-c", forgedRow, clearScreen}, Size: 4096, Truncated: true},
			Env: &linux.UserStrings{Strings: []string{"A=" + titleSet, "B=" + bidiName + c1CSI}, Size: 90, NotPresent: 4000, NotPresentWhy: "swapped out"}},
		{PID: 67, Comm: "swapped", Args: linux.UserStrings{Strings: []string{}, Size: 53, NotPresent: 53, NotPresentWhy: "swapped out"},
			Env: &linux.UserStrings{Strings: []string{}, Error: "inconsistent mm: " + crModule}},
		{PID: 68, Comm: "zombie", Args: linux.UserStrings{Error: "no mm: the process has exited"}, Env: &linux.UserStrings{Error: "no mm"}},
	}
	argsOnly := make([]linux.ProcessArgs, len(args))
	for i, a := range args {
		a.Env = nil
		argsOnly[i] = a
	}
	sock := &linux.Socket{Family: "inet", Proto: "tcp", LocalAddr: "0.0.0.0", LocalPort: 80, RemoteAddr: "0.0.0.0", State: "LISTEN", PID: 131, FD: 3}
	conn := &linux.Socket{Family: "unix", Proto: "unix", LocalAddr: clearScreen, RemoteAddr: "@" + forgedRow, State: "ESTABLISHED", PID: 131, FD: 4}
	files := []linux.FD{
		{PID: 1, Comm: "init", FD: 0, Type: "CHR", Mode: "rw", Target: "/dev/console", Inode: 3},
		{PID: 131, Comm: forgedRow, FD: 3, Type: "SOCK", Mode: "rw", Target: "socket:[10114]", Socket: sock},
		{PID: 131, Comm: forgedRow, FD: 4, Type: "SOCK", Mode: "rw", Target: "socket:[10115]", Socket: conn},
		{PID: 131, Comm: forgedRow, FD: 5, Type: "REG", Mode: "w", Target: clearScreen + " (deleted)"},
		{PID: 131, Comm: forgedRow, FD: 6, Type: "ANON", Mode: "r", Target: "anon_inode:[" + bidiName + "]"},
		{PID: 131, Comm: forgedRow, FD: 7, Type: "UNKN", Target: "", Error: "dentry " + titleSet},
	}
	for _, tc := range []struct {
		name, query string
		v           any
		lines       int
	}{
		{"ids_threads", "threads", threads, 1 + len(threads)},
		{"ids_args", "args", argsOnly, 1 + len(args)},
		{"ids_env", "env", args, 1 + len(args)},
		{"ids_files", "files", files, 1 + len(files)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printIDS(&b, tc.query, mustJSON(t, tc.v)); err != nil {
				t.Fatal(err)
			}
			got := b.String()
			checkTerminalSafe(t, got)
			if n := strings.Count(got, "\n"); n != tc.lines {
				t.Errorf("%d lines, want %d: a guest string forged a line:\n%s", n, tc.lines, got)
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("%s (-want +got):\n%s", golden, diff)
			}
		})
	}
}

// TestDetailQuery maps ps's flags to the API's queries and refuses
// combinations that mean two listings.
func TestDetailQuery(t *testing.T) {
	for _, tc := range []struct {
		sub  string
		opts detailOpts
		want string
		bad  bool
	}{
		{"ps", detailOpts{}, "ps", false},
		{"ps", detailOpts{threads: true}, "threads", false},
		{"ps", detailOpts{args: true}, "args", false},
		{"ps", detailOpts{env: true}, "env", false},
		{"ps", detailOpts{args: true, env: true}, "env", false},
		{"ps", detailOpts{threads: true, args: true}, "", true},
		{"files", detailOpts{pid: 7}, "files", false},
		{"threads", detailOpts{pid: -1}, "", true},
	} {
		got, err := tc.opts.query(tc.sub)
		if got != tc.want || (err != nil) != tc.bad {
			t.Errorf("%s %+v: %q, %v; want %q (error %v)", tc.sub, tc.opts, got, err, tc.want, tc.bad)
		}
	}
}

// TestDetailFilter keeps one process's rows: its threads, its arguments,
// its descriptors.
func TestDetailFilter(t *testing.T) {
	o := detailOpts{pid: 70}
	threads := mustJSON(t, []linux.Task{{PID: 1, TGID: 1}, {PID: 70, TGID: 70}, {PID: 71, TGID: 70}, {PID: 700, TGID: 700}})
	out, err := o.filter("threads", threads)
	if err != nil {
		t.Fatal(err)
	}
	var ts []linux.Task
	if err := json.Unmarshal(out, &ts); err != nil || len(ts) != 2 || ts[0].PID != 70 || ts[1].PID != 71 {
		t.Errorf("threads of 70 = %+v, %v", ts, err)
	}
	files := mustJSON(t, []linux.FD{{PID: 1, FD: 0}, {PID: 70, FD: 3, Target: "x"}})
	out, err = o.filter("files", files)
	var fs []linux.FD
	if err != nil || json.Unmarshal(out, &fs) != nil || len(fs) != 1 || fs[0].Target != "x" {
		t.Errorf("files of 70 = %s, %v", out, err)
	}
	out, err = (&detailOpts{pid: 5}).filter("args", mustJSON(t, []linux.ProcessArgs{{PID: 1}}))
	if err != nil || string(out) != "[]" {
		t.Errorf("args of an absent pid = %s, %v; want []", out, err)
	}
	if out, _ := (&detailOpts{}).filter("files", files); string(out) != string(files) {
		t.Errorf("no --pid changed the answer")
	}
}
