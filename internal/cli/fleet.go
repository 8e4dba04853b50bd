package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/fleet"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newFleetCmd) }

// serveStateDir is the daemon's state directory: serve.token, serve.sock.
func serveStateDir() (string, error) {
	base, err := stateBase()
	if err != nil {
		return "", fmt.Errorf("serve: the token's directory: %w", err)
	}
	return filepath.Join(base, "gatevisor"), nil
}

// natsFlags say how to reach the fleet's NATS; by default what gatevisor
// serve wrote in fleet.json.
type natsFlags struct {
	url, tokenFile, creds, ca, cert, key string
}

func (f *natsFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "nats", "", "the fleet's NATS (nats://HOST:PORT[,...], tls:// for TLS); default: the one gatevisor serve runs (its fleet.json)")
	fs.StringVar(&f.tokenFile, "nats-token-file", "", "file holding the NATS token (default with serve's NATS: its serve.token)")
	fs.StringVar(&f.creds, "nats-creds", "", "NATS credentials file (JWT and nkey seed) for an existing cluster")
	fs.StringVar(&f.ca, "nats-ca", "", "TLS: the CA file that signed the NATS servers' certificates")
	fs.StringVar(&f.cert, "nats-cert", "", "TLS: client certificate file, if the servers ask for one")
	fs.StringVar(&f.key, "nats-key", "", "TLS: the client certificate's key file")
}

// conn returns the connection f describes.
func (f *natsFlags) conn(name string) (fleet.Conn, error) {
	c := fleet.Conn{URL: f.url, CredsFile: f.creds, CAFile: f.ca, CertFile: f.cert, KeyFile: f.key, Name: name}
	tokenFile := f.tokenFile
	if c.URL == "" {
		dir, err := serveStateDir()
		if err != nil {
			return c, err
		}
		l, err := fleet.ReadLocal(dir)
		if err != nil {
			return c, err
		}
		c.URL = l.URL
		if tokenFile == "" {
			tokenFile = l.TokenFile
		}
		if c.CredsFile == "" {
			c.CredsFile = l.CredsFile
		}
	}
	if tokenFile != "" {
		tok, err := fleet.ReadToken(tokenFile)
		if err != nil {
			return c, err
		}
		c.Token = tok
	}
	return c, nil
}

