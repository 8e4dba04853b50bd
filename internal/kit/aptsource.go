package kit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The default kit is made from Debian bookworm. On a bookworm host the
// host's own apt configuration is used (its mirrors, proxies and package
// lists). On any other host (Ubuntu, a newer Debian) apt runs with a private
// configuration under <cache>/apt that lists bookworm (and bookworm-backports,
// which apt never prefers on its own: the archive marks it NotAutomatic), so
// the kit is the same everywhere; that needs no root and no change to the
// host's apt, only the Debian archive keyring to verify the archive's
// signatures.
//
// A kit from another suite (Options.Suite) takes its packages from that
// suite (APT::Default-Release): through the host's apt when the host's
// package lists have the suite, else through the private configuration of
// the suite's release, <cache>/apt for bookworm and bookworm-backports,
// <cache>/apt-trixie for trixie.

// debianKeyring is the keyring the private sources trust.
const debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// DefaultSuite is the Debian suite of the default kit.
const DefaultSuite = "bookworm"

// Suites are the suites a kit can be built from, each with the release
// whose private apt configuration reaches it.
var Suites = []Suite{
	{Name: "bookworm", Release: "bookworm"},
	{Name: "bookworm-backports", Release: "bookworm"},
	{Name: "trixie", Release: "trixie"},
}

// Suite is a Debian suite a kit's packages come from.
type Suite struct {
	Name    string // as apt knows it, e.g. bookworm-backports
	Release string // the release whose private configuration lists it
}

// LookupSuite returns the suite named name ("" is DefaultSuite), or an
// error naming the suites there are.
func LookupSuite(name string) (Suite, error) {
	if name == "" {
		name = DefaultSuite
	}
	var names []string
	for _, s := range Suites {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Suite{}, fmt.Errorf("kit: unknown kernel suite %q: gatevisor builds kits from %s", name, strings.Join(names, ", "))
}

// privateSources is the private sources.list for a release: the release,
// its updates and security suites and, for bookworm, its backports.
func privateSources(release string) string {
	line := func(archive, suite string) string {
		return `deb [signed-by=` + debianKeyring + `] http://deb.debian.org/` + archive + ` ` + suite + " main\n"
	}
	s := line("debian", release) + line("debian", release+"-updates") + line("debian-security", release+"-security")
	if release == "bookworm" {
		s += line("debian", "bookworm-backports")
	}
	return s
}

// privateListsMaxAge is how long private package lists are used before
// apt-get update refreshes them (a forced build always refreshes).
const privateListsMaxAge = 24 * time.Hour

// Values of Options.AptSource.
const (
	AptAuto    = ""        // the host's apt on Debian bookworm, else the private configuration
	AptHost    = "host"    // always the host's apt configuration
	AptPrivate = "private" // always the private bookworm configuration
)

// hostIsBookworm reports whether /etc/os-release names Debian bookworm.
func hostIsBookworm() bool {
	data, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return false
	}
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			fields[k] = strings.Trim(v, `"'`)
		}
	}
	return fields["ID"] == "debian" && fields["VERSION_CODENAME"] == "bookworm"
}

// hostHasSuite reports whether the host's apt package lists include suite
// (a release line of apt-cache policy names it).
func hostHasSuite(ctx context.Context, aptGet, suite string) bool {
	cache := filepath.Join(filepath.Dir(aptGet), "apt-cache")
	out, err := exec.CommandContext(ctx, cache, "policy").Output()
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "release ") {
			continue
		}
		for _, kv := range strings.Split(strings.TrimPrefix(line, "release "), ",") {
			if kv == "n="+suite || kv == "a="+suite {
				return true
			}
		}
	}
	return false
}

// privateRoot is the private apt configuration's directory for a release
// and architecture: apt, apt-trixie; apt-arm64, apt-trixie-arm64.
func privateRoot(cacheDir, release, arch string) string {
	name := "apt"
	if release != DefaultSuite {
		name += "-" + release
	}
	if arch != "" && arch != ArchAMD64 {
		name += "-" + arch
	}
	return filepath.Join(cacheDir, name)
}

