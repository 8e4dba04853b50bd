package kit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/kit/deb"
	"github.com/gatevisor/gatevisor/internal/kit/initramfs"
	"github.com/gatevisor/gatevisor/internal/kit/kmod"
)

// wantFeatures are the guest capabilities the default kit provides: each
// kernel config symbol must be built in (=y) or a module (=m); modules are
// loaded at boot with their dependencies.
var wantFeatures = []Feature{
	{Name: "virtio-pci", Config: "CONFIG_VIRTIO_PCI", Module: "virtio_pci"},
	{Name: "virtio-net", Config: "CONFIG_VIRTIO_NET", Module: "virtio_net"},
	{Name: "virtio-blk", Config: "CONFIG_VIRTIO_BLK", Module: "virtio_blk"},
	{Name: "virtio-console", Config: "CONFIG_VIRTIO_CONSOLE", Module: "virtio_console"},
	{Name: "9p", Config: "CONFIG_9P_FS", Module: "9p"},
	{Name: "9p-virtio", Config: "CONFIG_NET_9P_VIRTIO", Module: "9pnet_virtio"},
	// 9P over a file descriptor: the file gate's transport (a virtio-serial port).
	{Name: "9p-fd", Config: "CONFIG_NET_9P_FD", Module: "9pnet_fd"},
	{Name: "virtiofs", Config: "CONFIG_VIRTIO_FS", Module: "virtiofs"},
	// The ACPI power button and evdev let acpid see QMP system_powerdown.
	{Name: "acpi-power-button", Config: "CONFIG_ACPI_BUTTON", Module: "button"},
	{Name: "input-evdev", Config: "CONFIG_INPUT_EVDEV", Module: "evdev"},
}

// initrdCompression is how the base initramfs is stored: "none" or "gzip".
// Measured under TCG with TestBootTimeCompression (GATEVISOR_KIT_BENCH=N),
// the guest kernel unpacks the 3.8 MiB uncompressed archive in about 0.16 s
// and the 1.5 MiB gzip one in about 0.29 s on an idle host (0.28 s and
// 0.77 s on a loaded one); the whole boot differs by less than run-to-run
// noise, and QEMU copies the extra megabytes in no measurable time. So the
// archive stays uncompressed.
var initrdCompression = "none"

// The kernel package the metapackage depends on.
var kernelPackage = regexp.MustCompile(`^linux-image-[0-9][0-9a-z.+-]*$`)

const (
	maxKernelImage = 64 << 20
	maxConfig      = 4 << 20
	maxBusybox     = 16 << 20
)

// build fetches the packages and writes a fresh default kit into kitDir.
func build(ctx context.Context, opts *Options, cacheDir, kitDir string) error {
	tmp, _, err := buildTemp(ctx, opts, cacheDir)
	if tmp != "" {
		defer os.RemoveAll(tmp)
	}
	if err != nil {
		return err
	}
	return install(tmp, kitDir)
}

// install moves a kit built in tmp to kitDir, replacing what is there.
func install(tmp, kitDir string) error {
	if err := os.RemoveAll(kitDir); err != nil {
		return fmt.Errorf("kit: remove old kit: %w", err)
	}
	if err := os.Rename(tmp, kitDir); err != nil {
		return fmt.Errorf("kit: install kit: %w", err)
	}
	if err := os.Chmod(kitDir, 0o755); err != nil {
		return fmt.Errorf("kit: %w", err)
	}
	return nil
}

