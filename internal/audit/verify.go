package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrBroken is matched (errors.Is) by every *Break.
var ErrBroken = errors.New("audit: hash chain broken")

// ErrNotAuditLog is wrapped when the input has no audit record at all.
var ErrNotAuditLog = errors.New("not a gatevisor audit log")

// Position is a line of one file of the log.
type Position struct {
	File string `json:"file"`
	Line int    `json:"line"` // from 1; 0 for the last line of a file read from its end
}

func (p Position) String() string {
	if p.Line == 0 {
		return p.File + " (last line)"
	}
	return fmt.Sprintf("%s:%d", p.File, p.Line)
}

// Problem says what is wrong at a broken link.
type Problem string

const (
	ProblemEdited       Problem = "edited"        // a record's bytes changed
	ProblemMissing      Problem = "missing"       // records were deleted
	ProblemInserted     Problem = "inserted"      // a record or line was added
	ProblemOutOfOrder   Problem = "out of order"  // records were moved
	ProblemNotRecord    Problem = "not a record"  // a line that is not a record (or longer than MaxRecord)
	ProblemHeadMismatch Problem = "head mismatch" // the log disagrees with WalkOptions.Expect
	ProblemEmpty        Problem = "empty"         // no records at all
)

// Break is the first broken link of a log's chain: where it is, which
// record it names and what is wrong.
type Break struct {
	Position
	N       uint64  `json:"n"` // the record named; for missing records the first missing; 0 if not a record
	Problem Problem `json:"problem"`
	Detail  string  `json:"detail"` // e.g. "record n=17 was edited (its hash does not match record 18's prev)"
}

func (b *Break) Error() string { return b.Position.String() + ": " + b.Detail }

// Is makes errors.Is(b, ErrBroken) true.
func (b *Break) Is(target error) bool { return target == ErrBroken }

// Anchor is a record's number and the hash of its line: a head recorded
// elsewhere ((*Log).Head of the running monitor, or a copy taken earlier).
type Anchor struct {
	N    uint64 `json:"n"`
	Hash string `json:"hash"`
}

// WalkOptions configure Walk.
type WalkOptions struct {
	// Rotated reads path.N ... path.1 before path. Without it only path is
	// read, and its first record is checked against the last record of
	// path.1 if there is one.
	Rotated bool
	// Expect, if not nil, is a head recorded elsewhere: record Expect.N
	// must be in the log with hash Expect.Hash.
	Expect *Anchor
}

// VerifyReport is what Walk and Verify found.
type VerifyReport struct {
	Files     []string  `json:"files"`            // read, oldest first
	Anchor    *Position `json:"anchor,omitempty"` // without Rotated: the record of path.1 the first record was checked against
	Records   int       `json:"records"`          // complete lines that are records, chain records included
	Bad       int       `json:"bad"`              // complete lines that are not
	FirstN    uint64    `json:"first_n"`          // first record read
	LastN     uint64    `json:"last_n"`           // last record read
	Head      string    `json:"head"`             // hash of the last record's line: compare with (*Log).Head
	Closed    bool      `json:"closed"`           // the last record is a close record
	Opens     int       `json:"opens"`            // open records
	CutShort  []uint64  `json:"cut_short"`        // open records after a session that ended without a close record (at most 16)
	Pruned    int       `json:"pruned"`           // pruned records
	LastPrune *Prune    `json:"last_prune"`       // what the last pruned record says
	Unchained int       `json:"unchained"`        // records at the start without prev: written before the chain, not verifiable
	Torn      *Position `json:"torn,omitempty"`   // a final line cut short mid-write: not tampering, not verified
	TornBytes int       `json:"torn_bytes,omitempty"`
	Expected  bool      `json:"expected"`         // WalkOptions.Expect was found and matched
	Broken    *Break    `json:"broken,omitempty"` // the first broken link; nil if none
	Breaks    int       `json:"breaks"`           // links that do not hold, the first included
}

// Intact reports whether every record read is chained to the one before it
// and no link is broken.
func (r *VerifyReport) Intact() bool { return r.Broken == nil && r.Unchained == 0 }

// Err returns the first broken link as an error (matching ErrBroken), or nil.
func (r *VerifyReport) Err() error {
	if r.Broken == nil {
		return nil
	}
	return r.Broken
}

// maxCutShort bounds VerifyReport.CutShort.
const maxCutShort = 16

// notLogAfter is how many lines that are not records, with no record
// before them, make the last file read not an audit log.
const notLogAfter = 4

// Verify checks the whole log at path: path.N ... path.1, then path. Its
// error is for input that cannot be checked (I/O, not a regular file, not
// an audit log); a broken chain is in the report.
func Verify(path string) (VerifyReport, error) {
	return Walk(path, WalkOptions{Rotated: true}, nil)
}

