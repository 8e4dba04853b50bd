package linux

// Hidden is an object one view of the kernel shows and another does not.
type Hidden struct {
	// Kind is "process" or "module".
	Kind string `json:"kind"`
	PID  int    `json:"pid,omitempty"`
	Name string `json:"name"`
	Addr uint64 `json:"addr"`
	// SeenIn and MissingFrom name the views: tasks, pid_idr, runqueue;
	// modules, sysfs, scan.
	SeenIn      []string `json:"seen_in"`
	MissingFrom []string `json:"missing_from"`
}

// CrossViewProcesses reports tasks that the PID IDR or a run queue shows but
// the task list does not.
func CrossViewProcesses(k *Kernel) ([]Hidden, error) { return nil, ErrNotImplemented }

// CrossViewModules reports modules that sysfs or a memory scan shows but the
// module list does not.
func CrossViewModules(k *Kernel) ([]Hidden, error) { return nil, ErrNotImplemented }
