package eventbus

import (
	"context"
	"fmt"
	"io"
)

// Paging limits.
const (
	// DefaultLimit is how many points a page has when Limit is 0.
	DefaultLimit = 100
	// MaxLimit is the largest Limit.
	MaxLimit = 10000
)

// Query selects what Stream writes. The zero Query is the history (the
// recent points of every category); with Before, After or Limit it is a
// page read back from the files (from the history when the bus keeps no
// file). Points are always written oldest first.
type Query struct {
	// Follow keeps the stream open for new points once the backlog is out.
	Follow bool
	// Before, when not 0, pages back: the newest Limit points whose seq is
	// below it.
	Before uint64
	// After, when HasAfter, reads forward: the oldest Limit points whose seq
	// is above it (with Follow and no Limit, every one the files still
	// hold, then new ones: a follower that reconnects misses nothing kept).
	After    uint64
	HasAfter bool
	// Limit bounds a page (0: DefaultLimit; at most MaxLimit). Without
	// Before or After it is the last Limit points.
	Limit int
}

func (q Query) paged() bool { return q.Before > 0 || q.HasAfter || q.Limit > 0 }

func (q Query) limit() int {
	switch {
	case q.Limit > 0:
		return min(q.Limit, MaxLimit)
	case q.HasAfter && q.Follow:
		return 0
	}
	return DefaultLimit
}

// Stream writes the points q selects to w as JSON lines and, with
// q.Follow, new points as they come, until ctx ends, the bus closes, w
// fails or the follower falls too far behind. flush is called after the
// backlog and after each new point. An error before anything was written
// (the files cannot be read) is returned before w is touched.
func (b *Bus) Stream(ctx context.Context, w io.Writer, q Query, flush func()) error {
	b.mu.Lock()
	var ch chan []byte
	if q.Follow && !b.closed {
		ch = make(chan []byte, followBuffer)
		b.subs[ch] = struct{}{}
	}
	// Every point up to cut is in the files (or failed to get there) and
	// in the history; every later one reaches ch.
	cut := b.seq
	var past []entry
	var files []readFile
	var err error
	fromFiles := q.paged() && b.log != nil
	if fromFiles {
		files, err = b.log.openForRead()
	} else {
		past = b.historyLocked()
	}
	b.mu.Unlock()
	defer b.unsubscribe(ch)
	if err != nil {
		return fmt.Errorf("events log: %w", err)
	}
	defer closeAll(files)
	switch {
	case !q.paged():
		err = writeEntries(w, past)
	case fromFiles:
		err = backlogFiles(w, files, q, cut)
	default:
		err = writeEntries(w, pageEntries(past, q, cut))
	}
	if err != nil {
		return err
	}
	flush()
	if ch == nil {
		return nil
	}
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				return nil
			}
			if _, err := w.Write(l); err != nil {
				return err
			}
			flush()
		case <-ctx.Done():
			return nil
		}
	}
}

func (b *Bus) unsubscribe(ch chan []byte) {
	if ch == nil {
		return
	}
	b.mu.Lock()
	if _, ok := b.subs[ch]; ok {
		delete(b.subs, ch)
		close(ch)
	}
	b.mu.Unlock()
}

// upper is the exclusive upper bound of a page's seqs: Before, and nothing
// after cut (what follows reaches a follower live).
func (q Query) upper(cut uint64) uint64 {
	if q.Before > 0 && q.Before <= cut {
		return q.Before
	}
	return cut + 1
}

// backlogFiles writes the page q selects from the files.
func backlogFiles(w io.Writer, files []readFile, q Query, cut uint64) error {
	if q.HasAfter {
		_, err := forward(w, files, q.After, q.upper(cut), q.limit())
		return err
	}
	lines, err := backward(files, q.upper(cut), q.limit())
	if err != nil {
		return err
	}
	for _, l := range lines {
		if _, err := w.Write(l); err != nil {
			return err
		}
	}
	return nil
}

// pageEntries is the page q selects from the history (sorted by seq).
func pageEntries(past []entry, q Query, cut uint64) []entry {
	upper, limit := q.upper(cut), q.limit()
	var in []entry
	for _, e := range past {
		if e.seq < upper && (!q.HasAfter || e.seq > q.After) {
			in = append(in, e)
		}
	}
	switch {
	case limit == 0 || len(in) <= limit:
		return in
	case q.HasAfter:
		return in[:limit]
	}
	return in[len(in)-limit:]
}

func writeEntries(w io.Writer, es []entry) error {
	for _, e := range es {
		if _, err := w.Write(e.line); err != nil {
			return err
		}
	}
	return nil
}