// buildTemp fetches the packages of opts.Suite (the default kit's when it
// is empty) and writes a kit into a new directory under cacheDir, which it
// returns for the caller to install or remove (also on error, when not "").
func buildTemp(ctx context.Context, opts *Options, cacheDir string) (string, *Manifest, error) {
	suite, err := LookupSuite(opts.Suite)
	if err != nil {
		return "", nil, err
	}
	f, err := newFetcher(filepath.Join(cacheDir, "debs"), opts)
	if err != nil {
		return "", nil, err
	}
	if err := ValidArch(opts.Arch); err != nil {
		return "", nil, err
	}
	if err := f.chooseSource(ctx, cacheDir, suite); err != nil {
		return "", nil, err
	}
	from := ""
	if suite.Name != DefaultSuite {
		from = " from " + suite.Name
	}
	arch, err := lookupArch(opts.Arch)
	if err != nil {
		return "", nil, err
	}
	if arch.name != ArchAMD64 {
		from += " for " + arch.name
	}
	opts.progressf("kit: resolving %s%s and busybox-static with apt (%s configuration)", arch.meta, from, f.source)
	meta, err := f.resolve(ctx, arch.meta)
	if err != nil {
		return "", nil, err
	}
	if err := f.fetch(ctx, meta); err != nil {
		return "", nil, err
	}
	metaCtl, err := readControl(meta.Path)
	if err != nil {
		return "", nil, err
	}
	kspec, err := kernelDependency(metaCtl)
	if err != nil {
		return "", nil, err
	}
	kern, err := f.resolve(ctx, kspec)
	if err != nil {
		return "", nil, err
	}
	bb, err := f.resolve(ctx, "busybox-static")
	if err != nil {
		return "", nil, err
	}
	for _, d := range []debFile{kern, bb} {
		if err := f.fetch(ctx, d); err != nil {
			return "", nil, err
		}
	}
	var pkgs []PackageInfo
	for _, p := range []struct {
		role string
		d    debFile
	}{{"kernel-meta", meta}, {"kernel", kern}, {"busybox", bb}} {
		ctl, err := readControl(p.d.Path)
		if err != nil {
			return "", nil, err
		}
		pkgs = append(pkgs, PackageInfo{Role: p.role, Name: ctl["Package"], Version: ctl["Version"],
			Filename: p.d.Filename, Size: p.d.Size, SHA256: p.d.SHA256})
	}

	tmp, err := os.MkdirTemp(cacheDir, "kit.tmp-")
	if err != nil {
		return "", nil, fmt.Errorf("kit: create build directory: %w", err)
	}

	opts.progressf("kit: reading %s", kern.Filename)
	kx, err := extractKernel(ctx, kern.Path, tmp, arch.features)
	if err != nil {
		return tmp, nil, err
	}
	switch arch.name {
	case ArchARM64:
		err = prepareARM64Image(filepath.Join(tmp, "vmlinuz"))
	case ArchARMHF:
		err = checkZImage(filepath.Join(tmp, "vmlinuz"))
	default:
		err = CheckBzImage(filepath.Join(tmp, "vmlinuz"))
	}
	if err != nil {
		return tmp, nil, fmt.Errorf("kit: %s: %w", kern.Filename, err)
	}
	opts.progressf("kit: reading %s", bb.Filename)
	bbBin, err := readBusybox(bb.Path)
	if err != nil {
		return tmp, nil, err
	}
	applets, err := busyboxApplets(bbBin)
	if err != nil {
		return tmp, nil, err
	}

	g := &guestTree{console: arch.console, release: kx.release, busybox: bbBin, applets: applets, modules: kx.modules, modData: kx.modData}
	if err := writeInitrd(filepath.Join(tmp, "initrd.base"), g, initrdCompression); err != nil {
		return tmp, nil, err
	}
	if err := os.Link(filepath.Join(tmp, "initrd.base"), filepath.Join(tmp, "initrd")); err != nil {
		return tmp, nil, fmt.Errorf("kit: link initrd: %w", err)
	}
	m := Manifest{
		Format:         FormatVersion,
		AptSource:      f.source,
		Created:        time.Now().UTC().Truncate(time.Second),
		Packages:       pkgs,
		KernelRelease:  kx.release,
		Append:         arch.append,
		Compression:    initrdCompression,
		Features:       kx.features,
		Modules:        kx.modules,
		BusyboxApplets: len(applets),
	}
	if suite.Name != DefaultSuite || arch.name != ArchAMD64 {
		// Only named kits say so: the default kit's manifest stays as it
		// has always been.
		m.Suite, m.Arch = suite.Name, arch.name
	}
	for _, x := range []struct {
		dst  *FileSum
		name string
	}{{&m.Kernel, "vmlinuz"}, {&m.Initrd, "initrd"}, {&m.InitrdBase, "initrd.base"}, {&m.Config, "config"}} {
		if *x.dst, err = sumOf(tmp, x.name); err != nil {
			return tmp, nil, err
		}
	}
	if arch.name == ArchARMHF {
		sum, dbg, err := armhfSymbols(ctx, f, opts, kern, tmp)
		if err != nil {
			return tmp, nil, err
		}
		m.Symbols = &sum
		m.Packages = append(m.Packages, dbg)
	}
	if err := writeManifest(tmp, &m); err != nil {
		return tmp, nil, err
	}
	return tmp, &m, nil
}

func writeManifest(dir string, m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("kit: encode manifest: %w", err)
	}
	tmp := filepath.Join(dir, "manifest.json.tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("kit: write manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "manifest.json")); err != nil {
		return fmt.Errorf("kit: write manifest: %w", err)
	}
	return nil
}

func readControl(path string) (deb.Control, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kit: %w", err)
	}
	defer f.Close()
	c, err := deb.ReadControl(f, deb.DefaultLimits)
	if err != nil {
		return nil, fmt.Errorf("kit: %s: %w", filepath.Base(path), err)
	}
	return c, nil
}

