package monitoring

// Category sorts points for a bounded history: a flood of one category
// must not push the others out.
type Category uint8

// Categories of points.
const (
	// CategoryDecision: what a gate decided (Decision or Net); may repeat.
	CategoryDecision Category = iota
	// CategoryIDS: what the IDS saw change, or a scan that failed.
	CategoryIDS
	// CategoryNotice: the monitor's own notices.
	CategoryNotice
	// NumCategories counts the categories.
	NumCategories
)

func (c Category) String() string {
	switch c {
	case CategoryDecision:
		return "decision"
	case CategoryIDS:
		return "ids"
	case CategoryNotice:
		return "notice"
	}
	return "unknown"
}

// Category returns the point's category.
func (p *Point) Category() Category {
	switch {
	case p.Decision != nil || p.Net != nil:
		return CategoryDecision
	case p.Process != nil || p.Module != nil || p.Socket != nil || p.Finding != nil || p.Kind == ScanError:
		return CategoryIDS
	}
	return CategoryNotice
}

// RepeatKey says which decisions repeat each other: the same kind, subject
// (pid and start time), verdict and rule, and for a network decision the
// same protocol and direction, for a kernel-gate decision the same
// syscall or op. What may differ (paths, addresses, arguments, times) is
// summed up in the aggregate's Repeat.
type RepeatKey struct {
	Kind    Kind
	PID     int32
	Start   uint64
	Verdict string
	Rule    string
	Op      string // syscall or op; a network decision's protocol
	Dir     string // a network decision's direction
	// Merged keys (MergedKey) keep only kind, verdict and rule.
	Merged bool
}

// RepeatKey returns the point's key and true for a decision; IDS
// observations and notices never repeat (false).
func (p *Point) RepeatKey() (RepeatKey, bool) {
	switch {
	case p.Decision != nil:
		d := p.Decision
		op := d.Op
		if d.Syscall != "" {
			op = d.Syscall
		}
		return RepeatKey{Kind: p.Kind, PID: d.PID, Start: d.Start, Verdict: d.Verdict, Rule: d.Rule, Op: op}, true
	case p.Net != nil:
		n := p.Net
		return RepeatKey{Kind: p.Kind, PID: n.Subject.PID, Start: n.Subject.Start, Verdict: n.Verdict, Rule: n.Rule,
			Op: n.Proto, Dir: n.Dir.String()}, true
	}
	return RepeatKey{}, false
}

// MergedKey is k reduced to kind, verdict and rule: the key of an
// aggregate over many subjects. Its values come from the policy and the
// gate, not from the guest, so there are few of them.
func (k RepeatKey) MergedKey() RepeatKey {
	return RepeatKey{Kind: k.Kind, Verdict: k.Verdict, Rule: k.Rule, Merged: true}
}

// Aggregate returns a new aggregate point for decisions like p, counting p
// as its first; merged says its key is a MergedKey. The payload is shared
// with p, not copied: the stream owns both.
func Aggregate(p Point, merged bool) Point {
	a := p
	a.Seq = 0
	a.Repeat = &Repeat{First: p.Time, Merged: merged}
	a.Repeat.Add(&p)
	return a
}

// Add counts p, one more decision of the aggregate, and records it as the
// last one.
func (r *Repeat) Add(p *Point) {
	r.Count++
	r.Last = p.Time
	if p.Time.Before(r.First) {
		r.First = p.Time
	}
	switch {
	case p.Decision != nil:
		r.LastPath = p.Decision.Path
	case p.Net != nil:
		r.LastLocal, r.LastRemote = p.Net.Local, p.Net.Remote
	}
}
