//go:build !gatevisor_monitor

package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/hostd"
)

func init() {
	addSubcommand(newServeCmd)
	addSubcommand(newMetricsCmd)
}

func newServeCmd() *cobra.Command {
	var (
		cfg           hostd.Config
		tokenFileFlag bool
		noLogin       bool
		noFleet       bool
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "The host daemon: a web dashboard of the VMs, their Prometheus metrics and events on one TCP address",
		Long: `Serve, on --listen (loopback by default):

  /         the web dashboard (docs/dashboard.md): every VM this user can
            reach, each with its processes, network, live events and the
            actions its policy allows; log in with 'gatevisor serve login'
  /metrics  the Prometheus metrics of every such VM, merged, plus
            gatevisor_serve_* metrics about the scrape itself
  /events   every such VM's events as server-sent events (?format=jsonl:
            JSON lines)

The VMs are this user's, and root's that root shares. Each is reached
through its monitor's API socket, whose policy decides every read and
action (the dashboard decides nothing); a VM that does not answer is left
out; no monitor depends on the daemon. contrib/systemd/gatevisor-serve.service
runs it under systemd, as root.

/metrics and /events need "Authorization: Bearer TOKEN": the daemon would
otherwise hand its user's VMs (root's, under systemd) to every local user
who can reach the port. The token is in a file only its user can read,
$XDG_STATE_HOME/gatevisor/serve.token (~/.local/state/...), created on the
first start and kept (a Prometheus scrape config names it as
authorization.credentials_file); --token-file prints its path.
--metrics-without-token serves /metrics to anyone who can connect. The same
endpoints are served without a token on a unix socket only the daemon's
user (and root) may use, serve.sock beside the token (curl --unix-socket
PATH http://x/metrics).

The dashboard needs a login: 'gatevisor serve login', run by a local user,
asks the daemon over a unix socket (whose peer credentials name the user)
for a one-time link. Run as root, the daemon makes each user's calls to the
VMs as that user (their policy's roles decide), and takes login requests
from every user on --login-socket (` + hostd.DefaultLoginSocket + `); run
as another user, it admits only that user and root, and acts as itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := serveStateDir()
			if err != nil {
				return err
			}
			if tokenFileFlag {
				p, err := hostd.TokenPath(dir)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), p)
				return nil
			}
			cfg.StateDir = dir
			if noLogin || (os.Geteuid() != 0 && !cmd.Flags().Changed("login-socket")) {
				cfg.LoginSocket = ""
			}
			cfg.NATSListenDefault = !cmd.Flags().Changed("nats-listen")
			if noFleet {
				cfg.NATSListen, cfg.NATSURL = "", ""
			} else if cfg.NATSURL != "" {
				cfg.NATSListen = ""
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return hostd.Run(ctx, cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Listen, "listen", "127.0.0.1:9464", "TCP address to serve on (HOST:PORT; loopback unless you mean otherwise)")
	cmd.Flags().BoolVar(&cfg.MetricsWithoutToken, "metrics-without-token", false, "serve /metrics without the bearer token (any local user then reads your VMs' metrics)")
	cmd.Flags().BoolVar(&tokenFileFlag, "token-file", false, "print the token file's path and exit")
	cmd.Flags().StringVar(&cfg.LoginSocket, "login-socket", hostd.DefaultLoginSocket, "unix socket where every local user may ask for a dashboard login link (a root daemon's; others use serve.sock)")
	cmd.Flags().BoolVar(&noLogin, "no-login-socket", false, "take login requests only on serve.sock (root and the daemon's user)")
	cmd.Flags().DurationVar(&cfg.SessionTTL, "session-ttl", 8*time.Hour, "how long a dashboard login lasts")
	cmd.Flags().StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "embed the fleet's NATS server (JetStream) on this address; monitors join with run --fleet (docs/fleet.md)")
	cmd.Flags().StringVar(&cfg.NATSURL, "nats", "", "use this existing NATS (nats://HOST:PORT[,...]) for the fleet instead of embedding one")
	cmd.Flags().StringVar(&cfg.NATSCredsFile, "nats-creds", "", "with --nats, the credentials file monitors and fleet commands use")
	cmd.Flags().StringVar(&cfg.NATSTokenFile, "nats-token-file", "", "with --nats, the file holding the token monitors and fleet commands use")
	cmd.Flags().BoolVar(&noFleet, "no-fleet", false, "no fleet: neither embed nor advertise a NATS")
	cmd.AddCommand(newServeLoginCmd())
	return cmd
}

func newServeLoginCmd() *cobra.Command {
	var sock string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Print a one-time link that logs a browser into gatevisor serve's dashboard as you",
		Long: `Ask the running gatevisor serve, over its unix socket, for a one-time
login link to its dashboard, bound to your uid and gid (the daemon reads
them from the socket's peer credentials), and print it. Open it within a
minute in a browser on this host; it works once. The session it starts ends
after serve --session-ttl or at Log out.

The socket is --socket, else your own daemon's serve.sock
($XDG_STATE_HOME/gatevisor/serve.sock), else the system daemon's
` + hostd.DefaultLoginSocket + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if sock == "" {
				dir, err := serveStateDir()
				if err != nil {
					return err
				}
				if sock, err = hostd.FindLoginSocket(hostd.LoginSockets(dir)); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			t, err := hostd.RequestLogin(ctx, sock)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.URL)
			fmt.Fprintf(os.Stderr, "gatevisor serve login: open the link within %v; it logs in uid %d (gid %d) once; the VMs' policies will see uid %d\n",
				time.Until(t.ExpiresAt).Round(time.Second), t.User.UID, t.User.GID, t.ActsAs.UID)
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", "", "the daemon's unix socket (default: your own daemon's, else "+hostd.DefaultLoginSocket+")")
	return cmd
}

func newMetricsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "metrics NAME",
		Short: "Print a VM's Prometheus metrics (text exposition format)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			b, err := c.Metrics(ctx)
			if err != nil {
				return err
			}
			if len(b) == 0 {
				return errors.New("metrics: the monitor answered nothing")
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
}
