package cli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/audit"
)

func init() { addSubcommand(newAuditCmd) }

func newAuditCmd() *cobra.Command {
	var (
		file, verdicts, class, pid, rule, since string
		asJSON, rotated                         bool
	)
	cmd := &cobra.Command{
		Use:   "audit --file LOG",
		Short: "Read and filter a security audit log",
		Long: `Read gatevisor's audit log (JSON lines) and print the records that pass
the filters. A record torn by a crash mid-write is skipped and reported.

  gatevisor audit --file /var/lib/gatevisor/audit.log --verdict deny,kill --since 1h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return withExitCode(2, fmt.Errorf("audit: --file is required"))
			}
			var f audit.Filter
			if verdicts != "" {
				for _, v := range strings.Split(verdicts, ",") {
					v = strings.TrimSpace(v)
					switch v {
					case "allow", "alert", "deny", "kill":
					default:
						return withExitCode(2, fmt.Errorf("audit: --verdict %q: expected allow, alert, deny or kill", v))
					}
					f.Verdicts = append(f.Verdicts, v)
				}
			}
			f.Class, f.Rule = class, rule
			if pid != "" {
				n, err := strconv.ParseInt(pid, 10, 32)
				if err != nil {
					return withExitCode(2, fmt.Errorf("audit: --pid %q: %v", pid, err))
				}
				f.PID, f.HasPID = int32(n), true
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return withExitCode(2, err)
				}
				f.Since = t
			}
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			if !asJSON {
				fmt.Fprintln(tw, "N\tTIME\tVERDICT\tEVENT\tPID\tCOMM\tRULE\tREASON")
			}
			st, err := audit.ReadFile(file, rotated, func(r *audit.Record) error {
				if !f.Match(r) {
					return nil
				}
				if asJSON {
					return enc.Encode(r)
				}
				v := r.Verdict
				if r.Permissive {
					v += "(permissive)"
				}
				ev := r.Event.Class.String()
				if r.Event.Op != "" {
					ev += " " + r.Event.Op
				}
				if r.Event.Path != "" {
					ev += " " + r.Event.Path
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.N, r.Time.Format(time.RFC3339), v, ev,
					r.Event.Subject.PID, r.Event.Subject.Comm, r.Rule, r.Reason)
				return nil
			})
			tw.Flush()
			if err != nil {
				return err
			}
			if st.Torn > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "gatevisor: note: skipped %d torn record(s) at the end of a file (written when gatevisor stopped mid-write; never acknowledged)\n", st.Torn)
			}
			if st.Bad > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "gatevisor: warning: skipped %d corrupt line(s)\n", st.Bad)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&file, "file", "", "audit log file")
	fl.StringVar(&verdicts, "verdict", "", "comma-separated verdicts to show (allow,alert,deny,kill)")
	fl.StringVar(&class, "class", "", "event class (syscall, exec, file, net, module, api, call)")
	fl.StringVar(&pid, "pid", "", "subject PID")
	fl.StringVar(&rule, "rule", "", "deciding rule")
	fl.StringVar(&since, "since", "", "only records at or after this time (RFC 3339) or this long ago (e.g. 1h, 30m)")
	fl.BoolVar(&asJSON, "json", false, "print records as JSON lines")
	fl.BoolVar(&rotated, "rotated", false, "also read rotated files (LOG.N ... LOG.1)")
	return cmd
}

func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("audit: --since %q: expected a duration such as 1h or an RFC 3339 time", s)
}
