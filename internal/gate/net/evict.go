package net

// evictList is a FIFO of flows the table may give up when it is full,
// oldest first. Flows link into it themselves (no allocation per flow).
// Preconditions: guarded by Gate.mu.
type evictList struct {
	head, tail *flow
	n          int
}

// push appends f, taking it off any list it is on first.
func (l *evictList) push(f *flow) {
	if f.evl != nil {
		f.evl.remove(f)
	}
	f.evl, f.evPrev, f.evNx = l, l.tail, nil
	if l.tail != nil {
		l.tail.evNx = f
	} else {
		l.head = f
	}
	l.tail = f
	l.n++
}

// remove takes f off l.
func (l *evictList) remove(f *flow) {
	if f.evl != l {
		return
	}
	if f.evPrev != nil {
		f.evPrev.evNx = f.evNx
	} else {
		l.head = f.evNx
	}
	if f.evNx != nil {
		f.evNx.evPrev = f.evPrev
	} else {
		l.tail = f.evPrev
	}
	f.evl, f.evPrev, f.evNx = nil, nil, nil
	l.n--
}

// unlist takes f off whatever list it is on.
func unlist(f *flow) {
	if f.evl != nil {
		f.evl.remove(f)
	}
}

// evictable are the table's eviction lists, in the order the table gives
// up their flows when it is full: denied flows (their answer is a reset or
// a drop either way), closed TCP connections, then allowed flows the other
// side never answered. Established, answered flows and flows waiting for a
// decision are never evicted: a guest cannot push out another process's
// connections by opening flows of its own.
type evictable struct {
	denied, closed, unanswered evictList
}

// place puts f on the list its state calls for, or on none.
// Preconditions: Gate.mu held.
func (e *evictable) place(f *flow) {
	switch {
	case f.gone || f.state == statePending:
		unlist(f)
	case f.state == stateDenied:
		if f.evl != &e.denied {
			e.denied.push(f)
		}
	case f.key.Proto == ProtoTCP && f.closed:
		if f.evl != &e.closed {
			e.closed.push(f)
		}
	case !f.answered:
		if f.evl != &e.unanswered {
			e.unanswered.push(f)
		}
	default:
		unlist(f)
	}
}

// victim returns the flow to evict first, or nil if none may be.
func (e *evictable) victim() *flow {
	for _, l := range []*evictList{&e.denied, &e.closed, &e.unanswered} {
		if l.head != nil {
			return l.head
		}
	}
	return nil
}
