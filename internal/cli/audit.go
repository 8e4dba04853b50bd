package cli

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/audit"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newAuditCmd) }

func newAuditCmd() *cobra.Command {
	var o auditOptions
	cmd := &cobra.Command{
		Use:   "audit --file LOG",
		Short: "Read, filter and verify a security audit log",
		Long: `Read gatevisor's audit log (JSON lines) and print the records that pass
the filters, checking the log's hash chain as it reads: a warning on stderr
says if the file does not verify. A record torn by a crash mid-write is
skipped and reported. Input that is not an audit log is an error.

Besides decisions the log holds its own records (open, policy, pruned,
close); they are shown unless a filter on verdict, class, pid or rule is
given. In the text table, text that came from the guest is escaped (\n,
\x1b, ...); --json prints each record's line exactly as stored.

--verify checks the whole log (LOG.N ... LOG.1, LOG) and prints a report:
exit status 0 when every record is chained to the one before it, 1 when a
link is broken (the first bad record is named) or records cannot be
verified, 2 when the log cannot be read or is not an audit log.
--expect-head N:HASH also checks a head recorded elsewhere (the running
VM's, or one copied off the host): what the file alone cannot show, an
edit or removal of the last records.

  gatevisor audit --file /var/lib/gatevisor/audit.log --verdict deny,kill --since 1h
  gatevisor audit --verify --file /var/lib/gatevisor/audit.log`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return auditRun(cmd.OutOrStdout(), cmd.ErrOrStderr(), &o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.file, "file", "", "audit log file")
	fl.StringVar(&o.verdicts, "verdict", "", "comma-separated verdicts to show (allow,alert,deny,kill)")
	fl.StringVar(&o.class, "class", "", "event class (syscall, exec, file, net, module, api, call)")
	fl.StringVar(&o.pid, "pid", "", "subject PID")
	fl.StringVar(&o.rule, "rule", "", "deciding rule")
	fl.StringVar(&o.since, "since", "", "only records at or after this time (RFC 3339) or this long ago (e.g. 1h, 30m)")
	fl.BoolVar(&o.asJSON, "json", false, "print records (or the --verify report) as JSON")
	fl.BoolVar(&o.rotated, "rotated", false, "also read rotated files (LOG.N ... LOG.1)")
	fl.BoolVar(&o.verify, "verify", false, "check the hash chain of the whole log and report the first broken link")
	fl.StringVar(&o.expectHead, "expect-head", "", "a head recorded elsewhere, N:HASH: record N must be in the log with this hash")
	return cmd
}

// readLog prints the records of the log that pass f, and warns on stderr if
// what it read does not verify.
func readLog(out, errOut io.Writer, file string, opt audit.WalkOptions, f *audit.Filter, asJSON bool) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	header := false
	rep, err := audit.Walk(file, opt, func(r *audit.Record, line []byte) error {
		if !f.Match(r) {
			return nil
		}
		if asJSON {
			// Exact: the line as stored, which keeps it verifiable.
			if _, err := out.Write(line); err != nil {
				return err
			}
			_, err := out.Write([]byte{'\n'})
			return err
		}
		if !header {
			fmt.Fprintln(tw, "N\tTIME\tVERDICT\tEVENT\tPID\tCOMM\tRULE\tREASON")
			header = true
		}
		writeRecordRow(tw, r)
		return nil
	})
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return withExitCode(2, err)
	}
	esc := termtext.Escape
	if rep.Broken != nil {
		fmt.Fprintf(errOut, "gatevisor: warning: %s does not verify: %s (gatevisor audit --verify --file %s for the report)\n",
			esc(file), esc(rep.Broken.Error()), esc(file))
	}
	if rep.Unchained > 0 {
		fmt.Fprintf(errOut, "gatevisor: warning: %d record(s) predate the hash chain (written by an older gatevisor) and cannot be verified\n", rep.Unchained)
	}
	if rep.Torn != nil {
		fmt.Fprintf(errOut, "gatevisor: note: skipped a torn record at %s (written when gatevisor stopped mid-write; never acknowledged)\n", esc(rep.Torn.String()))
	}
	return nil
}

