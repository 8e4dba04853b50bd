package linux

// TaskReader reads one task at a time, as TaskAt does, with the reader's
// buffers and page_offset_base kept between reads (the file gate reads
// the requester of every decided request: a new reader each time was half
// the cost of its task read). Nothing read from the guest is kept: each
// Read forgets the paths, the parents' tgids and the task bytes of the
// reads before it. Not safe for concurrent use.
type TaskReader struct {
	r    *taskReader
	regs *userRegsLayout // UserRegsAddr's profile look-ups, on first use
}

// UserRegsAddr is k.UserRegsAddr with its profile look-ups (pt_regs's
// size, the top of stack's per-CPU offset) made once.
func (t *TaskReader) UserRegsAddr(gsBase, task uint64) (uint64, error) {
	if t.regs == nil {
		l := t.r.k.userRegsLayout()
		t.regs = &l
	}
	return t.r.k.userRegsAddr(gsBase, task, *t.regs)
}

// NewTaskReader returns a reader of k's tasks.
func (k *Kernel) NewTaskReader() (*TaskReader, error) {
	r, err := k.newTaskReader()
	if err != nil {
		return nil, err
	}
	return &TaskReader{r: r}, nil
}

// Read reads the task at addr afresh, as TaskAt.
func (t *TaskReader) Read(addr uint64) (Task, error) {
	t.forget()
	return t.r.read(addr)
}

// forget drops what earlier reads found: each read starts afresh.
func (t *TaskReader) forget() {
	r := t.r
	clear(r.paths)
	clear(r.tgids)
	r.lastBlockRead = 0
	r.wantGroup = false
}
