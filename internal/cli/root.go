// Package cli implements the gatevisor command line: one file per subcommand.
// Commands that act on a running VM reach it only through its local API
// (internal/api); only `run` hosts a monitor in-process.
package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// subcommands lists constructors of every top-level subcommand. Each file in
// this package that defines a subcommand adds itself from an init function,
// so that subcommands can be added without editing a shared list.
var subcommands []func() *cobra.Command

func addSubcommand(f func() *cobra.Command) { subcommands = append(subcommands, f) }

// exitError carries a specific process exit code up to Main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// withExitCode makes Main exit with code; err (may be nil) is printed first.
func withExitCode(code int, err error) error { return &exitError{code: code, err: err} }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "gatevisor",
		Short: "Run a device's Linux in a QEMU/KVM VM and secure it from below",
		Long: `gatevisor runs a device's Linux software in a QEMU/KVM virtual machine and
secures it from below: introspection of the guest kernel, a security server
with a policy language, and gates that enforce its verdicts where an intruder
who owns the guest cannot switch them off.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withExitCode(2, fmt.Errorf("%w (see '%s --help')", err, c.CommandPath()))
	})
	return root
}

// Main runs the command line and returns the process exit code.
func Main(args []string) int {
	if err := handOverRun(args); err != nil {
		fmt.Fprintln(os.Stderr, "gatevisor:", err)
		return 1
	}
	root := newRootCmd()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "gatevisor:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "gatevisor:", err)
	return 1
}

// exitCodeOf is the exit code err carries with no message of its own
// (withExitCode(code, nil)), else 0.
func exitCodeOf(err error) int {
	var ee *exitError
	if errors.As(err, &ee) && ee.err == nil {
		return ee.code
	}
	return 0
}