// Walk reads the log at path, checks its chain as Verify does, and calls
// fn, if not nil, for every complete record, decision and chain records
// alike, with its exact line (without the newline; valid only during the
// call). Lines that are not records are not passed to fn. fn returning an
// error stops Walk with that error.
func Walk(path string, opt WalkOptions, fn func(r *Record, line []byte) error) (VerifyReport, error) {
	c := &checker{opt: opt}
	if !opt.Rotated {
		a, err := anchorOf(rotatedName(path, 1))
		if err != nil {
			return c.rep, err
		}
		if a != nil {
			c.p, c.unchained = a, a.prev == ""
			c.rep.Anchor = &a.pos
		}
	}
	files := logFiles(path, opt.Rotated)
	for i, name := range files {
		f, err := openRegular(name)
		if err != nil {
			return c.rep, err
		}
		err = c.file(name, f, i == len(files)-1, fn)
		f.Close()
		if err != nil {
			return c.rep, err
		}
	}
	if err := c.finish(); err != nil {
		return c.rep, err
	}
	return c.rep, nil
}

// anchorOf returns the last record of name, or nil if name does not exist
// or has no complete line.
func anchorOf(name string) (*link, error) {
	if _, err := os.Lstat(name); err != nil {
		return nil, nil
	}
	f, err := openRegular(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	_, last, err := tail(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("audit: %s: %w", name, err)
	}
	if last == nil {
		return nil, nil
	}
	return newLink(Position{File: name}, last, false, nil), nil
}

// link is one line of the chain.
type link struct {
	pos  Position
	ok   bool // the line is a record
	n    uint64
	kind Kind
	prev string
	hash string // "" for a line longer than MaxRecord
}

// newLink parses line into r (if not nil) and describes it.
func newLink(pos Position, line []byte, long bool, r *Record) *link {
	x := &link{pos: pos}
	if long {
		return x
	}
	x.hash = hashLine(line)
	if r == nil {
		r = new(Record)
	}
	if json.Unmarshal(line, r) == nil && r.N > 0 {
		x.ok, x.n, x.kind, x.prev = true, r.N, r.Kind, r.Prev
	}
	return x
}

// pending is a broken link waiting for the record after it, which tells
// an edit from an insertion or a reordering.
type pending struct {
	pp, p, x *link // x does not chain to p; pp is before p (may be nil)
}

// checker checks a chain fed to it line by line. It holds only a few links,
// never lines, so it needs no more memory for a longer log.
type checker struct {
	opt WalkOptions
	rep VerifyReport

	pp, p      *link // the two links before the next line
	pend       *pending
	unchained  bool   // in the run of records without prev at the start
	first      *link  // the first record, if only a pruned record can explain it
	startOK    bool   // a pruned record explains first
	startBad   *link  // a pruned record at the n before first, with another hash
	prunedTo   uint64 // the last n pruned records account for, below first
	expectSeen bool
	notRecord  bool // the torn line does not look like a record
	firstBad   Position
}

func (c *checker) file(name string, r io.Reader, last bool, fn func(*Record, []byte) error) error {
	c.rep.Files = append(c.rep.Files, name)
	lr := newLineReader(r)
	for {
		line, complete, long, err := lr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: read %s: %w", name, err)
		}
		pos := Position{File: name, Line: lr.Line()}
		if !complete {
			if c.rep.Torn == nil {
				c.rep.Torn, c.rep.TornBytes = &pos, len(line)
			}
			if long || !tornRecord(line[:min(len(line), 8)]) {
				c.notRecord = true
			}
			continue
		}
		var rec Record
		x := newLink(pos, line, long, &rec)
		c.add(x, &rec)
		if !x.ok {
			if c.rep.Bad == 1 {
				c.firstBad = pos
			}
			if last && c.rep.Records == 0 && c.rep.Bad >= notLogAfter {
				return c.notLog()
			}
			continue
		}
		if fn != nil {
			if err := fn(&rec, line); err != nil {
				return err
			}
		}
	}
}

func (c *checker) notLog() error {
	return fmt.Errorf("audit: %s: %w (line %d is not an audit record)", c.firstBad.File, ErrNotAuditLog, c.firstBad.Line)
}

