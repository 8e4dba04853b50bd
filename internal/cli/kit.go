package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

func init() { addSubcommand(newKitCmd) }

func newKitCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kit",
		Short: "Build, list or show guest kits (kernel, initramfs, command line)",
		Long: `The guest kit is what a default guest boots: Debian bookworm's current
kernel and busybox-static, fetched with apt-get download into the cache
directory, and an initramfs built from them.

Named kits take the kernel from another suite ('kit build --kernel-suite
bookworm-backports' for Debian's 6.12); 'kit ls' lists the kits built and
'run --kit NAME' boots one. docs/kernels.md lists the kernels gatevisor is
verified on.`,
	}
	cmd.AddCommand(newKitBuildCmd(), newKitShowCmd(), newKitLsCmd())
	return cmd
}

func newKitBuildCmd() *cobra.Command {
	var force bool
	var adds []string
	var apt, suite, name, arch string
	cmd := &cobra.Command{
		Use:   "build [--arch arm64|armhf] [--kernel-suite SUITE [--name NAME]] [--force] [--add HOST:GUEST ...]",
		Short: "Build the default guest kit or a named one, or verify the cached one",
		Long: `Build the default guest kit, or verify the cached one and reuse it.

--kernel-suite SUITE builds a named kit from that Debian suite's kernel
(bookworm-backports: Debian's 6.12; trixie) into kits/NAME of the cache
directory, NAME being SUITE-RELEASE (e.g. bookworm-backports-6.12.57+deb12-amd64)
or --name; the default kit is left as it is. A valid kit of the suite (or
of --name) is reused unless --force.

--arch arm64 builds a named kit of Debian's arm64 kernel and busybox (of
bookworm, or --kernel-suite), booted on QEMU's virt machine with
qemu-system-aarch64 (Debian's qemu-system-arm); its name ends in the
kernel release's -arm64 (bookworm-6.1.0-57-arm64).

--arch armhf builds a named kit of Debian's 32-bit ARM kernel (armmp) and
busybox, booted with qemu-system-arm -machine virt -cpu cortex-a15 (named
bookworm-6.1.0-57-armmp). The armmp kernel has no .BTF, so the build also
downloads the kernel's -dbg package once (~620 MB) and writes the kernel's
symbol table (symbols.json, from its DWARF) into the kit; run --kit uses it.

--add HOST:GUEST places a host file (or directory, recursively) into the kit's
initramfs at GUEST; the set of added files is replaced on every build, so
'gatevisor kit build' without --add restores the plain kit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			specs := make([]kit.FileSpec, 0, len(adds))
			for _, a := range adds {
				s, err := kit.ParseFileSpec(a)
				if err != nil {
					return err
				}
				specs = append(specs, s)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if apt == "auto" {
				apt = kit.AptAuto
			}
			if err := kit.ValidArch(arch); err != nil {
				return err
			}
			if (name != "" || (arch != "" && arch != kit.ArchAMD64)) && suite == "" {
				suite = kit.DefaultSuite
			}
			if name != "" {
				if err := kit.ValidName(name); err != nil {
					return err
				}
			}
			if _, err := kit.LookupSuite(suite); err != nil {
				return err
			}
			opts := kit.Options{Progress: cmd.ErrOrStderr(), Force: force, AptSource: apt, Suite: suite, Name: name, Arch: arch, WriteSymbols: linux.WriteISFFile}
			if _, err := kit.Ensure(ctx, opts); err != nil {
				return err
			}
			k, err := kit.SetExtraFiles(ctx, opts, specs)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kit:     %s (%s)\n", k.Dir, k.Name)
			fmt.Fprintf(out, "kernel:  %s (%s)\n", k.Kernel, k.KernelRelease)
			fmt.Fprintf(out, "initrd:  %s\n", k.Initrd)
			fmt.Fprintf(out, "append:  %s\n", k.Append)
			for _, x := range k.Manifest.ExtraFiles {
				fmt.Fprintf(out, "added:   %s -> %s\n", x.Host, x.Guest)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "rebuild even if a valid kit is cached (re-resolves the packages)")
	cmd.Flags().StringArrayVar(&adds, "add", nil, "add a host file to the initramfs as HOST:GUEST (repeatable)")
	cmd.Flags().StringVar(&apt, "apt", "auto", "apt configuration that fetches the packages: auto (the host's on Debian bookworm, or the host's if it has --kernel-suite's lists; else a private one), host, or private")
	cmd.Flags().StringVar(&suite, "kernel-suite", "", "build a named kit from this Debian suite: bookworm-backports (Debian's 6.12 kernel), trixie, or bookworm (default: the default kit)")
	cmd.Flags().StringVar(&arch, "arch", "", "the kit's architecture: amd64 (the default), arm64 (a named kit, booted with qemu-system-aarch64) or armhf (qemu-system-arm)")
	cmd.Flags().StringVar(&name, "name", "", "with --kernel-suite, the named kit's name (default: SUITE-KERNELRELEASE)")
	return cmd
}

func newKitShowCmd() *cobra.Command {
	var kernel, initrd, appendArgs bool
	var kitName string
	cmd := &cobra.Command{
		Use:   "show [--kit NAME] [--kernel | --initrd | --append]",
		Short: "Print the cached kit's manifest (JSON) after verifying its files, or one of its paths",
		Long: `Print the cached kit's manifest (JSON) after verifying its files.

--kernel, --initrd and --append print only the kernel's path, the
initramfs's path or the kernel command line, for 'run --kernel', e.g.
  gatevisor run --kernel "$(gatevisor kit show --kernel)" --initrd "$(gatevisor kit show --initrd)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kitName != "" && kitName != kit.DefaultName {
				return showNamedKit(cmd, kitName, kernel, initrd, appendArgs)
			}
			dir, err := kit.DefaultDir("")
			if err != nil {
				return err
			}
			k, verr := kit.Load(dir)
			if errors.Is(verr, os.ErrNotExist) {
				return fmt.Errorf("no kit in %s: run 'gatevisor kit build'", dir)
			}
			if kernel || initrd || appendArgs {
				if verr != nil {
					return fmt.Errorf("the kit in %s does not verify (%v): run 'gatevisor kit build' to rebuild it", dir, verr)
				}
				switch {
				case kernel:
					fmt.Fprintln(cmd.OutOrStdout(), k.Kernel)
				case initrd:
					fmt.Fprintln(cmd.OutOrStdout(), k.Initrd)
				default:
					fmt.Fprintln(cmd.OutOrStdout(), k.Append)
				}
				return nil
			}
			m := kit.Manifest{}
			if verr == nil {
				m = k.Manifest
			} else {
				// Show what the manifest says, then why the kit is not usable.
				data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
				if err != nil {
					return fmt.Errorf("read manifest: %w", err)
				}
				if err := json.Unmarshal(data, &m); err != nil {
					return fmt.Errorf("parse %s: %w", filepath.Join(dir, "manifest.json"), err)
				}
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			if err := enc.Encode(m); err != nil {
				return err
			}
			if verr != nil {
				return fmt.Errorf("the kit in %s does not verify (%v): run 'gatevisor kit build' to rebuild it", dir, verr)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&kernel, "kernel", false, "print only the kernel's path")
	f.BoolVar(&initrd, "initrd", false, "print only the initramfs's path")
	f.BoolVar(&appendArgs, "append", false, "print only the kernel command line")
	f.StringVar(&kitName, "kit", "", "show this kit (a name of 'gatevisor kit ls'; default: the default kit)")
	cmd.MarkFlagsMutuallyExclusive("kernel", "initrd", "append")
	return cmd
}

// showNamedKit is kit show --kit NAME for a named kit.
func showNamedKit(cmd *cobra.Command, name string, kernel, initrd, appendArgs bool) error {
	k, err := kit.Find("", name)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	switch {
	case kernel:
		fmt.Fprintln(out, k.Kernel)
	case initrd:
		fmt.Fprintln(out, k.Initrd)
	case appendArgs:
		fmt.Fprintln(out, k.Append)
	default:
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(k.Manifest)
	}
	return nil
}