// connect dials the fleet, failing at once if it cannot be reached (a
// command, unlike a monitor, does not wait for it).
func (f *natsFlags) connect(name string) (*nats.Conn, jetstream.JetStream, error) {
	c, err := f.conn(name)
	if err != nil {
		return nil, nil, err
	}
	nc, err := c.Connect(nats.RetryOnFailedConnect(false), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

func newFleetCmd() *cobra.Command {
	var nf natsFlags
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "The fleet of monitors on NATS: list them, follow their events, push a policy",
		Long: `Every monitor started with 'gatevisor run --fleet' publishes its audit
records, its events (IDS findings and observations, gate decisions as the
event stream aggregates them, notices) and its state to NATS JetStream, on
subjects gatevisor.<host>.<vm>.<kind>, and answers policy pushes. The NATS is
the one 'gatevisor serve' embeds (one host needs nothing else), or an
existing cluster given with --nats. Nothing is lost while the fleet is down:
a monitor publishes from its own log files and catches up when it is back.
See docs/fleet.md.`,
	}
	nf.add(cmd.PersistentFlags())
	cmd.AddCommand(newFleetLsCmd(&nf), newFleetEventsCmd(&nf), newFleetPolicyCmd(&nf))
	return cmd
}

func newFleetLsCmd(nf *natsFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the fleet's VMs with their last published state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nc, js, err := nf.connect("gatevisor fleet ls")
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			states, err := fleet.List(ctx, js)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(states)
			}
			writeFleetLs(cmd.OutOrStdout(), states, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the states as JSON")
	return cmd
}

// writeFleetLs prints one line per VM. A VM whose last state is older than
// three publishing intervals is shown as unreachable: its monitor stopped
// or lost the fleet.
func writeFleetLs(w io.Writer, states []fleet.State, now time.Time) {
	if len(states) == 0 {
		fmt.Fprintln(w, "no VM has joined the fleet (start one with: gatevisor run --fleet ...)")
		return
	}
	esc := termtext.Escape
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tVM\tSTATE\tPOLICY\tSEEN\tPUBLISHED")
	for _, s := range states {
		state := s.Status.State
		age := now.Sub(s.Time).Round(time.Second)
		if age > 15*time.Second && state != "stopped" && state != "exited" {
			state += " (no word for " + age.String() + ")"
		}
		pol := "-"
		if s.Status.Policy != nil {
			pol = fmt.Sprintf("%d %s", s.Status.Policy.Seq, shortDigest(s.Status.Policy.Digest))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\t%d\n", esc(s.Host), esc(s.VM), esc(state), esc(pol), age, s.Fleet.Published)
	}
	tw.Flush()
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func newFleetEventsCmd(nf *natsFlags) *cobra.Command {
	var (
		o      fleet.EventsOptions
		sel    string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Print the fleet's stored events, oldest first (-f: then follow)",
		Long: `Print the events the fleet's monitors published: audit records (kind
audit) and event-stream points (ids.<type>, decision.<type>,
notice.<type>), oldest first, each with its host and VM. --vm picks VMs by a
glob on the VM's name or on HOST/VM; --kind keeps kinds (audit, ids,
decision, notice, or a type such as ids.finding; repeatable); -f waits
for new ones until Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Select = fleet.Selector(sel)
			if err := o.Select.Check(); err != nil {
				return err
			}
			nc, js, err := nf.connect("gatevisor fleet events")
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			w := cmd.OutOrStdout()
			return fleet.Events(ctx, js, o, func(e fleet.Event) error {
				if asJSON {
					b, _ := json.Marshal(struct {
						Host string          `json:"host"`
						VM   string          `json:"vm"`
						Kind string          `json:"kind"`
						Seq  uint64          `json:"seq"`
						Data json.RawMessage `json:"data"`
					}{e.Host, e.VM, e.Kind, e.Seq, e.Data})
					_, err := fmt.Fprintf(w, "%s\n", b)
					return err
				}
				_, err := fmt.Fprintln(w, fleetEventLine(e))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&sel, "vm", "", "only VMs matching this glob (NAME or HOST/NAME)")
	cmd.Flags().StringArrayVar(&o.Kinds, "kind", nil, "only these kinds: audit, ids, decision, notice or a type such as ids.finding (repeatable)")
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "after the stored events, wait for new ones")
	cmd.Flags().IntVar(&o.Last, "last", 0, "start with the last N stored events (with no --kind)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line: host, vm, kind, the stream's seq and the data")
	return cmd
}

// fleetEventLine is one event as text: host/vm, kind, and the essentials
// of an audit record or an event point; guest-chosen text escaped.
func fleetEventLine(e fleet.Event) string {
	esc := termtext.Escape
	f := e.Summary()
	num := "seq "
	if e.Kind == fleet.KindAudit {
		num = "#"
	}
	s := fmt.Sprintf("%s %s/%s %s %s%d", f.Time.Local().Format("15:04:05.000"), esc(e.Host), esc(e.VM), esc(e.Kind), num, f.Number)
	for _, x := range []string{f.Verdict, f.Class, f.Op, f.Path} {
		if x != "" {
			s += " " + esc(x)
		}
	}
	if f.PID != 0 {
		s += fmt.Sprintf(" pid %d (%s)", f.PID, esc(f.Comm))
	}
	if f.Rule != "" {
		s += " rule " + esc(f.Rule)
	}
	if f.Text != "" {
		s += " " + esc(f.Text)
	}
	if f.Verdict == "" && f.Class == "" && f.Text == "" {
		s += " " + esc(string(e.Data))
	}
	return s
}

func newFleetPolicyCmd(nf *natsFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Push a policy to the fleet's VMs"}
	var (
		to      string
		timeout time.Duration
		asJSON  bool
	)
	push := &cobra.Command{
		Use:   "push FILE --to SELECTOR",
		Short: "Check FILE, then load it on every VM of the fleet that SELECTOR picks; each VM acknowledges with its snapshot digest",
		Long: `Check FILE here (it must compile, with its includes, which are sent with
it), then send it to every VM of the fleet that --to picks (a glob on the VM's
name, or on HOST/VM; '*' for all). Each monitor loads it as 'gatevisor policy
load' would: checked against its gates, then taken by every gate in one
transaction, or refused with the policy in force unchanged. A monitor takes
pushes only if it was started with run --fleet-policy, and its own policy
decides them (action policy.load, as the monitor's user). Every VM's answer is
printed: the policy's sequence number and digest, or why it refused. The
exit status is 1 if any VM did not take the policy.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return errors.New("fleet policy push: give --to SELECTOR (a VM name glob, HOST/VM, or '*' for every VM)")
			}
			sel := fleet.Selector(to)
			if err := sel.Check(); err != nil {
				return err
			}
			req, digest, err := pushRequest(args[0])
			if err != nil {
				return err
			}
			nc, js, err := nf.connect("gatevisor fleet policy push")
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+30*time.Second)
			defer cancel()
			states, err := fleet.List(ctx, js)
			if err != nil {
				return err
			}
			var targets []fleet.State
			for _, s := range states {
				if sel.Match(s.Host, s.VM) {
					targets = append(targets, s)
				}
			}
			if len(targets) == 0 {
				return fmt.Errorf("fleet policy push: no VM of the fleet matches %q (see gatevisor fleet ls)", to)
			}
			replies := fleet.Push(ctx, nc, targets, req, timeout)
			if asJSON {
				if err := json.NewEncoder(cmd.OutOrStdout()).Encode(replies); err != nil {
					return err
				}
			} else {
				writePushReplies(cmd.OutOrStdout(), replies, digest)
			}
			for _, r := range replies {
				if !r.OK {
					return withExitCode(1, fmt.Errorf("fleet policy push: %d of %d VMs did not take the policy", failed(replies), len(replies)))
				}
			}
			return nil
		},
	}
	push.Flags().StringVar(&to, "to", "", "the VMs: a glob on the VM's name or on HOST/VM ('*': every VM)")
	push.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "how long each VM may take to answer")
	push.Flags().BoolVar(&asJSON, "json", false, "print the answers as JSON")
	cmd.AddCommand(push)
	return cmd
}

