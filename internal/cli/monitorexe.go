package cli

// The monitor's own executable. A monitor runs for the life of its VM, and
// the pages of the executable it touches count in its memory (the file
// column of `bench memory`): gatevisor's full executable carries the NATS
// server, the dashboard and the benchmarks, none of which a monitor runs,
// and twice the text and tables of what it does run. gatevisor-monitor is
// the same main package built with -tags gatevisor_monitor, which leaves
// those commands out (bench*.go, serve.go, fleet's embedded server):
//
//	go build -tags gatevisor_monitor -o bin/gatevisor-monitor ./cmd/gatevisor
//
// scripts/build builds both, stamped with one digest of the source tree
// (sourceDigest). `gatevisor run` hands itself over to gatevisor-monitor
// (exec in place: same process, arguments, terminal and environment) when
// it lies next to gatevisor and is provably the same build: the same
// toolchain, main module, module dependencies and settings, the monitor's
// tags being gatevisor's plus gatevisor_monitor, and the same source: the
// same stamp (it is in the linker flags, a setting), or else one
// committed, unmodified version-control revision. Otherwise the monitor
// runs in gatevisor itself, as it always could: the same code, more
// memory; a gatevisor-monitor that is there but not provably this build is
// named on stderr with the reason, never run.

import (
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// sourceDigest is scripts/build's digest of the source tree both
// executables were built from (-ldflags -X); "" in other builds.
var sourceDigest string

const (
	// monitorExeName is the monitor's executable, next to gatevisor's.
	monitorExeName = "gatevisor-monitor"
	// monitorTag is the build tag that makes gatevisor-monitor.
	monitorTag = "gatevisor_monitor"
)

// handOverRun execs gatevisor-monitor in place of this process for a
// `gatevisor run` command line (args without the program name), when this
// is the full executable and the monitor's is provably the same build. It
// returns only when the run stays in this process (nil) or the exec
// failed.
func handOverRun(args []string) error {
	if monitorBuild || len(args) == 0 || args[0] != "run" || slices.Contains(args, "--detached-child") {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil
	}
	f, why := openMonitorExe(filepath.Join(filepath.Dir(self), monitorExeName))
	if f == nil {
		if why != "" {
			fmt.Fprintf(os.Stderr, "gatevisor: %s not used: %s; the monitor runs in %s\n", filepath.Join(filepath.Dir(self), monitorExeName), why, self)
		}
		return nil
	}
	// Exec the file that was checked, through its descriptor: the path
	// cannot be swapped in between. The kernel names the executable by
	// its path (/proc/self/exe), so the monitor's os.Executable, which
	// an upgrade and --auto-upgrade use, is gatevisor-monitor's path.
	path := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	err = syscall.Exec(path, append([]string{f.Name()}, args...), os.Environ())
	f.Close()
	return fmt.Errorf("run: exec %s: %w", f.Name(), err)
}

// openMonitorExe opens the monitor executable at path if it is this
// build's; otherwise it returns why not ("" when there is none).
func openMonitorExe(path string) (*os.File, string) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ""
	}
	if err != nil {
		return nil, err.Error()
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, err.Error()
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		f.Close()
		return nil, "not a regular file"
	case st.Mode&0o111 == 0:
		f.Close()
		return nil, "not executable"
	case st.Mode&0o022 != 0:
		f.Close()
		return nil, "writable by others than its owner"
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		f.Close()
		return nil, fmt.Sprintf("owned by uid %d, neither root nor this user", st.Uid)
	}
	mon, err := buildinfo.Read(f)
	if err != nil {
		f.Close()
		return nil, fmt.Sprintf("no Go build information: %v", err)
	}
	self, ok := debug.ReadBuildInfo()
	if !ok {
		f.Close()
		return nil, "this gatevisor has no build information"
	}
	if why := sameBuild(self, mon, sourceDigest); why != "" {
		f.Close()
		return nil, why
	}
	return f, ""
}

// sameBuild says why mon (gatevisor-monitor's build information) is not
// provably the monitor build of self (gatevisor's, stamped with digest),
// or "" when it is: the same toolchain, main module, dependencies and
// settings, mon's tags being self's plus monitorTag, and one source: the
// same digest stamp (in the linker flags, compared with the settings), or
// else one committed revision with no local modification. Two modified
// trees without a stamp cannot be told apart, so such builds are never
// taken.
func sameBuild(self, mon *debug.BuildInfo, digest string) string {
	if self.GoVersion != mon.GoVersion {
		return fmt.Sprintf("built by %s, gatevisor by %s", mon.GoVersion, self.GoVersion)
	}
	if self.Path != mon.Path || self.Main.Path != mon.Main.Path || self.Main.Version != mon.Main.Version || self.Main.Sum != mon.Main.Sum {
		return fmt.Sprintf("built from %s %s, gatevisor from %s %s", mon.Main.Path, mon.Main.Version, self.Main.Path, self.Main.Version)
	}
	if why := sameDeps(self.Deps, mon.Deps); why != "" {
		return why
	}
	s, m := settings(self), settings(mon)
	if digest == "" {
		for _, b := range []struct {
			name string
			set  map[string]string
		}{{"gatevisor", s}, {"it", m}} {
			switch {
			case b.set["vcs.revision"] == "":
				return b.name + " was built without scripts/build's source digest or a version-control revision (build both with scripts/build)"
			case b.set["vcs.modified"] != "false":
				return b.name + " was built from a modified source tree without scripts/build's source digest (build both with scripts/build)"
			}
		}
	}
	want := strings.Join(append(strings.FieldsFunc(s["-tags"], func(r rune) bool { return r == ',' }), monitorTag), ",")
	if got := m["-tags"]; !sameTags(got, want) {
		return fmt.Sprintf("built with tags %q, want %q", got, want)
	}
	// Whether cgo is on changes only the standard library's choices (the
	// DNS resolver, user lookups: gatevisor's own code has no cgo), and
	// scripts/build builds the monitor without it: a static executable
	// maps no libc (1.4 MiB of its memory).
	ignore := func(k string) bool { return k == "-tags" || strings.HasPrefix(k, "CGO_") }
	for k, v := range s {
		if !ignore(k) && m[k] != v {
			return fmt.Sprintf("built with %s=%q, gatevisor with %q", k, m[k], v)
		}
	}
	for k, v := range m {
		if _, ok := s[k]; !ok && !ignore(k) {
			return fmt.Sprintf("built with %s=%q, gatevisor without it", k, v)
		}
	}
	return ""
}

func settings(bi *debug.BuildInfo) map[string]string {
	m := make(map[string]string, len(bi.Settings))
	for _, s := range bi.Settings {
		m[s.Key] = s.Value
	}
	return m
}

func sameTags(a, b string) bool {
	split := func(s string) []string {
		t := strings.FieldsFunc(s, func(r rune) bool { return r == ',' })
		slices.Sort(t)
		return slices.Compact(t)
	}
	return slices.Equal(split(a), split(b))
}

func sameDeps(self, mon []*debug.Module) string {
	key := func(m *debug.Module) string {
		k := m.Path + "@" + m.Version + " " + m.Sum
		if m.Replace != nil {
			k += " => " + m.Replace.Path + "@" + m.Replace.Version + " " + m.Replace.Sum
		}
		return k
	}
	have := make(map[string]bool, len(self))
	for _, d := range self {
		have[key(d)] = true
	}
	for _, d := range mon {
		// The monitor links a subset of gatevisor's modules.
		if !have[key(d)] {
			return fmt.Sprintf("built with module %s, which gatevisor does not link", key(d))
		}
	}
	return ""
}
