package linux

import (
	"errors"
)

// Task is one process or thread as the guest kernel records it.
type Task struct {
	// Addr is the task_struct's kernel virtual address.
	Addr uint64 `json:"addr"`
	PID  int    `json:"pid"`
	TGID int    `json:"tgid"`
	PPID int    `json:"ppid"`
	// UID and GID are the real ids, EUID the effective uid, from task->cred.
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	EUID uint32 `json:"euid"`
	// State is ps's letter: R, S, D, T, t, X, Z, P or I.
	State string `json:"state"`
	Comm  string `json:"comm"`
	// Exe is the path of mm->exe_file, "" for kernel threads.
	Exe string `json:"exe"`
	// StartTime is start_time, in nanoseconds since boot.
	StartTime uint64 `json:"start_ns"`
	// Threads is signal->nr_threads.
	Threads      int  `json:"threads"`
	KernelThread bool `json:"kernel_thread"`
	// PGD is mm->pgd as a physical address: the process's CR3 (0 for kernel threads).
	PGD uint64 `json:"pgd"`
}

// ErrNotImplemented is returned by listings not yet implemented.
var ErrNotImplemented = errors.New("linux: not implemented")

// Tasks returns the thread-group leaders on init_task.tasks: one per process.
func (k *Kernel) Tasks() ([]Task, error) { return nil, ErrNotImplemented }

// Threads returns every thread: each leader and its thread group.
func (k *Kernel) Threads() ([]Task, error) { return nil, ErrNotImplemented }

// PIDNamespaceTasks returns every task reachable from init_pid_ns's IDR.
func (k *Kernel) PIDNamespaceTasks() ([]Task, error) { return nil, ErrNotImplemented }

// RunQueueTasks returns the tasks on each CPU's run queue, best effort.
func (k *Kernel) RunQueueTasks() ([]Task, error) { return nil, ErrNotImplemented }
