package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/monitoring"
)

// The filter's choices.
var (
	verdicts = []string{"allow", "alert", "deny", "kill"}
	classes  = []string{"exec", "file", "syscall", "module", "net", "finding", "ids", "notice"}
)

// filter selects events: by verdict, class (see eventView.Class) and pid;
// a zero field selects all.
type filter struct {
	Verdict, Class string
	PID            int
}

// parseFilter reads a filter from a page's or stream's query.
func parseFilter(q url.Values) (filter, error) {
	f := filter{Verdict: q.Get("verdict"), Class: q.Get("class")}
	if f.Verdict != "" && !contains(verdicts, f.Verdict) {
		return f, fmt.Errorf("verdict %q: use one of %s, or none for every event", f.Verdict, strings.Join(verdicts, ", "))
	}
	if f.Class != "" && !contains(classes, f.Class) {
		return f, fmt.Errorf("class %q: use one of %s, or none for every event", f.Class, strings.Join(classes, ", "))
	}
	if v := strings.TrimSpace(q.Get("pid")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > api.MaxPID {
			return f, fmt.Errorf("pid %q: give a process id from 1 to %d, or none for every process", v, api.MaxPID)
		}
		f.PID = n
	}
	return f, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// values is f as query parameters.
func (f filter) values() url.Values {
	q := url.Values{}
	if f.Verdict != "" {
		q.Set("verdict", f.Verdict)
	}
	if f.Class != "" {
		q.Set("class", f.Class)
	}
	if f.PID != 0 {
		q.Set("pid", strconv.Itoa(f.PID))
	}
	return q
}

func (f filter) match(v eventView) bool {
	return (f.Verdict == "" || f.Verdict == v.Verdict) && (f.Class == "" || f.Class == v.Class) && (f.PID == 0 || f.PID == v.PID)
}

// eventView is one event as the dashboard shows it; the stream sends it as
// JSON and the page's script writes every field as text, never as markup.
type eventView struct {
	Seq     uint64 `json:"seq"`
	Time    string `json:"time"`
	Type    string `json:"type"`
	Class   string `json:"class"`
	Verdict string `json:"verdict,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Comm    string `json:"comm,omitempty"`
	Text    string `json:"text"`
	// Severity is a finding's.
	Severity string `json:"severity,omitempty"`
	// At is the event's time on the monitor's clock (benchmarks measure
	// from it).
	At time.Time `json:"at"`
}

// maxText caps an event's text: guest-chosen strings can be long.
const maxText = 2048

// viewOf is the view of one event of the stream.
func viewOf(p monitoring.Point) eventView {
	v := eventView{Seq: p.Seq, Time: p.Time.Local().Format("15:04:05.000"), At: p.Time, Type: string(p.Kind)}
	var b strings.Builder
	switch {
	case p.Decision != nil:
		dc := p.Decision
		v.Class, v.Verdict, v.PID, v.Comm = dc.Class, dc.Verdict, int(dc.PID), dc.Comm
		op := dc.Op
		if op == "" {
			op = dc.Syscall
		}
		fmt.Fprintf(&b, "%s %s", dc.Verdict, dc.Class)
		if op != "" && op != dc.Class {
			fmt.Fprintf(&b, " %s", op)
		}
		switch {
		case dc.Path != "":
			fmt.Fprintf(&b, " %s", dc.Path)
		case dc.Module != "":
			fmt.Fprintf(&b, " module %s", dc.Module)
		}
		fmt.Fprintf(&b, " by pid %d (%s, uid %d), rule %s", dc.PID, dc.Comm, dc.UID, dc.Rule)
		if dc.Reason != "" {
			fmt.Fprintf(&b, ": %s", dc.Reason)
		}
	case p.Net != nil:
		n := p.Net
		v.Class, v.Verdict, v.PID, v.Comm = "net", n.Verdict, int(n.Subject.PID), n.Subject.Comm
		fmt.Fprintf(&b, "%s %s %s %s → %s by pid %d (%s), %s", n.Verdict, n.Proto, n.Dir, n.Local, n.Remote, n.Subject.PID, n.Subject.Comm, n.Action)
		if n.Rule != "" {
			fmt.Fprintf(&b, ", rule %s", n.Rule)
		}
		if n.Reason != "" {
			fmt.Fprintf(&b, ": %s", n.Reason)
		}
	case p.Finding != nil:
		f := p.Finding
		v.Class, v.PID, v.Comm, v.Severity = "finding", f.PID, f.Name, f.Severity
		if p.Kind == monitoring.Cleared {
			b.WriteString("cleared: ")
		}
		fmt.Fprintf(&b, "[%s] %s: %s", f.Severity, f.Check, f.Summary)
	case p.Process != nil:
		t := p.Process
		v.Class, v.PID, v.Comm = "ids", t.PID, t.Comm
		fmt.Fprintf(&b, "%s: pid %d (%s) %s, parent %d, uid %d", p.Kind, t.PID, t.Comm, t.Exe, t.PPID, t.UID)
	case p.Module != nil:
		v.Class = "ids"
		fmt.Fprintf(&b, "%s: %s", p.Kind, p.Module.Name)
	case p.Socket != nil:
		so := p.Socket
		v.Class, v.PID, v.Comm = "ids", so.PID, so.Comm
		fmt.Fprintf(&b, "%s: %s %s:%d by pid %d (%s)", p.Kind, so.Proto, so.LocalAddr, so.LocalPort, so.PID, so.Comm)
	case p.Kind == monitoring.ScanError:
		v.Class = "ids"
		b.WriteString("scan error")
	default:
		v.Class = "notice"
		b.WriteString(p.Detail)
	}
	if p.Error != "" {
		fmt.Fprintf(&b, " (%s)", p.Error)
	}
	if p.Repeat != nil {
		fmt.Fprintf(&b, " ×%d until %s", p.Repeat.Count, p.Repeat.Last.Local().Format("15:04:05"))
		if p.Repeat.LastPath != "" {
			fmt.Fprintf(&b, ", last %s", p.Repeat.LastPath)
		}
	}
	v.Text = b.String()
	if len(v.Text) > maxText {
		v.Text = strings.ToValidUTF8(v.Text[:maxText], "") + "…"
	}
	return v
}

// Bounds of the page's backlog.
const (
	backlogRead = 500 // events read back
	backlogShow = 100 // matching events shown
)

// backlog reads the recent events and keeps those f selects, newest
// first; last is the newest event's seq (matching or not), which the
// stream continues from.
func backlog(ctx context.Context, c *apiclient.Client, f filter) (out []eventView, last uint64, errText string) {
	body, err := c.QueryEvents(ctx, api.EventsQuery{Limit: backlogRead})
	if err != nil {
		return nil, 0, err.Error()
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		var p monitoring.Point
		if json.Unmarshal(sc.Bytes(), &p) != nil {
			continue
		}
		last = max(last, p.Seq)
		if v := viewOf(p); f.match(v) {
			out = append(out, v)
		}
	}
	if err := sc.Err(); err != nil {
		errText = "reading the events: " + err.Error()
	}
	if len(out) > backlogShow {
		out = out[len(out)-backlogShow:]
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, last, errText
}

// maxEventLine bounds one event's JSON line.
const maxEventLine = 1 << 20

// Timings of the stream.
const (
	keepAlive  = 15 * time.Second
	writeLimit = 30 * time.Second // a browser that reads nothing for this long is dropped
)

// stream sends a VM's events that the filter selects as server-sent
// events (event "ev", id the seq), from after (or Last-Event-ID when the
// browser reconnects), then live. What ends it is sent as event "end";
// a refusal of the API (vm.events) as event "failure", with its reason.
func (d *Dashboard) stream(w http.ResponseWriter, r *http.Request, s *session) {
	vm, code, why := d.find(r.PathValue("name"))
	if why != "" {
		http.Error(w, why, code)
		return
	}
	q := r.URL.Query()
	f, err := parseFilter(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var after uint64
	hasAfter := false
	for _, v := range []string{q.Get("after"), r.Header.Get("Last-Event-ID")} {
		if v == "" {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			http.Error(w, fmt.Sprintf("after %q: give an event's seq", v), http.StatusBadRequest)
			return
		}
		after, hasAfter = n, true
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event string, id uint64, v any) bool {
		data, _ := json.Marshal(v)
		_ = rc.SetWriteDeadline(time.Now().Add(writeLimit))
		if id != 0 {
			fmt.Fprintf(w, "id: %d\n", id)
		}
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data)
		return rc.Flush() == nil
	}
	type note struct {
		Text string `json:"text"`
	}
	ctx := r.Context()
	eq := api.EventsQuery{Follow: true, Limit: 50}
	if hasAfter {
		eq = api.EventsQuery{Follow: true, After: after, HasAfter: true}
	}
	body, err := d.client(vm, s).QueryEvents(ctx, eq)
	if err != nil {
		send("failure", 0, note{err.Error()})
		return
	}
	defer body.Close()
	lines := make(chan []byte, 64)
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 64<<10), maxEventLine)
		for sc.Scan() {
			select {
			case lines <- append([]byte(nil), sc.Bytes()...):
			case <-ctx.Done():
				return
			}
		}
		done <- sc.Err()
	}()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	if !send("open", 0, note{"live"}) {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-done:
			why := "the VM's event stream ended (the VM stopped?)"
			if err != nil {
				why += ": " + err.Error()
			}
			send("end", 0, note{why})
			return
		case <-tick.C:
			_ = rc.SetWriteDeadline(time.Now().Add(writeLimit))
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case line := <-lines:
			var p monitoring.Point
			if json.Unmarshal(line, &p) != nil {
				continue
			}
			if v := viewOf(p); f.match(v) && !send("ev", p.Seq, v) {
				return
			}
		}
	}
}
