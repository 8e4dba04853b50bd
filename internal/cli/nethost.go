package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/vnet"
)

// The network host process: the switch and services of an isolated
// network run in a process of their own (vnet.HostNetwork), started by the
// first monitor that joins and ended once no monitor has been a member for
// a while, so that a monitor replaced with its guest running (upgrade)
// does not take the network's other end with it.
//
// A monitor runs `gatevisor net-host --root R --name N`, the launcher,
// which starts the host itself (`--serve`) in a session of its own, waits
// until it listens (or says another host holds the network) and exits: the
// host is then no monitor's child (a monitor that execs itself in place
// would never reap it) and outlives the monitor that started it.

func init() { addSubcommand(newNetHostCmd) }

func newNetHostCmd() *cobra.Command {
	var root, name string
	var serve bool
	var readyFD int
	cmd := &cobra.Command{
		Use:    "net-host --root DIR --name NETWORK",
		Short:  "internal: host an isolated network's switch and services (started by the monitors joining it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := vnet.ValidateName(name); err != nil {
				return err
			}
			if !filepath.IsAbs(root) {
				return fmt.Errorf("net-host: --root %q: give the runtime root, an absolute path", root)
			}
			if serve {
				return serveNetHost(root, name, readyFD)
			}
			return launchNetHost(root, name, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "the runtime root the network lives under")
	cmd.Flags().StringVar(&name, "name", "", "the network's name")
	cmd.Flags().BoolVar(&serve, "serve", false, "be the host (run by the launcher)")
	cmd.Flags().IntVar(&readyFD, "ready-fd", -1, "with --serve: where to say it listens")
	return cmd
}

// netHostStart bounds how long a launcher waits for its host to listen.
const netHostStart = 10 * time.Second

// launchNetHost starts the host process of root/net/name and waits until
// it listens or finds the network hosted.
func launchNetHost(root, name string, log io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("net-host: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("net-host: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe, "net-host", "--serve", "--root", root, "--name", name, "--ready-fd", "3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if f, ok := log.(*os.File); ok {
		cmd.Stderr = f // a file only: a pipe would keep this launcher waiting on the host
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("net-host: start %s: %w", exe, err)
	}
	w.Close()
	go func() { _ = cmd.Wait() }() // reaped if it ends before this launcher
	said := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
		said <- strings.TrimSpace(line)
	}()
	select {
	case s := <-said:
		switch {
		case s == "ok", s == "hosted":
			return nil
		case s == "":
			return errors.New("net-host: the host process ended without listening (see the monitor's log)")
		}
		return fmt.Errorf("net-host: %s", s)
	case <-time.After(netHostStart):
		_ = cmd.Process.Kill()
		return fmt.Errorf("net-host: the host process did not listen within %v", netHostStart)
	}
}

// serveNetHost is the host process: it hosts the network until it has no
// members, or a signal.
func serveNetHost(root, name string, readyFD int) error {
	var ready *os.File
	if readyFD >= 3 {
		ready = os.NewFile(uintptr(readyFD), "ready")
	}
	say := func(err error) {
		if ready == nil {
			return
		}
		switch {
		case err == nil:
			fmt.Fprintln(ready, "ok")
		case errors.Is(err, vnet.ErrHosted):
			fmt.Fprintln(ready, "hosted")
		default:
			fmt.Fprintln(ready, strings.ReplaceAll(err.Error(), "\n", " "))
		}
		ready.Close()
	}
	// The runtime root is the monitors' own: only their user may host in it.
	if st, err := os.Lstat(root); err != nil || !st.IsDir() || st.Sys().(*syscall.Stat_t).Uid != uint32(os.Getuid()) {
		err := fmt.Errorf("net-host: %s is not a directory of this user (%v)", root, err)
		say(err)
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	stop := make(chan struct{})
	go func() { <-sigs; close(stop) }()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s gatevisor net-host: %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
	}
	err := vnet.HostNetwork(root, name, stop, say, logf)
	if errors.Is(err, vnet.ErrHosted) {
		return nil
	}
	return err
}

// netHostSpawner is how a monitor starts its network's host process.
func netHostSpawner() vnet.Spawn {
	return func(dir string) error {
		root, name := filepath.Dir(filepath.Dir(dir)), filepath.Base(dir)
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cmd := exec.Command(exe, "net-host", "--root", root, "--name", name)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("%s net-host: %w %s", exe, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}
