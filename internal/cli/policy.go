package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/kit"
	"github.com/gatevisor/gatevisor/internal/monitor"
	"github.com/gatevisor/gatevisor/internal/policy"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/secserver"
	"github.com/gatevisor/gatevisor/internal/termtext"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

func init() { addSubcommand(newPolicyCmd) }

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, test and explain security policies",
		Long: `Work with gatevisor policy files (see docs/policy.md).

  gatevisor policy check FILE           parse and compile; errors as file:line:col
  gatevisor policy test FILE CASES      run a table of events with expected verdicts
  gatevisor policy explain FILE EVENT   show which rules matched and why`,
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyTestCmd(), newPolicyExplainCmd(), newPolicyLoadCmd())
	return cmd
}

// loadPolicy reads, parses and compiles a policy file and its includes
// (relative to the including file, never leaving the root file's
// directory) the way a VM does: policy.LoadFile, one reader for both.
func loadPolicy(file string) (*policy.Policy, error) {
	snap, err := policy.LoadFile(file)
	if err != nil {
		return nil, err
	}
	return snap.Policy, nil
}

// readCapped reads at most max bytes of file; a larger file is an error,
// and so is one that is not a regular file: a FIFO would block the open
// until a writer comes, a device such as /dev/zero would be read to max.
func readCapped(file string, max int64) ([]byte, error) {
	if err := safefile.CheckRegular(file); err != nil {
		return nil, err
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, max)
	}
	return b, nil
}

