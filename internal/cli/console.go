package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { addSubcommand(newConsoleCmd) }

// consoleEscape (Ctrl-]) detaches from the console.
const consoleEscape = 0x1d

func newConsoleCmd() *cobra.Command {
	var replay int
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a VM's serial console (Ctrl-] detaches)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			conn, err := c.Console(cmd.Context(), replay)
			if err != nil {
				return err
			}
			defer conn.Close()
			fd := int(os.Stdin.Fd())
			if term.IsTerminal(fd) {
				old, err := term.MakeRaw(fd)
				if err != nil {
					return fmt.Errorf("console: raw terminal: %w", err)
				}
				defer term.Restore(fd, old)
				fmt.Fprintf(os.Stderr, "Connected to %s's console; press Ctrl-] to detach.\r\n", args[0])
			}
			outDone := make(chan struct{})
			go func() {
				_, _ = io.Copy(os.Stdout, conn)
				close(outDone)
			}()
			inDone := make(chan struct{})
			escaped := false
			go func() {
				defer close(inDone)
				buf := make([]byte, 1024)
				for {
					n, err := os.Stdin.Read(buf)
					if n > 0 {
						chunk := buf[:n]
						if i := bytes.IndexByte(chunk, consoleEscape); i >= 0 {
							_, _ = conn.Write(chunk[:i])
							escaped = true
							return
						}
						if _, werr := conn.Write(chunk); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			select {
			case <-outDone:
			case <-inDone:
				if !escaped && !term.IsTerminal(fd) {
					// Piped input ended: keep printing until the VM closes.
					<-outDone
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&replay, "replay", 4096, "bytes of recent console output to show first")
	return cmd
}
