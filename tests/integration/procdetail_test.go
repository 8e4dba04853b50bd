package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Tolerances where the two views are read at different moments. The
// processes compared are asleep (pause(), or a shell waiting on sleep), so
// their figures do not move; the tolerances are for what the kernel does
// to an idle process or how /proc rounds.
const (
	// rssSlackKiB: reclaim or khugepaged may change an idle process's
	// resident pages between the two reads.
	rssSlackKiB = 64
	// runtimeSlack: /proc/PID/stat's utime and stime add up to the
	// scheduler's runtime (cputime_adjust), each truncated to 1/100 s, so
	// ids's runtime is 0 to 20 ms above their sum; 10 ms more for the
	// rounding of the two reads of a thread caught by a timer tick.
	runtimeSlack = 30 * time.Millisecond
)

// procDetailGuest is the guest's own view of one process, from /proc.
type procDetailGuest struct {
	cmdline, environ string
	threads          []string          // tid:comm:processor, from /proc/PID/task/*/
	runtimes         map[int]int64     // tid -> utime+stime in clock ticks (1/100 s)
	groupTicks       int64             // /proc/PID/stat's utime+stime
	fds              map[string]string // "fd" -> "mode target", from ls -l /proc/PID/fd
	nThreads         int               // /proc/PID/status
	vmSizeKiB        uint64
	vmRSSKiB         uint64
}

// procDetailIDS is what gatevisor ids says of the same process.
type procDetailIDS struct {
	ps      linux.Task
	threads []linux.Task
	args    linux.ProcessArgs
	files   []linux.FD
	sockets []linux.Socket
}

