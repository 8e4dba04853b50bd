package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newEventsCmd) }

func newEventsCmd() *cobra.Command {
	var o eventsOptions
	cmd := &cobra.Command{
		Use:   "events NAME",
		Short: "Print a VM's IDS and gate events as JSON lines; -f follows, --before/--after/--limit page through the kept files",
		Long: `Print a VM's events: IDS observations (with 'run --ids-interval'), the
gates' denies and alerts, and the monitor's notices, oldest first. Every
event has a seq, its number in the VM's stream.

Without paging flags it prints the recent history, which keeps IDS
observations and notices even while gate decisions flood. Paging reads
events.jsonl and its rotated files (run --events-max-size, --events-keep):

  --limit N             the last N events
  --before SEQ          the events older than SEQ (--limit, default 100);
                        page back with the first seq of the page before
  --after SEQ           the events newer than SEQ (--limit, default 100);
                        with -f: every one still kept, then new ones, so a
                        consumer that reconnects misses nothing kept
  --limit N -f          the last N, then new ones

A decision repeated in a flood beyond 10 a second per process and rule
(200 a second in all) is written once per second with a "repeat" object:
how many, the first and last time, the last one's path or addresses.

The default output is the monitor's JSON lines, exact. --text prints one
line per event for a person to read, with every guest-chosen string
escaped (\n, \x1b, ...), so that a process name cannot forge a line or send
escape sequences to the terminal. A full page ends with a hint on stderr
naming the flags of the next one.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := o.query(cmd)
			if err != nil {
				return err
			}
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			body, err := c.QueryEvents(cmd.Context(), q)
			if err != nil {
				return err
			}
			defer body.Close()
			pg, err := printEvents(os.Stdout, body, o.text)
			if err == nil && !q.Follow && paged(q) {
				pageHint(os.Stderr, args[0], q, pg)
			}
			return err
		},
	}
	o.flags(cmd)
	return cmd
}

type eventsOptions struct {
	follow, text  bool
	before, after uint64
	limit         int
}

func (o *eventsOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVarP(&o.follow, "follow", "f", false, "keep printing new events")
	f.BoolVar(&o.text, "text", false, "print one readable line per event, guest text escaped, instead of JSON lines")
	f.Uint64Var(&o.before, "before", 0, "page back: the events whose seq is below SEQ (not with -f)")
	f.Uint64Var(&o.after, "after", 0, "read forward: the events whose seq is above SEQ (0: from the oldest kept)")
	f.IntVar(&o.limit, "limit", 0, fmt.Sprintf("at most N events (1 to %d; default %d with --before or --after); alone, the last N", api.MaxEventsLimit, api.DefaultEventsLimit))
}

// query is the API query of the flags, checked.
func (o *eventsOptions) query(cmd *cobra.Command) (api.EventsQuery, error) {
	q := api.EventsQuery{Follow: o.follow, Before: o.before, After: o.after, HasAfter: cmd.Flags().Changed("after"), Limit: o.limit}
	switch {
	case cmd.Flags().Changed("before") && o.before == 0:
		return q, errors.New("--before 0: give an event's seq (1 or more); the events older than it are printed")
	case cmd.Flags().Changed("limit") && o.limit < 1:
		return q, fmt.Errorf("--limit %d: ask for 1 to %d events", o.limit, api.MaxEventsLimit)
	}
	if err := api.ValidateEventsQuery(&q); err != nil {
		return q, fmt.Errorf("events: %w", err)
	}
	return q, nil
}

func paged(q api.EventsQuery) bool { return q.Before > 0 || q.HasAfter || q.Limit > 0 }

// pageInfo is what printEvents saw: how many events, the first and last seq.
type pageInfo struct {
	n           int
	first, last uint64
}

// pageHint tells on w how to get the next page after a full one, or that
// a page was empty.
func pageHint(w io.Writer, name string, q api.EventsQuery, pg pageInfo) {
	switch {
	case pg.n == 0:
		fmt.Fprintln(w, "gatevisor: no events in that range are kept (rotation keeps the newest; --after 0 starts at the oldest kept)")
	case pg.n < q.Limit || pg.first == 0:
	case q.HasAfter:
		fmt.Fprintf(w, "gatevisor: newer events: gatevisor events %s --after %d --limit %d\n", name, pg.last, q.Limit)
	default:
		fmt.Fprintf(w, "gatevisor: older events: gatevisor events %s --before %d --limit %d\n", name, pg.first, q.Limit)
	}
}

// maxEventLine bounds one event line in the stream.
const maxEventLine = 1 << 20

// printEvents copies the event lines of r to w, line by line as they come
// (for --follow), and says how many it saw and their first and last seq.
// Exact, or with text, each JSON line as one text line:
//
//	TIME TYPE key=value ...
//
// with nested objects flattened to dotted keys (process.comm=sshd) in the
// order the monitor wrote them. Every string is escaped (termtext.Escape),
// and quoted if it is empty or holds a space, '"' or '=', so that one event
// is always one line and no value can pass for another key. A line that is
// not a JSON object is printed escaped, after "? ".
func printEvents(w io.Writer, r io.Reader, text bool) (pageInfo, error) {
	var pg pageInfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var ev struct {
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal(line, &ev) == nil && ev.Seq > 0 {
			if pg.first == 0 {
				pg.first = ev.Seq
			}
			pg.last = ev.Seq
		}
		pg.n++
		out := append(append(make([]byte, 0, len(line)+1), line...), '\n')
		if text {
			s, err := eventText(line)
			if err != nil {
				s = "? " + termtext.Escape(string(line))
			}
			out = []byte(s + "\n")
		}
		if _, err := w.Write(out); err != nil {
			return pg, err
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return pg, fmt.Errorf("events: a line longer than %d bytes", maxEventLine)
	}
	return pg, sc.Err()
}

// eventText renders one JSON event object as a text line.
func eventText(line []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", errors.New("not a JSON object")
	}
	var kvs [][2]string
	if err := flattenMembers(dec, "", &kvs, 0); err != nil {
		return "", err
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", errors.New("trailing data after the event")
	}
	tm, typ := "-", "-"
	var rest []string
	for _, kv := range kvs {
		switch kv[0] {
		case "time":
			tm = kv[1]
		case "type":
			typ = kv[1]
		case "vm":
		default:
			rest = append(rest, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(append([]string{tm, typ}, rest...), " "), nil
}

// maxEventDepth bounds the nesting flattenJSON follows.
const maxEventDepth = 16

// flattenJSON reads one JSON value from dec and appends its scalars to kvs
// as (dotted key, text value) pairs, keys and values escaped.
func flattenJSON(dec *json.Decoder, key string, kvs *[][2]string, depth int) error {
	if depth > maxEventDepth {
		return errors.New("event nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		if t == '{' {
			return flattenMembers(dec, key, kvs, depth+1)
		}
		for i := 0; dec.More(); i++ { // '['
			if err := flattenJSON(dec, key+"."+strconv.Itoa(i), kvs, depth+1); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return err
	case string:
		*kvs = append(*kvs, [2]string{key, textValue(t)})
	case json.Number:
		*kvs = append(*kvs, [2]string{key, t.String()})
	case bool:
		*kvs = append(*kvs, [2]string{key, strconv.FormatBool(t)})
	case nil:
		*kvs = append(*kvs, [2]string{key, "null"})
	}
	return nil
}

// flattenMembers reads an object's members, after its '{', and its '}'.
func flattenMembers(dec *json.Decoder, key string, kvs *[][2]string, depth int) error {
	if depth > maxEventDepth {
		return errors.New("event nested too deeply")
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return err
		}
		k, ok := kt.(string)
		if !ok {
			return errors.New("object key is not a string")
		}
		k = textValue(k)
		if key != "" {
			k = key + "." + k
		}
		if err := flattenJSON(dec, k, kvs, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

// textValue escapes s for a key=value line, quoting it when it is empty or
// holds a character that separates fields.
func textValue(s string) string {
	e := termtext.Escape(s)
	if e != "" && !strings.ContainsAny(e, " \"=") {
		return e
	}
	return `"` + strings.ReplaceAll(e, `"`, `\"`) + `"`
}
