package ids

import (
	"errors"
	"sort"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Process detail, the answers a crash session gives about processes:
// every thread (ids threads), each process's argument vector and
// environment (ids ps --args, --env) and its file descriptors (ids
// files). Like Processes, each returns every row it could read and an
// error wrapping linux.ErrIncomplete for what it could not.

// Threads lists every thread of every process, sorted by thread group and
// then thread id, each with its CPU and CPU time.
func (i *Inspector) Threads() ([]linux.Task, error) {
	t, err := i.K.Threads()
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return nil, err
	}
	sort.SliceStable(t, func(a, b int) bool {
		if t[a].TGID != t[b].TGID {
			return t[a].TGID < t[b].TGID
		}
		return t[a].PID < t[b].PID
	})
	return nonNil(t), err
}

// Args lists each process's argument vector, and with env its
// environment, read from the process's own memory, sorted by pid.
func (i *Inspector) Args(env bool) ([]linux.ProcessArgs, error) {
	tasks, terr := i.Processes()
	if tasks == nil {
		return nil, terr
	}
	a, err := i.K.ProcessArgs(tasks, env)
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return nil, err
	}
	return nonNil(a), errors.Join(terr, err)
}

// Files lists every process's file descriptors, sorted by pid and then
// descriptor: what each points to, sockets with their protocol and
// addresses.
func (i *Inspector) Files() ([]linux.FD, error) {
	tasks, terr := i.Processes()
	if tasks == nil {
		return nil, terr
	}
	f, err := i.K.Files(tasks)
	if err != nil && !errors.Is(err, linux.ErrIncomplete) {
		return nil, err
	}
	return nonNil(f), errors.Join(terr, err)
}

// detailQuery answers the process-detail queries: threads, args, env and
// files; ok is false for any other name.
func detailQuery(in *Inspector, query string) (result any, ok bool, err error) {
	switch query {
	case "threads":
		result, err = in.Threads()
	case "args":
		result, err = in.Args(false)
	case "env":
		result, err = in.Args(true)
	case "files":
		result, err = in.Files()
	default:
		return nil, false, nil
	}
	return result, true, err
}