// add checks the link from the line before to x.
func (c *checker) add(x *link, r *Record) {
	if x.ok {
		c.rep.Records++
		if c.rep.FirstN == 0 {
			c.rep.FirstN = x.n
		}
		c.rep.LastN, c.rep.Head = x.n, x.hash
	} else {
		c.rep.Bad++
	}
	if c.pend != nil {
		c.classify(x)
	}
	p := c.p
	switch {
	case p == nil:
		c.start(x)
	case c.unchained && x.ok && x.prev == "":
		c.rep.Unchained++
		if !p.ok || x.n != p.n+1 {
			c.broken(x)
		}
	default:
		c.unchained = false
		if !x.ok || !p.ok || x.prev != p.hash || x.n != p.n+1 {
			c.broken(x)
		}
	}
	if x.ok {
		switch x.kind {
		case KindOpen:
			c.rep.Opens++
			if p != nil && p.ok && p.kind != KindClose && len(c.rep.CutShort) < maxCutShort {
				c.rep.CutShort = append(c.rep.CutShort, x.n)
			}
		case KindPruned:
			if r.Pruned != nil {
				c.rep.Pruned++
				pr := *r.Pruned
				c.rep.LastPrune = &pr
				switch {
				case c.first == nil:
				case pr.LastN+1 == c.first.n:
					if pr.LastHash == c.first.prev {
						c.startOK = true
					} else if c.startBad == nil {
						c.startBad = x
					}
				case pr.LastN+1 < c.first.n:
					c.prunedTo = max(c.prunedTo, pr.LastN)
				}
			}
		}
		if e := c.opt.Expect; e != nil && x.n == e.N && !c.expectSeen {
			c.expectSeen = true
			c.rep.Expected = x.hash == e.Hash
			if !c.rep.Expected && c.rep.Broken == nil && c.pend == nil {
				c.rep.Broken = &Break{Position: x.pos, N: x.n, Problem: ProblemHeadMismatch,
					Detail: fmt.Sprintf("record n=%d does not match the head recorded elsewhere (its hash is %.16s…, the head says %.16s…): the log was rewritten from n=%d on, or before", x.n, x.hash, e.Hash, x.n)}
				c.rep.Breaks++
			}
		}
	}
	c.pp, c.p = c.p, x
}

// start checks the first line read when no anchor precedes it.
func (c *checker) start(x *link) {
	switch {
	case !x.ok:
		c.breakAt(Break{Position: x.pos, Problem: ProblemNotRecord,
			Detail: fmt.Sprintf("line %d is not an audit record (edited or corrupt)", x.pos.Line)})
	case x.prev == "":
		c.unchained = true
		c.rep.Unchained++
	case x.prev == Genesis:
		if x.n != 1 {
			c.breakAt(Break{Position: x.pos, N: x.n, Problem: ProblemEdited,
				Detail: fmt.Sprintf("record n=%d was edited (it claims to start a log, but only n=1 does)", x.n)})
		}
	default:
		c.first = x
	}
}

// breakAt records b as the first broken link if there is none yet.
func (c *checker) breakAt(b Break) {
	c.rep.Breaks++
	if c.rep.Broken == nil {
		c.rep.Broken = &b
	}
}

// broken notes that x does not chain to c.p.
func (c *checker) broken(x *link) {
	c.rep.Breaks++
	if c.rep.Broken == nil && c.pend == nil {
		c.pend = &pending{pp: c.pp, p: c.p, x: x}
	}
}

