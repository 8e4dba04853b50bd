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
// configuration under <cache>/apt that lists only bookworm, so the kit is the
// same everywhere; that needs no root and no change to the host's apt, only
// the Debian archive keyring to verify the archive's signatures.

// debianKeyring is the keyring the private sources trust.
const debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// bookwormSources is the private sources.list.
const bookwormSources = `deb [signed-by=` + debianKeyring + `] http://deb.debian.org/debian bookworm main
deb [signed-by=` + debianKeyring + `] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=` + debianKeyring + `] http://deb.debian.org/debian-security bookworm-security main
`

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

// chooseSource sets up the fetcher's apt configuration per opts.AptSource.
func (f *fetcher) chooseSource(ctx context.Context, cacheDir string) error {
	switch f.opts.AptSource {
	case AptHost:
		return nil
	case AptAuto:
		if hostIsBookworm() {
			return nil
		}
		f.opts.progressf("kit: this host is not Debian bookworm: using a private apt configuration for bookworm in %s", filepath.Join(cacheDir, "apt"))
	case AptPrivate:
	default:
		return fmt.Errorf("kit: unknown apt source %q (want %q or %q)", f.opts.AptSource, AptHost, AptPrivate)
	}
	return f.usePrivate(ctx, filepath.Join(cacheDir, "apt"))
}

// usePrivate writes the private apt configuration under root and refreshes
// its package lists when they are missing, old, or a forced build asks.
func (f *fetcher) usePrivate(ctx context.Context, root string) error {
	if _, err := os.Stat(debianKeyring); err != nil {
		return fmt.Errorf("kit: %s is missing: it verifies the Debian archive; install it with 'sudo apt-get install debian-archive-keyring'", debianKeyring)
	}
	for _, d := range []string{"sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("kit: private apt: %w", err)
		}
	}
	for name, body := range map[string]string{"sources.list": bookwormSources, "state/status": ""} {
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
		"-o", "APT::Architecture=amd64",
		"-o", "APT::Architectures=amd64",
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
	stamp := filepath.Join(root, "state", "updated")
	if st, err := os.Stat(stamp); err == nil && !f.opts.Force && time.Since(st.ModTime()) < privateListsMaxAge {
		return nil
	}
	f.opts.progressf("kit: apt-get update (private bookworm package lists)")
	cmd := exec.CommandContext(ctx, f.aptGet, f.aptArgs("update")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return aptError("update (private bookworm lists in "+root+")", err, stderr.String())
	}
	if strings.Contains(stderr.String(), "W: ") && strings.Contains(stderr.String(), "Failed to fetch") {
		return fmt.Errorf("kit: apt-get update (private bookworm lists): %s", trunc(strings.TrimSpace(stderr.String()), 400))
	}
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		return fmt.Errorf("kit: private apt: %w", err)
	}
	return nil
}