// writeRecordRow writes r as a row of the text table. Every string that
// came from the guest or from the file is escaped: a newline or a tab would
// forge rows or columns, an escape sequence would reach the terminal.
func writeRecordRow(w io.Writer, r *audit.Record) {
	esc := termtext.Escape
	t := r.Time.Format(time.RFC3339)
	if r.Kind != audit.KindDecision {
		fmt.Fprintf(w, "%d\t%s\t[%s]\t%s\t-\t-\t-\t-\n", r.N, t, esc(string(r.Kind)), esc(chainSummary(r)))
		return
	}
	v := esc(r.Verdict)
	if r.Permissive {
		v += "(permissive)"
	}
	ev := r.Event.Class.String()
	for _, s := range []string{r.Event.Op, r.Event.Path, r.Event.Module} {
		if s != "" {
			ev += " " + esc(s)
		}
	}
	if r.Event.Addr.IsValid() || r.Event.Port != 0 {
		ev += fmt.Sprintf(" %s %s %s", r.Event.Dir, esc(r.Event.Proto), netip.AddrPortFrom(r.Event.Addr, r.Event.Port))
	}
	if rp := r.Repeat; rp != nil {
		// An aggregated record: how many, until when, and the last one.
		last := rp.Last.Path
		if rp.Last.Addr.IsValid() || rp.Last.Port != 0 {
			last = netip.AddrPortFrom(rp.Last.Addr, rp.Last.Port).String()
		}
		v += fmt.Sprintf(" ×%d", rp.Count)
		ev += fmt.Sprintf(" … %s until %s", esc(last), rp.Until.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.N, t, v, ev,
		r.Event.Subject.PID, esc(r.Event.Subject.Comm), esc(r.Rule), esc(r.Reason))
}

// chainSummary says what a chain record records, unescaped.
func chainSummary(r *audit.Record) string {
	switch r.Kind {
	case audit.KindOpen:
		s := fmt.Sprintf("log opened: vm=%s policy=%s seq=%d", orNone(r.VM), orNone(r.Policy), r.PolicySeq)
		if r.Repaired > 0 {
			s += fmt.Sprintf("; cut off a torn record of %d bytes", r.Repaired)
		}
		if r.Unclosed {
			s += "; the session before ended without a close record (crash or kill)"
		}
		return s
	case audit.KindPolicy:
		return fmt.Sprintf("policy in force: %s seq=%d", orNone(r.Policy), r.PolicySeq)
	case audit.KindPruned:
		if p := r.Pruned; p != nil {
			return fmt.Sprintf("retention deleted n=%d..%d (%d file(s), %d bytes)", p.FirstN, p.LastN, p.Files, p.Bytes)
		}
		return "retention deleted files"
	case audit.KindClose:
		return "log closed"
	}
	return "unknown record kind"
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// verifyLog prints the report of audit.Verify and turns it into the exit
// status: 0 intact, 1 broken or not verifiable, 2 unreadable.
func verifyLog(out io.Writer, file string, opt audit.WalkOptions, asJSON bool) error {
	opt.Rotated = true
	rep, err := audit.Walk(file, opt, nil)
	if err != nil {
		return withExitCode(2, err)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return withExitCode(2, err)
		}
	} else {
		writeReport(out, file, &rep, opt.Expect)
	}
	switch {
	case rep.Broken != nil:
		return withExitCode(1, fmt.Errorf("audit: %s does not verify: %s", termtext.Escape(file), termtext.Escape(rep.Broken.Error())))
	case rep.Unchained > 0:
		return withExitCode(1, fmt.Errorf("audit: %s: %d record(s) predate the hash chain and cannot be verified", termtext.Escape(file), rep.Unchained))
	}
	return nil
}

func writeReport(w io.Writer, file string, rep *audit.VerifyReport, expect *audit.Anchor) {
	esc := termtext.Escape
	status := "intact"
	switch {
	case rep.Broken != nil:
		status = "BROKEN"
	case rep.Unchained > 0:
		status = "not verifiable"
	}
	fmt.Fprintf(w, "%s: %s\n", esc(file), status)
	files := make([]string, len(rep.Files))
	for i, f := range rep.Files {
		files[i] = esc(f)
	}
	fmt.Fprintf(w, "  files:     %s\n", strings.Join(files, " "))
	fmt.Fprintf(w, "  records:   %d, n=%d..%d\n", rep.Records, rep.FirstN, rep.LastN)
	if rep.Head != "" {
		fmt.Fprintf(w, "  head:      %d:%s\n", rep.LastN, rep.Head) // as --expect-head takes it
	}
	if rep.Closed {
		fmt.Fprintf(w, "  closed:    yes, the log ends with a close record\n")
	} else {
		fmt.Fprintf(w, "  closed:    no: the VM is running, or the log was cut short (crash, kill, or truncation)\n")
	}
	if len(rep.CutShort) > 0 {
		ns := make([]string, len(rep.CutShort))
		for i, n := range rep.CutShort {
			ns[i] = strconv.FormatUint(n, 10)
		}
		fmt.Fprintf(w, "  reopened:  after a session without a close record, at n=%s\n", strings.Join(ns, ","))
	}
	if p := rep.LastPrune; p != nil {
		fmt.Fprintf(w, "  pruned:    %d time(s); last: n=%d..%d (%d file(s), %d bytes)\n", rep.Pruned, p.FirstN, p.LastN, p.Files, p.Bytes)
	}
	if rep.Unchained > 0 {
		fmt.Fprintf(w, "  unchained: %d record(s) at the start predate the hash chain: not verifiable\n", rep.Unchained)
	}
	if rep.Torn != nil {
		fmt.Fprintf(w, "  torn:      %s: a final record cut short mid-write (%d bytes; a crash, never acknowledged): not verified\n", esc(rep.Torn.String()), rep.TornBytes)
	}
	if expect != nil && rep.Expected {
		fmt.Fprintf(w, "  expected:  record n=%d has the hash recorded elsewhere\n", expect.N)
	}
	if b := rep.Broken; b != nil {
		fmt.Fprintf(w, "  broken:    %s (%d broken link(s) in all)\n", esc(b.Error()), rep.Breaks)
	}
}

// parseHead parses N:HASH, as (*audit.Log).Head and the --verify report
// give it.
func parseHead(s string) (audit.Anchor, error) {
	ns, hash, ok := strings.Cut(s, ":")
	n, err := strconv.ParseUint(ns, 10, 64)
	if !ok || err != nil || n == 0 {
		return audit.Anchor{}, fmt.Errorf("audit: --expect-head %q: want N:HASH (a record number and its SHA-256)", s)
	}
	if b, err := hex.DecodeString(hash); err != nil || len(b) != 32 {
		return audit.Anchor{}, fmt.Errorf("audit: --expect-head %q: the hash must be 64 hex digits", s)
	}
	return audit.Anchor{N: n, Hash: strings.ToLower(hash)}, nil
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

// auditOptions are audit's flags.
type auditOptions struct {
	file, verdicts, class, pid, rule, since, expectHead string
	asJSON, rotated, verify                             bool
}

// auditRun verifies the log, or reads it through the filters o names.
func auditRun(stdout, stderr io.Writer, o *auditOptions) error {
	if o.file == "" {
		return withExitCode(2, fmt.Errorf("audit: --file is required"))
	}
	var opt audit.WalkOptions
	if o.expectHead != "" {
		a, err := parseHead(o.expectHead)
		if err != nil {
			return withExitCode(2, err)
		}
		opt.Expect = &a
	}
	if o.verify {
		if o.verdicts != "" || o.class != "" || o.pid != "" || o.rule != "" || o.since != "" {
			return withExitCode(2, fmt.Errorf("audit: --verify checks the whole log: it takes no filter"))
		}
		return verifyLog(stdout, o.file, opt, o.asJSON)
	}
	var f audit.Filter
	if o.verdicts != "" {
		for _, v := range strings.Split(o.verdicts, ",") {
			v = strings.TrimSpace(v)
			switch v {
			case "allow", "alert", "deny", "kill":
			default:
				return withExitCode(2, fmt.Errorf("audit: --verdict %q: expected allow, alert, deny or kill", v))
			}
			f.Verdicts = append(f.Verdicts, v)
		}
	}
	f.Class, f.Rule = o.class, o.rule
	if o.pid != "" {
		n, err := strconv.ParseInt(o.pid, 10, 32)
		if err != nil {
			return withExitCode(2, fmt.Errorf("audit: --pid %q: %v", o.pid, err))
		}
		f.PID, f.HasPID = int32(n), true
	}
	if o.since != "" {
		t, err := parseSince(o.since, time.Now())
		if err != nil {
			return withExitCode(2, err)
		}
		f.Since = t
	}
	opt.Rotated = o.rotated
	return readLog(stdout, stderr, o.file, opt, &f, o.asJSON)
}