// kernelDependency finds the real kernel package in the metapackage's
// Depends, as "name=version" when the dependency pins a version.
func kernelDependency(ctl deb.Control) (string, error) {
	rels, err := deb.ParseRelations(ctl["Depends"])
	if err != nil {
		return "", fmt.Errorf("kit: %s Depends: %w", ctl["Package"], err)
	}
	for _, rel := range rels {
		for _, d := range rel {
			if !kernelPackage.MatchString(d.Name) {
				continue
			}
			if d.Op == "=" {
				return d.Name + "=" + d.Version, nil
			}
			return d.Name, nil
		}
	}
	return "", fmt.Errorf("kit: %s %s depends on no linux-image-* package (Depends: %q)", ctl["Package"], ctl["Version"], ctl["Depends"])
}

// readBusybox reads bin/busybox from the package, or usr/bin/busybox
// (Debian trixie's merged /usr).
func readBusybox(path string) ([]byte, error) {
	var first error
	for _, name := range []string{"bin/busybox", "usr/bin/busybox"} {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("kit: %w", err)
		}
		b, err := deb.ReadFile(f, deb.DefaultLimits, deb.DataMember, name, maxBusybox)
		f.Close()
		if err == nil {
			return b, nil
		}
		if first == nil {
			first = err
		}
		if !errors.Is(err, deb.ErrFormat) {
			break
		}
	}
	return nil, fmt.Errorf("kit: %s: %w", filepath.Base(path), first)
}

// kernelExtract is what the kit takes from the kernel package.
type kernelExtract struct {
	release  string
	features []Feature
	modules  []Module // load order
	modData  map[string][]byte
}

// modFile is one module seen in the package.
type modFile struct {
	path    string // cleaned tar name, e.g. lib/modules/R/kernel/fs/9p/9p.ko
	depends []string
}