// chooseSource sets up the fetcher's apt configuration per opts.AptSource
// for suite.
func (f *fetcher) chooseSource(ctx context.Context, cacheDir string, suite Suite) error {
	root := privateRoot(cacheDir, suite.Release, f.opts.Arch)
	foreign := f.opts.Arch != "" && f.opts.Arch != ArchAMD64
	if foreign {
		// The host's apt resolves another architecture's packages only
		// when it lists them (dpkg --add-architecture and an update).
		f.arch = f.opts.Arch
	}
	switch f.opts.AptSource {
	case AptHost:
		if suite.Name != DefaultSuite && !hostHasSuite(ctx, f.aptGet, suite.Name) {
			return fmt.Errorf("kit: the host's apt has no package lists for %s: add it to /etc/apt/sources.list.d and run 'sudo apt-get update', or use --apt private (a private configuration in %s)", suite.Name, root)
		}
		f.release = suite.Name
		return nil
	case AptAuto:
		if foreign {
			f.opts.progressf("kit: %s packages: using a private apt configuration for %s in %s", f.opts.Arch, suite.Release, root)
			break
		}
		if suite.Name == DefaultSuite && hostIsBookworm() {
			return nil
		}
		if suite.Name != DefaultSuite && hostHasSuite(ctx, f.aptGet, suite.Name) {
			f.release = suite.Name
			return nil
		}
		if suite.Name == DefaultSuite {
			f.opts.progressf("kit: this host is not Debian bookworm: using a private apt configuration for bookworm in %s", root)
		} else {
			f.opts.progressf("kit: the host's apt has no %s package lists: using a private apt configuration for %s in %s", suite.Name, suite.Release, root)
		}
	case AptPrivate:
	default:
		return fmt.Errorf("kit: unknown apt source %q (want %q or %q)", f.opts.AptSource, AptHost, AptPrivate)
	}
	if err := f.usePrivate(ctx, root, suite.Release); err != nil {
		return err
	}
	if suite.Name != DefaultSuite {
		f.release = suite.Name
	}
	return nil
}

// usePrivate writes the private apt configuration under root and refreshes
// its package lists when they are missing, old, or a forced build asks.
func (f *fetcher) usePrivate(ctx context.Context, root, release string) error {
	if _, err := os.Stat(debianKeyring); err != nil {
		return fmt.Errorf("kit: %s is missing: it verifies the Debian archive; install it with 'sudo apt-get install debian-archive-keyring'", debianKeyring)
	}
	for _, d := range []string{"sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("kit: private apt: %w", err)
		}
	}
	stamp := filepath.Join(root, "state", "updated")
	sources := privateSources(release)
	if old, err := os.ReadFile(filepath.Join(root, "sources.list")); err != nil || string(old) != sources {
		os.Remove(stamp) // lists of other sources: refresh them
	}
	for name, body := range map[string]string{"sources.list": sources, "state/status": ""} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("kit: private apt: %w", err)
		}
	}
	f.private = []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(root, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(root, "sources.list.d"),
		"-o", "Dir::Etc::PreferencesParts=" + filepath.Join(root, "preferences.d"),
		"-o", "Dir::Etc::Preferences=" + filepath.Join(root, "preferences"),
		"-o", "Dir::State=" + filepath.Join(root, "state"),
		"-o", "Dir::State::status=" + filepath.Join(root, "state", "status"),
		"-o", "Dir::Cache=" + filepath.Join(root, "cache"),
		"-o", "APT::Architecture=" + archOr(f.opts.Arch),
		"-o", "APT::Architectures=" + archOr(f.opts.Arch),
		"-o", "Acquire::Languages=none",
		// Host hooks and extra index targets (AppStream) do not apply.
		"-o", "APT::Update::Pre-Invoke::=",
		"-o", "APT::Update::Post-Invoke::=",
		"-o", "APT::Update::Post-Invoke-Success::=",
		"-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
		"-o", "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
		"-o", "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
		"-o", "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false",
		"-o", "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false",
	}
	f.source = "private"
	if st, err := os.Stat(stamp); err == nil && !f.opts.Force && time.Since(st.ModTime()) < privateListsMaxAge {
		return nil
	}
	f.opts.progressf("kit: apt-get update (private %s package lists)", release)
	cmd := exec.CommandContext(ctx, f.aptGet, f.aptArgs("update")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return aptError("update (private "+release+" lists in "+root+")", err, stderr.String())
	}
	if strings.Contains(stderr.String(), "W: ") && strings.Contains(stderr.String(), "Failed to fetch") {
		return fmt.Errorf("kit: apt-get update (private %s lists): %s", release, trunc(strings.TrimSpace(stderr.String()), 400))
	}
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		return fmt.Errorf("kit: private apt: %w", err)
	}
	return nil
}
