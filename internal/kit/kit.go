// Package kit builds and caches guest kits: a kernel (bzImage), an initramfs
// and a default kernel command line that boot a small device-like Linux
// guest under QEMU.
//
// The default kit is made from Debian bookworm packages fetched with
// apt-get download: the kernel package that the linux-image-amd64
// metapackage depends on, and busybox-static. Packages are read natively
// (package deb), the modules needed for virtio devices, 9p, virtiofs and the
// ACPI power button are picked by their own .modinfo dependencies (package
// kmod), and the initramfs is written in Go (package initramfs).
//
// Layout of the cache directory (CacheDir):
//
//	debs/            downloaded packages, reused across builds
//	kit/             the default kit: vmlinuz, initrd, initrd.base, config, manifest.json
//	kits/NAME/       a named kit built from another suite (kit build --kernel-suite), same files
//	kit.lock         flock(2) lock serializing builders and users of kit/ and kits/
//	apt/, apt-R/     private apt configurations for bookworm(-backports) and release R
//
// A cached kit is reused only when every file's sha256 matches its manifest.
package kit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// FormatVersion is the kit layout version recorded in manifest.json; a kit
// with another version is rebuilt. 2: init runs /etc/rc.local.
const FormatVersion = 2

// DefaultAppend is the default kernel command line. "quiet" keeps boot
// messages off the slow emulated serial port; KASLR stays enabled (no
// "nokaslr"), as the introspection code must cope with it.
const DefaultAppend = "console=ttyS0 panic=-1 quiet"

// ReadyMarker is the exact line the guest prints on its console once its
// services are up.
const ReadyMarker = "gatevisor-guest: ready"

// ErrNoApt is returned when a kit must be fetched and apt-get is missing.
var ErrNoApt = errors.New("kit: apt-get not found: the default kit is built from Debian packages fetched with apt-get; run on Debian or Ubuntu (apt), or pass your own --kernel and --initrd")

// ErrNotBzImage is wrapped by CheckBzImage's errors.
var ErrNotBzImage = errors.New("not an x86 bzImage kernel")

// Options control EnsureDefault.
type Options struct {
	CacheDir string    // "" means CacheDir()
	Progress io.Writer // human progress messages; nil means quiet
	Force    bool      // rebuild even if a valid kit is cached (packages are re-resolved)
	// AptSource selects the apt configuration that resolves and downloads
	// the packages: AptAuto (the default), AptHost or AptPrivate.
	AptSource string
	// Suite is the Debian suite of a named kit's packages (Suites); ""
	// and DefaultSuite without Name mean the default kit (Ensure).
	Suite string
	// Name names a named kit (ValidName); "" derives it from the suite
	// and the kernel release.
	Name string
	// Arch is the kit's architecture: ArchAMD64 ("") or ArchARM64. An
	// arm64 kit is always a named kit (the default kit is amd64).
	Arch string
	// WriteSymbols writes the symbol table (structure layouts and
	// symbols) of a vmlinux with DWARF to a file, for kits whose kernel
	// has no .BTF (armhf); the caller passes vmi/linux's writer, which
	// this package may not import.
	WriteSymbols func(vmlinux, out string) error
}

// Kit is a bootable guest kit.
type Kit struct {
	Name          string // DefaultName, or a named kit's name
	Dir           string // the kit directory
	Kernel        string // bzImage path
	Initrd        string // initramfs path
	Append        string // default kernel command line
	KernelRelease string // e.g. "6.1.0-56-amd64"
	Manifest      Manifest
}

// CacheDir returns $XDG_CACHE_HOME/gatevisor, or ~/.cache/gatevisor.
func CacheDir() (string, error) {
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "gatevisor"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("kit: no cache directory: set XDG_CACHE_HOME or HOME: %w", err)
	}
	return filepath.Join(home, ".cache", "gatevisor"), nil
}

// DefaultDir returns the directory of the default kit in the cache
// directory (CacheDir when cacheDir is "").
func DefaultDir(cacheDir string) (string, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = CacheDir(); err != nil {
			return "", err
		}
	}
	return filepath.Join(cacheDir, "kit"), nil
}

func (o *Options) cacheDir() (string, error) {
	if o.CacheDir != "" {
		return o.CacheDir, nil
	}
	return CacheDir()
}