// classify names the pending broken link, looking at y, the record after it
// (nil at the end).
func (c *checker) classify(y *link) {
	pd := c.pend
	c.pend = nil
	pp, p, x := pd.pp, pd.p, pd.x
	if y != nil && !y.ok {
		y = nil
	}
	var b Break
	switch {
	case pp != nil && pp.ok && p.ok && x.ok && x.prev == pp.hash && x.n == pp.n+1:
		b = Break{Position: p.pos, N: p.n, Problem: ProblemInserted,
			Detail: fmt.Sprintf("inserted record n=%d: the record after it, n=%d, chains to n=%d before it", p.n, x.n, pp.n)}
	case y != nil && x.ok && x.prev == y.hash:
		b = Break{Position: x.pos, N: x.n, Problem: ProblemOutOfOrder,
			Detail: fmt.Sprintf("records out of order: n=%d comes before n=%d, which it chains to", x.n, y.n)}
	case y != nil && p.ok && y.prev == p.hash && y.n == p.n+1:
		b = Break{Position: x.pos, N: x.n, Problem: ProblemInserted,
			Detail: fmt.Sprintf("inserted record n=%d: the record after it, n=%d, chains to n=%d before it", x.n, y.n, p.n)}
		switch {
		case !x.ok:
			b.Detail = fmt.Sprintf("inserted line that is not a record: the record after it, n=%d, chains to n=%d before it", y.n, p.n)
		case x.n > y.n:
			b.Problem = ProblemOutOfOrder
			b.Detail = fmt.Sprintf("records out of order: n=%d comes before n=%d (moved here from later, or inserted)", x.n, y.n)
		}
	case !p.ok:
		b = Break{Position: p.pos, Problem: ProblemNotRecord,
			Detail: "the line before is not an audit record (edited or corrupt)"}
	case !x.ok:
		b = Break{Position: x.pos, N: p.n + 1, Problem: ProblemNotRecord,
			Detail: fmt.Sprintf("line %d is not an audit record (edited or corrupt; n=%d expected)", x.pos.Line, p.n+1)}
	case x.prev == p.hash:
		b = Break{Position: x.pos, N: p.n + 1, Problem: ProblemEdited,
			Detail: fmt.Sprintf("record n=%d was edited (it says n=%d)", p.n+1, x.n)}
	case x.n == p.n+1 && y != nil && y.n == x.n+1 && y.prev != x.hash:
		b = Break{Position: x.pos, N: x.n, Problem: ProblemEdited,
			Detail: fmt.Sprintf("record n=%d was edited (its prev is not record %d's hash, and its hash is not record %d's prev)", x.n, p.n, y.n)}
	case x.n == p.n+1:
		b = Break{Position: p.pos, N: p.n, Problem: ProblemEdited,
			Detail: fmt.Sprintf("record n=%d was edited (its hash does not match record %d's prev)", p.n, x.n)}
	case x.n > p.n+1 && y != nil && y.n > p.n && y.n < x.n:
		b = Break{Position: x.pos, N: x.n, Problem: ProblemOutOfOrder,
			Detail: fmt.Sprintf("records out of order: n=%d comes before n=%d", x.n, y.n)}
	case x.n == p.n+2:
		b = Break{Position: x.pos, N: p.n + 1, Problem: ProblemMissing,
			Detail: fmt.Sprintf("record n=%d is missing (n=%d follows n=%d)", p.n+1, x.n, p.n)}
	case x.n > p.n+2:
		b = Break{Position: x.pos, N: p.n + 1, Problem: ProblemMissing,
			Detail: fmt.Sprintf("records n=%d to %d are missing (n=%d follows n=%d)", p.n+1, x.n-1, x.n, p.n)}
	case x.n == p.n:
		b = Break{Position: x.pos, N: x.n, Problem: ProblemInserted,
			Detail: fmt.Sprintf("inserted record: n=%d appears twice", x.n)}
	default:
		b = Break{Position: x.pos, N: x.n, Problem: ProblemOutOfOrder,
			Detail: fmt.Sprintf("records out of order: n=%d follows n=%d", x.n, p.n)}
	}
	if c.rep.Broken == nil {
		c.rep.Broken = &b
	}
}

// finish classifies a break pending at the end and checks what only the
// whole log shows.
func (c *checker) finish() error {
	if c.pend != nil {
		c.classify(nil)
	}
	if c.rep.Records == 0 && (c.rep.Bad > 0 || c.notRecord) {
		if c.rep.Bad == 0 {
			c.firstBad = *c.rep.Torn
		}
		return c.notLog()
	}
	if c.first != nil && !c.startOK {
		x := c.first
		from := c.prunedTo + 1
		b := Break{Position: x.pos, N: from, Problem: ProblemMissing,
			Detail: fmt.Sprintf("records n=%d to %d are missing: the oldest record, n=%d, does not start a log and no pruned record says they were deleted (a file was deleted or cut at its start)", from, x.n-1, x.n)}
		if from == x.n-1 {
			b.Detail = fmt.Sprintf("record n=%d is missing: the oldest record, n=%d, does not start a log and no pruned record says it was deleted (a file was deleted or cut at its start)", from, x.n)
		}
		if c.startBad != nil {
			b = Break{Position: x.pos, N: x.n, Problem: ProblemEdited,
				Detail: fmt.Sprintf("record n=%d was edited, or the pruned record n=%d was: its prev is not the hash of the last pruned record", x.n, c.startBad.n)}
		}
		// It is the earliest link of all, so it comes first; but a broken
		// link found already names an edited pruned record more precisely.
		if c.startBad == nil || c.rep.Broken == nil {
			c.rep.Broken = &b
		}
		c.rep.Breaks++
	}
	if e := c.opt.Expect; e != nil && !c.expectSeen && c.rep.Broken == nil {
		pos := Position{}
		if c.p != nil {
			pos = c.p.pos
		}
		c.breakAt(Break{Position: pos, N: e.N, Problem: ProblemHeadMismatch,
			Detail: fmt.Sprintf("record n=%d is missing: the head recorded elsewhere says it was written, but the log ends at n=%d (cut short, or rewritten)", e.N, c.rep.LastN)})
	}
	if c.rep.Records == 0 && c.rep.Anchor == nil && c.rep.Broken == nil {
		pos := Position{}
		if len(c.rep.Files) > 0 {
			pos = Position{File: c.rep.Files[len(c.rep.Files)-1], Line: 1}
		}
		c.breakAt(Break{Position: pos, Problem: ProblemEmpty,
			Detail: "the log has no complete record (a log gatevisor opened starts with an open record: it was emptied, or never written)"})
	}
	c.rep.Closed = c.p != nil && c.p.ok && c.p.kind == KindClose
	return nil
}
