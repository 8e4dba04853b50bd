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

	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newEventsCmd) }

func newEventsCmd() *cobra.Command {
	var follow, text bool
	cmd := &cobra.Command{
		Use:   "events NAME",
		Short: "Print a VM's IDS and gate events as JSON lines (needs 'run --ids-interval'); -f follows",
		Long: `Print a VM's events: IDS observations (with 'run --ids-interval') and the
gates' denies and alerts. The default output is the monitor's JSON lines,
exact. --text prints one line per event for a person to read, with every
guest-chosen string escaped (\n, \x1b, ...), so that a process name cannot
forge a line or send escape sequences to the terminal.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientFor(args[0])
			if err != nil {
				return err
			}
			body, err := c.Events(cmd.Context(), follow)
			if err != nil {
				return err
			}
			defer body.Close()
			if text {
				return printEventsText(os.Stdout, body)
			}
			_, err = io.Copy(os.Stdout, body)
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.Flags().BoolVar(&text, "text", false, "print one readable line per event, guest text escaped, instead of JSON lines")
	return cmd
}

// maxEventLine bounds one event line in the stream.
const maxEventLine = 1 << 20

// printEventsText writes each JSON line of r as one text line:
//
//	TIME TYPE key=value ...
//
// with nested objects flattened to dotted keys (process.comm=sshd) in the
// order the monitor wrote them. Every string is escaped (termtext.Escape),
// and quoted if it is empty or holds a space, '"' or '=', so that one event
// is always one line and no value can pass for another key. A line that is
// not a JSON object is printed escaped, after "? ". It writes each line as
// soon as it is read, for --follow.
func printEventsText(w io.Writer, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		s, err := eventText(line)
		if err != nil {
			s = "? " + termtext.Escape(string(line))
		}
		if _, err := io.WriteString(w, s+"\n"); err != nil {
			return err
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return fmt.Errorf("events: a line longer than %d bytes", maxEventLine)
	}
	return sc.Err()
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
