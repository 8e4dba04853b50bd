package fleet

import (
	"encoding/json"
	"time"
)

// Summary is what a person is shown of a fleet event: the fields of an
// audit record or an event-stream point that say what happened. Every
// string may come from the guest: escape it where it is shown.
type Summary struct {
	Time    time.Time
	Number  uint64 // the audit record's n, or the point's seq
	Verdict string // a decision's verdict, or a finding's severity
	Class   string // the event's class (exec, file, net, ...)
	Op      string
	Path    string
	PID     int32
	Comm    string
	Rule    string
	// Text is the rest: an audit chain record's kind (and policy digest), a
	// finding's check and summary, a notice's detail.
	Text string
}

// Summary decodes e's data; fields it does not have stay empty.
func (e Event) Summary() Summary {
	var f struct {
		Time    time.Time `json:"time"`
		N       uint64    `json:"n"`
		Seq     uint64    `json:"seq"`
		Kind    string    `json:"kind"`   // an audit chain record's
		Policy  string    `json:"policy"` // its policy digest
		Verdict string    `json:"verdict"`
		Rule    string    `json:"rule"`
		Detail  string    `json:"detail"`
		// An event point's decision fields are at its top level; an audit
		// record's are in its event.
		Class string `json:"class"`
		PID   int32  `json:"pid"`
		Comm  string `json:"comm"`
		Path  string `json:"path"`
		Event struct {
			Class   string `json:"class"`
			Op      string `json:"op"`
			Path    string `json:"path"`
			Subject struct {
				PID  int32  `json:"pid"`
				Comm string `json:"comm"`
			} `json:"subject"`
		} `json:"event"`
		Finding *struct {
			Check    string `json:"check"`
			Severity string `json:"severity"`
			Summary  string `json:"summary"`
		} `json:"finding"`
		Net *struct {
			Dir     string `json:"dir"`
			Proto   string `json:"proto"`
			Local   string `json:"local"`
			Remote  string `json:"remote"`
			Verdict string `json:"verdict"`
			Rule    string `json:"rule"`
			Subject struct {
				PID  int32  `json:"pid"`
				Comm string `json:"comm"`
			} `json:"subject"`
		} `json:"net"`
	}
	_ = json.Unmarshal(e.Data, &f)
	s := Summary{Time: f.Time, Number: f.Seq, Verdict: f.Verdict, Rule: f.Rule, Class: f.Class, PID: f.PID, Comm: f.Comm, Path: f.Path, Text: f.Detail}
	if e.Kind == KindAudit {
		s.Number, s.Class, s.Op, s.Path, s.PID, s.Comm = f.N, f.Event.Class, f.Event.Op, f.Event.Path, f.Event.Subject.PID, f.Event.Subject.Comm
		if f.Kind != "" {
			s.Text = "audit log: " + f.Kind
			if f.Policy != "" {
				s.Text += " " + f.Policy
			}
		}
	}
	if f.Finding != nil {
		s.Verdict, s.Text = f.Finding.Severity, f.Finding.Check+": "+f.Finding.Summary
	}
	if n := f.Net; n != nil {
		s.Class, s.Op, s.Verdict, s.Rule = "net", n.Proto+" "+n.Dir, n.Verdict, n.Rule
		s.Path = n.Local + " -> " + n.Remote
		s.PID, s.Comm = n.Subject.PID, n.Subject.Comm
	}
	return s
}