// TestIDSProcessDetail compares ids threads, ps (CPU time, VSZ, RSS),
// ps --args --env, files and sockets with the guest's own /proc, for a
// process built to have three named threads on two CPUs, one descriptor
// of every kind and known arguments and environment; then the same
// answers from a dump with the live ones.
func TestIDSProcessDetail(t *testing.T) {
	needVM(t)
	const vm = "procdetail"
	bin := buildStatic(t, "procdetail")
	bootVMs(t, vmSpec{vm, []string{"--cpus", "2", "--add", bin + ":/usr/bin/procdetail"}})
	// Arguments with an empty one, a space, a tab and a terminal escape;
	// the environment with a marker. fd 3 (the exec channel's) is closed.
	start := `GV_MARK='a b' procdetail alpha 'two words' '' "$(printf 'tab\there')" "$(printf 'esc\033[31m')" </dev/null >/tmp/pd.out 2>&1 3>&- &
		sh -c 'while :; do sleep 5; done' gv-long-args "$(head -c 6000 /dev/zero | tr '\0' x)" </dev/null >/dev/null 2>&1 3>&- &
		echo started`
	if r := gv(t, time.Minute, "exec", vm, "--", "sh", "-c", start); r.code != 0 {
		t.Fatalf("start: %d %s", r.code, r.stderr)
	}
	var pid int
	if err := testvm.Poll(time.Minute, func() error {
		r := gv(t, time.Minute, "exec", vm, "--", "cat", "/tmp/pd.out")
		if _, err := fmt.Sscanf(r.stdout, "ready %d", &pid); err != nil {
			return fmt.Errorf("procdetail says %q: %v", r.stdout, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	guest := readGuestDetail(t, vm, pid)
	live := readIDSDetail(t, pid, "--vm", vm)
	compareDetail(t, guest, live)

	t.Run("long arguments are bounded", func(t *testing.T) {
		checkLongArgs(t, vm)
	})
	t.Run("text escapes guest bytes", func(t *testing.T) {
		r := gv(t, time.Minute, "ids", "ps", "--args", "--env", "--vm", vm, "--pid", strconv.Itoa(pid))
		if r.code != 0 || !strings.Contains(r.stdout, `tab\there esc\x1b[31m`) || strings.ContainsAny(r.stdout, "\t\x1b") ||
			!strings.Contains(r.stdout, "GV_MARK=a b") {
			t.Errorf("ids ps --args --env: exit %d\n%q", r.code, r.stdout)
		}
	})
	t.Run("dump equals live", func(t *testing.T) {
		dump := filepath.Join(t.TempDir(), "procdetail.elf")
		if r := gv(t, 5*time.Minute, "dump", vm, "-o", dump); r.code != 0 {
			t.Fatalf("dump: %d %s", r.code, r.stderr)
		}
		fromDump := readIDSDetail(t, pid, "--dump", dump)
		again := readIDSDetail(t, pid, "--vm", vm)
		if diff := cmp.Diff(again, fromDump, cmp.AllowUnexported(procDetailIDS{})); diff != "" {
			t.Errorf("process %d: live (-) and dump (+) differ:\n%s", pid, diff)
		}
	})
}

// readGuestDetail reads the process's /proc files inside the guest.
func readGuestDetail(t *testing.T, vm string, pid int) procDetailGuest {
	t.Helper()
	cat := func(path string) string {
		r := gv(t, time.Minute, "exec", vm, "--", "cat", path)
		if r.code != 0 {
			t.Fatalf("cat %s: %d %s", path, r.code, r.stderr)
		}
		return r.stdout
	}
	p := fmt.Sprintf("/proc/%d", pid)
	g := procDetailGuest{cmdline: cat(p + "/cmdline"), environ: cat(p + "/environ"), runtimes: map[int]int64{}, fds: map[string]string{}}
	for _, line := range strings.Split(cat(p+"/status"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "Threads:":
			g.nThreads = int(v)
		case "VmSize:":
			g.vmSizeKiB = v
		case "VmRSS:":
			g.vmRSSKiB = v
		}
	}
	g.groupTicks = statTicks(t, cat(p+"/stat"))
	tasks := gv(t, time.Minute, "exec", vm, "--", "ls", p+"/task")
	for _, tid := range strings.Fields(tasks.stdout) {
		stat := cat(p + "/task/" + tid + "/stat")
		n, _ := strconv.Atoi(tid)
		g.runtimes[n] = statTicks(t, stat)
		g.threads = append(g.threads, fmt.Sprintf("%s:%s:%s", tid, strings.TrimSpace(cat(p+"/task/"+tid+"/comm")), statField(t, stat, 39)))
	}
	sort.Strings(g.threads)
	ls := gv(t, time.Minute, "exec", vm, "--", "ls", "-l", p+"/fd")
	for _, line := range strings.Split(ls.stdout, "\n") {
		left, target, ok := strings.Cut(line, " -> ")
		f := strings.Fields(left)
		if !ok || len(f) < 2 || len(f[0]) < 3 {
			continue
		}
		mode := ""
		if f[0][1] == 'r' {
			mode += "r"
		}
		if f[0][2] == 'w' {
			mode += "w"
		}
		g.fds[f[len(f)-1]] = mode + " " + target
	}
	return g
}

// statField returns field n (1-based, as proc(5) numbers them) of a
// /proc/PID/stat line; the comm in parentheses may hold spaces.
func statField(t *testing.T, stat string, n int) string {
	t.Helper()
	i := strings.LastIndexByte(stat, ')')
	rest := strings.Fields(stat[i+1:])
	if i < 0 || n < 3 || len(rest) < n-2 {
		t.Fatalf("stat %q has no field %d", stat, n)
	}
	return rest[n-3]
}

// statTicks is utime+stime of a stat line, in clock ticks.
func statTicks(t *testing.T, stat string) int64 {
	t.Helper()
	u, err1 := strconv.ParseInt(statField(t, stat, 14), 10, 64)
	s, err2 := strconv.ParseInt(statField(t, stat, 15), 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat %q: utime/stime: %v %v", stat, err1, err2)
	}
	return u + s
}

// readIDSDetail asks gatevisor ids about process pid, target being
// --vm NAME or --dump FILE.
func readIDSDetail(t *testing.T, pid int, target ...string) procDetailIDS {
	t.Helper()
	p := []string{"--pid", strconv.Itoa(pid)}
	var d procDetailIDS
	var ps []linux.Task
	idsJSON(t, &ps, "ps", append(p, target...)...)
	idsJSON(t, &d.threads, "threads", append(p, target...)...)
	var args []linux.ProcessArgs
	idsDetailJSON(t, &args, []string{"ps", "--args", "--env"}, append(p, target...))
	idsJSON(t, &d.files, "files", append(p, target...)...)
	var socks []linux.Socket
	idsJSON(t, &socks, "sockets", target...)
	if len(ps) != 1 || len(args) != 1 {
		t.Fatalf("ids %v: %d processes, %d argument rows for pid %d", target, len(ps), len(args), pid)
	}
	d.ps, d.args = ps[0], args[0]
	for _, s := range socks {
		if s.PID == pid {
			d.sockets = append(d.sockets, s)
		}
	}
	return d
}

// idsDetailJSON runs gatevisor ids with subcommand and flags, --json.
func idsDetailJSON(t *testing.T, out any, cmd, args []string) {
	t.Helper()
	r := gv(t, 5*time.Minute, append(append(append([]string{"ids"}, cmd...), "--json"), args...)...)
	if r.code != 0 {
		t.Fatalf("ids %v %v: exit %d: %s", cmd, args, r.code, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
		t.Fatalf("ids %v --json: %v\n%s", cmd, err, r.stdout)
	}
}

// compareDetail checks ids's answers against /proc: exactly for
// arguments, environment, descriptors, thread ids, names and CPUs, thread
// count and VSZ; within the tolerances above for RSS and CPU time.
func compareDetail(t *testing.T, g procDetailGuest, d procDetailIDS) {
	t.Helper()
	if got := strings.Join(d.args.Args.Strings, "\x00") + "\x00"; got != g.cmdline || d.args.Args.Truncated || d.args.Args.NotPresent != 0 {
		t.Errorf("arguments %q (%+v); /proc/PID/cmdline %q", got, d.args.Args, g.cmdline)
	}
	if d.args.Env == nil || strings.Join(d.args.Env.Strings, "\x00")+"\x00" != g.environ {
		t.Errorf("environment %+v; /proc/PID/environ %q", d.args.Env, g.environ)
	}
	var threads []string
	for _, th := range d.threads {
		threads = append(threads, fmt.Sprintf("%d:%s:%d", th.PID, th.Comm, th.CPU))
	}
	sort.Strings(threads)
	if diff := cmp.Diff(g.threads, threads); diff != "" || len(threads) != 3 {
		t.Errorf("threads tid:comm:cpu, /proc (-) and ids (+):\n%s", diff)
	}
	if d.ps.Threads != g.nThreads || d.ps.VSZ>>10 != g.vmSizeKiB {
		t.Errorf("threads %d, VSZ %d KiB; /proc/PID/status: Threads %d, VmSize %d kB", d.ps.Threads, d.ps.VSZ>>10, g.nThreads, g.vmSizeKiB)
	}
	t.Logf("RSS: ids %d KiB, VmRSS %d kB; VSZ: ids %d KiB, VmSize %d kB", d.ps.RSS>>10, g.vmRSSKiB, d.ps.VSZ>>10, g.vmSizeKiB)
	if rss := int64(d.ps.RSS >> 10); rss < int64(g.vmRSSKiB)-rssSlackKiB || rss > int64(g.vmRSSKiB)+rssSlackKiB || rss < 8<<10 {
		t.Errorf("RSS %d KiB; /proc/PID/status VmRSS %d kB (tolerance %d KiB; the process touched 8 MiB)", rss, g.vmRSSKiB, rssSlackKiB)
	}
	checkRuntime := func(what string, ns uint64, ticks int64) {
		diff := time.Duration(int64(ns) - ticks*int64(10*time.Millisecond))
		t.Logf("%s: ids runtime %v, /proc utime+stime %v: ids is %v above", what, time.Duration(ns), time.Duration(ticks)*10*time.Millisecond, diff)
		if diff < -time.Millisecond || diff > runtimeSlack {
			t.Errorf("%s: ids runtime %v, /proc utime+stime %d ticks: %v apart (tolerance 0 to %v)", what, time.Duration(ns), ticks, diff, runtimeSlack)
		}
	}
	checkRuntime("process", d.ps.GroupRuntime, g.groupTicks)
	for _, th := range d.threads {
		checkRuntime(fmt.Sprintf("thread %d", th.PID), th.Runtime, g.runtimes[th.PID])
	}
	if d.ps.GroupRuntime < uint64(500*time.Millisecond) {
		t.Errorf("group runtime %v: the threads burnt 0.7 s", time.Duration(d.ps.GroupRuntime))
	}
	fds := map[string]string{}
	sockets := map[int]string{}
	for _, f := range d.files {
		fds[strconv.Itoa(f.FD)] = f.Mode + " " + f.Target
		if f.Socket != nil {
			sockets[f.FD] = f.Target
		}
	}
	if diff := cmp.Diff(g.fds, fds); diff != "" {
		t.Errorf("descriptors, ls -l /proc/PID/fd (-) and ids files (+):\n%s", diff)
	}
	// ids sockets: one row per descriptor, the listener on two.
	bySock := map[int]string{}
	for _, s := range d.sockets {
		bySock[s.FD] = fmt.Sprintf("socket:[%d]", s.Inode)
	}
	if diff := cmp.Diff(sockets, bySock); diff != "" || len(bySock) != 4 {
		t.Errorf("ids sockets by fd (-files +sockets):\n%s", diff)
	}
}

// checkLongArgs: a process whose arguments pass the bound has the first
// MaxArgBytes of them, flagged, with the whole size.
func checkLongArgs(t *testing.T, vm string) {
	var ps []linux.ProcessArgs
	idsDetailJSON(t, &ps, []string{"ps", "--args"}, []string{"--vm", vm})
	for _, p := range ps {
		if len(p.Args.Strings) < 4 || p.Args.Strings[3] != "gv-long-args" {
			continue
		}
		r := gv(t, time.Minute, "exec", vm, "--", "cat", fmt.Sprintf("/proc/%d/cmdline", p.PID))
		got := strings.Join(p.Args.Strings, "\x00")
		if !p.Args.Truncated || p.Args.Size != uint64(len(r.stdout)) || got != r.stdout[:linux.MaxArgBytes] {
			t.Errorf("pid %d: %d bytes read, size %d, truncated %v; /proc has %d bytes", p.PID, len(got), p.Args.Size, p.Args.Truncated, len(r.stdout))
		}
		return
	}
	t.Errorf("no gv-long-args process in ids ps --args")
}
