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
)

func init() { addSubcommand(newKitCmd) }

func newKitCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kit",
		Short: "Build or show the guest kit (kernel, initramfs, command line)",
		Long: `The guest kit is what a default guest boots: Debian bookworm's current
kernel and busybox-static, fetched with apt-get download into the cache
directory, and an initramfs built from them.`,
	}
	cmd.AddCommand(newKitBuildCmd(), newKitShowCmd())
	return cmd
}

func newKitBuildCmd() *cobra.Command {
	var force bool
	var adds []string
	var apt string
	cmd := &cobra.Command{
		Use:   "build [--force] [--add HOST:GUEST ...]",
		Short: "Build the default guest kit, or verify the cached one",
		Long: `Build the default guest kit, or verify the cached one and reuse it.

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
			opts := kit.Options{Progress: cmd.ErrOrStderr(), Force: force, AptSource: apt}
			if _, err := kit.EnsureDefault(ctx, opts); err != nil {
				return err
			}
			k, err := kit.SetExtraFiles(ctx, opts, specs)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kit:     %s\n", k.Dir)
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
	cmd.Flags().StringVar(&apt, "apt", "auto", "apt configuration that fetches the packages: auto (the host's on Debian bookworm, else a private bookworm one), host, or private")
	return cmd
}

func newKitShowCmd() *cobra.Command {
	var kernel, initrd, appendArgs bool
	cmd := &cobra.Command{
		Use:   "show [--kernel | --initrd | --append]",
		Short: "Print the cached kit's manifest (JSON) after verifying its files, or one of its paths",
		Long: `Print the cached kit's manifest (JSON) after verifying its files.

--kernel, --initrd and --append print only the kernel's path, the
initramfs's path or the kernel command line, for 'run --kernel', e.g.
  gatevisor run --kernel "$(gatevisor kit show --kernel)" --initrd "$(gatevisor kit show --initrd)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
	cmd.MarkFlagsMutuallyExclusive("kernel", "initrd", "append")
	return cmd
}
