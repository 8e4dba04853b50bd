package kit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Named kits: kits built from another Debian suite than the default kit's
// (kit build --kernel-suite bookworm-backports), each in kits/NAME of the
// cache directory, its manifest recording the suite. The default kit is
// untouched by them: it stays in kit/, built and verified by EnsureDefault.

// DefaultName is the name of the default kit in listings and for --kit.
const DefaultName = "default"

// ErrUnknownKit is what Find's error for a name no kit has Is.
var ErrUnknownKit = errors.New("kit: no such kit")

// unknownKitError is Find's error for a name no kit has: its message says
// what to do, and it Is ErrUnknownKit.
type unknownKitError struct{ msg string }

func (e *unknownKitError) Error() string        { return e.msg }
func (e *unknownKitError) Is(target error) bool { return target == ErrUnknownKit }

func unknownKit(format string, args ...any) error {
	return &unknownKitError{msg: fmt.Sprintf(format, args...)}
}

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9._+-]{0,79}$`)

// ValidName checks a named kit's name: lower-case letters, digits and
// . _ + -, at most 80, not DefaultName.
func ValidName(name string) error {
	if name == DefaultName || !validName.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("kit: bad kit name %q: use a-z 0-9 . _ + - (at most 80, not %q), or leave out --name to derive it from the suite and the kernel", name, DefaultName)
	}
	return nil
}

// KitsDir returns the directory of the named kits in cacheDir (CacheDir when "").
func KitsDir(cacheDir string) (string, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = CacheDir(); err != nil {
			return "", err
		}
	}
	return filepath.Join(cacheDir, "kits"), nil
}

// DerivedName is the name of a kit of suite whose kernel is release, e.g.
// bookworm-backports-6.12.57+deb12-amd64.
func DerivedName(suite, release string) string {
	return suite + "-" + release
}

// Ensure returns the kit opts asks for: the default kit (EnsureDefault)
// when neither Suite (other than DefaultSuite) nor Name is set, else the
// named kit. A valid named kit of the same name, or with no Name of the
// same suite, is reused unless opts.Force is set.
func Ensure(ctx context.Context, opts Options) (*Kit, error) {
	if err := ValidArch(opts.Arch); err != nil {
		return nil, err
	}
	if opts.Arch == ArchAMD64 {
		opts.Arch = ""
	}
	if opts.Name == "" && (opts.Suite == "" || opts.Suite == DefaultSuite) && opts.Arch == "" {
		return EnsureDefault(ctx, opts)
	}
	suite, err := LookupSuite(opts.Suite)
	if err != nil {
		return nil, err
	}
	opts.Suite = suite.Name
	if opts.Name != "" {
		if err := ValidName(opts.Name); err != nil {
			return nil, err
		}
	}
	dir, err := opts.cacheDir()
	if err != nil {
		return nil, err
	}
	kitsDir, _ := KitsDir(dir)
	if err := os.MkdirAll(kitsDir, 0o755); err != nil {
		return nil, fmt.Errorf("kit: create %s: %w", kitsDir, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, "kit.lock"), &opts)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !opts.Force {
		if k := reusable(kitsDir, &opts); k != nil {
			return k, nil
		}
	}
	stale, _ := filepath.Glob(filepath.Join(dir, "kit.tmp-*"))
	for _, p := range stale {
		os.RemoveAll(p)
	}
	start := time.Now()
	tmp, m, err := buildTemp(ctx, &opts, dir)
	if tmp != "" {
		defer os.RemoveAll(tmp)
	}
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = DerivedName(suite.Name, m.KernelRelease)
		if err := ValidName(name); err != nil {
			return nil, fmt.Errorf("kit: kernel release %q gives no valid kit name: pass --name: %w", m.KernelRelease, err)
		}
	}
	kitDir := filepath.Join(kitsDir, name)
	if err := install(tmp, kitDir); err != nil {
		return nil, err
	}
	k, err := Load(kitDir)
	if err != nil {
		return nil, fmt.Errorf("kit: the kit just built does not verify: %w", err)
	}
	opts.progressf("kit: built %s in %s (kit %s, kernel %s from %s)", kitDir, time.Since(start).Round(100*time.Millisecond), k.Name, k.KernelRelease, suite.Name)
	return k, nil
}

// archOr is arch, or ArchAMD64 when it is "".
func archOr(arch string) string {
	if arch == "" {
		return ArchAMD64
	}
	return arch
}

// reusable returns the valid named kit opts would build: the one named
// opts.Name, of opts.Suite; without a name, the newest valid kit of the suite.
// Preconditions: the kit lock is held.
func reusable(kitsDir string, opts *Options) *Kit {
	if opts.Name != "" {
		k, err := Load(filepath.Join(kitsDir, opts.Name))
		switch {
		case err == nil && k.Manifest.Suite == opts.Suite && k.Arch() == archOr(opts.Arch):
			return k
		case err == nil:
			opts.progressf("kit: kit %s is from %s for %s, not %s for %s: rebuilding it", opts.Name, k.Manifest.Suite, k.Arch(), opts.Suite, archOr(opts.Arch))
		case !errors.Is(err, os.ErrNotExist):
			opts.progressf("kit: cached kit %s is not usable (%v); rebuilding", opts.Name, err)
		}
		return nil
	}
	var best *Kit
	for _, k := range loadNamed(kitsDir) {
		if k.err == nil && k.kit.Manifest.Suite == opts.Suite && k.kit.Arch() == archOr(opts.Arch) && (best == nil || k.kit.Manifest.Created.After(best.Manifest.Created)) {
			best = k.kit
		}
	}
	return best
}

type namedKit struct {
	name string
	dir  string
	kit  *Kit  // nil when the manifest cannot be read
	err  error // why the kit does not verify
	man  *Manifest
}

// loadNamed loads every directory of kitsDir, sorted by name.
func loadNamed(kitsDir string) []namedKit {
	ents, _ := os.ReadDir(kitsDir)
	var out []namedKit
	for _, e := range ents {
		if !e.IsDir() || ValidName(e.Name()) != nil {
			continue
		}
		dir := filepath.Join(kitsDir, e.Name())
		nk := namedKit{name: e.Name(), dir: dir}
		nk.kit, nk.err = Load(dir)
		if nk.kit != nil {
			nk.man = &nk.kit.Manifest
		} else if m, err := readManifest(dir); err == nil {
			nk.man = m
		}
		out = append(out, nk)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Find returns the built kit named name in cacheDir (CacheDir when ""),
// verified: DefaultName or "" for the default kit, a named kit's name, or
// a suite of which exactly one kit is built. It never builds a kit.
func Find(cacheDir, name string) (*Kit, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = CacheDir(); err != nil {
			return nil, err
		}
	}
	if name == "" || name == DefaultName {
		dir, _ := DefaultDir(cacheDir)
		k, err := Load(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil, unknownKit("kit: the default kit is not built: run 'gatevisor kit build'")
		}
		if err != nil {
			return nil, fmt.Errorf("kit: the default kit does not verify (%v): run 'gatevisor kit build' to rebuild it", err)
		}
		return k, nil
	}
	kitsDir, _ := KitsDir(cacheDir)
	all := loadNamed(kitsDir)
	var bySuite []namedKit
	for _, nk := range all {
		if nk.name == name {
			if nk.err != nil {
				suite := "SUITE"
				if nk.man != nil && nk.man.Suite != "" {
					suite = nk.man.Suite
				}
				return nil, fmt.Errorf("kit: kit %s does not verify (%v): rebuild it with 'gatevisor kit build --kernel-suite %s --name %s --force'", name, nk.err, suite, name)
			}
			return nk.kit, nil
		}
		if nk.man != nil && nk.man.Suite == name {
			bySuite = append(bySuite, nk)
		}
	}
	if ValidName(name) != nil {
		return nil, unknownKit("kit: bad kit name %q: 'gatevisor kit ls' lists the kits", name)
	}
	switch len(bySuite) {
	case 1:
		if bySuite[0].err != nil {
			return nil, fmt.Errorf("kit: kit %s (of %s) does not verify (%v): rebuild it with 'gatevisor kit build --kernel-suite %s --force'", bySuite[0].name, name, bySuite[0].err, name)
		}
		return bySuite[0].kit, nil
	case 0:
		hint := "'gatevisor kit ls' lists the kits"
		if _, err := LookupSuite(name); err == nil {
			hint = fmt.Sprintf("build it with 'gatevisor kit build --kernel-suite %s'; 'gatevisor kit ls' lists the kits", name)
		}
		return nil, unknownKit("kit: no kit named %q: %s", name, hint)
	}
	var names []string
	for _, nk := range bySuite {
		names = append(names, nk.name)
	}
	return nil, unknownKit("kit: %d kits of %s (%s): name one ('gatevisor kit ls' lists them)", len(bySuite), name, strings.Join(names, ", "))
}

// Entry is one kit of List.
type Entry struct {
	Name          string `json:"name"`
	Dir           string `json:"dir"`
	Arch          string `json:"arch"`
	KernelRelease string `json:"kernel_release"`
	Suite         string `json:"suite"`
	Size          int64  `json:"size"` // bytes of the kit's files
	Default       bool   `json:"default"`
	Verified      bool   `json:"verified"`
	Error         string `json:"error,omitempty"` // why it does not verify
}

// List returns the kits built in cacheDir (CacheDir when ""): the default
// kit first, when built, then the named kits by name. Each is verified
// against its manifest (which reads every file).
func List(cacheDir string) ([]Entry, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = CacheDir(); err != nil {
			return nil, err
		}
	}
	var out []Entry
	defDir, _ := DefaultDir(cacheDir)
	if _, err := os.Stat(filepath.Join(defDir, "manifest.json")); err == nil {
		k, err := Load(defDir)
		e := Entry{Name: DefaultName, Dir: defDir, Arch: "amd64", Suite: DefaultSuite, Default: true, Verified: err == nil}
		m := (*Manifest)(nil)
		if k != nil {
			m = &k.Manifest
		} else {
			m, _ = readManifest(defDir)
			e.Error = err.Error()
		}
		out = append(out, fillEntry(e, m))
	}
	kitsDir, _ := KitsDir(cacheDir)
	for _, nk := range loadNamed(kitsDir) {
		e := Entry{Name: nk.name, Dir: nk.dir, Verified: nk.err == nil}
		if nk.err != nil {
			e.Error = nk.err.Error()
		}
		out = append(out, fillEntry(e, nk.man))
	}
	return out, nil
}

func fillEntry(e Entry, m *Manifest) Entry {
	if m == nil {
		return e
	}
	e.KernelRelease = m.KernelRelease
	if m.Suite != "" {
		e.Suite = m.Suite
	}
	if m.Arch != "" {
		e.Arch = m.Arch
	}
	for _, f := range []FileSum{m.Kernel, m.Initrd, m.InitrdBase, m.Config} {
		if f.Name != "initrd" || m.Initrd.SHA256 != m.InitrdBase.SHA256 {
			e.Size += f.Size // initrd is a hard link of initrd.base until --add
		}
	}
	return e
}
