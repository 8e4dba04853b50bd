//go:build !gatevisor_monitor

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/bench"
)

// The bench commands are fronts of internal/bench: each file bench_*.go
// parses one subcommand's flags, calls its harness and prints the report.

func init() { addSubcommand(newBenchCmd) }

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmarks against peers, run in one process so they share the machine's state",
	}
	cmd.AddCommand(newBenchBootCmd(), newBenchIDSCmd(), newBenchSyscallsCmd(), newBenchNetCmd(), newBenchFloodCmd(), newBenchMemoryCmd(), newBenchProcCmd(), newBenchFleetCmd(), newBenchRejuvenateCmd(), newBenchFilesCmd())
	return cmd
}

// benchReport is what every harness returns.
type benchReport interface {
	WriteText(io.Writer) error
}

// benchFront completes cmd, whose flags are bound, as a bench subcommand:
// it takes no arguments and has --json; it runs check on the flags, then
// the harness under a context that Ctrl-C and SIGTERM cancel (the harness
// then stops its VMs through its error path), and prints the report as
// text or, with --json, as indented JSON.
func benchFront[R benchReport](cmd *cobra.Command, check func() error, harness func(context.Context, bench.Env) (R, error)) *cobra.Command {
	var asJSON bool
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := check(); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		rep, err := harness(ctx, benchEnv())
		if err != nil {
			return err
		}
		return printBenchReport(os.Stdout, rep, asJSON)
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printBenchReport writes rep to w as text or as indented JSON.
func printBenchReport(w io.Writer, rep benchReport, asJSON bool) error {
	var b bytes.Buffer
	if asJSON {
		enc := json.NewEncoder(&b)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := rep.WriteText(&b); err != nil {
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

// benchEnv is how the harnesses find the VMs they boot: as every command
// does.
func benchEnv() bench.Env {
	return bench.Env{Client: clientFor, WaitGone: waitGone, StateDir: stateDir, Progress: os.Stderr}
}
