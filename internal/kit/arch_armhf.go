package kit

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/gatevisor/gatevisor/internal/armimage"
	"github.com/gatevisor/gatevisor/internal/kit/deb"
)

// ARMHFMeta is the armhf kits' kernel metapackage: Debian's armmp flavour
// (ARMv7 multiplatform, short-descriptor page tables). It runs on every
// ARMv7-A core, those without LPAE too (Cortex-A5/A8/A9, most of the
// 32-bit devices gatevisor targets), while armmp-lpae needs LPAE
// (Cortex-A7/A15/A17). Introspection walks both formats (vmi's
// ARMv7 walker detects TTBCR.EAE), so an armmp-lpae kernel differs only in
// the table format it reads.
const ARMHFMeta = "linux-image-armmp"

// ARMHFAppend is the armhf kits' kernel command line: the virt machine's
// first serial port is a PL011 (ttyAMA0), as on arm64.
const ARMHFAppend = "console=ttyAMA0 panic=-1 quiet"

// armhfFeatures are arm64Features: the same virt board, the same devices.
// Whether each is built in or a module is read from the kernel's config
// and modules at build time, and init loads the modules, as for x86.
var armhfFeatures = arm64Features

// checkZImage checks that path is a little-endian ARM zImage, which
// qemu-system-arm boots as it is (the image decompresses itself);
// introspection reads kallsyms from the image's payload (armimage).
func checkZImage(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	if _, err := armimage.ParseZImage(b); err != nil {
		return fmt.Errorf("kit: kernel: %w", err)
	}
	return nil
}

// SymbolsFile is the name of a kit's symbol table (Manifest.Symbols).
const SymbolsFile = "symbols.json"

// SymbolsPath is the kit's symbol table, "" when it has none.
func (k *Kit) SymbolsPath() string {
	if k.Manifest.Symbols == nil {
		return ""
	}
	return filepath.Join(k.Dir, k.Manifest.Symbols.Name)
}

// armhfSymbols writes the armhf kernel's symbol table into dir: Debian's
// armmp kernel has no .BTF and its kallsyms no data symbols, so the
// structure layouts and data symbols introspection needs come from the
// kernel's -dbg package (linux-image-RELEASE-dbg of the same version,
// ~620 MB, downloaded once into the package cache): its vmlinux is
// extracted (streamed from the package, never all in memory) and
// opts.WriteSymbols converts its DWARF (about a minute and 1.7 GB of
// memory on Debian's 6.1). It returns the table's checksum and the
// package's record.
func armhfSymbols(ctx context.Context, f *fetcher, opts *Options, kern debFile, dir string) (FileSum, PackageInfo, error) {
	if opts.WriteSymbols == nil {
		return FileSum{}, PackageInfo{}, fmt.Errorf("kit: an armhf kit needs a symbol-table writer (Options.WriteSymbols)")
	}
	ctl, err := readControl(kern.Path)
	if err != nil {
		return FileSum{}, PackageInfo{}, err
	}
	spec := ctl["Package"] + "-dbg=" + ctl["Version"]
	opts.progressf("kit: resolving %s (the kernel's DWARF: armmp has no .BTF)", spec)
	dbg, err := f.resolve(ctx, spec)
	if err != nil {
		return FileSum{}, PackageInfo{}, err
	}
	if err := f.fetch(ctx, dbg); err != nil {
		return FileSum{}, PackageInfo{}, err
	}
	opts.progressf("kit: extracting vmlinux from %s", dbg.Filename)
	vmlinux := filepath.Join(dir, "vmlinux.dbg")
	defer os.Remove(vmlinux)
	want := "usr/lib/debug/boot/vmlinux-" + strings.TrimPrefix(ctl["Package"], "linux-image-")
	found := false
	df, err := os.Open(dbg.Path)
	if err != nil {
		return FileSum{}, PackageInfo{}, fmt.Errorf("kit: %w", err)
	}
	defer df.Close()
	lim := deb.DefaultLimits
	lim.MaxEntrySize, lim.MaxTotal = 1<<30, 16<<30 // vmlinux with DWARF: 245 MB on 6.1; the package: several GB of modules' DWARF after it
	err = deb.Walk(df, lim, deb.DataMember, func(h *tar.Header, name string, r io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg || deb.CleanName(name) != want {
			return nil
		}
		out, err := os.OpenFile(vmlinux, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, r)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		found = true
		return deb.ErrStop
	})
	if err != nil {
		return FileSum{}, PackageInfo{}, fmt.Errorf("kit: %s: %w", dbg.Filename, err)
	}
	if !found {
		return FileSum{}, PackageInfo{}, fmt.Errorf("kit: %s has no %s", dbg.Filename, want)
	}
	opts.progressf("kit: writing the symbol table from vmlinux's DWARF")
	if err := opts.WriteSymbols(vmlinux, filepath.Join(dir, SymbolsFile)); err != nil {
		return FileSum{}, PackageInfo{}, fmt.Errorf("kit: symbol table: %w", err)
	}
	sum, err := sumOf(dir, SymbolsFile)
	if err != nil {
		return FileSum{}, PackageInfo{}, err
	}
	dctl, err := readControl(dbg.Path)
	if err != nil {
		return FileSum{}, PackageInfo{}, err
	}
	return sum, PackageInfo{Role: "kernel-dbg", Name: dctl["Package"], Version: dctl["Version"], Filename: dbg.Filename, Size: dbg.Size, SHA256: dbg.SHA256}, nil
}