func (o *Options) progressf(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// EnsureDefault returns the cached default kit if it is valid (every file's
// checksum matches the manifest), and builds it otherwise, or always when
// opts.Force is set. Concurrent callers, in this and other processes, are
// serialized with a file lock.
func EnsureDefault(ctx context.Context, opts Options) (*Kit, error) {
	opts.Suite, opts.Name, opts.Arch = "", "", "" // the default kit is bookworm's for amd64, always
	dir, err := opts.cacheDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("kit: create cache directory: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, "kit.lock"), &opts)
	if err != nil {
		return nil, err
	}
	defer unlock()
	kitDir, _ := DefaultDir(dir)
	if !opts.Force {
		k, err := Load(kitDir)
		if err == nil {
			return k, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			opts.progressf("kit: cached kit is not usable (%v); rebuilding", err)
		}
	}
	// Left behind by a builder that was killed; the lock is ours now.
	for _, pattern := range []string{"kit.tmp-*", filepath.Join("debs", ".resolve-*")} {
		stale, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, p := range stale {
			os.RemoveAll(p)
		}
	}
	start := time.Now()
	if err := build(ctx, &opts, dir, kitDir); err != nil {
		return nil, err
	}
	k, err := Load(kitDir)
	if err != nil {
		return nil, fmt.Errorf("kit: the kit just built does not verify: %w", err)
	}
	opts.progressf("kit: built %s in %s (kernel %s)", kitDir, time.Since(start).Round(100*time.Millisecond), k.KernelRelease)
	return k, nil
}

// Load reads a kit directory and verifies every file against its manifest.
// A missing kit gives an error wrapping os.ErrNotExist.
func Load(dir string) (*Kit, error) {
	mp, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	m := *mp
	if m.Format != FormatVersion {
		return nil, fmt.Errorf("kit: manifest format %d, this gatevisor uses %d", m.Format, FormatVersion)
	}
	for _, f := range []FileSum{m.Kernel, m.Initrd, m.InitrdBase, m.Config} {
		if err := f.verify(dir); err != nil {
			return nil, err
		}
	}
	if m.Symbols != nil {
		if err := m.Symbols.verify(dir); err != nil {
			return nil, err
		}
	}
	name := DefaultName
	if m.Suite != "" {
		name = filepath.Base(dir)
	}
	return &Kit{
		Name:          name,
		Dir:           dir,
		Kernel:        filepath.Join(dir, m.Kernel.Name),
		Initrd:        filepath.Join(dir, m.Initrd.Name),
		Append:        m.Append,
		KernelRelease: m.KernelRelease,
		Manifest:      m,
	}, nil
}

// readManifest reads dir's manifest.json without verifying the kit.
func readManifest(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("kit: read manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("kit: parse %s: %w", filepath.Join(dir, "manifest.json"), err)
	}
	return &m, nil
}

// FileSum names a file of the kit and its checksum.
type FileSum struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func (f FileSum) verify(dir string) error {
	if f.Name == "" || filepath.Base(f.Name) != f.Name {
		return fmt.Errorf("kit: manifest names a bad file %q", f.Name)
	}
	sum, size, err := sha256File(filepath.Join(dir, f.Name))
	if err != nil {
		return fmt.Errorf("kit: verify: %w", err)
	}
	if size != f.Size || sum != f.SHA256 {
		return fmt.Errorf("kit: %s does not match the manifest (sha256 %s, want %s)", f.Name, sum, f.SHA256)
	}
	return nil
}

func sumOf(dir, name string) (FileSum, error) {
	sum, size, err := sha256File(filepath.Join(dir, name))
	if err != nil {
		return FileSum{}, fmt.Errorf("kit: checksum: %w", err)
	}
	return FileSum{Name: name, Size: size, SHA256: sum}, nil
}

func sha256File(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Manifest records what a kit is made of; it is kit/manifest.json.
type Manifest struct {
	Format         int           `json:"format"`
	Created        time.Time     `json:"created"`
	Suite          string        `json:"suite,omitempty"` // a named kit's suite; the default kit's is DefaultSuite
	Arch           string        `json:"arch,omitempty"`  // a named kit's architecture; the default kit's is amd64
	AptSource      string        `json:"apt_source"`      // "host" or "private" (see Options.AptSource)
	Packages       []PackageInfo `json:"packages"`
	KernelRelease  string        `json:"kernel_release"`
	Append         string        `json:"append"`
	Kernel         FileSum       `json:"kernel"`
	Initrd         FileSum       `json:"initrd"`      // what guests boot: initrd.base plus ExtraFiles
	InitrdBase     FileSum       `json:"initrd_base"` // the initramfs as built from the packages
	Config         FileSum       `json:"config"`      // the kernel's /boot/config-*
	Compression    string        `json:"initrd_compression"`
	Features       []Feature     `json:"features"`
	Modules        []Module      `json:"modules"` // in load order
	BusyboxApplets int           `json:"busybox_applets"`
	ExtraFiles     []ExtraFile   `json:"extra_files,omitempty"`

	// Symbols is the kernel's symbol table (an ISF from its -dbg
	// package's DWARF) for a kernel without .BTF: armhf kits.
	Symbols *FileSum `json:"symbols,omitempty"`
}

// PackageInfo is one Debian package the kit was made from.
type PackageInfo struct {
	Role     string `json:"role"` // "kernel-meta", "kernel" or "busybox"
	Name     string `json:"name"`
	Version  string `json:"version"`
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
}

// Feature is a guest capability the kit provides and how: built into the
// kernel ("y") or as a module ("m").
type Feature struct {
	Name   string `json:"name"`
	Config string `json:"config"`
	Value  string `json:"value"`
	Module string `json:"module"`
}

// Module is one kernel module in the initramfs.
type Module struct {
	Name    string   `json:"name"`
	Path    string   `json:"path"` // inside the initramfs
	Depends []string `json:"depends,omitempty"`
	SHA256  string   `json:"sha256"`
}

// ExtraFile is a file added with `kit build --add`.
type ExtraFile struct {
	Host   string `json:"host"`
	Guest  string `json:"guest"`
	SHA256 string `json:"sha256,omitempty"` // for regular files
}