func newPolicyCheckCmd() *cobra.Command {
	var (
		kernel  string
		noNet   bool
		noFiles bool
		noScan  bool
		strict  bool
	)
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Parse and compile a policy; report errors as file:line:col, and what no gate would enforce",
		Long: `Parse and compile a policy, then check every statement against what the
gates of a VM observe: the kernel gate (syscalls, file ops, execs, module
loads and unloads, on the kernel given with --kernel or the default kit's),
the network gate (assumed present: a VM started with --net; --no-net checks
for a VM without one), the API gate. A statement no gate would enforce is
printed as a warning; 'run --policy' and 'policy load' refuse such a
policy unless its class is marked advisory. Exit status: 0 when it
compiles (1 with --strict and a warning), 1 on an error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := loadPolicy(args[0])
			if err != nil {
				return withExitCode(1, err)
			}
			prof, kname, note := checkKernel(kernel)
			cov := monitor.Coverage(prof, kname, !noNet, !noScan)
			if !noFiles {
				cov = monitor.FileGateCoverage(cov)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: ok (%d rules, %d flows)\n", args[0], pol.Rules(), len(pol.Flows()))
			if note != "" {
				fmt.Fprintln(out, "note:", note)
			}
			problems := pol.Check(cov)
			warned := 0
			for _, p := range problems {
				kind := "warning"
				if p.Advisory {
					kind = "advisory"
				} else {
					warned++
				}
				fmt.Fprintf(out, "%s: %s\n", kind, termtext.Escape(p.String()))
			}
			var byDefault []string
			for _, n := range pol.Needs() {
				if _, observed := cov.Observers[n.Class]; n.Default && observed && n.Class != event.ClassSyscall {
					byDefault = append(byDefault, n.Class.String())
				}
			}
			if len(byDefault) > 0 {
				fmt.Fprintf(out, "note: the global default decides every %s event no rule decides (a policy with default deny and no `file default: allow` lets the guest open no file)\n", strings.Join(byDefault, ", "))
			}
			if !noNet && pol.Uses(event.ClassNet) {
				fmt.Fprintln(out, "note: the net rules are enforced only on a VM started with --net (without it, run --policy refuses them)")
			}
			for _, e := range pol.CheckResponses(cov) {
				warned++
				fmt.Fprintf(out, "warning: %s\n", termtext.Escape(e.Error()))
			}
			if warned > 0 && strict {
				return withExitCode(1, fmt.Errorf("%d statement(s) no gate would enforce", warned))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kernel, "kernel", "", "check against this guest kernel (bzImage; default: the default kit's, if built)")
	f.BoolVar(&noNet, "no-net", false, "check for a VM without --net (net rules are then not enforceable)")
	f.BoolVar(&noFiles, "no-files", false, "check for a VM without --files (the file gate's ops and setuidExec() are then not enforceable)")
	f.BoolVar(&noScan, "no-scan", false, "check for a VM without --ids-interval (responses to IDS findings are then not possible)")
	f.BoolVar(&strict, "strict", false, "exit 1 when a statement would not be enforced")
	return cmd
}

// checkKernel loads the profile policy check checks syscall names and
// hooks against: --kernel, else the default kit's kernel when the kit is
// built (never building it). nil with a note when there is none.
func checkKernel(path string) (*linux.Profile, string, string) {
	if path == "" {
		dir, err := kit.CacheDir()
		if err == nil {
			if kdir, err := kit.DefaultDir(dir); err == nil {
				if k, err := kit.Load(kdir); err == nil {
					path = k.Kernel
				}
			}
		}
	}
	if path == "" {
		return nil, "", "no guest kernel to check system call names against (run 'gatevisor kit build' or pass --kernel)"
	}
	prof, err := linux.LoadProfile(path, "")
	if err != nil {
		return nil, "", fmt.Sprintf("kernel %s: %v; system call names not checked", path, err)
	}
	return prof, filepath.Base(path), ""
}

// testCase is one line of a CASES file (JSON lines; blank lines and lines
// starting with # are ignored). Cases run in order through one security
// server, so that Flow state carries from case to case for the same PID.
type testCase struct {
	Name  string      `json:"name"`
	Event event.Event `json:"event"`
	Want  string      `json:"want"`            // allow, alert, deny or kill
	Errno string      `json:"errno,omitempty"` // optional, e.g. EPERM
	Rule  string      `json:"rule,omitempty"`  // optional deciding rule
}

func readCases(file string) ([]testCase, error) {
	b, err := readCapped(file, 16<<20)
	if err != nil {
		return nil, err
	}
	var cases []testCase
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		var c testCase
		dec := json.NewDecoder(strings.NewReader(t))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", file, line, err)
		}
		if _, ok := policy.ParseVerdict(c.Want); !ok {
			return nil, fmt.Errorf("%s:%d: want is %q, expected allow, alert, deny or kill", file, line, c.Want)
		}
		if c.Name == "" {
			c.Name = fmt.Sprintf("%s:%d", filepath.Base(file), line)
		}
		cases = append(cases, c)
	}
	return cases, sc.Err()
}

func newPolicyTestCmd() *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "test FILE CASES",
		Short: "Run a policy's unit tests: events with expected verdicts",
		Long: `Run the events in CASES through FILE and compare the verdicts.

CASES holds one JSON object per line (# starts a comment line):
  {"name": "no telnet", "event": {"class": "net", "op": "connect", "dir": "out",
   "proto": "tcp", "addr": "192.0.2.1", "port": 23, "subject": {"pid": 7, "exe": "/bin/busybox"}},
   "want": "deny", "errno": "EACCES"}
Cases run in order through one security server, so Flow state carries over
between cases with the same pid. Exit status 1 if any case fails.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := loadPolicy(args[0])
			if err != nil {
				return withExitCode(2, err)
			}
			cases, err := readCases(args[1])
			if err != nil {
				return withExitCode(2, err)
			}
			srv := secserver.New(pol, secserver.Config{})
			out := cmd.OutOrStdout()
			failed := 0
			for _, c := range cases {
				d := srv.Decide(&c.Event)
				var why []string
				if d.Verdict.String() != c.Want {
					why = append(why, fmt.Sprintf("want %s, got %s", c.Want, d.Verdict))
				}
				if c.Errno != "" && policy.ErrnoName(d.Errno) != c.Errno && fmt.Sprint(d.Errno) != c.Errno {
					why = append(why, fmt.Sprintf("want errno %s, got %s", c.Errno, errnoString(d.Errno)))
				}
				if c.Rule != "" && d.Rule != c.Rule {
					why = append(why, fmt.Sprintf("want rule %q, got %q", c.Rule, d.Rule))
				}
				if len(why) > 0 {
					failed++
					fmt.Fprintf(out, "FAIL %s: %s (rule %s: %s)\n", termtext.Escape(c.Name), termtext.Escape(strings.Join(why, "; ")), termtext.Escape(d.Rule), termtext.Escape(d.Reason))
				} else if verbose {
					fmt.Fprintf(out, "ok   %s: %s by %s\n", termtext.Escape(c.Name), d.Verdict, termtext.Escape(d.Rule))
				}
			}
			fmt.Fprintf(out, "%d cases, %d passed, %d failed\n", len(cases), len(cases)-failed, failed)
			if failed > 0 {
				return withExitCode(1, nil)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print passing cases too")
	return cmd
}

func errnoString(n int32) string {
	if n == 0 {
		return "none"
	}
	if s := policy.ErrnoName(n); s != "" {
		return s
	}
	return fmt.Sprint(n)
}

func newPolicyExplainCmd() *cobra.Command {
	var (
		asJSON  bool
		finding string
	)
	cmd := &cobra.Command{
		Use:   "explain FILE (EVENT | --finding CHECK)",
		Short: "Show which rules match an event and why the verdict, and the responses it would trigger",
		Long: `Evaluate one event against FILE and show every model's vote, and the
responses (response statements) the verdict would trigger.

EVENT is a JSON object, @FILE to read it from a file, or - for stdin:
  gatevisor policy explain policies/seed-002-syscall.policy \
    '{"class":"syscall","op":"open","path":"/etc/passwd","subject":{"pid":42,"exe":"/bin/cat"}}'
Flow state is the initial state of every flow.

--finding CHECK shows the responses an IDS finding of CHECK (e.g. cpu-hog)
would trigger.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := loadPolicy(args[0])
			if err != nil {
				return withExitCode(2, err)
			}
			if finding != "" {
				if len(args) != 1 {
					return withExitCode(2, errors.New("give either an EVENT or --finding CHECK, not both"))
				}
				return explainFinding(cmd.OutOrStdout(), pol, finding, asJSON)
			}
			if len(args) != 2 {
				return withExitCode(2, errors.New("give the EVENT to explain (JSON, @FILE or -), or --finding CHECK"))
			}
			raw := []byte(args[1])
			switch {
			case args[1] == "-":
				raw, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			case strings.HasPrefix(args[1], "@"):
				raw, err = readCapped(args[1][1:], 1<<20)
			}
			if err != nil {
				return withExitCode(2, err)
			}
			ev, err := decodeEventArg(raw)
			if err != nil {
				return withExitCode(2, err)
			}
			r := pol.Explain(&ev, nil)
			out := cmd.OutOrStdout()
			if asJSON {
				type vote struct {
					Model   string `json:"model"`
					Verdict string `json:"verdict"`
					Rule    string `json:"rule"`
					Reason  string `json:"reason"`
				}
				res := struct {
					Event   event.Event `json:"event"`
					Verdict string      `json:"verdict"`
					Errno   string      `json:"errno,omitempty"`
					Rule    string      `json:"rule"`
					Reason  string      `json:"reason"`
					Votes   []vote      `json:"votes"`
					// Enforced says whether a gate observes this event on a
					// VM (with a network); NotEnforced says why not.
					Enforced    bool   `json:"enforced"`
					NotEnforced string `json:"not_enforced,omitempty"`
					// Responses are what the verdict would trigger.
					Responses []string `json:"responses,omitempty"`
				}{Event: ev, Verdict: r.Verdict.String(), Rule: r.Rule, Reason: r.Reason, Responses: verdictResponses(pol, &ev, r.Verdict)}
				res.NotEnforced = explainCoverage(pol, &ev)
				res.Enforced = res.NotEnforced == ""
				if !r.Verdict.Allows() {
					res.Errno = errnoString(r.Errno)
				}
				for _, v := range r.Votes {
					res.Votes = append(res.Votes, vote{v.Model, v.Verdict.String(), v.Rule, v.Reason})
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			printExplain(out, &ev, r)
			if why := explainCoverage(pol, &ev); why != "" {
				fmt.Fprintf(out, "not enforced: %s\n", termtext.Escape(why))
			}
			for _, resp := range verdictResponses(pol, &ev, r.Verdict) {
				fmt.Fprintf(out, "response: %s\n", termtext.Escape(resp))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&finding, "finding", "", "show the responses an IDS finding of this check (e.g. cpu-hog) would trigger")
	return cmd
}

// verdictResponses says what the responses answering verdict v on ev would
// do.
func verdictResponses(pol *policy.Policy, ev *event.Event, v policy.Verdict) []string {
	var out []string
	for _, r := range pol.Responses() {
		if r.OnVerdict(v, ev.Class) {
			out = append(out, fmt.Sprintf("%s (%s) would %s", r.Name, r.Pos, responseDoes(r, fmt.Sprintf("pid %d, the event's subject", ev.Subject.PID))))
		}
	}
	return out
}

// responseDoes says what response r does: to target, a process, or to
// the whole VM.
func responseDoes(r policy.Response, target string) string {
	switch r.Action {
	case policy.RespIsolate:
		return "cut the VM's network off"
	case policy.RespRollback:
		return "roll the VM back to its snapshot \"ready\""
	}
	return r.Action + " " + target
}

// explainFinding prints the responses an IDS finding of check would
// trigger.
func explainFinding(w io.Writer, pol *policy.Policy, check string, asJSON bool) error {
	var out []string
	for _, r := range pol.Responses() {
		if r.OnFinding(check) {
			out = append(out, fmt.Sprintf("%s (%s) would %s (at most %d a minute)", r.Name, r.Pos, responseDoes(r, "the process the finding names"), r.Limit))
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Finding   string   `json:"finding"`
			Responses []string `json:"responses"`
		}{check, out})
	}
	if len(out) == 0 {
		fmt.Fprintf(w, "finding %s: no response answers it (the finding is reported as an event only)\n", termtext.Escape(check))
		return nil
	}
	for _, s := range out {
		fmt.Fprintf(w, "finding %s: response %s\n", termtext.Escape(check), termtext.Escape(s))
	}
	return nil
}

// explainCoverage says why no gate would enforce the verdict on an event
// (no gate observes its class, or not its op), or "" when one would, on a
// VM of the default kit with a network.
func explainCoverage(pol *policy.Policy, ev *event.Event) string {
	prof, kname, _ := checkKernel("")
	cov := monitor.FileGateCoverage(monitor.Coverage(prof, kname, true, true))
	o, ok := cov.Observers[ev.Class]
	switch {
	case !ok:
		return cov.Absent[ev.Class]
	case ev.Class == event.ClassSyscall:
		// The syscall gate observes a syscall only when a policy names it.
		if ops, _ := pol.Ops(ev.Class, o); !slices.Contains(ops, ev.Op) {
			return fmt.Sprintf("this policy names no %q syscall, so the syscall gate does not trap it (only the syscalls a policy names are)", ev.Op)
		}
	case !o.All && !o.AnyOp && !slices.Contains(o.Ops, ev.Op):
		return fmt.Sprintf("%s does not observe %s op %q", o.Gate, ev.Class, ev.Op)
	case o.All && len(o.Ops) > 0 && ev.Op != "" && !slices.Contains(o.Ops, ev.Op):
		return fmt.Sprintf("%s does not observe %s op %q (it observes %s)", o.Gate, ev.Class, ev.Op, strings.Join(o.Ops, ", "))
	}
	return ""
}

// printExplain writes the text form of an explanation. The event's fields
// may be copied from a guest's audit record, and the rules' reasons are the
// policy author's: both are escaped (termtext.Escape), so that no field can
// forge a line or reach the terminal as a control sequence. The --json
// output is not escaped.
func printExplain(w io.Writer, ev *event.Event, r policy.Result) {
	esc := termtext.Escape
	// Event.String quotes paths and names (%q) but not every field; escaping
	// its whole line is safe whatever fields it prints, at the price of a
	// doubled backslash in a quoted field only when some field needs it.
	fmt.Fprintf(w, "event:   %s\n", esc(ev.String()))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tVOTE\tRULE\tWHY")
	for _, v := range r.Votes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", esc(v.Model), v.Verdict, esc(v.Rule), esc(v.Reason))
	}
	tw.Flush()
	verdict := r.Verdict.String()
	if !r.Verdict.Allows() {
		verdict += " (" + errnoString(r.Errno) + ")"
	}
	fmt.Fprintf(w, "verdict: %s by %s: %s\n", verdict, esc(r.Rule), esc(r.Reason))
	fmt.Fprintln(w, "(the strictest vote wins: kill > deny > alert > allow; \"match\" lines are every rule whose condition matched, the first one in a block decides)")
}

// exampleEvent is the event messages show as a model.
const exampleEvent = `'{"class":"file","op":"open","path":"/etc/shadow","subject":{"pid":42,"uid":1000,"exe":"/bin/cat"}}'`

// decodeEventArg decodes policy explain's EVENT: one JSON object with the
// fields of an event (docs/policy.md, "Events"). Its errors say what is
// wrong and show an event that works.
func decodeEventArg(raw []byte) (event.Event, error) {
	var ev event.Event
	fix := "give one JSON object such as " + exampleEvent + ", @FILE or - for stdin (the fields: docs/policy.md, \"Events\")"
	if len(bytes.TrimSpace(raw)) == 0 {
		return ev, fmt.Errorf("event: empty: %s", fix)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err := dec.Decode(&ev)
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return ev, fmt.Errorf("event: not JSON (%v, at byte %d): %s", syn, syn.Offset, fix)
	case errors.As(err, &typ):
		return ev, fmt.Errorf("event: field %q: a JSON %s where %s is expected: %s", typ.Field, typ.Value, typ.Type, fix)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return ev, fmt.Errorf("event: the JSON ends early: %s", fix)
	case err != nil && strings.HasPrefix(err.Error(), "json: unknown field "):
		return ev, fmt.Errorf("event: %s: not a field of an event: %s", strings.TrimPrefix(err.Error(), "json: "), fix)
	case err != nil:
		return ev, fmt.Errorf("event: %v: %s", err, fix)
	}
	if dec.More() {
		return ev, fmt.Errorf("event: more than one JSON value: %s", fix)
	}
	return ev, nil
}