// extractKernel reads the kernel package once, writing vmlinuz and config
// into dir and collecting every module's .modinfo. It keeps the content of
// the modules known to be needed so far; should a dependency appear in the
// archive before the module that needs it, a second pass fetches it.
func extractKernel(ctx context.Context, debPath, dir string, wantFeatures []Feature) (*kernelExtract, error) {
	var (
		release string
		cfg     map[string]string
		builtin map[string]bool
		mods    = map[string]modFile{}
		data    = map[string][]byte{}
		wanted  = map[string]bool{}
		roots   []string
	)
	// want marks m and its known dependencies as needed.
	var want func(m string)
	want = func(m string) {
		if wanted[m] {
			return
		}
		wanted[m] = true
		for _, d := range mods[m].depends {
			want(d)
		}
	}
	walk := func(fn deb.WalkFunc) error {
		f, err := os.Open(debPath)
		if err != nil {
			return fmt.Errorf("kit: %w", err)
		}
		defer f.Close()
		if err := deb.Walk(f, deb.DefaultLimits, deb.DataMember, fn); err != nil {
			return fmt.Errorf("kit: %s: %w", filepath.Base(debPath), err)
		}
		return nil
	}
	err := walk(func(h *tar.Header, name string, r io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		name = modulesPath(name)
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		switch {
		case strings.HasPrefix(name, "boot/vmlinuz-"):
			rel := strings.TrimPrefix(name, "boot/vmlinuz-")
			if release != "" && release != rel {
				return fmt.Errorf("two kernels in one package: %s and %s", release, rel)
			}
			release = rel
			return copyToFile(filepath.Join(dir, "vmlinuz"), r, maxKernelImage)
		case strings.HasPrefix(name, "boot/config-"):
			b, err := readAllMax(r, maxConfig)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			cfg = kmod.ParseConfig(b)
			if err := os.WriteFile(filepath.Join(dir, "config"), b, 0o644); err != nil {
				return fmt.Errorf("write config: %w", err)
			}
			for _, ft := range wantFeatures {
				if cfg[ft.Config] == "m" {
					roots = append(roots, ft.Module)
					want(ft.Module)
				}
			}
		case strings.HasPrefix(name, "lib/modules/") && strings.HasSuffix(name, "/modules.builtin"):
			b, err := readAllMax(r, 4<<20)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			builtin = kmod.ParseBuiltin(b)
		case strings.HasPrefix(name, "lib/modules/"):
			modName, ok := kmod.NameFromPath(name)
			if !ok {
				return nil
			}
			raw, err := readAllMax(r, kmod.MaxModule)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			elfImg, err := kmod.Decompress(name, raw, kmod.MaxModule)
			if err != nil {
				return err
			}
			info, err := kmod.ReadModinfo(elfImg)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if info.Name != "" && info.Name != modName {
				return fmt.Errorf("%s: .modinfo says name=%s", name, info.Name)
			}
			if prev, dup := mods[modName]; dup {
				return fmt.Errorf("module %s twice: %s and %s", modName, prev.path, name)
			}
			if len(mods) >= 20000 {
				return fmt.Errorf("more than 20000 modules")
			}
			mods[modName] = modFile{path: name, depends: info.Depends}
			if wanted[modName] {
				wanted[modName] = false // re-mark with the dependencies now known
				want(modName)
				data[modName] = raw
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if release == "" {
		return nil, fmt.Errorf("kit: %s has no boot/vmlinuz-*", filepath.Base(debPath))
	}
	if cfg == nil {
		return nil, fmt.Errorf("kit: %s has no boot/config-*", filepath.Base(debPath))
	}
	if builtin == nil {
		return nil, fmt.Errorf("kit: %s has no modules.builtin", filepath.Base(debPath))
	}
	var features []Feature
	for _, ft := range wantFeatures {
		ft.Value = cfg[ft.Config]
		switch ft.Value {
		case "y":
			ft.Module = "" // built into the kernel image
		case "m":
		default:
			return nil, fmt.Errorf("kit: kernel %s lacks %s (%s=%q): it cannot run the default guest", release, ft.Name, ft.Config, ft.Value)
		}
		features = append(features, ft)
	}
	deps := map[string][]string{}
	for n, m := range mods {
		deps[n] = m.depends
	}
	order, err := kmod.Order(roots, deps, builtin)
	if err != nil {
		return nil, fmt.Errorf("kit: kernel %s: %w", release, err)
	}
	var missing []string
	for _, n := range order {
		if data[n] == nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		need := map[string]bool{}
		for _, n := range missing {
			need[n] = true
		}
		err := walk(func(h *tar.Header, name string, r io.Reader) error {
			name = modulesPath(name)
			n, ok := kmod.NameFromPath(name)
			if !ok || !need[n] || h.Typeflag != tar.TypeReg || name != mods[n].path {
				return nil
			}
			raw, err := readAllMax(r, kmod.MaxModule)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			data[n] = raw
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	kx := &kernelExtract{release: release, features: features, modData: map[string][]byte{}}
	prefix := "lib/modules/" + release + "/"
	for _, n := range order {
		m := mods[n]
		if !strings.HasPrefix(m.path, prefix) {
			return nil, fmt.Errorf("kit: module %s is at %s, outside %s", n, m.path, prefix)
		}
		if data[n] == nil {
			return nil, fmt.Errorf("kit: module %s: content not found on the second pass", n)
		}
		content, path := data[n], m.path
		if !strings.HasSuffix(path, ".ko") {
			// Compressed in the package (Debian's 6.12 ships .ko.xz): the
			// initramfs holds the ELF image, so that insmod hands the
			// kernel the image itself (busybox's finit_module of a .ko.xz
			// fails, and it retries with init_module) and the kernel
			// gate's hash of the image about to be loaded is the
			// manifest's. The default kit's modules are plain .ko files.
			elfImg, err := kmod.Decompress(path, content, kmod.MaxModule)
			if err != nil {
				return nil, fmt.Errorf("kit: module %s: %w", n, err)
			}
			content, path = elfImg, path[:strings.LastIndex(path, ".ko")+len(".ko")]
		}
		sum := sha256.Sum256(content)
		var d []string
		for _, x := range m.depends {
			if !builtin[x] {
				d = append(d, x)
			}
		}
		kx.modules = append(kx.modules, Module{Name: n, Path: path, Depends: d, SHA256: hex.EncodeToString(sum[:])})
		kx.modData[n] = content
	}
	return kx, nil
}

// modulesPath maps a package's usr/lib/modules/ (Debian trixie's merged
// /usr) to lib/modules/, where the kit's guest has them (bookworm's
// packages use lib/modules/ already).
func modulesPath(name string) string {
	if rest, ok := strings.CutPrefix(name, "usr/lib/modules/"); ok {
		return "lib/modules/" + rest
	}
	return name
}

func readAllMax(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return b, nil
}

func copyToFile(path string, r io.Reader, max int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Base(path), err)
	}
	n, err := io.Copy(f, io.LimitReader(r, max+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if n > max {
		return fmt.Errorf("%s is larger than %d bytes", filepath.Base(path), max)
	}
	return nil
}

// writeInitrd writes the guest tree as a newc archive to path, compressed as
// compression says ("none" or "gzip").
func writeInitrd(path string, g *guestTree, compression string) error {
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	switch compression {
	case "none":
	case "gzip":
		zw = gzip.NewWriter(&buf)
		w = zw
	default:
		return fmt.Errorf("kit: unknown initrd compression %q", compression)
	}
	if err := g.write(initramfs.NewWriter(w)); err != nil {
		return fmt.Errorf("kit: build initramfs: %w", err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return fmt.Errorf("kit: compress initramfs: %w", err)
		}
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("kit: write initramfs: %w", err)
	}
	return nil
}