func failed(rs []fleet.PushReply) int {
	n := 0
	for _, r := range rs {
		if !r.OK {
			n++
		}
	}
	return n
}

// pushRequest reads and checks FILE and the files it includes, and
// returns them as one push and the snapshot's digest.
func pushRequest(file string) (fleet.PushRequest, string, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return fleet.PushRequest{}, "", err
	}
	src, err := readCapped(abs, policy.MaxFileSize)
	if err != nil {
		return fleet.PushRequest{}, "", err
	}
	dir, base := filepath.Split(abs)
	files := map[string]string{}
	snap, err := policy.NewSnapshot(base, src, policy.RecordingResolver(policy.FSResolver(os.DirFS(dir)), files))
	if err != nil {
		return fleet.PushRequest{}, "", fmt.Errorf("fleet policy push: %s does not compile, nothing was sent: %w", file, err)
	}
	req := api.PolicyRequest{Path: abs, Source: string(src), Files: files}
	if err := req.CheckFiles(); err != nil {
		return fleet.PushRequest{}, "", fmt.Errorf("fleet policy push: %w", err)
	}
	by := "uid " + fmt.Sprint(os.Getuid())
	if u, err := user.Current(); err == nil {
		by = u.Username
	}
	return fleet.PushRequest{Policy: req, By: by + "@" + fleet.Hostname()}, snap.Digest, nil
}

func writePushReplies(w io.Writer, rs []fleet.PushReply, digest string) {
	esc := termtext.Escape
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tVM\tRESULT")
	for _, r := range rs {
		res := "refused: " + esc(r.Error)
		if r.OK {
			res = fmt.Sprintf("policy %d in force, %s", r.Seq, r.Digest)
			if r.Digest != digest {
				res += " (not the digest pushed, " + digest + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", esc(r.Host), esc(r.VM), res)
	}
	tw.Flush()
}
